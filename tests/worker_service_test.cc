// The worker service through real gRPC channels: an in-process
// WorkerServer on 127.0.0.1, port 0, reading a small generated data set.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <torch/cuda.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/dataset.h"
#include "common/job_spec.h"
#include "common/model.h"
#include "common/partition.h"
#include "common/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "tests/architectures.h"
#include "tests/grpc_health.h"
#include "tests/test_util.h"
#include "worker/worker_server.h"

namespace pnn {
namespace worker {
namespace {

using ::pnn::v1::SegmentTask;
using ::pnn::v1::TrainSegmentUpdate;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr char kDatasetName[] = "synthetic";

struct StreamResult {
  std::vector<TrainSegmentUpdate> updates;
  grpc::Status status;
  int Count(TrainSegmentUpdate::UpdateCase which) const {
    int n = 0;
    for (const auto& update : updates) n += update.update_case() == which;
    return n;
  }
};

// Sets a deadline so that a bug shows up as a failed test, not a hang.
void SetDeadline(grpc::ClientContext* context, int seconds = 120) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(seconds));
}

// Polls `condition` for up to `seconds`.
template <typename Condition>
bool WaitFor(Condition condition, double seconds = 20) {
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

class WorkerServiceTest : public ::testing::Test {
 protected:
  // One data set on disk for the whole suite: 36 pixels, 4 classes.
  static void SetUpTestSuite() {
    data_root_ = new TempDir();
    SyntheticDatasetOptions options;
    options.train_samples = 1024;
    options.test_samples = 512;
    const std::string directory = data_root_->path() + "/" + kDatasetName;
    std::filesystem::create_directory(directory);
    ASSERT_TRUE(
        WriteDatasetAsIdx(MakeSyntheticDataset(options), directory).ok());
  }
  static void TearDownTestSuite() {
    delete data_root_;
    data_root_ = nullptr;
  }

  void SetUp() override { StartWorker(DefaultOptions()); }
  void TearDown() override {
    if (worker_) worker_->Shutdown();
  }

  static WorkerOptions DefaultOptions() {
    WorkerOptions options;
    options.listen_host = "127.0.0.1";
    options.data_dir = data_root_->path();
    options.threads = 1;
    options.name = "test-worker";
    options.batch_report_interval = 4;
    return options;
  }

  void StartWorker(const WorkerOptions& options) {
    if (worker_) worker_->Shutdown();
    worker_ = std::make_unique<WorkerServer>(options);
    auto port = worker_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    ASSERT_GT(*port, 0);
    channel_ = MakeChannel("127.0.0.1:" + std::to_string(*port));
    stub_ = pnn::v1::Worker::NewStub(channel_);
  }

  // A 36-32-16-4 network cut after layer 1: two segments.
  static std::vector<SegmentTask> Plan(const std::string& job_id,
                                       int epochs = 10) {
    pnn::v1::JobSpec spec;
    spec.mutable_model()->add_hidden_widths(32);
    spec.mutable_model()->add_hidden_widths(16);
    spec.mutable_model()->add_cut_after_layers(1);
    spec.mutable_training()->set_epochs(epochs);
    spec.mutable_training()->set_batch_size(32);
    spec.mutable_sil()->set_input_noise_std(0.05f);
    spec.mutable_dataset()->set_path(kDatasetName);
    auto resolved = ResolveJobSpec(spec);
    EXPECT_TRUE(resolved.ok()) << resolved.status();
    auto tasks = PlanSegmentTasks(*resolved, ImageShape{1, 6, 6},
                                  /*num_classes=*/4, job_id);
    EXPECT_TRUE(tasks.ok()) << tasks.status();
    return tasks.ok() ? *tasks : std::vector<SegmentTask>();
  }

  // A task that trains far longer than any test waits.
  static SegmentTask LongTask(const std::string& job_id) {
    SegmentTask task = Plan(job_id)[0];
    task.mutable_training()->set_epochs(100000);
    return task;
  }

  StreamResult Train(const SegmentTask& task) {
    pnn::v1::TrainSegmentRequest request;
    *request.mutable_task() = task;
    return Train(request);
  }

  StreamResult Train(const pnn::v1::TrainSegmentRequest& request) {
    grpc::ClientContext context;
    SetDeadline(&context);
    StreamResult result;
    auto reader = stub_->TrainSegment(&context, request);
    TrainSegmentUpdate update;
    while (reader->Read(&update)) result.updates.push_back(update);
    result.status = reader->Finish();
    return result;
  }

  grpc::Status CancelSegment(const std::string& job_id, int index,
                             bool* cancelled) {
    grpc::ClientContext context;
    SetDeadline(&context, 10);
    pnn::v1::CancelSegmentRequest request;
    request.set_job_id(job_id);
    request.set_segment_index(index);
    pnn::v1::CancelSegmentResponse response;
    grpc::Status status = stub_->CancelSegment(&context, request, &response);
    *cancelled = response.cancelled();
    return status;
  }

  // Checks that the worker still trains a small task to the end.
  void ExpectServesNextRequest() {
    const StreamResult next = Train(Plan("next-job", /*epochs=*/1)[1]);
    EXPECT_TRUE(next.status.ok()) << next.status.error_message();
    ASSERT_FALSE(next.updates.empty());
    EXPECT_TRUE(next.updates.back().has_result());
  }

  static TempDir* data_root_;
  std::unique_ptr<WorkerServer> worker_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pnn::v1::Worker::Stub> stub_;
};

TempDir* WorkerServiceTest::data_root_ = nullptr;

// An open TrainSegment stream on a long task, read up to its first update.
struct OpenStream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<TrainSegmentUpdate>> reader;
  TrainSegmentUpdate first;

  OpenStream(pnn::v1::Worker::Stub* stub, const SegmentTask& task) {
    SetDeadline(&context);
    pnn::v1::TrainSegmentRequest request;
    *request.mutable_task() = task;
    reader = stub->TrainSegment(&context, request);
    EXPECT_TRUE(reader->Read(&first));
    EXPECT_TRUE(first.has_started());
  }

  // Reads to the end (at most `max_updates`, to stay bounded) and finishes.
  grpc::Status Drain(int max_updates = 1000000) {
    TrainSegmentUpdate update;
    for (int i = 0; i < max_updates && reader->Read(&update); ++i) {
    }
    return reader->Finish();
  }
};

TEST_F(WorkerServiceTest, StreamsUpdatesAndTheJoinedWeightsLearn) {
  const std::vector<SegmentTask> tasks = Plan("job-1");
  ASSERT_EQ(tasks.size(), 2u);
  std::vector<pnn::v1::SegmentWeights> weights;
  for (const SegmentTask& task : tasks) {
    const StreamResult stream = Train(task);
    ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
    ASSERT_GE(stream.updates.size(), 12u);

    const TrainSegmentUpdate& first = stream.updates.front();
    ASSERT_TRUE(first.has_started());
    EXPECT_EQ(first.started().worker_name(), "test-worker");
    EXPECT_EQ(first.started().device(), "cpu");
    EXPECT_EQ(first.started().threads(), 1);

    EXPECT_EQ(stream.Count(TrainSegmentUpdate::kStarted), 1);
    EXPECT_EQ(stream.Count(TrainSegmentUpdate::kResult), 1);
    EXPECT_EQ(stream.Count(TrainSegmentUpdate::kEpoch), 10);
    // Coalescing may merge progress updates, but never all of an epoch's.
    EXPECT_GE(stream.Count(TrainSegmentUpdate::kProgress), 10);
    int epoch = 0;
    for (const auto& update : stream.updates) {
      if (update.has_epoch()) {
        EXPECT_EQ(update.epoch().epoch(), ++epoch);
      } else if (update.has_progress()) {
        EXPECT_EQ(update.progress().epoch(), epoch + 1);
        EXPECT_EQ(update.progress().batches_per_epoch(), 32);
        EXPECT_GT(update.progress().loss(), 0);
      }
    }

    const TrainSegmentUpdate& last = stream.updates.back();
    ASSERT_TRUE(last.has_result());
    EXPECT_EQ(last.result().segment_index(), task.segment_index());
    EXPECT_EQ(last.result().epochs_size(), 10);
    EXPECT_GT(last.result().cost().parameter_count(), 0);
    weights.push_back(last.result().weights());
  }
  EXPECT_TRUE(WaitFor([&] { return !worker_->busy(); }));

  auto joined = AssembleNetwork(weights, Mlp({36, 32, 16, 4}));
  ASSERT_TRUE(joined.ok()) << joined.status();
  pnn::v1::DatasetSpec spec;
  auto data = LoadDataset(data_root_->path() + "/" + kDatasetName, spec);
  ASSERT_TRUE(data.ok()) << data.status();
  auto test = Evaluate(*joined, data->test, data->num_classes, "cpu");
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_GT(test->accuracy(), 0.9);
}

TEST_F(WorkerServiceTest, SecondConcurrentTrainSegmentIsRejectedAsBusy) {
  OpenStream running(stub_.get(), LongTask("long-job"));
  EXPECT_TRUE(worker_->busy());

  const StreamResult second = Train(Plan("other-job")[1]);
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(second.status.error_message(),
            "worker busy training job long-job segment 0");
  EXPECT_TRUE(second.updates.empty());

  bool cancelled = false;
  ASSERT_TRUE(CancelSegment("long-job", 0, &cancelled).ok());
  EXPECT_TRUE(cancelled);
  EXPECT_EQ(running.Drain().error_code(), grpc::StatusCode::CANCELLED);
  ExpectServesNextRequest();
}

TEST_F(WorkerServiceTest, CancelSegmentStopsALongRun) {
  OpenStream running(stub_.get(), LongTask("long-job"));
  // Let it train a little first: cancelling must work mid-training.
  TrainSegmentUpdate update;
  ASSERT_TRUE(running.reader->Read(&update));
  EXPECT_TRUE(update.has_progress());

  bool cancelled = true;
  // Another segment of the job, or another job: not this worker's task.
  ASSERT_TRUE(CancelSegment("long-job", 1, &cancelled).ok());
  EXPECT_FALSE(cancelled);
  ASSERT_TRUE(CancelSegment("other-job", 0, &cancelled).ok());
  EXPECT_FALSE(cancelled);

  const auto start = Clock::now();
  ASSERT_TRUE(CancelSegment("long-job", 0, &cancelled).ok());
  EXPECT_TRUE(cancelled);
  const grpc::Status status = running.Drain();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_THAT(status.error_message(), HasSubstr("CancelSegment"));
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 10);
  EXPECT_TRUE(WaitFor([&] { return !worker_->busy(); }));

  ASSERT_TRUE(CancelSegment("long-job", 0, &cancelled).ok());
  EXPECT_FALSE(cancelled);
  ExpectServesNextRequest();
}

TEST_F(WorkerServiceTest, ClientCancelStopsTraining) {
  {
    OpenStream running(stub_.get(), LongTask("long-job"));
    TrainSegmentUpdate update;
    ASSERT_TRUE(running.reader->Read(&update));
    running.context.TryCancel();
    EXPECT_EQ(running.Drain().error_code(), grpc::StatusCode::CANCELLED);
  }
  // The training thread notices within a batch and frees the worker.
  EXPECT_TRUE(WaitFor([&] { return !worker_->busy(); }));
  ExpectServesNextRequest();
}

TEST_F(WorkerServiceTest, ClientDeadlineStopsTraining) {
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(500));
    pnn::v1::TrainSegmentRequest request;
    *request.mutable_task() = LongTask("long-job");
    auto reader = stub_->TrainSegment(&context, request);
    TrainSegmentUpdate update;
    // Do not read: a stalled client must not make the worker buffer
    // without bound or keep training after the call is gone.
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    while (reader->Read(&update)) {
    }
    EXPECT_EQ(reader->Finish().error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  EXPECT_TRUE(WaitFor([&] { return !worker_->busy(); }));
  ExpectServesNextRequest();
}

TEST_F(WorkerServiceTest, BadRequestsGetClearErrorsAndTheWorkerKeepsServing) {
  const std::vector<SegmentTask> tasks = Plan("bad-job");
  struct Case {
    std::string name;
    std::function<void(pnn::v1::TrainSegmentRequest*)> mutate;
    grpc::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"no task", [](auto* r) { r->clear_task(); },
       grpc::StatusCode::INVALID_ARGUMENT, "task is missing"},
      {"no job id", [](auto* r) { r->mutable_task()->clear_job_id(); },
       grpc::StatusCode::INVALID_ARGUMENT, "job_id is empty"},
      {"layers", [](auto* r) { r->mutable_task()->add_layers(); },
       grpc::StatusCode::INVALID_ARGUMENT, "layer specs"},
      {"classes", [](auto* r) { r->mutable_task()->set_num_classes(7); },
       grpc::StatusCode::FAILED_PRECONDITION, "same data set"},
      {"dotdot",
       [](auto* r) { r->mutable_task()->mutable_dataset()->set_path("../x"); },
       grpc::StatusCode::INVALID_ARGUMENT, "must not contain \"..\""},
      {"absolute",
       [](auto* r) { r->mutable_task()->mutable_dataset()->set_path("/etc"); },
       grpc::StatusCode::INVALID_ARGUMENT, "relative to the data directory"},
      {"unknown data set",
       [](auto* r) {
         r->mutable_task()->mutable_dataset()->set_path("no-such-data");
       },
       grpc::StatusCode::FAILED_PRECONDITION, "does not exist"},
      {"cuda task on a cpu worker",
       [](auto* r) { r->mutable_task()->set_device("cuda:0"); },
       grpc::StatusCode::FAILED_PRECONDITION, "--device=cuda"},
      {"unresolved training",
       [](auto* r) { r->mutable_task()->mutable_training()->set_epochs(0); },
       grpc::StatusCode::INVALID_ARGUMENT, "resolved"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    pnn::v1::TrainSegmentRequest request;
    *request.mutable_task() = tasks[1];
    c.mutate(&request);
    const StreamResult stream = Train(request);
    EXPECT_EQ(stream.status.error_code(), c.code)
        << stream.status.error_message();
    EXPECT_THAT(stream.status.error_message(), HasSubstr(c.message));
    EXPECT_EQ(stream.Count(TrainSegmentUpdate::kResult), 0);
    EXPECT_TRUE(WaitFor([&] { return !worker_->busy(); }));
  }
  bool cancelled = false;
  EXPECT_EQ(CancelSegment("", 0, &cancelled).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  ExpectServesNextRequest();
}

TEST_F(WorkerServiceTest, UnknownDataSetErrorNamesTheWorkerAndItsDataDir) {
  SegmentTask task = Plan("job")[0];
  task.mutable_dataset()->set_path("no-such-data");
  const StreamResult stream = Train(task);
  EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(stream.status.error_message(), HasSubstr("test-worker"));
  EXPECT_THAT(stream.status.error_message(),
              HasSubstr("--data_dir=" + data_root_->path()));
}

TEST_F(WorkerServiceTest, LoadsADataSetOncePerProcess) {
  TempDir root;
  const std::string directory = root.path() + "/" + kDatasetName;
  std::filesystem::copy(data_root_->path() + "/" + kDatasetName, directory);
  WorkerOptions options = DefaultOptions();
  options.data_dir = root.path();
  StartWorker(options);
  const std::vector<SegmentTask> tasks = Plan("job", /*epochs=*/1);
  ASSERT_TRUE(Train(tasks[0]).status.ok());
  // With the files gone, only the cached copy can serve the next segment.
  std::filesystem::remove_all(directory);
  const StreamResult second = Train(tasks[1]);
  EXPECT_TRUE(second.status.ok()) << second.status.error_message();
  // A different data set (here: other limits) is a different entry.
  SegmentTask limited = tasks[1];
  limited.mutable_dataset()->set_train_limit(100);
  EXPECT_EQ(Train(limited).status.error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST_F(WorkerServiceTest, ACudaWorkerWithoutCudaRefusesToStart) {
  // Was: it registered, then failed every task it was handed.
  if (torch::cuda::is_available()) GTEST_SKIP() << "CUDA is available here";
  WorkerOptions options = DefaultOptions();
  options.device = "cuda:0";
  WorkerServer worker(options);
  const absl::StatusOr<int> started = worker.Start();
  EXPECT_EQ(started.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(started.status().message()),
              HasSubstr("CUDA is not available"));
}

TEST_F(WorkerServiceTest, ShutdownStopsTheRunningSegmentAsUnavailable) {
  OpenStream running(stub_.get(), LongTask("long-job"));
  const auto start = Clock::now();
  std::thread shutdown([&] { worker_->Shutdown(); });
  const grpc::Status status = running.Drain();
  shutdown.join();
  // UNAVAILABLE: the coordinator retries elsewhere and drops this worker.
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(status.error_message(), HasSubstr("shutting down"));
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 5);
  // A stopped worker refuses new calls rather than hanging them.
  const StreamResult after = Train(Plan("job")[0]);
  EXPECT_FALSE(after.status.ok());
}

TEST_F(WorkerServiceTest, ServesTheStandardHealthCheck) {
  const std::string& serving = HealthServing();
  auto server = CheckHealth(channel_, "");  // the whole server
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(*server, serving);
  // By the service's name too (was NOT_FOUND).
  auto named = CheckHealth(channel_, "pnn.v1.Worker");
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(*named, serving);
  EXPECT_FALSE(CheckHealth(channel_, "pnn.v1.Nothing").ok());
}

TEST_F(WorkerServiceTest, StartRejectsBadOptionsAndTakenPorts) {
  WorkerOptions options = DefaultOptions();
  options.device = "tpu";
  WorkerServer bad_device(options);
  EXPECT_EQ(bad_device.Start().status().code(),
            absl::StatusCode::kInvalidArgument);

  options = DefaultOptions();
  options.port = worker_->port();
  WorkerServer clash(options);
  const auto port = clash.Start();
  EXPECT_EQ(port.status().code(), absl::StatusCode::kUnavailable);

  EXPECT_EQ(worker_->Start().status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(worker_->advertise_address(),
            "127.0.0.1:" + std::to_string(worker_->port()));
  EXPECT_EQ(worker_->listen_address(), worker_->advertise_address());
}

TEST(JoinHostPortTest, BracketsIpv6) {
  EXPECT_EQ(JoinHostPort("127.0.0.1", 5), "127.0.0.1:5");
  EXPECT_EQ(JoinHostPort("::", 5), "[::]:5");
  EXPECT_EQ(JoinHostPort("[::1]", 5), "[::1]:5");
}

}  // namespace
}  // namespace worker
}  // namespace pnn
