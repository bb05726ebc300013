#include "worker/pipeline_link.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"
#include "worker/metrics.h"

namespace pnn {
namespace worker {

using pnn::v1::StageForwardRequest;

// How often a waiting stage looks at should_stop and at calls to retry.
constexpr std::chrono::milliseconds kPollInterval(20);

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

PipelineLink::~PipelineLink() {
  // The completions write into calls_ and finish_: they must all have run.
  stage_->CancelAll();
  std::unique_lock<std::mutex> lock(mutex_);
  answered_.wait(lock, [this] { return in_flight_ == 0; });
}

absl::Status PipelineLink::Send(const at::Tensor& output,
                                const at::Tensor& labels,
                                const BatchPosition& position) {
  if (position.micro < 0 || position.micro >= position.micro_batches) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline link: micro-batch ", position.micro,
                     " outside [0, ", position.micro_batches, ")"));
  }
  if (position.micro == 0) {
    for (const auto& call : calls_) {
      if (call != nullptr && !call->received) {
        return absl::FailedPreconditionError(
            "pipeline link: a batch began before every gradient of the "
            "previous one was received");
      }
    }
    calls_.clear();
    calls_.resize(static_cast<size_t>(position.micro_batches));
  }
  auto& slot = calls_[static_cast<size_t>(position.micro)];
  if (slot != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pipeline link: micro-batch ", position.micro + 1, " sent twice"));
  }
  slot = std::make_unique<Call>();
  StageForwardRequest& request = slot->request;
  request = NewRequest();
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
  request.set_micro_batch(position.micro);
  request.set_micro_batches(position.micro_batches);
  request.set_batch_rows(position.batch_rows > 0 ? position.batch_rows
                                                 : output.size(0));
  Issue(slot.get());
  return absl::OkStatus();
}

absl::StatusOr<RemoteLoss> PipelineLink::Receive(int micro) {
  if (micro < 0 || micro >= static_cast<int>(calls_.size()) ||
      calls_[static_cast<size_t>(micro)] == nullptr ||
      calls_[static_cast<size_t>(micro)]->received) {
    return absl::InternalError(
        absl::StrCat("pipeline link: no gradient of micro-batch ", micro + 1,
                     " to wait "
                     "for (never sent, or received already)"));
  }
  Call* call = calls_[static_cast<size_t>(micro)].get();
  PNN_RETURN_IF_ERROR(Await(call));
  call->received = true;
  CountBytes(*call);
  auto gradient = TensorFromProto(call->response.input_gradient());
  if (!gradient.ok()) {
    return absl::DataLossError(absl::StrCat(
        Describe(),
        " returned an unreadable gradient: ", gradient.status().message()));
  }
  return RemoteLoss{*std::move(gradient), call->response.loss()};
}

absl::Status PipelineLink::Finish() {
  finish_ = std::make_unique<Call>();
  finish_->request = NewRequest();
  finish_->request.set_finish(true);
  Issue(finish_.get());
  PNN_RETURN_IF_ERROR(Await(finish_.get()));
  CountBytes(*finish_);
  return absl::OkStatus();
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

void PipelineLink::Issue(Call* call) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    call->response.Clear();
    call->in_flight = true;
    call->finished = false;
    call->retry_at = Clock::time_point();
    ++in_flight_;
  }
  stage_->Start(call->request, &call->response,
                [this, call](const absl::Status& status) {
                  std::lock_guard<std::mutex> lock(mutex_);
                  call->status = status;
                  call->in_flight = false;
                  call->finished = true;
                  --in_flight_;
                  answered_.notify_all();
                });
}

absl::Status PipelineLink::Await(Call* call) {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    answered_.wait_for(lock, kPollInterval, [call] { return call->finished; });
    if (should_stop_()) {
      lock.unlock();
      stage_->CancelAll();
      return absl::CancelledError(
          absl::StrCat("stopped while waiting for ", Describe()));
    }
    if (call->finished &&
        call->status.code() != absl::StatusCode::kUnavailable) {
      if (!call->status.ok()) return CallError(call->status);
      unavailable_since_.reset();
      backoff_ms_ = 20;
      return absl::OkStatus();
    }
    PNN_RETURN_IF_ERROR(RetryUnavailable(lock));
  }
}

absl::Status PipelineLink::RetryUnavailable(
    std::unique_lock<std::mutex>& lock) {
  const Clock::time_point now = Clock::now();
  std::vector<Call*> due;
  std::vector<Call*> all;
  for (const auto& call : calls_) {
    if (call != nullptr) all.push_back(call.get());
  }
  if (finish_ != nullptr) all.push_back(finish_.get());
  for (Call* call : all) {
    if (!call->finished ||
        call->status.code() != absl::StatusCode::kUnavailable) {
      continue;
    }
    if (!unavailable_since_) unavailable_since_ = now;
    if (now - *unavailable_since_ >= std::chrono::milliseconds(retry_ms_)) {
      // ABORTED, not UNAVAILABLE: this worker is fine, its neighbour is
      // not, and the coordinator must not drop this worker for it.
      return absl::AbortedError(
          absl::StrCat(Describe(), " did not take the micro-batch within ",
                       retry_ms_ / 1000.0, " s: ", call->status.message()));
    }
    if (call->retry_at == Clock::time_point()) {
      call->retry_at = now + std::chrono::milliseconds(backoff_ms_);
      backoff_ms_ = std::min<int64_t>(backoff_ms_ * 2, 500);
    } else if (now >= call->retry_at) {
      due.push_back(call);
    }
  }
  if (due.empty()) return absl::OkStatus();
  // In micro-batch order, so that the next stage sees them in that order
  // when it can.
  lock.unlock();
  for (Call* call : due) Issue(call);
  lock.lock();
  return absl::OkStatus();
}

absl::Status PipelineLink::CallError(const absl::Status& status) const {
  if (status.code() == absl::StatusCode::kCancelled) {
    // The next stage was stopped (its worker shut down, or the
    // coordinator stopped it): ABORTED, so that nobody takes this stage's
    // own worker for the one going away.
    return absl::AbortedError(
        absl::StrCat(Describe(), " was stopped: ", status.message()));
  }
  return absl::Status(status.code(),
                      absl::StrCat(Describe(), ": ", status.message()));
}

void PipelineLink::CountBytes(const Call& call) {
  const auto sent = static_cast<int64_t>(call.request.ByteSizeLong());
  const auto received = static_cast<int64_t>(call.response.ByteSizeLong());
  bytes_sent_ += sent;
  bytes_received_ += received;
  if (metrics_ != nullptr) {
    metrics_->peer_sent_bytes.Increment(static_cast<double>(sent));
    metrics_->peer_received_bytes.Increment(static_cast<double>(received));
  }
}

}  // namespace worker
}  // namespace pnn
