// NCCL point-to-point transport for KV-Runahead across the GPUs of one node.
//
// Chain and fan-out. Communicators: one two-rank NCCL communicator per ordered pair of devices
// (a direction), so that every receive and send is an independent operation on its own stream;
// NCCL orders the operations of one communicator by issue, which would deadlock receives posted
// up front against sends in the other direction on a shared one. Streams: per device and peer,
// one send and one receive stream, apart from the runner's compute stream. Per prefill and
// layer l:
//   - every receive of layer l is posted up front (at Connect) on the receive stream, straight
//     into the receiver's KV-cache rows (no staging buffer), followed by an event recv_done[l];
//   - SendLayer(l) records qkv_done[l] on the compute stream; the send stream waits for it (and,
//     for a forwarded prefix, for recv_done[l]) and sends K rows and V rows: the compute stream
//     never waits on a send;
//   - WaitPrefix(l) makes the compute stream wait for recv_done[l] (the host does not block) and
//     brackets that wait with timing events, so the time the GPU stalled is measured;
//   - Finish() waits for the send and receive streams of this position.
// All-gather (TSP): one communicator over all devices and one stream per device; SendLayer(l)
// issues, after qkv_done[l], one group with the layer's sends to and receives from every other
// position (nothing is posted up front); WaitPrefix(l) waits for that group.
// Every NCCL connection is made when the fabric is created (and rebuilt after an abort), never
// lazily on a worker's thread: nccl_fabric.cc explains the hang that this and the all-gather
// design remove.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/prefill/transport.h"

namespace kvr {

// Creates the communicators and streams for devices 0..num_devices-1. Call from one thread.
absl::StatusOr<std::unique_ptr<ChainFabric>> MakeNcclFabric(int num_devices);

// Makes `device` current on the calling thread (worker threads call it once at start).
void SelectCudaDevice(int device);

}  // namespace kvr
