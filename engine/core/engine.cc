#include "engine/core/engine.h"

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/core/cuda_backend.h"
#include "engine/cpu/cpu_runner.h"
#include "engine/prefill/calibration.h"
#include "engine/prefill/cost_model.h"
#include "engine/prefill/inproc_transport.h"
#include "engine/prefill/setup_key.h"
#include "engine/prefill/split_table.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/clock.h"
#include "engine/util/log.h"
#include "engine/util/status_macros.h"

namespace kvr {
namespace {

// Rates used by the cost-model planner until a calibration is loaded: a CPU worker's rough
// speed. The CUDA backend supplies measured ones (kvr-bench --calibrate).
DeviceCosts DefaultCosts(const std::string& backend) {
  DeviceCosts c;
  if (backend == "cpu") {
    c.gemm_flops_per_s = 5e9;
    c.attn_flops_per_s = 2e9;
    c.link_bytes_per_s = 5e9;
    c.link_latency_s = 2e-5;
  } else {
    c.gemm_flops_per_s = 600e12;
    c.attn_flops_per_s = 400e12;
    c.link_bytes_per_s = 300e9;
    c.link_latency_s = 1.5e-5;
    c.layer_overhead_s = 5e-5;
  }
  return c;
}

// The cost model's compute rates measured on worker 0 (on its thread, so on its device); null,
// with a warning, if calibration fails (the planner then uses typical rates).
std::unique_ptr<DeviceCosts> CalibrateOnWorker0(Engine& engine, const ModelConfig& config, int element_bytes) {
  const auto t0 = SteadyClock::now();
  KVR_LOG(INFO) << "calibrating the prefill cost model on worker 0 (chunks of up to 8k tokens through every "
                   "layer; partition even or fixed skips this)";
  absl::StatusOr<Calibration> cal;
  const absl::Status run = engine.coordinator().RunOn(0, [&] {
    cal = CalibrateCompute(engine.runner(0), LayerShape::Of(config, element_bytes), DefaultCosts("cuda"),
                           config.max_position, {}, [](int done, int total) {
                             KVR_LOG(INFO) << "calibration: chunk " << done << " of " << total << " done";
                           });
    return cal.status();
  });
  if (!run.ok()) {
    KVR_LOG(WARNING) << "cost-model calibration failed (" << run.message()
                     << "); planning with typical rates instead";
    return nullptr;
  }
  KVR_LOG(INFO) << "calibrated in " << SecondsSince(t0) << " s: " << cal->ToString();
  return std::make_unique<DeviceCosts>(cal->costs);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Planner>> MakePlanner(const std::string& partition, Topology topology,
                                                     const ModelConfig& config, int element_bytes,
                                                     const std::string& setup, int workers,
                                                     const DeviceCosts* calibrated,
                                                     const std::string& fallback_setup) {
  // Rates of the cost model (partition cost and the fallback of table): measured, else typical
  // ones for the backend (element_bytes 4: the fp32 CPU backend; cost-cpu asks for CPU rates).
  const DeviceCosts costs = calibrated != nullptr
                                ? *calibrated
                                : DefaultCosts(partition == "cost-cpu" || element_bytes == 4 ? "cpu" : "cuda");
  if (partition == "even") return std::unique_ptr<Planner>(new EvenPlanner(topology));
  if (partition == "cost" || partition == "cost-cpu") {
    return std::unique_ptr<Planner>(new CostModelPlanner(LayerShape::Of(config, element_bytes), costs, topology));
  }
  if (absl::StartsWith(partition, "table:")) {
    const std::string path = partition.substr(6);
    KVR_ASSIGN_OR_RETURN(SplitTable table, SplitTable::Load(path));
    auto fallback = std::make_shared<CostModelPlanner>(LayerShape::Of(config, element_bytes), costs, topology);
    std::string used = setup;
    if (!fallback_setup.empty() && !table.HasCurve(setup, workers) && table.HasCurve(fallback_setup, workers)) {
      KVR_LOG(INFO) << "partition: " << path << " has no searched split for " << setup << "; using "
                    << fallback_setup << "'s";
      used = fallback_setup;
    }
    auto planner = std::make_unique<TablePlanner>(std::move(table), used, topology, fallback);
    if (planner->Covers(workers)) {
      KVR_LOG(INFO) << "partition: searched splits for " << used << " from " << path
                    << " (interpolated between searched lengths)";
    } else {
      KVR_LOG(WARNING) << "partition: " << path << " has no searched split for " << setup
                       << (fallback_setup.empty() ? "" : " (nor for " + fallback_setup + ")")
                       << "; the cost model plans every prompt instead (kvr-bench --modes kvr-s --table " << path
                       << " adds one)";
    }
    return std::unique_ptr<Planner>(std::move(planner));
  }
  if (absl::StartsWith(partition, "fixed:")) {
    std::vector<int> sizes;
    for (absl::string_view part : absl::StrSplit(partition.substr(6), ',')) {
      int n;
      if (!absl::SimpleAtoi(part, &n) || n <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("partition \"", partition,
                                                       "\": chunk sizes must be positive integers"));
      }
      sizes.push_back(n);
    }
    return std::unique_ptr<Planner>(new FixedPlanner(sizes, topology));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown partition \"", partition,
                   "\" (allowed: even, cost, cost-cpu, table:PATH (a KVR-P split table), fixed:n1,n2,...)"));
}

Engine::~Engine() {
  coordinator_.reset();  // joins the worker threads before the runners go
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Load(const EngineOptions& options) {
  auto engine = std::unique_ptr<Engine>(new Engine());
  engine->options_ = options;
  const auto t0 = SteadyClock::now();

  // Backend: CUDA when asked for or when auto finds a GPU.
  if (options.backend != "auto" && options.backend != "cpu" && options.backend != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("unknown backend \"", options.backend, "\" (allowed: auto, cpu, cuda)"));
  }
  int gpus = 0;
  std::string no_gpu_reason;
  if (options.backend != "cpu") {
    absl::StatusOr<std::unique_ptr<CudaBackend>> cuda = CudaBackend::Load();
    if (cuda.ok()) {
      engine->cuda_ = std::move(*cuda);
      gpus = engine->cuda_->api().device_count();
      if (gpus == 0) no_gpu_reason = "the CUDA backend found no usable GPU";
    } else {
      no_gpu_reason = std::string(cuda.status().message());
    }
  }
  if (options.backend == "cuda" && gpus == 0) {
    return absl::FailedPreconditionError(absl::StrCat("backend \"cuda\" was asked for, but ", no_gpu_reason,
                                                      " (use --backend=cpu or auto)"));
  }
  engine->backend_ = (options.backend == "cpu" || gpus == 0) ? "cpu" : "cuda";
  int workers = options.workers;
  if (workers <= 0) workers = engine->backend_ == "cuda" ? gpus : 2;
  if (engine->backend_ == "cuda" && workers > gpus) {
    return absl::InvalidArgumentError(absl::StrCat(workers, " workers asked for, but only ", gpus, " GPUs are usable"));
  }
  KVR_LOG(INFO) << "loading model from " << options.model_dir << " for the " << engine->backend_
                << " backend with " << workers << " prefill worker" << (workers == 1 ? "" : "s")
                << (engine->backend_ == "cpu" && options.backend == "auto" ? " (no GPU: " + no_gpu_reason + ")" : "");

  KVR_ASSIGN_OR_RETURN(engine->folder_,
                       ModelFolder::Open(options.model_dir, [](int done, int total, const std::string& path) {
                         KVR_LOG(INFO) << "mapped weights file " << done << "/" << total << ": " << path;
                       }));
  const ModelConfig& config = engine->folder_->config();
  KVR_LOG(INFO) << "model: " << config.Summary() << ", "
                << engine->folder_->TotalBytes() / (1024.0 * 1024.0) << " MiB of weights";
  KVR_ASSIGN_OR_RETURN(engine->weights_, BindWeights(*engine->folder_));

  if (options.load_tokenizer) {
    if (std::filesystem::exists(options.model_dir + "/tokenizer.json")) {
      KVR_ASSIGN_OR_RETURN(engine->tokenizer_, Tokenizer::FromModelFolder(options.model_dir));
      KVR_LOG(INFO) << "tokenizer: " << engine->tokenizer_->vocab_size() << " tokens";
    } else {
      KVR_LOG(WARNING) << "no tokenizer.json in " << options.model_dir << ": prompts must be token ids";
    }
  }

  std::function<void(int)> on_thread_start;
  std::unique_ptr<ChainFabric> fabric;
  std::string chosen_transport = "inproc";  // CUDA: what make_fabric picked (nccl or copy)
  int element_bytes = 4;
  for (int w = 0; w < workers; ++w) {
    const auto tw = SteadyClock::now();
    std::unique_ptr<ModelRunner> runner;
    if (engine->backend_ == "cpu") {
      KVR_ASSIGN_OR_RETURN(runner, MakeCpuRunner(config, engine->weights_, CpuRunnerOptions{options.cpu_threads, w}));
    } else {
      KVR_ASSIGN_OR_RETURN(runner, engine->cuda_->api().make_runner(*engine->folder_, engine->weights_, w,
                                                                       options.attn_impl));
      element_bytes = 2;
    }
    const MemoryReport mem = runner->memory();
    KVR_LOG(INFO) << "worker " << w << " ready on " << runner->device_name() << ": weights "
                  << mem.weights_bytes / (1024.0 * 1024.0) << " MiB, loaded in " << SecondsSince(tw) << " s";
    engine->runners_.push_back(std::move(runner));
  }
  if (engine->backend_ == "cpu") {
    fabric = MakeInProcessFabric();
  } else {
    if (options.transport != "nccl" && options.transport != "copy" && options.transport != "auto")
      return absl::InvalidArgumentError(
          absl::StrCat("transport \"", options.transport, "\" is not one of auto, nccl, copy"));
    KVR_ASSIGN_OR_RETURN(fabric, engine->cuda_->api().make_fabric(workers, options.transport, &chosen_transport));
    if (workers > 1)
      KVR_LOG(INFO) << "K/V between GPUs (transport " << options.transport << "): "
                    << (chosen_transport == "copy" ? "copy engines (peer copies)" : "NCCL point-to-point");
    on_thread_start = [select = engine->cuda_->api().select_device](int device) { select(device); };
  }
  std::vector<ModelRunner*> ptrs;
  for (auto& r : engine->runners_) ptrs.push_back(r.get());
  engine->coordinator_ = std::make_unique<PrefillCoordinator>(ptrs, std::move(fabric), on_thread_start);
  KVR_ASSIGN_OR_RETURN(const Topology topology, ParseTopology(options.topology));
  // Split tables file the copy transport's searched splits under link "<link>-copy" (kvr-bench
  // --transport copy); where a table has none for it, the same link's NCCL splits.
  const std::string link = engine->backend_ == "cpu" ? "inproc" : GpuLinkName();
  auto setup_for = [&](const std::string& l) {
    return SetupKey(ShapeName(config), workers, CardName(engine->runners_[0]->device_name()), l,
                    engine->backend_ == "cpu" ? "mma" : options.attn_impl);
  };
  const std::string setup = setup_for(chosen_transport == "copy" ? link + "-copy" : link);
  const std::string fallback_setup = chosen_transport == "copy" ? setup_for(link) : "";
  std::unique_ptr<DeviceCosts> calibrated;
  if (engine->backend_ == "cuda" && options.calibrate &&
      (options.partition == "cost" || absl::StartsWith(options.partition, "table:"))) {
    calibrated = CalibrateOnWorker0(*engine, config, element_bytes);
  }
  KVR_ASSIGN_OR_RETURN(engine->planner_, MakePlanner(options.partition, topology, config, element_bytes, setup,
                                                     workers, calibrated.get(), fallback_setup));
  if (options.tsp_below > 0 && workers > 1) {
    KVR_LOG(INFO) << "prompts shorter than " << options.tsp_below
                  << " tokens take TSP (even split, all-gather of every layer's K/V)";
    engine->planner_ = std::make_unique<CrossoverPlanner>(options.tsp_below, std::move(engine->planner_));
  }
  KVR_LOG(INFO) << "engine ready in " << SecondsSince(t0) << " s: partition " << engine->planner_->name()
                << ", topology " << TopologyName(topology);
  return engine;
}

absl::StatusOr<PrefillResult> Engine::Prefill(absl::Span<const int32_t> tokens, int cache_capacity) {
  const int last = next_last_worker_.fetch_add(1) % num_workers();
  KVR_ASSIGN_OR_RETURN(PrefillPlan plan,
                       planner_->Plan(static_cast<int>(tokens.size()), num_workers(), last));
  return coordinator_->Run(tokens, plan, cache_capacity);
}

absl::Status Engine::Decode(int worker, absl::Span<const DecodeSlot> batch, absl::Span<const float>* logits) {
  return coordinator_->RunOn(worker, [&] { return runners_[worker]->Decode(batch, logits); });
}

}  // namespace kvr
