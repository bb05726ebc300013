// A pipeline stage's link to the next stage (worker/stage_client.h carries
// it over gRPC): one StageForward call per micro-batch, several in flight
// at once (Send starts a call, Receive waits for its gradient), retried
// while the next stage answers UNAVAILABLE (its task not started yet),
// with the bytes that cross counted. Both the first stage (SegmentRunner)
// and the later ones (StageRunner) send through it.
//
// Thread safety: used by one training thread; the calls' completions
// arrive on gRPC threads and only touch state under the link's mutex. The
// destructor cancels the calls in flight and waits for them.
#ifndef PNN_WORKER_PIPELINE_LINK_H_
#define PNN_WORKER_PIPELINE_LINK_H_

#include <ATen/core/Tensor.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/trainer.h"
#include "pnn/v1/segment.pb.h"
#include "pnn/v1/worker.pb.h"
#include "worker/segment_runner.h"

namespace pnn {
namespace worker {

struct WorkerMetrics;

class PipelineLink final : public PipelinePeer {
 public:
  // The link from `task`'s stage to the next one, opened with
  // options.connect_downstream; `should_stop` abandons the calls and
  // retries.
  static std::unique_ptr<PipelineLink> Connect(
      const SegmentRunnerOptions& options, const pnn::v1::SegmentTask& task,
      std::function<bool()> should_stop);

  PipelineLink(std::unique_ptr<DownstreamStage> stage,
               const pnn::v1::SegmentTask& task, int64_t retry_ms,
               std::function<bool()> should_stop, WorkerMetrics* metrics);
  ~PipelineLink() override;
  PipelineLink(const PipelineLink&) = delete;
  PipelineLink& operator=(const PipelineLink&) = delete;

  // Starts the call that carries micro-batch position.micro's output and
  // classes; returns without waiting for the answer. Micro-batch 0 begins
  // a batch (every micro-batch of the previous one must have been
  // received).
  absl::Status Send(const at::Tensor& output, const at::Tensor& labels,
                    const BatchPosition& position) override;

  // Waits for the gradient of micro-batch `micro` of the batch being sent,
  // re-sending every call that the next stage answered UNAVAILABLE, for up
  // to retry_ms in a row. CANCELLED when stopped; ABORTED when the next
  // stage was stopped or did not take the micro-batch in time (its
  // neighbour's fault, not this worker's); DATA_LOSS for an unreadable
  // gradient.
  absl::StatusOr<RemoteLoss> Receive(int micro) override;

  // Tells the next stage that training is over; it answers once it (and
  // every stage after it) has its result.
  absl::Status Finish();

  int64_t bytes_sent() const { return bytes_sent_; }
  int64_t bytes_received() const { return bytes_received_; }

 private:
  using Clock = std::chrono::steady_clock;
  // One call and its answer; `finished` and `status` are set by the
  // completion (under mutex_).
  struct Call {
    pnn::v1::StageForwardRequest request;
    pnn::v1::StageForwardResponse response;
    bool in_flight = false;
    bool finished = false;
    bool received = false;  // Receive has returned it
    absl::Status status;
    Clock::time_point retry_at;
  };

  pnn::v1::StageForwardRequest NewRequest() const;
  std::string Describe() const;
  // Starts `call` (again); mutex_ must not be held.
  void Issue(Call* call);
  // Waits for `call`'s answer and returns its status once it is final
  // (re-issuing the batch's calls that got UNAVAILABLE meanwhile).
  absl::Status Await(Call* call);
  // Re-issues the calls due for it; the error once retry_ms is used up.
  absl::Status RetryUnavailable(std::unique_lock<std::mutex>& lock);
  // The error a finished call's status stands for, named for a person.
  absl::Status CallError(const absl::Status& status) const;
  void CountBytes(const Call& call);

  const std::unique_ptr<DownstreamStage> stage_;
  const std::string job_id_;
  const std::string session_;
  const int next_index_;
  const std::string address_;
  const int64_t retry_ms_;
  const std::function<bool()> should_stop_;
  WorkerMetrics* const metrics_;
  int64_t bytes_sent_ = 0;
  int64_t bytes_received_ = 0;

  std::mutex mutex_;
  std::condition_variable answered_;
  // The batch's calls by micro-batch, and the finish call; a call's
  // address is stable while it is in flight.
  std::vector<std::unique_ptr<Call>> calls_;
  std::unique_ptr<Call> finish_;
  int in_flight_ = 0;  // guarded by mutex_
  // Since when the next stage has answered only UNAVAILABLE; reset by an
  // answer. Training thread only.
  std::optional<Clock::time_point> unavailable_since_;
  int64_t backoff_ms_ = 20;
};

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_PIPELINE_LINK_H_
