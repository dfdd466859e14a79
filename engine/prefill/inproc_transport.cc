#include "engine/prefill/inproc_transport.h"

#include <cstring>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/util/clock.h"

namespace kvr {
namespace {

class InProcessFabric;

class InProcessEndpoint : public ChainEndpoint {
 public:
  InProcessEndpoint(InProcessFabric* fabric, int position);
  ~InProcessEndpoint() override;
  absl::Status SendLayer(int layer) override;
  absl::Status WaitPrefix(int layer) override;
  absl::Status Finish() override;
  TransportStats stats() const override;

 private:
  void CopyLoop();
  InProcessFabric* fabric_;
  int position_;
  absl::Mutex mu_;
  std::deque<int> queue_ ABSL_GUARDED_BY(mu_);  // layers to send, in order; -1 stops the thread
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  TransportStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread copier_;
};

class InProcessFabric : public ChainFabric {
 public:
  absl::Status Prepare(const PrefillPlan& plan, std::vector<KvCache*> caches,
                       std::vector<ModelRunner*> runners) override {
    absl::MutexLock lock(&mu_);
    plan_ = plan;
    caches_ = std::move(caches);
    transfers_ = TransfersOf(plan_);
    const int p = plan_.num_chunks();
    const int layers = caches_.empty() ? 0 : caches_[0]->num_layers();
    expected_.assign(p, 0);
    for (const KvTransfer& t : transfers_) ++expected_[t.to];
    arrived_.assign(p, std::vector<int>(layers, 0));
    aborted_ = absl::OkStatus();
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<ChainEndpoint>> Connect(int position) override {
    return std::make_unique<InProcessEndpoint>(this, position);
  }

  void Abort(const absl::Status& why) override {
    absl::MutexLock lock(&mu_);
    if (aborted_.ok()) aborted_ = why;
  }

  // Blocks until every transfer into `position` for `layer` has landed (or the prefill aborted).
  absl::Status WaitArrived(int position, int layer) {
    absl::MutexLock lock(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !aborted_.ok() || arrived_[position][layer] >= expected_[position];
    };
    mu_.Await(absl::Condition(&done));
    return aborted_;
  }

  // Copies every outgoing transfer of `position` for `layer`; returns bytes sent.
  absl::StatusOr<size_t> SendAll(int position, int layer) {
    size_t bytes = 0;
    const int own_begin = plan_.chunk_begin(position);
    for (const KvTransfer& t : transfers_) {
      if (t.from != position) continue;
      if (t.begin < own_begin) {  // forwards rows this position received: wait for them
        absl::Status s = WaitArrived(position, layer);
        if (!s.ok()) return s;
      }
      KvLayerView src = caches_[t.from]->layer(layer);
      KvLayerView dst = caches_[t.to]->layer(layer);
      const size_t offset = static_cast<size_t>(t.begin) * src.bytes_per_token;
      const size_t n = static_cast<size_t>(t.end - t.begin) * src.bytes_per_token;
      std::memcpy(dst.k + offset, src.k + offset, n);
      std::memcpy(dst.v + offset, src.v + offset, n);
      bytes += 2 * n;
      absl::MutexLock lock(&mu_);
      ++arrived_[t.to][layer];
    }
    return bytes;
  }

  size_t BytesInto(int position) const {
    size_t bytes = 0;
    for (const KvTransfer& t : transfers_) {
      if (t.to == position) bytes += 2 * static_cast<size_t>(t.end - t.begin) * caches_[t.to]->layer(0).bytes_per_token;
    }
    return bytes * (caches_.empty() ? 0 : caches_[0]->num_layers());
  }

 private:
  absl::Mutex mu_;
  PrefillPlan plan_;
  std::vector<KvCache*> caches_;
  std::vector<KvTransfer> transfers_;
  std::vector<int> expected_;                  // incoming transfers per position (per layer)
  std::vector<std::vector<int>> arrived_ ABSL_GUARDED_BY(mu_);  // [position][layer]
  absl::Status aborted_ ABSL_GUARDED_BY(mu_);
};

InProcessEndpoint::InProcessEndpoint(InProcessFabric* fabric, int position)
    : fabric_(fabric), position_(position), copier_([this] { CopyLoop(); }) {}

InProcessEndpoint::~InProcessEndpoint() {
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(-1);
  }
  copier_.join();
}

void InProcessEndpoint::CopyLoop() {
  while (true) {
    int layer;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(+[](std::deque<int>* q) { return !q->empty(); }, &queue_));
      layer = queue_.front();
      queue_.pop_front();
      if (layer < 0) return;
      busy_ = true;
    }
    absl::StatusOr<size_t> sent = fabric_->SendAll(position_, layer);
    absl::MutexLock lock(&mu_);
    busy_ = false;
    if (sent.ok()) stats_.bytes_sent += *sent;
  }
}

absl::Status InProcessEndpoint::SendLayer(int layer) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(layer);
  return absl::OkStatus();
}

absl::Status InProcessEndpoint::WaitPrefix(int layer) {
  const auto t0 = SteadyClock::now();
  absl::Status s = fabric_->WaitArrived(position_, layer);
  absl::MutexLock lock(&mu_);
  stats_.wait_seconds += SecondsSince(t0);
  return s;
}

absl::Status InProcessEndpoint::Finish() {
  absl::MutexLock lock(&mu_);
  auto drained = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_.empty() && !busy_; };
  mu_.Await(absl::Condition(&drained));
  stats_.bytes_received = fabric_->BytesInto(position_);
  return absl::OkStatus();
}

TransportStats InProcessEndpoint::stats() const {
  absl::MutexLock lock(const_cast<absl::Mutex*>(&mu_));
  return stats_;
}

}  // namespace

std::unique_ptr<ChainFabric> MakeInProcessFabric() { return std::make_unique<InProcessFabric>(); }

}  // namespace kvr
