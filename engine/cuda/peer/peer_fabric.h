// Peer-copy transport for KV-Runahead across the GPUs of one node: the copy engines move K/V.
//
// Every transfer is two cudaMemcpyPeerAsync calls (K rows, V rows) on a copy stream of the
// sending device, straight from the sender's cache rows into the receiver's (peer access
// enabled between every pair, so over NVLink where the GPUs have it). No kernel runs for a
// transfer, on either GPU. An NCCL receive, by contrast, is a kernel that stays resident on the
// receiver's SMs from the moment it is posted until its data lands, and the NCCL fabric posts a
// prefill's receives up front. In the 4-GPU timelines of docs/benchmarks.md ("Four GPUs,
// session 4") the receiving GPUs computed 10-24% slower than the cost model's compute-only
// prediction while the sending-only GPU matched it; this fabric is the test of whether those
// SMs are the reason.
//
// Per prefill and layer l, for transfer t from position f to position r:
//   - SendLayer(l) on f's thread: f's copy stream to r waits for f's compute stream (the K/V
//     rows of layer l are written) and, when t forwards rows that f received (chain), for those
//     transfers' done events; copies K and V; records done[l][t]; marks it recorded.
//   - WaitPrefix(l) on r's thread: waits on the host until every incoming done[l][t] of layer l is
//     recorded (the sender's thread runs ahead of its GPU, so this is short), then makes r's
//     compute stream wait on those events (events of another device) between two timing events.
//   - Finish(): waits for this position's copy streams and compute stream.
// Chain, fan-out and all-gather (TSP) all work this way; all-gather's transfers need no
// ordering among themselves because no copy waits on another GPU's kernels.
// Abort wakes every host-side wait with the error; nothing else can hang.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/prefill/transport.h"

namespace kvr {

// Enables peer access between every pair of devices 0..num_devices-1 and creates the copy
// streams. FailedPrecondition, naming the pair, where two devices cannot access each other.
absl::StatusOr<std::unique_ptr<ChainFabric>> MakePeerCopyFabric(int num_devices);

// OK if the peer-copy transport can run on devices 0..num_devices-1 (peer access between every
// pair); else FailedPrecondition naming the first pair that cannot (or the CUDA error of asking).
absl::Status PeerCopyStatus(int num_devices);

}  // namespace kvr
