#include "worker/stage_runner.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/pipeline.h"
#include "common/pipeline_schedule.h"
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

// The StageForward calls of one batch, by micro-batch: each waits for its
// forward's turn, then (answer pending) for its backward. Every call taken
// gets exactly one answer.
class BatchCalls {
 public:
  BatchCalls(const StageForwardRequest& opening, const std::string& name)
      : name_(name),
        epoch_(opening.epoch()),
        batch_(opening.batch()),
        micro_batches_(std::max(1, opening.micro_batches())),
        waiting_(static_cast<size_t>(micro_batches_)),
        answers_(static_cast<size_t>(micro_batches_)) {}

  int micro_batches() const { return micro_batches_; }
  bool Arrived(int micro) const {
    return waiting_[static_cast<size_t>(micro)].has_value();
  }

  // Keeps `call` until its turn; a call that is not a new micro-batch of
  // this batch is answered with the error returned.
  absl::Status Place(StageCall call) {
    const StageForwardRequest& request = *call.request;
    const int micro = request.micro_batch();
    if (request.finish() || request.epoch() != epoch_ ||
        request.batch() != batch_ ||
        std::max(1, request.micro_batches()) != micro_batches_ || micro < 0 ||
        micro >= micro_batches_ || Arrived(micro) ||
        answers_[static_cast<size_t>(micro)]) {
      const absl::Status error = absl::FailedPreconditionError(absl::StrCat(
          name_, ": got ",
          request.finish()
              ? std::string("the end of training")
              : absl::StrCat("micro-batch ", micro + 1, " of ",
                             request.micro_batches(), " in epoch ",
                             request.epoch(), ", batch ", request.batch()),
          " while the ", micro_batches_, " micro-batches of epoch ", epoch_,
          ", batch ", batch_, " were due (the stages are out of step)"));
      call.done(error);
      return error;
    }
    waiting_[static_cast<size_t>(micro)] = std::move(call);
    return absl::OkStatus();
  }

  // The request of an arrived micro-batch, whose answer now waits for its
  // backward.
  const StageForwardRequest& StartForward(int micro) {
    const auto index = static_cast<size_t>(micro);
    StageCall call = *std::move(waiting_[index]);
    waiting_[index].reset();
    answers_[index] = std::make_unique<Pending>(call);
    return *answers_[index]->request;
  }

  void Answer(int micro, const RemoteLoss& step) {
    const auto index = static_cast<size_t>(micro);
    pnn::v1::StageForwardResponse* response = answers_[index]->response;
    *response->mutable_input_gradient() =
        TensorToProto("input_gradient", step.output_gradient);
    response->set_loss(step.loss);
    answers_[index]->pending.Complete(absl::OkStatus());
    answers_[index].reset();
  }

  void FailAll(const absl::Status& status) {
    for (auto& call : waiting_) {
      if (call) call->done(status);
      call.reset();
    }
    for (auto& answer : answers_) {
      if (answer) answer->pending.Complete(status);
      answer.reset();
    }
  }

 private:
  struct Pending {
    explicit Pending(StageCall& call)
        : request(call.request),
          response(call.response),
          pending(std::move(call.done)) {}
    const StageForwardRequest* request;
    pnn::v1::StageForwardResponse* response;
    PendingStageCall pending;
  };

  const std::string& name_;
  const int epoch_;
  const int64_t batch_;
  const int micro_batches_;
  std::vector<std::optional<StageCall>> waiting_;
  std::vector<std::unique_ptr<Pending>> answers_;
};

BatchPosition PositionOf(const StageForwardRequest& request) {
  BatchPosition position;
  position.epoch = request.epoch();
  position.batch = request.batch();
  position.batches_per_epoch = request.batches_per_epoch();
  position.checkpoint = request.checkpoint();
  position.micro = request.micro_batch();
  position.micro_batches = std::max(1, request.micro_batches());
  position.batch_rows = request.batch_rows();
  return position;
}

// Runs the micro-batch that `request` carries forward through `trainer`.
absl::Status TrainForward(PipelineStageTrainer& trainer,
                          PipelinePeer* downstream, const std::string& name,
                          const StageForwardRequest& request) {
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
  return trainer.Forward(*activations, labels, PositionOf(request), downstream);
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

absl::StatusOr<StageCall> StageRunner::NextCall() {
  const auto idle_limit =
      std::chrono::milliseconds(options_.stage_idle_timeout_ms);
  const Clock::time_point waiting_since = Clock::now();
  for (;;) {
    std::optional<StageCall> call = intake_->Next(kPollInterval);
    if (should_stop_()) {
      const absl::Status status =
          absl::CancelledError(absl::StrCat(name_, " stopped"));
      if (call) call->done(end_status_(status));
      return status;
    }
    if (call) return *std::move(call);
    if (Clock::now() - waiting_since > idle_limit) {
      return absl::DeadlineExceededError(absl::StrCat(
          name_,
          " received no batch (micro-batch) from the previous stage for ",
          options_.stage_idle_timeout_ms / 1000.0,
          " s; the previous stage is gone or stuck"));
    }
  }
}

absl::Status StageRunner::Serve(pnn::v1::SegmentResult* result) {
  for (;;) {
    absl::StatusOr<StageCall> next = NextCall();
    if (!next.ok()) return End(next.status());
    StageCall call = *std::move(next);
    if (call.request->finish()) {
      PendingStageCall answer(std::move(call.done));
      const absl::Status status = FinishStage(result);
      answer.Complete(status);
      return status;
    }
    PNN_RETURN_IF_ERROR(ServeBatch(std::move(call)));
  }
}

absl::Status StageRunner::ServeBatch(StageCall first) {
  BatchCalls calls(*first.request, name_);
  auto fail = [&](const absl::Status& error) {
    const absl::Status status = End(error);
    calls.FailAll(status);
    return status;
  };
  if (absl::Status placed = calls.Place(std::move(first)); !placed.ok()) {
    return fail(placed);
  }
  for (const MicroBatchOp& op :
       StageSchedule(task_.pipeline().schedule(), task_.segment_index(),
                     task_.segment_count(), calls.micro_batches())) {
    if (op.forward) {
      // Calls in flight together may arrive in any order.
      while (!calls.Arrived(op.micro)) {
        absl::StatusOr<StageCall> next = NextCall();
        if (!next.ok()) return fail(next.status());
        if (absl::Status placed = calls.Place(*std::move(next)); !placed.ok()) {
          return fail(placed);
        }
      }
      const absl::Status forward = TrainForward(*trainer_, link_.get(), name_,
                                                calls.StartForward(op.micro));
      if (!forward.ok()) return fail(forward);
      continue;
    }
    absl::StatusOr<RemoteLoss> step = trainer_->Backward(op.micro, link_.get());
    if (!step.ok()) return fail(step.status());
    calls.Answer(op.micro, *step);
  }
  return absl::OkStatus();
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
