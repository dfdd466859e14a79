#include "engine/prefill/chain_worker.h"

#include "engine/util/clock.h"
#include "engine/util/status_macros.h"

namespace kvr {

absl::Status RunChainPosition(ModelRunner& runner, ChainEndpoint& endpoint, KvCache& cache,
                              const ChainPositionTask& task, std::vector<float>* logits,
                              WorkerTiming* timing) {
  const auto t0 = SteadyClock::now();
  const int layers = runner.config().num_layers;
  auto report = [&](ChainPhase phase, int layer) {
    if (task.report) task.report(phase, layer);
  };
  KVR_ASSIGN_OR_RETURN(
      auto chunk, runner.BeginChunk(task.tokens.subspan(task.begin, task.end - task.begin), task.begin, cache));
  for (int l = 0; l < layers; ++l) {
    report(ChainPhase::kComputing, l);
    KVR_RETURN_IF_ERROR(runner.LayerQkv(*chunk, l));      // own K/V [begin, end) -> cache
    KVR_RETURN_IF_ERROR(endpoint.SendLayer(l));           // on to later positions, asynchronously
    report(ChainPhase::kWaiting, l);
    KVR_RETURN_IF_ERROR(endpoint.WaitPrefix(l));          // prefix [0, begin) of layer l is here
    report(ChainPhase::kComputing, l);
    KVR_RETURN_IF_ERROR(runner.LayerAttnMlp(*chunk, l));  // attention over [0, end), MLP
  }
  if (task.last) {
    KVR_RETURN_IF_ERROR(runner.FinishChunk(*chunk, logits));
  } else {
    KVR_RETURN_IF_ERROR(runner.Synchronize());
  }
  report(ChainPhase::kWaiting, layers - 1);
  KVR_RETURN_IF_ERROR(endpoint.Finish());
  const TransportStats stats = endpoint.stats();
  const double total = SecondsSince(t0);
  timing->begin = task.begin;
  timing->end = task.end;
  timing->wait_seconds = stats.wait_seconds;
  timing->busy_seconds = total - stats.wait_seconds;
  timing->kv_bytes_sent = stats.bytes_sent;
  timing->kv_bytes_received = stats.bytes_received;
  return absl::OkStatus();
}

}  // namespace kvr
