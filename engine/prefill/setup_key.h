// The key under which KVR-P split tables (split_table.h) file a searched split: which model
// shape, on how many of which card, over which link, with which attention kernel. kvr-bench
// writes entries under it and the engine looks them up under it, so both derive it here:
//   "<shape>/<workers>x<card>/<link>[/<attn>]", e.g. "llama-7b/2xH200/nvlink",
//   "llama-7b/4xH200/nvlink/cudnn"
// shape: a known name when the model's widths match one (llama-7b, llama3-8b, falcon-7b; the
//        layer count included), else "<model_type>-L<layers>-C<hidden>-H<q>x<kv>-F<ffn>".
// card:  H100, H200, A100, ... from the device name ("cuda:0 (NVIDIA H200)"), "cpu" for CPU workers.
// link:  "p2p-off" when NCCL_P2P_DISABLE is set to 1 (NCCL through host memory), else "nvlink"
//        for GPUs; "inproc" for CPU workers.
// attn:  the CUDA prefill attention kernel when it is not the default "mma" (a faster attention
//        shifts the best split: attention is what makes later chunks dearer); absent for mma
//        and for CPU workers.
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "engine/model/model_config.h"

namespace kvr {

std::string ShapeName(const ModelConfig& config);
std::string CardName(absl::string_view device_name);
std::string GpuLinkName();  // from the environment, as NCCL will see it
std::string SetupKey(const std::string& shape, int workers, const std::string& card, const std::string& link,
                     const std::string& attn = "mma");

}  // namespace kvr
