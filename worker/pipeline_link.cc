#include "worker/pipeline_link.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"
#include "worker/metrics.h"

namespace pnn {
namespace worker {

using pnn::v1::StageForwardRequest;
using pnn::v1::StageForwardResponse;
using Clock = std::chrono::steady_clock;

std::unique_ptr<PipelineLink> PipelineLink::Connect(
    const SegmentRunnerOptions& options, const pnn::v1::SegmentTask& task,
    std::function<bool()> should_stop) {
  return std::make_unique<PipelineLink>(
      options.connect_downstream(task.pipeline().downstream_address()), task,
      options.downstream_retry_ms, std::move(should_stop), options.metrics);
}

PipelineLink::PipelineLink(std::unique_ptr<DownstreamStage> stage,
                           const pnn::v1::SegmentTask& task, int64_t retry_ms,
                           std::function<bool()> should_stop,
                           WorkerMetrics* metrics)
    : stage_(std::move(stage)),
      job_id_(task.job_id()),
      session_(task.pipeline().session_id()),
      next_index_(task.segment_index() + 1),
      address_(task.pipeline().downstream_address()),
      retry_ms_(retry_ms),
      should_stop_(std::move(should_stop)),
      metrics_(metrics) {}

absl::StatusOr<RemoteLoss> PipelineLink::Send(const at::Tensor& output,
                                              const at::Tensor& labels,
                                              const BatchPosition& position) {
  StageForwardRequest request = NewRequest();
  *request.mutable_activations() = TensorToProto("activations", output);
  const at::Tensor classes = labels.to(at::kCPU, at::kLong).contiguous();
  const int64_t* values = classes.data_ptr<int64_t>();
  auto* field = request.mutable_labels();
  field->Reserve(static_cast<int>(classes.numel()));
  for (int64_t i = 0; i < classes.numel(); ++i) {
    field->Add(static_cast<int32_t>(values[i]));
  }
  request.set_epoch(position.epoch);
  request.set_batch(position.batch);
  request.set_batches_per_epoch(position.batches_per_epoch);
  request.set_checkpoint(position.checkpoint);
  StageForwardResponse response;
  PNN_RETURN_IF_ERROR(Call(request, &response));
  auto gradient = TensorFromProto(response.input_gradient());
  if (!gradient.ok()) {
    return absl::DataLossError(absl::StrCat(
        Describe(),
        " returned an unreadable gradient: ", gradient.status().message()));
  }
  return RemoteLoss{*std::move(gradient), response.loss()};
}

DownstreamLoss PipelineLink::AsRemoteLoss() {
  return [this](const at::Tensor& output, const at::Tensor& labels,
                const BatchPosition& position) {
    return Send(output, labels, position);
  };
}

absl::Status PipelineLink::Finish() {
  StageForwardRequest request = NewRequest();
  request.set_finish(true);
  StageForwardResponse response;
  return Call(request, &response);
}

StageForwardRequest PipelineLink::NewRequest() const {
  StageForwardRequest request;
  request.set_job_id(job_id_);
  request.set_session_id(session_);
  request.set_stage_index(next_index_);
  return request;
}

std::string PipelineLink::Describe() const {
  return absl::StrCat("the next pipeline stage (segment ", next_index_ + 1,
                      " at ", address_, ")");
}

absl::Status PipelineLink::Call(const StageForwardRequest& request,
                                StageForwardResponse* response) {
  const Clock::time_point start = Clock::now();
  int64_t backoff_ms = 20;
  for (;;) {
    response->Clear();
    absl::Status status = stage_->Forward(request, response, should_stop_);
    if (status.ok()) {
      const auto sent = static_cast<int64_t>(request.ByteSizeLong());
      const auto received = static_cast<int64_t>(response->ByteSizeLong());
      bytes_sent_ += sent;
      bytes_received_ += received;
      if (metrics_ != nullptr) {
        metrics_->peer_sent_bytes.Increment(static_cast<double>(sent));
        metrics_->peer_received_bytes.Increment(static_cast<double>(received));
      }
      return absl::OkStatus();
    }
    if (should_stop_()) {
      return absl::CancelledError(
          absl::StrCat("stopped while waiting for ", Describe()));
    }
    if (status.code() == absl::StatusCode::kCancelled) {
      // The next stage was stopped (its worker shut down, or the
      // coordinator stopped it): ABORTED, so that nobody takes this
      // stage's own worker for the one going away.
      return absl::AbortedError(
          absl::StrCat(Describe(), " was stopped: ", status.message()));
    }
    if (status.code() != absl::StatusCode::kUnavailable) {
      return absl::Status(status.code(),
                          absl::StrCat(Describe(), ": ", status.message()));
    }
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
                            Clock::now() - start)
                            .count();
    if (waited >= retry_ms_) {
      // ABORTED, not UNAVAILABLE: this worker is fine, its neighbour is
      // not, and the coordinator must not drop this worker for it.
      return absl::AbortedError(
          absl::StrCat(Describe(), " did not take the batch within ",
                       retry_ms_ / 1000.0, " s: ", status.message()));
    }
    // Sleep in short slices so that a stop is noticed at once.
    const Clock::time_point wake =
        Clock::now() + std::chrono::milliseconds(backoff_ms);
    while (Clock::now() < wake && !should_stop_()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    backoff_ms = std::min<int64_t>(backoff_ms * 2, 500);
  }
}

}  // namespace worker
}  // namespace pnn
