// The retry policy as a pure function: no gRPC, no coordinator.
#include "coordinator/retry_policy.h"

#include "gtest/gtest.h"

namespace pnn {
namespace {

using Action = RetryDecision::Action;

AttemptFacts Facts(absl::StatusCode code, int attempts, bool pipeline = false,
                   bool lost = false) {
  AttemptFacts facts;
  facts.code = code;
  facts.attempts = attempts;
  facts.pipeline_stage = pipeline;
  facts.worker_lost = lost;
  facts.max_attempts = 3;
  return facts;
}

TEST(RetryPolicyTest, TransportErrorsRetryUntilTheAttemptsAreUsedUp) {
  for (bool pipeline : {false, true}) {
    RetryDecision first =
        DecideRetry(Facts(absl::StatusCode::kUnavailable, 1, pipeline));
    EXPECT_EQ(first.action, Action::kRetry);
    EXPECT_TRUE(first.attempt_counts);
    EXPECT_TRUE(first.back_off_worker);
    EXPECT_EQ(
        DecideRetry(Facts(absl::StatusCode::kUnavailable, 3, pipeline)).action,
        Action::kAttemptsUsedUp);
  }
}

TEST(RetryPolicyTest, ErrorsARetryCannotFixFailAtOnce) {
  for (absl::StatusCode code :
       {absl::StatusCode::kInvalidArgument, absl::StatusCode::kDataLoss,
        absl::StatusCode::kFailedPrecondition, absl::StatusCode::kNotFound}) {
    RetryDecision decision = DecideRetry(Facts(code, 1));
    EXPECT_EQ(decision.action, Action::kFail) << absl::StatusCodeToString(code);
    EXPECT_FALSE(decision.back_off_worker);
  }
}

TEST(RetryPolicyTest, ABusyWorkerCostsNoAttempt) {
  RetryDecision decision =
      DecideRetry(Facts(absl::StatusCode::kResourceExhausted, 3));
  EXPECT_EQ(decision.action, Action::kRetry);
  EXPECT_FALSE(decision.attempt_counts);
  EXPECT_FALSE(decision.back_off_worker);
}

TEST(RetryPolicyTest, ALostWorkerCountsWhateverTheStreamSaid) {
  // The coordinator cancelled the call itself: the stream says CANCELLED.
  RetryDecision decision =
      DecideRetry(Facts(absl::StatusCode::kCancelled, 1, false, true));
  EXPECT_EQ(decision.action, Action::kRetry);
  EXPECT_TRUE(decision.attempt_counts);
  EXPECT_FALSE(decision.back_off_worker);  // it is gone already
  EXPECT_EQ(
      DecideRetry(Facts(absl::StatusCode::kInvalidArgument, 1, false, true))
          .action,
      Action::kRetry);
  EXPECT_EQ(
      DecideRetry(Facts(absl::StatusCode::kCancelled, 3, false, true)).action,
      Action::kAttemptsUsedUp);
}

TEST(RetryPolicyTest, AStageStoppedByItsWorkerBacksTheWorkerOff) {
  EXPECT_TRUE(DecideRetry(Facts(absl::StatusCode::kCancelled, 1, true))
                  .back_off_worker);
  EXPECT_FALSE(DecideRetry(Facts(absl::StatusCode::kCancelled, 1, false))
                   .back_off_worker);
  // A stage whose neighbour went away keeps its worker.
  RetryDecision aborted =
      DecideRetry(Facts(absl::StatusCode::kAborted, 1, true));
  EXPECT_EQ(aborted.action, Action::kRetry);
  EXPECT_FALSE(aborted.back_off_worker);
}

TEST(RetryPolicyTest, TheErrorSaysWhyTheCoordinatorEndedItElseTheWorkersStatus) {
  EXPECT_EQ(AttemptError("worker w-1 silent for 5 s",
                         absl::CancelledError("Cancelled")),
            "worker w-1 silent for 5 s");
  EXPECT_EQ(AttemptError("", absl::UnavailableError("connection refused")),
            "UNAVAILABLE: connection refused");
}

}  // namespace
}  // namespace pnn
