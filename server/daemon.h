// RunDaemon: kvrd from a config to its exit status. Loads the engine, serves /metrics, starts
// the scheduler and the gRPC server (kvr.v1.Kvr, grpc.health.v1.Health, reflection), then waits
// for one of `signals` (blocked in every thread by main before any thread started).
//
// Shutdown on SIGTERM/SIGINT: health turns NOT_SERVING, new requests get UNAVAILABLE, running
// and waiting streams get up to shutdown_timeout_s to finish; what is left then is aborted (its
// stream ends with finish_reason ABORT). A second signal aborts at once. Then the gRPC server
// stops and kvrd returns 0.
#pragma once

#include <csignal>

#include "server/config.h"

namespace kvr {

// 0 after a clean shutdown; 1 if the engine or a listener could not start; 2 for a bad config.
int RunDaemon(const ServerConfig& config, const sigset_t& signals);

}  // namespace kvr
