// Early-return helpers for absl::Status / absl::StatusOr (Abseil 20220623
// ships none). Usable in any function returning absl::Status or StatusOr.
#ifndef PNN_COMMON_STATUS_MACROS_H_
#define PNN_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define PNN_STATUS_CONCAT_INNER(a, b) a##b
#define PNN_STATUS_CONCAT(a, b) PNN_STATUS_CONCAT_INNER(a, b)

// Returns the status of `expr` from the enclosing function unless it is OK.
#define PNN_RETURN_IF_ERROR(expr)                    \
  do {                                               \
    ::absl::Status pnn_status_internal = (expr);     \
    if (!pnn_status_internal.ok()) {                 \
      return pnn_status_internal;                    \
    }                                                \
  } while (false)

// `PNN_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns the value of an
// OK StatusOr, or returns its status from the enclosing function.
#define PNN_ASSIGN_OR_RETURN(lhs, rexpr) \
  PNN_ASSIGN_OR_RETURN_IMPL(PNN_STATUS_CONCAT(pnn_statusor_, __LINE__), lhs, rexpr)

#define PNN_ASSIGN_OR_RETURN_IMPL(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) {                                 \
    return std::move(statusor).status();                \
  }                                                     \
  lhs = std::move(statusor).value()

#endif  // PNN_COMMON_STATUS_MACROS_H_
