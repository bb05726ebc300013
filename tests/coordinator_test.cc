// The coordinator's logic without workers: validation at submission, the
// job table, cancellation, watching, worker registration and liveness.
#include "coordinator/coordinator.h"

#include <prometheus/registry.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "common/dataset.h"
#include "common/model.h"
#include "coordinator/task_driver.h"
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

  // Stops the coordinator and starts a new one on the same state.
  void Restart(std::shared_ptr<prometheus::Registry> metrics = nullptr) {
    coordinator_->Shutdown();
    coordinator_.reset();
    Coordinator::Options options;
    options.state_dir = state_.path();
    options.data_dir = data_.path();
    options.heartbeat_interval = absl::Milliseconds(50);
    options.worker_timeout = absl::Milliseconds(300);
    options.metrics_registry = std::move(metrics);
    coordinator_ = std::make_unique<Coordinator>(options);
    ASSERT_TRUE(coordinator_->Start().ok());
  }

  // Restarts the coordinator on the same state with `driver` faking the
  // workers (which send no heartbeat, so none is ever declared lost).
  void RestartWithDriver(std::shared_ptr<TaskDriver> driver) {
    coordinator_->Shutdown();
    Coordinator::Options options;
    options.state_dir = state_.path();
    options.data_dir = data_.path();
    options.worker_timeout = absl::Hours(1);
    options.task_driver = std::move(driver);
    coordinator_ = std::make_unique<Coordinator>(options);
    ASSERT_TRUE(coordinator_->Start().ok());
  }

  // The job once SUCCEEDED or FAILED (or as it is after about 10 s).
  absl::StatusOr<pnn::v1::Job> WaitUntilFinished(const std::string& id) {
    absl::StatusOr<pnn::v1::Job> job = coordinator_->GetJob(id);
    for (int i = 0; i < 1000 && job.ok() &&
                    job->state() != pnn::v1::JOB_STATE_SUCCEEDED &&
                    job->state() != pnn::v1::JOB_STATE_FAILED;
         ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      job = coordinator_->GetJob(id);
    }
    return job;
  }

  // Runs `sql` on the coordinator's database through a second connection.
  void ExecuteSql(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((state_.path() + "/jobs.db").c_str(), &db),
              SQLITE_OK);
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error),
              SQLITE_OK)
        << (error != nullptr ? error : "");
    sqlite3_free(error);
    sqlite3_close(db);
  }

  TempDir data_;
  TempDir state_;
  std::unique_ptr<Coordinator> coordinator_;
};

double CounterValue(prometheus::Registry& registry, const std::string& name) {
  for (const auto& family : registry.Collect()) {
    if (family.name == name && !family.metric.empty()) {
      return family.metric[0].counter.value;
    }
  }
  ADD_FAILURE() << "no metric " << name;
  return -1;
}

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

TEST_F(CoordinatorTest, WorkerIdsStayUniqueAcrossARestart) {
  // Fault: ids restarted at worker-1, so after a restart a worker could be
  // given the id another worker still heartbeated with.
  pnn::v1::WorkerInfo first;
  first.set_address("127.0.0.1:1");
  auto before = coordinator_->RegisterWorker(first);
  ASSERT_TRUE(before.ok());
  Restart();
  pnn::v1::WorkerInfo second;
  second.set_address("127.0.0.1:2");
  auto after = coordinator_->RegisterWorker(second);
  ASSERT_TRUE(after.ok());
  EXPECT_NE(after->worker_id(), before->worker_id());
  // The old id is unknown here: its worker must register again.
  pnn::v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(before->worker_id());
  EXPECT_EQ(coordinator_->Heartbeat(heartbeat).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, AGracefullyStoppingWorkerIsNotLost) {
  // Fault: a worker stopped by SIGTERM (scale-down) counted as lost and
  // fired the worker-lost alert.
  auto metrics = std::make_shared<prometheus::Registry>();
  Restart(metrics);
  pnn::v1::WorkerInfo info;
  info.set_address("127.0.0.1:1");
  auto leaving = coordinator_->RegisterWorker(info);
  info.set_address("127.0.0.1:2");
  auto silent = coordinator_->RegisterWorker(info);
  ASSERT_TRUE(leaving.ok() && silent.ok());
  EXPECT_TRUE(coordinator_->DeregisterWorker(leaving->worker_id()).ok());
  EXPECT_EQ(coordinator_->DeregisterWorker(leaving->worker_id()).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(coordinator_->registered_workers(), 1);
  // The other one goes silent: that one is lost.
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  EXPECT_EQ(coordinator_->registered_workers(), 0);
  EXPECT_EQ(CounterValue(*metrics, "pnn_coordinator_workers_lost_total"), 1);
}

TEST_F(CoordinatorTest, SubmitFailsWhenTheJobCannotBeStored) {
  // Fault: SubmitJob answered OK with a store it could not write, and the
  // job was gone after a restart. Another connection holds the write lock
  // (as a full disk or a read-only file would refuse the write).
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((state_.path() + "/jobs.db").c_str(), &db),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr),
            SQLITE_OK);
  auto refused = coordinator_->Submit(Request());
  sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("could not be stored"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("locked"));
  auto listed = coordinator_->ListJobs({});
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->jobs_size(), 0);
  // With the store writable again, an accepted job survives a restart.
  auto accepted = coordinator_->Submit(Request());
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  Restart();
  EXPECT_TRUE(coordinator_->GetJob(accepted->job_id()).ok());
}

TEST_F(CoordinatorTest, CancelIsConfirmedOnlyOnceStoredAndNeverBlocksReads) {
  // Fault: CancelJob answered OK when the store could not be written (the
  // job ran again after a restart), and job-record writes ran under the
  // lock that GetJob needs.
  auto job = coordinator_->Submit(Request());
  ASSERT_TRUE(job.ok()) << job.status();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((state_.path() + "/jobs.db").c_str(), &db),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr),
            SQLITE_OK);
  std::atomic<bool> cancel_returned{false};
  absl::StatusOr<pnn::v1::Job> cancelled;
  std::thread cancel([&] {
    cancelled = coordinator_->CancelJob(job->job_id());
    cancel_returned = true;
  });
  // The cancellation shows at once, while its write waits for the lock
  // (the store's busy timeout is seconds): reads do not wait for it.
  absl::StatusOr<pnn::v1::Job> seen;
  do {
    seen = coordinator_->GetJob(job->job_id());
    ASSERT_TRUE(seen.ok());
  } while (seen->state() != pnn::v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(coordinator_->ListJobs({}).ok());
  EXPECT_FALSE(cancel_returned);
  cancel.join();
  sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  ASSERT_FALSE(cancelled.ok());
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(cancelled.status().message()),
              HasSubstr("could not be stored"));
  // Cancelled again with the store writable: confirmed, and it survives.
  auto again = coordinator_->CancelJob(job->job_id());
  ASSERT_TRUE(again.ok()) << again.status();
  Restart();
  auto restored = coordinator_->GetJob(job->job_id());
  ASSERT_TRUE(restored.ok());
  EXPECT_EQ(restored->state(), pnn::v1::JOB_STATE_CANCELLED);
}

TEST_F(CoordinatorTest, AJobsLogKeepsItsEventsAcrossARestart) {
  auto job = coordinator_->Submit(Request());
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_TRUE(coordinator_->CancelJob(job->job_id()).ok());
  auto log = coordinator_->GetJobLog(job->job_id());
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_GE(log->entries_size(), 1);
  EXPECT_EQ(log->entries(log->entries_size() - 1).message(), "job cancelled");
  EXPECT_GT(log->entries(0).time().seconds(), 0);
  EXPECT_EQ(log->dropped_entries(), 0);
  Restart();
  auto restored = coordinator_->GetJobLog(job->job_id());
  ASSERT_TRUE(restored.ok());
  EXPECT_EQ(restored->entries_size(), log->entries_size());
  EXPECT_EQ(coordinator_->GetJobLog("job-000000000000").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(CoordinatorTest, ListWorkersShowsWhatEachOffersAndWhenItWasHeard) {
  EXPECT_EQ(coordinator_->ListWorkers().workers_size(), 0);
  pnn::v1::WorkerInfo info;
  info.set_address("127.0.0.1:7");
  info.set_threads(3);
  info.set_name("host-a");
  auto registered = coordinator_->RegisterWorker(info);
  ASSERT_TRUE(registered.ok());
  const pnn::v1::ListWorkersResponse listed = coordinator_->ListWorkers();
  ASSERT_EQ(listed.workers_size(), 1);
  const pnn::v1::WorkerStatus& worker = listed.workers(0);
  EXPECT_EQ(worker.worker_id(), registered->worker_id());
  EXPECT_EQ(worker.info().address(), "127.0.0.1:7");
  EXPECT_EQ(worker.info().device(), "cpu");
  EXPECT_EQ(worker.info().threads(), 3);
  EXPECT_TRUE(worker.job_id().empty());  // idle
  EXPECT_FALSE(worker.deregistered());
  EXPECT_FALSE(worker.has_backed_off_until());
  EXPECT_GT(worker.last_heartbeat_time().seconds(), 0);
  EXPECT_GE(worker.last_heartbeat_time().seconds(),
            worker.registered_time().seconds());
}

TEST_F(CoordinatorTest, ACudaJobOnCpuWorkersSaysNoWorkerOffersItsDevice) {
  // Was: "waiting for an idle worker (1 registered, 1 idle)", forever.
  pnn::v1::WorkerInfo info;
  info.set_address("127.0.0.1:9");
  auto worker = coordinator_->RegisterWorker(info);
  ASSERT_TRUE(worker.ok());
  auto request = Request();
  request.mutable_spec()->set_device("cuda");
  auto job = coordinator_->Submit(request);
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string expected =
      "waiting for a worker with device \"cuda\": none of the 1 registered "
      "offers it (1 cpu)";
  EXPECT_EQ(job->message(), expected);
  // And the scheduler keeps saying so (it never dispatches there) while
  // the worker stays alive.
  pnn::v1::HeartbeatRequest heartbeat;
  heartbeat.set_worker_id(worker->worker_id());
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(coordinator_->Heartbeat(heartbeat).ok());
  }
  auto later = coordinator_->GetJob(job->job_id());
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->message(), expected);
  EXPECT_EQ(later->state(), pnn::v1::JOB_STATE_QUEUED);
}

TEST_F(CoordinatorTest, ACorruptRecordFailsOnlyItsJob) {
  // Fault: one corrupt row kept the whole coordinator from starting.
  auto corrupt = coordinator_->Submit(Request());
  auto intact = coordinator_->Submit(Request());
  ASSERT_TRUE(corrupt.ok() && intact.ok());
  coordinator_->Shutdown();
  ExecuteSql("UPDATE jobs SET record = x'ffffffffffffffffffff' WHERE job_id = '" +
             corrupt->job_id() + "'");
  Restart();
  auto failed = coordinator_->GetJob(corrupt->job_id());
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->state(), pnn::v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed->message(), HasSubstr("record corrupt"));
  auto queued = coordinator_->GetJob(intact->job_id());
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(queued->state(), pnn::v1::JOB_STATE_QUEUED);
  // New jobs still come after both.
  auto later = coordinator_->Submit(Request());
  ASSERT_TRUE(later.ok());
  auto listed = coordinator_->ListJobs({});
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->jobs_size(), 3);
  EXPECT_EQ(listed->jobs(0).job_id(), later->job_id());
}

TEST_F(CoordinatorTest, LongIdsAreInvalidAndNotEchoed) {
  // Fault: a long job id was echoed into the error until the reply
  // exceeded the message limit (RESOURCE_EXHAUSTED instead of an answer).
  const std::string huge(1 << 20, 'j');
  for (const absl::Status& status :
       {coordinator_->GetJob(huge).status(),
        coordinator_->CancelJob(huge).status(),
        coordinator_->ModelPath(huge, pnn::v1::MODEL_FORMAT_SAFETENSORS)
            .status()}) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_LT(status.message().size(), 200u);
  }
  EXPECT_EQ(coordinator_->GetJob("job-000000000000").status().code(),
            absl::StatusCode::kNotFound);
  pnn::v1::SubmitJobRequest named = Request();
  named.mutable_spec()->set_name(std::string(4 << 20, 'n'));
  auto refused = coordinator_->Submit(named);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("name"));
}

TEST_F(CoordinatorTest, TheCoordinatorsDataIsCheckedBeforeAnyTraining) {
  // Fault: a truncated training-image file on the coordinator was found at
  // assembly, after every segment had trained.
  const std::filesystem::path images =
      std::filesystem::path(data_.path()) / "toy" / "train-images-idx3-ubyte.gz";
  ASSERT_TRUE(std::filesystem::exists(images));
  std::filesystem::resize_file(images,
                               std::filesystem::file_size(images) / 2);
  auto refused = coordinator_->Submit(Request());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("train-images-idx3-ubyte"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--data_dir"));
}

TEST_F(CoordinatorTest, OnlyTheNewestFinishedJobsAreKept) {
  coordinator_->Shutdown();
  coordinator_.reset();
  Coordinator::Options options;
  options.state_dir = state_.path();
  options.data_dir = data_.path();
  options.keep_finished_jobs = 2;
  coordinator_ = std::make_unique<Coordinator>(options);
  ASSERT_TRUE(coordinator_->Start().ok());
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto job = coordinator_->Submit(Request());
    ASSERT_TRUE(job.ok()) << job.status();
    ids.push_back(job->job_id());
  }
  // A model file of the oldest job goes with it.
  const std::string model =
      state_.path() + "/models/" + ids[0] + ".safetensors";
  std::ofstream(model) << "model";
  for (const std::string& id : ids) {
    ASSERT_TRUE(coordinator_->CancelJob(id).ok());
  }
  // Deleted by the scheduler thread: the record first, then (with the lock
  // released) the files.
  for (int i = 0; i < 100 && (coordinator_->GetJob(ids[0]).ok() ||
                              std::filesystem::exists(model));
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(coordinator_->GetJob(ids[0]).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(model));
  Restart();  // keeps every job from here on
  EXPECT_EQ(coordinator_->GetJob(ids[0]).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(coordinator_->GetJob(ids[1]).ok());
  EXPECT_TRUE(coordinator_->GetJob(ids[2]).ok());
}

// Fakes the workers behind the coordinator: calls to `unreachable` fail as
// a wrong --advertise_address would; the others return freshly initialised
// weights of the task's layers at once.
class FakeDriver final : public TaskDriver {
 public:
  explicit FakeDriver(std::string unreachable)
      : unreachable_(std::move(unreachable)) {}
  TaskRun Run(const std::string& address,
              const pnn::v1::TrainSegmentRequest& request,
              grpc::ClientContext*, const OnUpdate&) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_[address];
    if (address == unreachable_) {
      return {absl::UnavailableError("failed to connect to all addresses"),
              std::nullopt};
    }
    const pnn::v1::SegmentTask& task = request.task();
    SegmentModel model(TaskArchitecture(task));
    return {absl::OkStatus(), ExportWeights(model, task.segment_index())};
  }
  int calls(const std::string& address) {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_[address];
  }

 private:
  const std::string unreachable_;
  std::mutex mu_;
  std::map<std::string, int> calls_;
};

TEST_F(CoordinatorTest, AnUnreachableWorkerIsBackedOffNotHandedEveryRetry) {
  // Fault: a worker with a wrong --advertise_address got every retry at
  // once and failed each job in about 2 s.
  auto driver = std::make_shared<FakeDriver>("127.0.0.1:1");
  RestartWithDriver(driver);
  pnn::v1::WorkerInfo bad;
  bad.set_address("127.0.0.1:1");
  ASSERT_TRUE(coordinator_->RegisterWorker(bad).ok());
  // Several jobs, so that the bad worker is idle whenever work is queued.
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto job = coordinator_->Submit(Request());
    ASSERT_TRUE(job.ok()) << job.status();
    ids.push_back(job->job_id());
  }
  for (int i = 0; i < 100 && driver->calls("127.0.0.1:1") == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  pnn::v1::WorkerInfo good;
  good.set_address("127.0.0.1:2");
  ASSERT_TRUE(coordinator_->RegisterWorker(good).ok());
  for (const std::string& id : ids) {
    const absl::StatusOr<pnn::v1::Job> job = WaitUntilFinished(id);
    ASSERT_TRUE(job.ok());
    EXPECT_EQ(job->state(), pnn::v1::JOB_STATE_SUCCEEDED) << job->message();
  }
  // Backed off after its first failure (2 s), not dropped.
  EXPECT_EQ(driver->calls("127.0.0.1:1"), 1);
  EXPECT_EQ(driver->calls("127.0.0.1:2"), 6);
  EXPECT_EQ(coordinator_->registered_workers(), 2);
}

TEST_F(CoordinatorTest, ACudaJobIsAssembledOnTheCoordinatorsOwnDevice) {
  // Was: the coordinator joined and tested on the job's device, so a CPU
  // coordinator failed every cuda job at assembly, after training. Here a
  // (fake) CUDA worker trains and the CPU coordinator assembles.
  auto driver = std::make_shared<FakeDriver>("");
  ASSERT_EQ(Coordinator::Options().device, "cpu");  // the default, used here
  RestartWithDriver(driver);
  pnn::v1::WorkerInfo gpu;
  gpu.set_address("127.0.0.1:3");
  gpu.set_device("cuda:0");
  ASSERT_TRUE(coordinator_->RegisterWorker(gpu).ok());
  auto request = Request();
  request.mutable_spec()->set_device("cuda");
  auto submitted = coordinator_->Submit(request);
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const absl::StatusOr<pnn::v1::Job> job =
      WaitUntilFinished(submitted->job_id());
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), pnn::v1::JOB_STATE_SUCCEEDED) << job->message();
  EXPECT_GT(job->test().samples(), 0);
  EXPECT_EQ(driver->calls("127.0.0.1:3"), 2);  // both segments on the GPU
}

}  // namespace
}  // namespace pnn
