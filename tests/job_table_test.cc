// The job table's state machine, without gRPC servers, workers or a store:
// each transition's states, attempts, messages and the changes it reports.
#include "coordinator/job_table.h"

#include <string>
#include <vector>

#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Records what the table reports.
class RecordingListener : public JobTable::Listener {
 public:
  void OnJobChanged(const JobRecord& record, const std::string& message,
                    bool store) override {
    if (!message.empty()) messages.push_back(message);
    stored += store;
  }
  void OnJobFinished(const JobRecord& record) override {
    finished.push_back(record.id());
  }
  std::vector<std::string> messages;
  int stored = 0;
  std::vector<std::string> finished;
};

class JobTableTest : public ::testing::Test {
 protected:
  // A two-segment job on 784 inputs and 10 classes, in the table.
  JobRecord& AddJob(bool baseline = false, bool pipeline = false) {
    pnn::v1::SubmitJobRequest request;
    auto* model = request.mutable_spec()->mutable_model();
    model->add_hidden_widths(16);
    model->add_hidden_widths(8);
    model->add_cut_after_layers(1);
    request.mutable_spec()->mutable_training()->set_epochs(2);
    if (pipeline) {
      request.mutable_spec()->set_parallelism(
          pnn::v1::PARALLELISM_MODEL_PARALLEL);
    }
    request.set_conventional_baseline(baseline);
    auto spec = ResolveJobSpec(request.spec());
    EXPECT_TRUE(spec.ok()) << spec.status();
    auto record = JobTable::Plan(request, *spec, ImageShape{1, 28, 28}, 10);
    EXPECT_TRUE(record.ok()) << record.status();
    record->sequence = table_.TakeSequence();
    return table_.Insert(*std::move(record));
  }

  static pnn::v1::SegmentWeights Weights(int segment) {
    pnn::v1::SegmentWeights weights;
    weights.set_segment_index(segment);
    weights.add_tensors()->set_name("w");
    return weights;
  }

  static FailedAttempt Attempt(RetryDecision::Action action,
                               bool counts = true) {
    FailedAttempt attempt;
    attempt.error = "UNAVAILABLE: connection refused";
    attempt.where = "worker-1 (127.0.0.1:1)";
    attempt.decision.action = action;
    attempt.decision.attempt_counts = counts;
    return attempt;
  }

  RecordingListener listener_;
  JobTable table_{&listener_};
};

TEST_F(JobTableTest, PlannedTasksAreQueuedAndTheBaselineIsTheLastTask) {
  JobRecord& record = AddJob(/*baseline=*/true);
  ASSERT_EQ(record.tasks.size(), 3u);
  EXPECT_EQ(record.segment_count(), 2);
  EXPECT_FALSE(record.tasks[0].is_baseline());
  EXPECT_TRUE(record.tasks[2].is_baseline());
  EXPECT_EQ(JobTable::TaskName(record, 2), "the conventional baseline");
  EXPECT_EQ(JobTable::TaskName(record, 1), "segment 2/2 (layers 2..3)");
  for (const TaskRecord& task : record.tasks) {
    EXPECT_EQ(task.status.state(), pnn::v1::TASK_STATE_QUEUED);
  }
  const pnn::v1::Job snapshot = JobTable::Snapshot(record);
  EXPECT_EQ(snapshot.segments_size(), 2);
  EXPECT_EQ(snapshot.baseline().segment_index(), kBaselineIndex);
}

TEST_F(JobTableTest, DispatchRunsTheTaskAndTheJob) {
  JobRecord& record = AddJob();
  const pnn::v1::TrainSegmentRequest request =
      table_.Dispatch(record, 0, "worker-a", "127.0.0.1:7");
  const pnn::v1::TaskStatus& status = record.tasks[0].status;
  EXPECT_EQ(status.state(), pnn::v1::TASK_STATE_RUNNING);
  EXPECT_EQ(status.attempts(), 1);
  EXPECT_EQ(status.worker_id(), "worker-a");
  EXPECT_NE(record.tasks[0].stream, nullptr);
  EXPECT_TRUE(record.streams_open());
  EXPECT_EQ(record.job.state(), pnn::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(request.task().segment_index(), 0);
  EXPECT_FALSE(request.task().has_resume());
  EXPECT_THAT(listener_.messages.back(), HasSubstr("dispatched to worker-a"));
}

TEST_F(JobTableTest, ARetryResumesFromTheLastKeptState) {
  JobRecord& record = AddJob();
  table_.Dispatch(record, 0, "worker-a", "a:1");
  pnn::v1::TrainSegmentUpdate update;
  auto* state = update.mutable_checkpoint()->mutable_state();
  state->set_epochs_done(1);
  state->mutable_weights()->set_segment_index(0);
  EXPECT_TRUE(table_.ApplyUpdate(record, 0, update, 100));
  // A state for another segment does not fit this task: not kept.
  pnn::v1::TrainSegmentUpdate wrong = update;
  wrong.mutable_checkpoint()->mutable_state()->mutable_weights()
      ->set_segment_index(1);
  EXPECT_FALSE(table_.ApplyUpdate(record, 0, wrong, 100));
  EXPECT_EQ(record.tasks[0].status.checkpoint_bytes(), 200);

  table_.EndStream(record, 0);
  EXPECT_TRUE(table_.FailAttempt(record, 0,
                                 Attempt(RetryDecision::Action::kRetry)));
  EXPECT_EQ(record.tasks[0].status.state(), pnn::v1::TASK_STATE_QUEUED);
  const pnn::v1::TrainSegmentRequest retry =
      table_.Dispatch(record, 0, "worker-b", "b:1");
  EXPECT_EQ(retry.task().resume().epochs_done(), 1);
  EXPECT_EQ(record.tasks[0].status.resumed_from_epoch(), 1);
  EXPECT_EQ(record.tasks[0].status.attempts(), 2);
}

TEST_F(JobTableTest, AnAttemptThatDidNotCountIsGivenBack) {
  JobRecord& record = AddJob();
  table_.Dispatch(record, 0, "worker-a", "a:1");
  table_.EndStream(record, 0);
  EXPECT_TRUE(table_.FailAttempt(
      record, 0, Attempt(RetryDecision::Action::kRetry, /*counts=*/false)));
  EXPECT_EQ(record.tasks[0].status.attempts(), 0);
  EXPECT_THAT(listener_.messages.back(), HasSubstr("will be retried"));
}

TEST_F(JobTableTest, UsedUpAttemptsFailTheJobOnce) {
  JobRecord& record = AddJob();
  table_.Dispatch(record, 0, "worker-a", "a:1");
  table_.Dispatch(record, 1, "worker-b", "b:1");
  table_.EndStream(record, 0);
  EXPECT_FALSE(table_.FailAttempt(
      record, 0, Attempt(RetryDecision::Action::kAttemptsUsedUp)));
  EXPECT_EQ(record.job.state(), pnn::v1::JOB_STATE_FAILED);
  EXPECT_THAT(record.job.message(),
              HasSubstr("segment 1/2 (layers 1..1) failed 1 times; last "
                        "error on worker-1 (127.0.0.1:1)"));
  EXPECT_EQ(record.tasks[0].status.state(), pnn::v1::TASK_STATE_FAILED);
  // The other task is cancelled; its stream is told to stop.
  EXPECT_EQ(record.tasks[1].status.state(), pnn::v1::TASK_STATE_CANCELLED);
  EXPECT_EQ(listener_.finished, std::vector<std::string>{record.id()});
  // Its stream closes later, successfully or not: the job stays FAILED.
  table_.EndStream(record, 1);
  table_.SettleAfterJobEnded(record, 1, /*succeeded=*/true);
  EXPECT_EQ(record.tasks[1].status.state(), pnn::v1::TASK_STATE_CANCELLED);
  EXPECT_EQ(listener_.finished.size(), 1u);
}

TEST_F(JobTableTest, SegmentsThenBaselineThenTheJobSucceeds) {
  JobRecord& record = AddJob(/*baseline=*/true);
  for (int i = 0; i < 3; ++i) table_.Dispatch(record, i, "w", "w:1");
  table_.EndStream(record, 0);
  EXPECT_FALSE(table_.Succeed(record, 0, Weights(0), "w").has_value());
  table_.EndStream(record, 2);
  auto baseline = table_.Succeed(record, 2, Weights(-1), "w");
  ASSERT_TRUE(baseline.has_value());
  EXPECT_EQ(baseline->work, AssemblyWork::kEvaluateBaseline);
  table_.EndStream(record, 1);
  auto assemble = table_.Succeed(record, 1, Weights(1), "w");
  ASSERT_TRUE(assemble.has_value());
  EXPECT_EQ(assemble->work, AssemblyWork::kAssemble);
  EXPECT_EQ(record.job.state(), pnn::v1::JOB_STATE_ASSEMBLING);

  AssemblyResult result;
  result.final_test.set_accuracy(0.8);
  result.model_bytes = 1000;
  table_.Assembled(record, result);
  // Assembled, but the baseline is still being tested.
  EXPECT_EQ(record.job.state(), pnn::v1::JOB_STATE_ASSEMBLING);
  EXPECT_EQ(record.job.message(), "waiting for the conventional baseline");
  EXPECT_EQ(record.tasks[0].weights.tensors_size(), 0);  // in the store only
  pnn::v1::TestResult test;
  test.set_accuracy(0.81);
  table_.BaselineTested(record, test);
  EXPECT_EQ(record.job.state(), pnn::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(listener_.finished, std::vector<std::string>{record.id()});
  EXPECT_EQ(listener_.messages.back(), "job succeeded");
}

TEST_F(JobTableTest, AFailedStageRestartsEveryStage) {
  JobRecord& record = AddJob(/*baseline=*/false, /*pipeline=*/true);
  ASSERT_EQ(CountPipelineStages(record), 2);
  std::vector<size_t> stages = table_.PipelineStagesToStart(record);
  ASSERT_EQ(stages, (std::vector<size_t>{0, 1}));
  table_.PreparePipeline(record, stages, {"a:1", "b:1"}, "session-1");
  EXPECT_EQ(record.tasks[0].task.pipeline().downstream_address(), "b:1");
  EXPECT_EQ(record.tasks[1].task.pipeline().downstream_address(), "");
  table_.Dispatch(record, 0, "a", "a:1");
  table_.Dispatch(record, 1, "b", "b:1");
  EXPECT_THAT(table_.PipelineStagesToStart(record), IsEmpty());

  table_.EndStream(record, 1);
  EXPECT_TRUE(table_.FailStage(record, 1,
                               Attempt(RetryDecision::Action::kRetry)));
  EXPECT_EQ(record.tasks[1].status.state(), pnn::v1::TASK_STATE_QUEUED);
  // The other stage is stopped; it is queued again once its stream closes,
  // and the pipeline restarts only then.
  EXPECT_EQ(record.tasks[0].status.state(), pnn::v1::TASK_STATE_CANCELLED);
  EXPECT_NE(record.tasks[0].stream, nullptr);  // until the worker closes it
  EXPECT_THAT(table_.PipelineStagesToStart(record), IsEmpty());
  table_.EndStream(record, 0);
  table_.RequeueStoppedStage(record, 0);
  EXPECT_EQ(record.tasks[0].status.state(), pnn::v1::TASK_STATE_QUEUED);
  EXPECT_EQ(record.job.state(), pnn::v1::JOB_STATE_RUNNING);
}

TEST_F(JobTableTest, CancelEndsEveryUnfinishedTaskAndIsStored) {
  JobRecord& record = AddJob();
  table_.Dispatch(record, 0, "a", "a:1");
  const int stored = listener_.stored;
  table_.Cancel(record);
  EXPECT_EQ(record.job.state(), pnn::v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(record.cancel_requested);
  EXPECT_EQ(record.tasks[0].status.state(), pnn::v1::TASK_STATE_CANCELLED);
  EXPECT_EQ(record.tasks[1].status.state(), pnn::v1::TASK_STATE_CANCELLED);
  EXPECT_GT(listener_.stored, stored);
  // Cancelling again changes nothing.
  table_.Cancel(record);
  EXPECT_EQ(listener_.finished.size(), 1u);
}

TEST_F(JobTableTest, ALostWorkersTaskIsCancelledWithItsReason) {
  JobRecord& record = AddJob();
  EXPECT_FALSE(table_.Lose(record, 0, "worker a silent"));  // no stream
  table_.Dispatch(record, 0, "a", "a:1");
  EXPECT_TRUE(table_.Lose(record, 0, "worker a silent"));
  EXPECT_EQ(record.tasks[0].loss_reason, "worker a silent");
}

// `table` restores `stored` as a coordinator restarting on it would.
JobTable::Restored RestoreOne(const pnn::v1::StoredJob& stored,
                              JobTable* table) {
  JobStore::Loaded loaded;
  loaded.job = stored;
  std::vector<JobStore::Loaded> rows;
  rows.push_back(std::move(loaded));
  return table->Restore(std::move(rows));
}

TEST_F(JobTableTest, ARestartRequeuesRunningTasksWithoutCountingTheAttempt) {
  JobRecord& record = AddJob();
  table_.Dispatch(record, 0, "a", "a:1");
  RecordingListener listener;
  JobTable restarted(&listener);
  JobTable::Restored restored =
      RestoreOne(JobTable::ToStored(record), &restarted);
  EXPECT_EQ(restored.resumed, 1);
  EXPECT_THAT(restored.due, IsEmpty());
  JobRecord* again = restarted.Find(record.id());
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->tasks[0].status.state(), pnn::v1::TASK_STATE_QUEUED);
  EXPECT_EQ(again->tasks[0].status.attempts(), 0);
  EXPECT_EQ(again->tasks[0].stream, nullptr);
  EXPECT_EQ(again->job.message(), "resumed after a coordinator restart");
  // New jobs come after the restored ones.
  EXPECT_GT(restarted.TakeSequence(), record.sequence);
}

// A job stored by a coordinator from before layer lists: its tasks have
// no layers (they had widths, a field now reserved). Restored, they get
// their layers from the spec, the same a new plan gives them.
TEST_F(JobTableTest, TasksStoredWithoutLayersGetThemBackOnRestore) {
  JobRecord& record = AddJob();
  pnn::v1::StoredJob stored = JobTable::ToStored(record);
  std::vector<pnn::v1::SegmentTask> planned;
  for (auto& task : *stored.mutable_tasks()) {
    planned.push_back(task);
    task.clear_layers();
    task.clear_input_shape();
    task.clear_leading_activation();
  }
  RecordingListener listener;
  JobTable restarted(&listener);
  RestoreOne(stored, &restarted);
  JobRecord* again = restarted.Find(record.id());
  ASSERT_NE(again, nullptr);
  ASSERT_EQ(again->tasks.size(), planned.size());
  for (size_t i = 0; i < planned.size(); ++i) {
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
        again->tasks[i].task, planned[i]))
        << i << ": " << again->tasks[i].task.ShortDebugString();
  }
}

TEST_F(JobTableTest, ExpiryKeepsTheNewestFinishedJobs) {
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    JobRecord& record = AddJob();
    ids.push_back(record.id());
    if (i < 3) table_.Cancel(record);
  }
  EXPECT_EQ(table_.CountUnfinished(), 1);
  EXPECT_EQ(table_.ExpireFinished(2), std::vector<std::string>{ids[0]});
  EXPECT_EQ(table_.Find(ids[0]), nullptr);
  EXPECT_NE(table_.Find(ids[1]), nullptr);
  auto page = table_.List({});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs_size(), 3);
  EXPECT_EQ(page->jobs(0).job_id(), ids[3]);  // newest first
  pnn::v1::ListJobsRequest bad;
  bad.set_page_size(-1);
  EXPECT_EQ(table_.List(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pnn
