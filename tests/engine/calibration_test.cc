// Cost-model calibration (engine/prefill/calibration.h) recovers known rates: a fake runner
// whose every layer of a chunk takes exactly the time the cost model assigns it
// (n * G / gemm_rate + pairs * A / attn_rate + overhead) on a clock of its own, which the
// calibration reads, must be calibrated back to those rates. (It once busy-waited on the wall
// clock instead, and failed when the machine was busy: preemption lengthened the chunks.)
#include <memory>

#include "engine/prefill/calibration.h"
#include "gtest/gtest.h"

namespace kvr {
namespace {

class FakeCache : public KvCache {
 public:
  explicit FakeCache(int capacity) : capacity_(capacity) {}
  int capacity() const override { return capacity_; }
  int num_layers() const override { return 2; }
  KvLayerView layer(int) override { return {}; }
  int device() const override { return 0; }
  size_t bytes() const override { return 0; }

 private:
  int capacity_;
};

struct FakeChunk : ChunkState {
  int n = 0, s = 0;
};

// Spends the cost model's time for (n, s) per layer, split between the two layer calls, on its
// own clock (seconds()).
class TimedRunner : public ModelRunner {
 public:
  TimedRunner(ModelConfig c, LayerShape shape, DeviceCosts costs) : c_(c), shape_(shape), costs_(costs) {}
  const ModelConfig& config() const override { return c_; }
  std::string device_name() const override { return "fake"; }
  int device() const override { return 0; }
  MemoryReport memory() const override { return {}; }
  absl::StatusOr<std::unique_ptr<KvCache>> NewKvCache(int capacity) override {
    return std::unique_ptr<KvCache>(new FakeCache(capacity));
  }
  absl::StatusOr<std::unique_ptr<ChunkState>> BeginChunk(absl::Span<const int32_t> tokens, int start,
                                                         KvCache&) override {
    auto ch = std::make_unique<FakeChunk>();
    ch->n = static_cast<int>(tokens.size());
    ch->s = start;
    return std::unique_ptr<ChunkState>(std::move(ch));
  }
  absl::Status LayerQkv(ChunkState& state, int) override {
    auto& ch = static_cast<FakeChunk&>(state);
    Advance(costs_.layer_overhead_s / 2 + ch.n * shape_.gemm_flops_qkv / costs_.gemm_flops_per_s);
    return absl::OkStatus();
  }
  absl::Status LayerAttnMlp(ChunkState& state, int) override {
    auto& ch = static_cast<FakeChunk&>(state);
    const double pairs = double(ch.n) * ch.s + double(ch.n) * (ch.n + 1) / 2;
    Advance(costs_.layer_overhead_s / 2 + ch.n * shape_.gemm_flops_rest / costs_.gemm_flops_per_s +
         pairs * shape_.attn_flops_per_pair / costs_.attn_flops_per_s);
    return absl::OkStatus();
  }
  absl::Status FinishChunk(ChunkState&, std::vector<float>*) override { return absl::OkStatus(); }
  double seconds() const { return clock_s_; }
  absl::Status Decode(absl::Span<const DecodeSlot>, absl::Span<const float>*) override {
    return absl::UnimplementedError("fake");
  }
  absl::Status ReadKv(KvCache&, int, int, int, std::vector<float>*, std::vector<float>*) override {
    return absl::UnimplementedError("fake");
  }

 private:
  void Advance(double seconds) { clock_s_ += seconds; }
  double clock_s_ = 0;
  ModelConfig c_;
  LayerShape shape_;
  DeviceCosts costs_;
};

TEST(Calibration, RecoversTheRatesOfARunnerThatFollowsTheModel) {
  ModelConfig c;
  c.hidden_size = 4096; c.num_layers = 2; c.num_q_heads = 32; c.num_kv_heads = 32; c.head_dim = 128;
  c.intermediate_size = 11008; c.vocab_size = 32000; c.max_position = 1 << 15;
  const LayerShape shape = LayerShape::Of(c, 2);
  DeviceCosts truth;
  truth.gemm_flops_per_s = 60e12;  // a 7B layer: 1k tokens ~ 6.7 ms, pairs at 24k ~ 4 ms
  truth.attn_flops_per_s = 200e12;
  truth.layer_overhead_s = 0.5e-3;
  TimedRunner runner(c, shape, truth);
  int calls = 0;
  auto cal = CalibrateCompute(runner, shape, DeviceCosts{}, c.max_position,
                              {{512, 0}, {1024, 0}, {2048, 0}, {256, 8192}, {512, 16384}, {256, 24576}},
                              [&](int done, int total) { ++calls; EXPECT_LE(done, total); },
                              [&] { return runner.seconds(); });
  ASSERT_TRUE(cal.ok()) << cal.status();
  EXPECT_EQ(calls, 6);
  // The times follow the model exactly, so the fit recovers it to rounding.
  EXPECT_NEAR(cal->costs.gemm_flops_per_s / truth.gemm_flops_per_s, 1.0, 1e-6) << cal->ToString();
  EXPECT_NEAR(cal->costs.attn_flops_per_s / truth.attn_flops_per_s, 1.0, 1e-6) << cal->ToString();
  EXPECT_NEAR(cal->costs.layer_overhead_s / truth.layer_overhead_s, 1.0, 1e-6) << cal->ToString();
  for (const CalibrationPoint& p : cal->points) {
    EXPECT_NEAR(p.fitted_s / p.measured_s, 1.0, 1e-6) << cal->ToString();
  }
}

TEST(Calibration, RefusesWhenTooFewChunksFit) {
  ModelConfig c;
  c.hidden_size = 64; c.num_layers = 2; c.num_q_heads = 2; c.num_kv_heads = 2; c.head_dim = 32;
  c.intermediate_size = 128; c.vocab_size = 100; c.max_position = 2048;
  const LayerShape shape = LayerShape::Of(c, 2);
  TimedRunner runner(c, shape, DeviceCosts{});
  auto cal = CalibrateCompute(runner, shape, DeviceCosts{}, c.max_position);  // default chunks: 1 fits
  EXPECT_EQ(cal.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(cal.status().message().find("2048 tokens"), std::string::npos) << cal.status();
}

}  // namespace
}  // namespace kvr
