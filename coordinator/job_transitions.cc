// JobTable's transitions (job_table.h): the task and job state machine, in
// one file.
#include <grpcpp/client_context.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/partition.h"
#include "coordinator/job_table.h"
#include "coordinator/proto_time.h"

namespace pnn {

// ---------------------------------------------------------------------------
// Dispatch

pnn::v1::TrainSegmentRequest JobTable::Dispatch(JobRecord& record,
                                                size_t index,
                                                const std::string& worker_id,
                                                const std::string& address) {
  TaskRecord& task = record.tasks[index];
  pnn::v1::TaskStatus& status = task.status;
  const google::protobuf::Timestamp now = ProtoNow();
  status.set_state(pnn::v1::TASK_STATE_RUNNING);
  status.set_worker_id(worker_id);
  status.set_worker_address(address);
  status.set_attempts(status.attempts() + 1);
  status.set_progress(0);
  status.clear_epochs();
  *status.mutable_start_time() = now;
  status.clear_end_time();
  status.set_resumed_from_epoch(0);
  task.loss_reason.clear();
  task.stream = std::make_shared<grpc::ClientContext>();
  if (record.job.state() == pnn::v1::JOB_STATE_QUEUED) {
    record.job.set_state(pnn::v1::JOB_STATE_RUNNING);
    *record.job.mutable_start_time() = now;
  }
  pnn::v1::TrainSegmentRequest request;
  *request.mutable_task() = task.task;
  if (task.is_recovery()) {
    // The pipeline starts (and restarts) from the segment's trained
    // weights, which stay with the job until it is assembled.
    const int segment = task.task.segment_index();
    pnn::v1::TrainingState* start = request.mutable_task()->mutable_resume();
    start->set_epochs_done(0);
    *start->mutable_weights() = record.tasks[segment].weights;
    start->mutable_weights()->set_segment_index(segment);
  }
  if (task.resume_state.has_value() && !task.is_stage()) {
    // Continue from the last finished epoch of an earlier attempt.
    const pnn::v1::TrainingState& state = *task.resume_state;
    *request.mutable_task()->mutable_resume() = state;
    status.set_resumed_from_epoch(state.epochs_done());
    for (const auto& epoch : state.epochs()) *status.add_epochs() = epoch;
    status.set_progress(static_cast<double>(state.epochs_done()) /
                        std::max(1, status.epochs_total()));
  }
  Publish(record, absl::StrCat(TaskName(record, index), " dispatched to ",
                               worker_id, " (", address, ")"));
  return request;
}

// A model-parallel job's pipeline is ready to (re)start as a whole when no
// stage's stream is open any more, some stage is queued and not all have
// finished. A restart also waits a moment after the last stage ended: a
// cancelled stream ends at once on this side, but its worker needs a little
// while to stop the old run, and would refuse the new one as busy.
std::vector<size_t> JobTable::PipelineStagesToStart(
    const JobRecord& record) const {
  constexpr double kSettleSeconds = 0.5;
  const google::protobuf::Timestamp now = ProtoNow();
  std::vector<size_t> stages;
  bool queued = false;
  bool all_succeeded = true;
  for (size_t index = 0; index < record.tasks.size(); ++index) {
    const TaskRecord& task = record.tasks[index];
    if (!task.is_stage()) continue;
    if (task.stream != nullptr ||
        (task.status.has_end_time() &&
         SecondsBetween(task.status.end_time(), now) < kSettleSeconds)) {
      return {};
    }
    queued |= task.status.state() == pnn::v1::TASK_STATE_QUEUED;
    all_succeeded &= task.status.state() == pnn::v1::TASK_STATE_SUCCEEDED;
    stages.push_back(index);
  }
  if (!queued || all_succeeded) stages.clear();
  return stages;
}

void JobTable::PreparePipeline(JobRecord& record,
                               const std::vector<size_t>& stages,
                               const std::vector<std::string>& addresses,
                               const std::string& session) {
  for (size_t i = 0; i < stages.size(); ++i) {
    pnn::v1::PipelineStage* pipeline =
        record.tasks[stages[i]].task.mutable_pipeline();
    pipeline->set_session_id(session);
    pipeline->set_downstream_address(
        i + 1 < stages.size() ? addresses[i + 1] : "");
  }
}

// ---------------------------------------------------------------------------
// Progress

void JobTable::CountSent(JobRecord& record, int index, int64_t bytes) {
  pnn::v1::TaskStatus& status = record.tasks[index].status;
  status.set_bytes_sent(status.bytes_sent() + bytes);
}

namespace {

// Kept only if it fits the task: a bad state must not break the retry it
// is meant for.
bool StateFits(const TaskRecord& task, const pnn::v1::TrainingState& state) {
  return state.epochs_done() >= 1 &&
         state.epochs_done() <= task.status.epochs_total() &&
         state.weights().segment_index() == task.task.segment_index();
}

CheckpointRecord EvaluationPoint(const pnn::v1::Checkpoint& checkpoint,
                                 double job_seconds) {
  CheckpointRecord point;
  point.job_seconds = job_seconds;
  point.epoch = checkpoint.epoch();
  point.batches_done = checkpoint.batches_done();
  point.epochs_done = checkpoint.epochs_done();
  point.cpu_seconds = checkpoint.cpu_seconds();
  point.weights = checkpoint.has_state() ? checkpoint.state().weights()
                                         : checkpoint.weights();
  return point;
}

}  // namespace

bool JobTable::ApplyUpdate(JobRecord& record, int index,
                           const pnn::v1::TrainSegmentUpdate& update,
                           int64_t bytes) {
  TaskRecord& task = record.tasks[index];
  pnn::v1::TaskStatus& status = task.status;
  if (update.has_checkpoint()) {
    status.set_checkpoint_bytes(status.checkpoint_bytes() + bytes);
  } else {
    status.set_bytes_received(status.bytes_received() + bytes);
  }
  if (IsFinal(record.job.state())) return false;
  const double epochs = std::max(1, status.epochs_total());
  switch (update.update_case()) {
    case pnn::v1::TrainSegmentUpdate::kStarted:
      Publish(record, absl::StrCat(TaskName(record, index), " started on ",
                                   status.worker_id(), " (",
                                   update.started().device(), ", ",
                                   update.started().threads(), " threads)"));
      return false;
    case pnn::v1::TrainSegmentUpdate::kProgress: {
      const auto& progress = update.progress();
      const double per_epoch = static_cast<double>(
          std::max<int64_t>(1, progress.batches_per_epoch()));
      status.set_progress(std::min(
          1.0,
          ((progress.epoch() - 1) + progress.batches_done() / per_epoch) /
              epochs));
      status.set_current_loss(progress.loss());
      Progress(record);
      return false;
    }
    case pnn::v1::TrainSegmentUpdate::kEpoch: {
      const pnn::v1::EpochMetrics& epoch = update.epoch();
      *status.add_epochs() = epoch;
      status.set_progress(epoch.epoch() / epochs);
      status.set_current_loss(epoch.train_loss());
      Publish(record, absl::StrFormat(
                          "%s epoch %d/%d: loss %.4f, %.0f samples/s",
                          TaskName(record, index), epoch.epoch(),
                          status.epochs_total(), epoch.train_loss(),
                          epoch.samples_per_second()));
      return false;
    }
    case pnn::v1::TrainSegmentUpdate::kCheckpoint: {
      const pnn::v1::Checkpoint& checkpoint = update.checkpoint();
      const bool keep_state =
          checkpoint.has_state() && StateFits(task, checkpoint.state());
      if (keep_state) task.resume_state = checkpoint.state();
      if (record.job.spec().evaluations_per_epoch() > 0 &&
          task.is_segment() && record.job.has_start_time()) {
        task.checkpoints.push_back(EvaluationPoint(
            checkpoint, SecondsBetween(record.job.start_time(), ProtoNow())));
      }
      return keep_state;
    }
    case pnn::v1::TrainSegmentUpdate::kResult:
      *status.mutable_cost() = update.result().cost();
      return false;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------
// A stream's end

void JobTable::EndStream(JobRecord& record, int index) {
  TaskRecord& task = record.tasks[index];
  task.stream.reset();
  *task.status.mutable_end_time() = ProtoNow();
}

void JobTable::SettleAfterJobEnded(JobRecord& record, int index,
                                   bool succeeded) {
  pnn::v1::TaskStatus& status = record.tasks[index].status;
  if (!IsFinal(status.state())) {
    status.set_state(succeeded ? pnn::v1::TASK_STATE_SUCCEEDED
                               : pnn::v1::TASK_STATE_CANCELLED);
  }
  Refresh(record);
  listener_->OnJobChanged(record, "", /*store=*/true);
}

void JobTable::RequeueStoppedStage(JobRecord& record, int index) {
  pnn::v1::TaskStatus& status = record.tasks[index].status;
  status.set_state(pnn::v1::TASK_STATE_QUEUED);
  status.set_progress(0);
  Progress(record);
}

std::optional<DueWork> JobTable::RecoveryStageDone(JobRecord& record) {
  for (const TaskRecord& stage : record.tasks) {
    if (stage.is_recovery() &&
        stage.status.state() != pnn::v1::TASK_STATE_SUCCEEDED) {
      return std::nullopt;
    }
  }
  record.job.set_state(pnn::v1::JOB_STATE_ASSEMBLING);
  record.job.set_message("joining the segments and testing");
  Publish(record, "recovery epochs done; assembling");
  return DueWork{record.id(), AssemblyWork::kAssemble};
}

std::optional<DueWork> JobTable::Succeed(JobRecord& record, int index,
                                         pnn::v1::SegmentWeights weights,
                                         const std::string& worker_id) {
  TaskRecord& task = record.tasks[index];
  task.weights = std::move(weights);
  task.status.set_state(pnn::v1::TASK_STATE_SUCCEEDED);
  task.status.set_progress(1.0);
  task.resume_state.reset();
  Publish(record, absl::StrCat(TaskName(record, index), " finished on ",
                               worker_id));
  if (task.is_baseline()) {
    return DueWork{record.id(), AssemblyWork::kEvaluateBaseline};
  }
  if (task.is_recovery()) return RecoveryStageDone(record);
  // Previous-outputs mode: the next segment can start now.
  std::vector<pnn::v1::SegmentWeights> finished;
  bool all_done = true;
  for (TaskRecord& other : record.tasks) {
    if (!other.is_segment()) continue;
    if (other.status.state() == pnn::v1::TASK_STATE_SUCCEEDED) {
      if (all_done) finished.push_back(other.weights);
      continue;
    }
    all_done = false;
    if (other.status.state() == pnn::v1::TASK_STATE_WAITING &&
        static_cast<int>(finished.size()) == other.task.segment_index() &&
        AttachUpstream(finished, &other.task).ok()) {
      other.status.set_state(pnn::v1::TASK_STATE_QUEUED);
    }
  }
  if (!all_done) return std::nullopt;
  if (record.job.has_start_time()) {
    record.job.set_training_seconds(
        SecondsBetween(record.job.start_time(), ProtoNow()));
  }
  bool recovery = false;
  for (TaskRecord& stage : record.tasks) {
    if (!stage.is_recovery()) continue;
    recovery = true;
    stage.status.set_state(pnn::v1::TASK_STATE_QUEUED);
  }
  if (recovery) {
    record.job.set_message("recovery epochs on the workers");
    Publish(record,
            "all segments trained; recovery epochs start on the workers, "
            "one pipeline stage per segment, from the trained weights");
    return std::nullopt;
  }
  record.job.set_state(pnn::v1::JOB_STATE_ASSEMBLING);
  record.job.set_message("joining the segments and testing");
  Publish(record, "all segments trained; assembling");
  return DueWork{record.id(), AssemblyWork::kAssemble};
}

bool JobTable::FailAttempt(JobRecord& record, int index,
                           const FailedAttempt& attempt) {
  pnn::v1::TaskStatus& status = record.tasks[index].status;
  const std::string name = TaskName(record, index);
  status.set_error(attempt.error);
  if (!attempt.decision.attempt_counts) {
    status.set_attempts(status.attempts() - 1);
  }
  switch (attempt.decision.action) {
    case RetryDecision::Action::kRetry:
      status.set_state(pnn::v1::TASK_STATE_QUEUED);
      status.set_progress(0);
      Publish(record, absl::StrCat(name, " will be retried: ", attempt.error));
      return true;
    case RetryDecision::Action::kAttemptsUsedUp:
      status.set_state(pnn::v1::TASK_STATE_FAILED);
      Fail(record, absl::StrCat(name, " failed ", status.attempts(),
                                " times; last error on ", attempt.where, ": ",
                                attempt.error));
      return false;
    case RetryDecision::Action::kFail:
      break;
  }
  status.set_state(pnn::v1::TASK_STATE_FAILED);
  Fail(record,
       absl::StrCat(name, " failed on ", attempt.where, ": ", attempt.error));
  return false;
}

// Model-parallel: the stages depend on each other every batch, so one
// stage's failure ends the pipeline's run. While a retry can help and
// attempts remain, every stage restarts from scratch together (a new
// session, on whichever workers are idle); the others are marked CANCELLED
// until their streams close (RequeueStoppedStage), which does not count
// against them.
bool JobTable::FailStage(JobRecord& record, int index,
                         const FailedAttempt& attempt) {
  TaskRecord& task = record.tasks[index];
  const std::string name = TaskName(record, index);
  const std::string& error = attempt.error;
  task.status.set_error(error);
  if (attempt.decision.action == RetryDecision::Action::kFail) {
    task.status.set_state(pnn::v1::TASK_STATE_FAILED);
    Fail(record, absl::StrCat(name, " failed on ", attempt.where, ": ", error,
                              " (model-parallel stages depend on each other "
                              "every batch: the whole pipeline stops)"));
    return false;
  }
  for (TaskRecord& stage : record.tasks) {
    if (!attempt.decision.attempt_counts && stage.is_stage()) {
      stage.status.set_attempts(std::max(0, stage.status.attempts() - 1));
    }
  }
  if (attempt.decision.action == RetryDecision::Action::kAttemptsUsedUp) {
    task.status.set_state(pnn::v1::TASK_STATE_FAILED);
    Fail(record, absl::StrCat(name, " failed ", task.status.attempts(),
                              " times (each time the whole model-parallel "
                              "pipeline restarted); last error on ",
                              attempt.where, ": ", error));
    return false;
  }
  for (TaskRecord& stage : record.tasks) {
    if (!stage.is_stage()) continue;
    stage.status.set_progress(0);
    if (&stage != &task && stage.stream != nullptr) {
      stage.stream->TryCancel();
      stage.status.set_state(pnn::v1::TASK_STATE_CANCELLED);
      *stage.status.mutable_end_time() = ProtoNow();
    } else {
      stage.status.set_state(pnn::v1::TASK_STATE_QUEUED);
    }
  }
  Publish(record, absl::StrCat(name, " failed on ", attempt.where, ": ", error,
                               "; restarting every model-parallel stage"));
  return true;
}

bool JobTable::Lose(JobRecord& record, int index, const std::string& reason) {
  TaskRecord& task = record.tasks[index];
  if (task.stream == nullptr) return false;  // its stream has ended already
  task.loss_reason = reason;
  task.stream->TryCancel();
  return true;
}

// ---------------------------------------------------------------------------
// Job transitions

void JobTable::CancelTasks(JobRecord& record) {
  // Tasks end now in the job's record; their workers are released when the
  // cancelled streams close.
  for (TaskRecord& task : record.tasks) {
    if (task.stream != nullptr) task.stream->TryCancel();
    if (IsFinal(task.status.state())) continue;
    if (task.status.state() == pnn::v1::TASK_STATE_RUNNING) {
      *task.status.mutable_end_time() = ProtoNow();
    }
    task.status.set_state(pnn::v1::TASK_STATE_CANCELLED);
  }
}

void JobTable::Finish(JobRecord& record, pnn::v1::JobState state) {
  record.job.set_state(state);
  *record.job.mutable_end_time() = ProtoNow();
  listener_->OnJobFinished(record);
}

void JobTable::Cancel(JobRecord& record) {
  if (IsFinal(record.job.state())) return;
  record.cancel_requested = true;
  CancelTasks(record);
  record.job.set_message("cancelled by request");
  Finish(record, pnn::v1::JOB_STATE_CANCELLED);
  Publish(record, "job cancelled");
}

void JobTable::Fail(JobRecord& record, const std::string& reason) {
  CancelTasks(record);
  record.job.set_message(reason);
  Finish(record, pnn::v1::JOB_STATE_FAILED);
  std::fprintf(stderr, "pnn-coordinator: job %s failed: %s\n",
               record.id().c_str(), reason.c_str());
  Publish(record, absl::StrCat("job failed: ", reason));
}

void JobTable::Assembled(JobRecord& record, const AssemblyResult& result) {
  *record.job.mutable_test() = result.final_test;
  record.job.set_joined_test_accuracy(result.joined_test.accuracy());
  record.job.set_recovery_seconds(result.recovery_seconds);
  record.job.set_model_bytes(result.model_bytes);
  record.job.clear_evaluations();
  for (const auto& point : result.curve) *record.job.add_evaluations() = point;
  for (TaskRecord& task : record.tasks) {
    // The model file holds what the segments' weights were for; they stay
    // in the store, not in memory.
    task.checkpoints = {};
    if (!task.is_baseline()) task.weights = {};
    // Previous-outputs mode: the earlier segments' weights in the task.
    if (task.task.has_upstream()) task.task.mutable_upstream()->Clear();
  }
  record.assembled = true;
  Publish(record, absl::StrFormat("joined network: test accuracy %.2f%%",
                                  100 * result.final_test.accuracy()));
  MaybeSucceed(record);
}

void JobTable::BaselineTested(JobRecord& record,
                              const pnn::v1::TestResult& test) {
  *record.job.mutable_baseline_test() = test;
  record.baseline_evaluated = true;
  record.tasks.back().weights = {};  // in the store; not served
  Publish(record,
          absl::StrFormat("conventional baseline: test accuracy %.2f%%",
                          100 * test.accuracy()));
  MaybeSucceed(record);
}

void JobTable::MaybeSucceed(JobRecord& record) {
  if (!record.assembled) return;
  if (record.job.conventional_baseline() && !record.baseline_evaluated) {
    const std::string message = "waiting for the conventional baseline";
    if (record.job.message() != message) {
      record.job.set_message(message);
      Publish(record, message);
    }
    return;
  }
  record.job.set_message("");
  Finish(record, pnn::v1::JOB_STATE_SUCCEEDED);
  Publish(record, "job succeeded");
}

}  // namespace pnn
