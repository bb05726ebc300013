// What happens to a task whose attempt ended in an error: retry it or fail
// the job, whether the attempt counts against --max_attempts, and whether
// the worker it ran on should be backed off. A pure function of the facts,
// tested without gRPC (tests/retry_policy_test.cc).
#ifndef PNN_COORDINATOR_RETRY_POLICY_H_
#define PNN_COORDINATOR_RETRY_POLICY_H_

#include <string>

#include "absl/status/status.h"

namespace pnn {

struct AttemptFacts {
  absl::StatusCode code = absl::StatusCode::kOk;
  // The coordinator declared the worker lost (silent, or replaced by a new
  // registration of its address) and cancelled the call itself.
  bool worker_lost = false;
  // A stage of a model-parallel pipeline: one stage's end restarts all.
  bool pipeline_stage = false;
  int attempts = 0;  // including the one that just ended
  int max_attempts = 3;
};

struct RetryDecision {
  enum class Action {
    kRetry,           // queue the task (a pipeline: every stage) again
    kFail,            // an error a retry cannot fix
    kAttemptsUsedUp,  // retryable, but no attempt is left
  };
  Action action = Action::kFail;
  // False when nothing was tried (a busy worker refused the task): the
  // attempt is given back.
  bool attempt_counts = true;
  // The worker could not be reached (or is stopping): offer it nothing
  // for a while.
  bool back_off_worker = false;
};

// Errors a retry can fix: transport failures, a busy or stopping worker.
bool IsRetryable(absl::StatusCode code);

RetryDecision DecideRetry(const AttemptFacts& facts);

// What a failed attempt says, for people: `loss_reason` when the
// coordinator ended it (the worker was lost), else the worker's status.
std::string AttemptError(const std::string& loss_reason,
                         const absl::Status& status);

}  // namespace pnn

#endif  // PNN_COORDINATOR_RETRY_POLICY_H_
