#include "engine/serving/output_processor.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvr {

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kError: return "error";
  }
  return "error";
}

OutputProcessor::OutputProcessor(const SamplingParams& params, std::vector<int32_t> eos_ids,
                                 std::unique_ptr<TextDecoder> decoder)
    : params_(params), eos_ids_(std::move(eos_ids)), decoder_(std::move(decoder)) {
  for (const std::string& s : params_.stop) max_stop_len_ = std::max(max_stop_len_, s.size());
}

bool OutputProcessor::Add(int32_t token, GenerationChunk* chunk) {
  if (finished_) return true;
  ++completion_tokens_;
  chunk->token_ids.push_back(token);
  auto contains = [token](const std::vector<int32_t>& v) {
    return std::find(v.begin(), v.end(), token) != v.end();
  };
  if ((!params_.ignore_eos && contains(eos_ids_)) || contains(params_.stop_token_ids)) {
    stop_reason_ = absl::StrCat(token);
    Finish(FinishReason::kStop, chunk);
    return true;
  }
  if (decoder_ != nullptr) {
    size_t before = text_.size();
    AppendText(decoder_->Push(token));
    if (MatchStop(before)) {
      Emit(text_.size(), chunk);
      finished_ = true;
      reason_ = FinishReason::kStop;
      return true;
    }
    Emit(text_.size() - HoldBack(), chunk);
  }
  if (completion_tokens_ >= params_.max_tokens) {
    Finish(FinishReason::kLength, chunk);
    return true;
  }
  return false;
}

void OutputProcessor::Finish(FinishReason reason, GenerationChunk* chunk) {
  if (finished_) return;
  finished_ = true;
  reason_ = reason;
  if (decoder_ != nullptr) {
    size_t before = text_.size();
    AppendText(decoder_->Flush());
    if (MatchStop(before)) {
      reason_ = FinishReason::kStop;
    }
    Emit(text_.size(), chunk);
  }
}

void OutputProcessor::AppendText(const std::string& delta) { text_ += delta; }

bool OutputProcessor::MatchStop(size_t from) {
  if (params_.stop.empty() || text_.size() == from) return false;
  // A match must end past `from`, so it starts at or after from - (len - 1).
  size_t start = from >= max_stop_len_ ? from - (max_stop_len_ - 1) : 0;
  start = std::max(start, emitted_);
  size_t best = std::string::npos;
  const std::string* best_s = nullptr;
  for (const std::string& s : params_.stop) {
    size_t p = text_.find(s, start);
    if (p != std::string::npos && p < best) {
      best = p;
      best_s = &s;
    }
  }
  if (best_s == nullptr) return false;
  stop_reason_ = *best_s;
  text_.resize(best);
  return true;
}

size_t OutputProcessor::HoldBack() const {
  if (params_.stop.empty()) return 0;
  const size_t avail = text_.size() - emitted_;
  for (size_t k = std::min(avail, max_stop_len_ - 1); k > 0; --k) {
    absl::string_view tail(text_.data() + text_.size() - k, k);
    for (const std::string& s : params_.stop) {
      if (s.size() > k && absl::string_view(s).substr(0, k) == tail) return k;
    }
  }
  return 0;
}

void OutputProcessor::Emit(size_t upto, GenerationChunk* chunk) {
  if (upto <= emitted_) return;
  chunk->text.append(text_, emitted_, upto - emitted_);
  emitted_ = upto;
}

}  // namespace kvr
