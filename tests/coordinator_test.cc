// The coordinator's logic without workers: validation at submission, the
// job table, cancellation, watching, worker registration and liveness.
#include "coordinator/coordinator.h"

#include <chrono>
#include <thread>

#include "common/dataset.h"
#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(WriteDatasetAsIdx(MakeSyntheticDataset({}),
                                  data_.path() + "/toy")
                    .ok());
    Coordinator::Options options;
    options.state_dir = state_.path();
    options.data_dir = data_.path();
    options.heartbeat_interval = absl::Milliseconds(50);
    options.worker_timeout = absl::Milliseconds(300);
    options.max_active_jobs = 3;
    coordinator_ = std::make_unique<Coordinator>(options);
    ASSERT_TRUE(coordinator_->Start().ok());
  }

  pnn::v1::SubmitJobRequest Request() {
    pnn::v1::SubmitJobRequest request;
    auto* spec = request.mutable_spec();
    spec->mutable_model()->add_hidden_widths(16);
    spec->mutable_model()->add_hidden_widths(8);
    spec->mutable_model()->add_cut_after_layers(1);
    spec->mutable_dataset()->set_path("toy");
    return request;
  }

  TempDir data_;
  TempDir state_;
  std::unique_ptr<Coordinator> coordinator_;
};

TEST_F(CoordinatorTest, SubmitStoresAResolvedQueuedJob) {
  auto job = coordinator_->Submit(Request());
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), pnn::v1::JOB_STATE_QUEUED);
  EXPECT_THAT(job->job_id(), HasSubstr("job-"));
  EXPECT_EQ(job->spec().training().epochs(), 5);  // resolved
  EXPECT_EQ(job->num_classes(), 4);
  EXPECT_EQ(job->input_width(), 36);
  ASSERT_EQ(job->segments_size(), 2);
  EXPECT_EQ(job->segments(0).state(), pnn::v1::TASK_STATE_QUEUED);
  EXPECT_EQ(job->segments(1).first_layer(), 2);
  EXPECT_FALSE(job->has_baseline());
  EXPECT_THAT(job->message(), HasSubstr("waiting"));

  auto fetched = coordinator_->GetJob(job->job_id());
  ASSERT_TRUE(fetched.ok());
  EXPECT_EQ(fetched->job_id(), job->job_id());
  EXPECT_EQ(coordinator_->GetJob("job-nope").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, SequentialModeWaitsForEarlierSegments) {
  auto request = Request();
  request.mutable_spec()->mutable_sil()->set_input_mode(
      pnn::v1::INPUT_MODE_PREVIOUS_OUTPUTS);
  request.set_conventional_baseline(true);
  auto job = coordinator_->Submit(request);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->segments(0).state(), pnn::v1::TASK_STATE_QUEUED);
  EXPECT_EQ(job->segments(1).state(), pnn::v1::TASK_STATE_WAITING);
  ASSERT_TRUE(job->has_baseline());
  EXPECT_EQ(job->baseline().segment_index(), -1);
  EXPECT_EQ(job->baseline().last_layer(), 3);
}

TEST_F(CoordinatorTest, InvalidJobsAreRefusedWithTheField) {
  struct Case {
    std::function<void(pnn::v1::SubmitJobRequest*)> mutate;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](auto* r) { r->mutable_spec()->mutable_model()->set_cut_after_layers(0, 5); },
       "model.cut_after_layers[0]"},
      {[](auto* r) { r->mutable_spec()->mutable_dataset()->set_path("../etc"); },
       "dataset.path"},
      {[](auto* r) { r->mutable_spec()->mutable_dataset()->set_path("/etc"); },
       "dataset.path"},
      {[](auto* r) { r->mutable_spec()->mutable_dataset()->set_path("missing"); },
       "does not exist"},
      {[](auto* r) { r->mutable_spec()->mutable_training()->set_learning_rate(-1); },
       "training.learning_rate"},
      {[](auto* r) {
         r->mutable_spec()->mutable_sil()->set_distribution(
             pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL);
         r->mutable_spec()->mutable_model()->set_hidden_widths(0, 2);
       },
       "ORTHOGONAL"},
  };
  for (const auto& c : cases) {
    auto request = Request();
    c.mutate(&request);
    auto job = coordinator_->Submit(request);
    ASSERT_FALSE(job.ok()) << c.expected;
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument)
        << c.expected;
    EXPECT_THAT(std::string(job.status().message()), HasSubstr(c.expected));
  }
  auto list = coordinator_->ListJobs({});
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->jobs_size(), 0);  // nothing stored
}

TEST_F(CoordinatorTest, ListIsNewestFirstFilteredAndPaged) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto job = coordinator_->Submit(Request());
    ASSERT_TRUE(job.ok());
    ids.push_back(job->job_id());
  }
  // The active-job limit is 3.
  auto refused = coordinator_->Submit(Request());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(coordinator_->CancelJob(ids[1]).ok());

  pnn::v1::ListJobsRequest request;
  request.set_page_size(2);
  auto page = coordinator_->ListJobs(request);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs_size(), 2);
  EXPECT_EQ(page->jobs(0).job_id(), ids[2]);
  EXPECT_EQ(page->jobs(1).job_id(), ids[1]);
  ASSERT_FALSE(page->next_page_token().empty());
  request.set_page_token(page->next_page_token());
  page = coordinator_->ListJobs(request);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs_size(), 1);
  EXPECT_EQ(page->jobs(0).job_id(), ids[0]);
  EXPECT_TRUE(page->next_page_token().empty());

  pnn::v1::ListJobsRequest cancelled;
  cancelled.add_states(pnn::v1::JOB_STATE_CANCELLED);
  page = coordinator_->ListJobs(cancelled);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs_size(), 1);
  EXPECT_EQ(page->jobs(0).job_id(), ids[1]);

  pnn::v1::ListJobsRequest bad;
  bad.set_page_token("xyz");
  EXPECT_EQ(coordinator_->ListJobs(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CoordinatorTest, CancelAndWatch) {
  auto job = coordinator_->Submit(Request());
  ASSERT_TRUE(job.ok());
  std::vector<pnn::v1::JobEvent> events;
  std::mutex mu;
  std::shared_ptr<JobEventQueue> queue;
  queue = std::make_shared<JobEventQueue>([&] {
    while (auto event = queue->Pop()) {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(*event);
    }
  });
  ASSERT_TRUE(coordinator_->Watch(job->job_id(), queue).ok());
  auto cancelled = coordinator_->CancelJob(job->job_id());
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), pnn::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled->segments(0).state(), pnn::v1::TASK_STATE_CANCELLED);
  EXPECT_TRUE(cancelled->has_end_time());
  // Cancelling again returns the final job unchanged.
  auto again = coordinator_->CancelJob(job->job_id());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->state(), pnn::v1::JOB_STATE_CANCELLED);
  queue->Close();
  coordinator_->Unwatch(queue);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.front().job().state(), pnn::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(events.back().job().state(), pnn::v1::JOB_STATE_CANCELLED);
  for (size_t i = 1; i < events.size(); ++i) {
    EXPECT_GT(events[i].sequence(), events[i - 1].sequence());
  }
  EXPECT_EQ(coordinator_->Watch("job-nope", queue).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->ModelPath(job->job_id(),
                                    pnn::v1::MODEL_FORMAT_SAFETENSORS)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(CoordinatorTest, JobsSurviveARestart) {
  auto queued = coordinator_->Submit(Request());
  auto cancelled = coordinator_->Submit(Request());
  ASSERT_TRUE(queued.ok() && cancelled.ok());
  ASSERT_TRUE(coordinator_->CancelJob(cancelled->job_id()).ok());
  coordinator_->Shutdown();
  coordinator_.reset();

  Coordinator::Options options;
  options.state_dir = state_.path();
  options.data_dir = data_.path();
  coordinator_ = std::make_unique<Coordinator>(options);
  ASSERT_TRUE(coordinator_->Start().ok());
  auto restored = coordinator_->GetJob(queued->job_id());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->state(), pnn::v1::JOB_STATE_QUEUED);
  // The scheduler may already have said why it waits.
  EXPECT_THAT(restored->message(),
              ::testing::AnyOf(HasSubstr("restart"),
                               HasSubstr("waiting for a worker")));
  ASSERT_EQ(restored->segments_size(), 2);
  EXPECT_EQ(restored->segments(0).state(), pnn::v1::TASK_STATE_QUEUED);
  EXPECT_EQ(restored->spec().SerializeAsString(),
            queued->spec().SerializeAsString());
  auto still_cancelled = coordinator_->GetJob(cancelled->job_id());
  ASSERT_TRUE(still_cancelled.ok());
  EXPECT_EQ(still_cancelled->state(), pnn::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(still_cancelled->message(), "cancelled by request");
  // New jobs continue the submission order.
  auto later = coordinator_->Submit(Request());
  ASSERT_TRUE(later.ok());
  auto listed = coordinator_->ListJobs({});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->jobs_size(), 3);
  EXPECT_EQ(listed->jobs(0).job_id(), later->job_id());
  EXPECT_EQ(listed->jobs(2).job_id(), queued->job_id());
}

TEST_F(CoordinatorTest, AnUnusableStateDirectoryIsAClearError) {
  Coordinator::Options options;
  options.state_dir = "/proc/pnn-cannot-create";
  Coordinator coordinator(options);
  const absl::Status status = coordinator.Start();
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr("/proc/pnn-cannot-create"));
}

TEST_F(CoordinatorTest, WorkersRegisterHeartbeatAndAreLostWhenSilent) {
  pnn::v1::WorkerInfo info;
  info.set_address("nonsense");
  EXPECT_EQ(coordinator_->RegisterWorker(info).status().code(),
            absl::StatusCode::kInvalidArgument);
  info.set_address("127.0.0.1:1");
  auto registered = coordinator_->RegisterWorker(info);
  ASSERT_TRUE(registered.ok()) << registered.status();
  EXPECT_EQ(registered->heartbeat_interval_ms(), 50);
  EXPECT_EQ(coordinator_->registered_workers(), 1);
  pnn::v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(registered->worker_id());
  EXPECT_TRUE(coordinator_->Heartbeat(heartbeat).ok());
  // Registering the same address again replaces the old registration.
  auto again = coordinator_->RegisterWorker(info);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(again->worker_id(), registered->worker_id());
  EXPECT_EQ(coordinator_->registered_workers(), 1);
  EXPECT_EQ(coordinator_->Heartbeat(heartbeat).code(),
            absl::StatusCode::kNotFound);
  // Silence beyond the timeout (300 ms) loses the worker.
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  EXPECT_EQ(coordinator_->registered_workers(), 0);
  heartbeat.set_worker_id(again->worker_id());
  EXPECT_EQ(coordinator_->Heartbeat(heartbeat).code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace pnn
