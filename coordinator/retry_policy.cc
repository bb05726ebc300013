#include "coordinator/retry_policy.h"

#include "absl/strings/str_cat.h"

namespace pnn {

bool IsRetryable(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kUnknown:
      return true;
    default:
      return false;
  }
}

RetryDecision DecideRetry(const AttemptFacts& facts) {
  RetryDecision decision;
  const bool lost = facts.worker_lost;
  // UNAVAILABLE: the worker cannot be reached. A pipeline stage that ends
  // CANCELLED was stopped by its worker, i.e. the worker is shutting down
  // (the coordinator's own cancellations never get here). A stage whose
  // neighbour is gone says ABORTED instead, and keeps its worker.
  decision.back_off_worker =
      !lost &&
      (facts.code == absl::StatusCode::kUnavailable ||
       (facts.pipeline_stage && facts.code == absl::StatusCode::kCancelled));
  if (!lost && !IsRetryable(facts.code)) {
    decision.action = RetryDecision::Action::kFail;
    return decision;
  }
  // A busy worker tried nothing.
  decision.attempt_counts =
      lost || facts.code != absl::StatusCode::kResourceExhausted;
  const int attempts = facts.attempts - (decision.attempt_counts ? 0 : 1);
  decision.action = attempts >= facts.max_attempts
                        ? RetryDecision::Action::kAttemptsUsedUp
                        : RetryDecision::Action::kRetry;
  return decision;
}

std::string AttemptError(const std::string& loss_reason,
                         const absl::Status& status) {
  if (!loss_reason.empty()) return loss_reason;
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ",
                      status.message());
}

}  // namespace pnn
