#include "engine/tokenizer/normalizer.h"

namespace kvr {

void Normalizer::Run(std::string* text) const {
  for (const NormalizerStep& step : steps_) {
    switch (step.kind) {
      case NormalizerStep::Kind::kPrepend:
        if (!text->empty()) text->insert(0, step.content);  // as HF: never on an empty segment
        break;
      case NormalizerStep::Kind::kReplace: {
        if (step.pattern.empty()) break;
        std::string out;
        out.reserve(text->size() + text->size() / 2);
        size_t pos = 0;
        while (true) {
          const size_t hit = text->find(step.pattern, pos);
          if (hit == std::string::npos) break;
          out.append(*text, pos, hit - pos);
          out.append(step.content);
          pos = hit + step.pattern.size();
        }
        out.append(*text, pos, std::string::npos);
        *text = std::move(out);
        break;
      }
    }
  }
}

}  // namespace kvr
