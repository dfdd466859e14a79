// Propagation macros for absl::Status / absl::StatusOr, for Abseil releases (such as Debian's
// 20220623) that predate absl/status/status_macros.h.
//
//   KVR_RETURN_IF_ERROR(DoThing());
//   KVR_ASSIGN_OR_RETURN(auto file, OpenFile(path));
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVR_STATUS_CONCAT_INNER_(a, b) a##b
#define KVR_STATUS_CONCAT_(a, b) KVR_STATUS_CONCAT_INNER_(a, b)

#define KVR_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status kvr_status_ = (expr);           \
    if (!kvr_status_.ok()) return kvr_status_;     \
  } while (0)

#define KVR_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#define KVR_ASSIGN_OR_RETURN(lhs, expr) \
  KVR_ASSIGN_OR_RETURN_IMPL_(KVR_STATUS_CONCAT_(kvr_statusor_, __LINE__), lhs, expr)
