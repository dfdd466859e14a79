#include "engine/prefill/setup_key.h"

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace kvr {

std::string ShapeName(const ModelConfig& c) {
  const bool l32 = c.num_layers == 32 && c.head_dim * c.num_q_heads == c.hidden_size;
  if (l32 && c.hidden_size == 4096 && c.num_q_heads == 32 && c.num_kv_heads == 32 && c.intermediate_size == 11008 &&
      c.vocab_size == 32000)
    return "llama-7b";
  if (l32 && c.hidden_size == 4096 && c.num_q_heads == 32 && c.num_kv_heads == 8 && c.intermediate_size == 14336 &&
      c.vocab_size == 128256)
    return "llama3-8b";
  if (l32 && c.hidden_size == 4544 && c.num_q_heads == 71 && c.num_kv_heads == 1 && c.vocab_size == 65024)
    return "falcon-7b";
  return absl::StrCat(c.model_type.empty() ? "model" : c.model_type, "-L", c.num_layers, "-C", c.hidden_size, "-H",
                      c.num_q_heads, "x", c.num_kv_heads, "-F", c.intermediate_size);
}

std::string CardName(absl::string_view device_name) {
  for (const char* card : {"H200", "H100", "H800", "H20", "B200", "GH200", "A100", "A800", "L40S", "L4"}) {
    if (absl::StrContains(device_name, card)) return card;
  }
  if (absl::StartsWith(device_name, "cpu")) return "cpu";
  // "cuda:0 (Some Card)": the text in parentheses, spaces removed.
  absl::string_view name = device_name;
  const size_t open = name.find('('), close = name.rfind(')');
  if (open != absl::string_view::npos && close != absl::string_view::npos && close > open)
    name = name.substr(open + 1, close - open - 1);
  std::string out;
  for (char ch : name) if (ch != ' ') out += ch;
  return out.empty() ? "gpu" : out;
}

std::string GpuLinkName() {
  const char* p2p = std::getenv("NCCL_P2P_DISABLE");
  return p2p != nullptr && std::string(p2p) == "1" ? "p2p-off" : "nvlink";
}

std::string SetupKey(const std::string& shape, int workers, const std::string& card, const std::string& link,
                     const std::string& attn) {
  std::string key = absl::StrCat(shape, "/", workers, "x", card, "/", link);
  if (!attn.empty() && attn != "mma") absl::StrAppend(&key, "/", attn);
  return key;
}

}  // namespace kvr
