// A pipeline stage's link to the next stage (worker/stage_client.h carries
// it over gRPC): one StageForward per batch, retried while the next stage
// answers UNAVAILABLE (its task not started yet), with the bytes that
// cross counted. Both the first stage (SegmentRunner) and the later ones
// (StageRunner) send through it.
//
// Thread safety: used by one training thread; not thread-safe.
#ifndef PNN_WORKER_PIPELINE_LINK_H_
#define PNN_WORKER_PIPELINE_LINK_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/pipeline.h"
#include "common/trainer.h"
#include "pnn/v1/segment.pb.h"
#include "pnn/v1/worker.pb.h"
#include "worker/segment_runner.h"

namespace pnn {
namespace worker {

struct WorkerMetrics;

class PipelineLink {
 public:
  // The link from `task`'s stage to the next one, opened with
  // options.connect_downstream; `should_stop` abandons a call or a retry.
  static std::unique_ptr<PipelineLink> Connect(
      const SegmentRunnerOptions& options, const pnn::v1::SegmentTask& task,
      std::function<bool()> should_stop);

  PipelineLink(std::unique_ptr<DownstreamStage> stage,
               const pnn::v1::SegmentTask& task, int64_t retry_ms,
               std::function<bool()> should_stop, WorkerMetrics* metrics);
  PipelineLink(const PipelineLink&) = delete;
  PipelineLink& operator=(const PipelineLink&) = delete;

  // The rest of the pipeline's loss gradient for this stage's `output`.
  // CANCELLED when stopped; ABORTED when the next stage was stopped or did
  // not take the batch in time (its neighbour's fault, not this worker's).
  absl::StatusOr<RemoteLoss> Send(const at::Tensor& output,
                                  const at::Tensor& labels,
                                  const BatchPosition& position);

  // Send() as a TrainOptions::remote_loss / DownstreamLoss; valid while
  // this link lives.
  DownstreamLoss AsRemoteLoss();

  // Tells the next stage that training is over; it answers once it (and
  // every stage after it) has its result.
  absl::Status Finish();

  int64_t bytes_sent() const { return bytes_sent_; }
  int64_t bytes_received() const { return bytes_received_; }

 private:
  pnn::v1::StageForwardRequest NewRequest() const;
  std::string Describe() const;
  // One call, retried while the next stage is UNAVAILABLE.
  absl::Status Call(const pnn::v1::StageForwardRequest& request,
                    pnn::v1::StageForwardResponse* response);

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
};

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_PIPELINE_LINK_H_
