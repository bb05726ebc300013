#include "worker/stage_runner.h"

#include <ATen/ATen.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/pipeline.h"
#include "common/status_macros.h"
#include "common/tensor_codec.h"
#include "common/trainer.h"
#include "worker/pipeline_link.h"

namespace pnn {
namespace worker {
namespace {

using pnn::v1::StageForwardRequest;
using pnn::v1::StageForwardResponse;
using Clock = std::chrono::steady_clock;

// How often a waiting stage looks up: Abandoned() (the coordinator went
// away) and the idle timeout notify nobody.
constexpr std::chrono::milliseconds kPollInterval(100);

// One StageForward call taken off the queue; whatever happens, its caller
// gets exactly one answer (a gRPC call left unanswered would also hold up
// the server's shutdown).
class PendingStageCall {
 public:
  explicit PendingStageCall(StageBatchDone done) : done_(std::move(done)) {}
  ~PendingStageCall() {
    Complete(absl::InternalError("the pipeline stage ended unexpectedly"));
  }
  PendingStageCall(const PendingStageCall&) = delete;
  PendingStageCall& operator=(const PendingStageCall&) = delete;

  void Complete(const absl::Status& status) {
    if (done_) {
      StageBatchDone done = std::move(done_);
      done_ = nullptr;
      done(status);
    }
  }

 private:
  StageBatchDone done_;
};

// Trains `trainer` on the batch that `request` carries and writes the
// gradient for the previous stage into `response`.
absl::Status TrainBatch(PipelineStageTrainer& trainer,
                        const DownstreamLoss& downstream,
                        const std::string& name,
                        const StageForwardRequest& request,
                        StageForwardResponse* response) {
  BatchPosition position;
  position.epoch = request.epoch();
  position.batch = request.batch();
  position.batches_per_epoch = request.batches_per_epoch();
  position.checkpoint = request.checkpoint();
  auto activations = TensorFromProto(request.activations());
  if (!activations.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": unreadable activations: ", activations.status().message()));
  }
  at::Tensor labels = at::empty({request.labels_size()}, at::kLong);
  int64_t* values = labels.data_ptr<int64_t>();
  for (int i = 0; i < request.labels_size(); ++i) {
    values[i] = request.labels(i);
  }
  PNN_ASSIGN_OR_RETURN(
      const RemoteLoss step,
      trainer.Step(*activations, labels, position, downstream));
  *response->mutable_input_gradient() =
      TensorToProto("input_gradient", step.output_gradient);
  response->set_loss(step.loss);
  return absl::OkStatus();
}

}  // namespace

std::string DescribeStage(const std::string& job_id, const std::string& session,
                          int stage) {
  return absl::StrCat("pipeline stage ", stage, " of job ", job_id,
                      " (session ", session, ")");
}

StageRunner::StageRunner(const SegmentRunnerOptions& options,
                         const pnn::v1::SegmentTask& task, StageIntake* intake,
                         std::function<bool()> should_stop,
                         StageEndStatus end_status)
    : options_(options),
      task_(task),
      intake_(intake),
      should_stop_(std::move(should_stop)),
      end_status_(std::move(end_status)),
      name_(DescribeStage(task.job_id(), task.pipeline().session_id(),
                          task.segment_index())) {
  // The worker's own device counts (checked in SegmentRunner::TrySubmit).
  task_.set_device(options_.device);
}

StageRunner::~StageRunner() = default;

absl::Status StageRunner::Run(const TrainOptions& train_options,
                              pnn::v1::SegmentResult* result) {
  auto trainer = PipelineStageTrainer::Create(task_, train_options);
  if (!trainer.ok()) return End(trainer.status());
  trainer_ = *std::move(trainer);
  if (task_.segment_index() + 1 < task_.segment_count()) {
    link_ = PipelineLink::Connect(options_, task_, should_stop_);
  }
  return Serve(result);
}

absl::Status StageRunner::End(const absl::Status& status) {
  const absl::Status named = end_status_(status);
  intake_->Close(named);
  return named;
}

absl::Status StageRunner::Serve(pnn::v1::SegmentResult* result) {
  const DownstreamLoss downstream =
      link_ != nullptr ? link_->AsRemoteLoss() : DownstreamLoss();
  const auto idle_limit =
      std::chrono::milliseconds(options_.stage_idle_timeout_ms);
  Clock::time_point last_call = Clock::now();
  for (;;) {
    std::optional<StageCall> call = intake_->Next(kPollInterval);
    if (should_stop_()) {
      const absl::Status status =
          End(absl::CancelledError(absl::StrCat(name_, " stopped")));
      if (call) call->done(status);
      return status;
    }
    if (!call) {
      if (Clock::now() - last_call > idle_limit) {
        return End(absl::DeadlineExceededError(absl::StrCat(
            name_, " received no batch from the previous stage for ",
            options_.stage_idle_timeout_ms / 1000.0,
            " s; the previous stage is gone or stuck")));
      }
      continue;
    }
    PendingStageCall answer(std::move(call->done));
    if (call->request->finish()) {
      const absl::Status status = FinishStage(result);
      answer.Complete(status);
      return status;
    }
    const absl::Status trained = TrainBatch(*trainer_, downstream, name_,
                                            *call->request, call->response);
    if (!trained.ok()) {
      const absl::Status status = End(trained);
      answer.Complete(status);
      return status;
    }
    answer.Complete(absl::OkStatus());
    last_call = Clock::now();
  }
}

absl::Status StageRunner::FinishStage(pnn::v1::SegmentResult* result) {
  const absl::Status forwarded =
      link_ != nullptr ? link_->Finish() : absl::OkStatus();
  absl::StatusOr<pnn::v1::SegmentResult> finished =
      forwarded.ok() ? trainer_->Finish()
                     : absl::StatusOr<pnn::v1::SegmentResult>(forwarded);
  if (!finished.ok()) return End(finished.status());
  *result = *std::move(finished);
  if (link_ != nullptr) {
    result->mutable_cost()->set_peer_bytes_sent(link_->bytes_sent());
    result->mutable_cost()->set_peer_bytes_received(link_->bytes_received());
  }
  intake_->Close(
      absl::FailedPreconditionError(absl::StrCat(name_, " has finished")));
  return absl::OkStatus();
}

}  // namespace worker
}  // namespace pnn
