// In-process transport for workers that share one address space (the CPU reference backend).
// Each endpoint has its own copy thread (the CPU's stand-in for a communication stream): a send
// is queued and returns at once, so the worker's compute never waits on it; a forwarded prefix
// is copied only after it has arrived. Copies go straight from the sender's cache rows into the
// receiver's cache rows, with no staging buffer.
#pragma once

#include <memory>

#include "engine/prefill/transport.h"

namespace kvr {

std::unique_ptr<ChainFabric> MakeInProcessFabric();

}  // namespace kvr
