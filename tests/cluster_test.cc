// A whole cluster in-process: the real coordinator server and real workers
// on loopback (port 0), driven through the coordinator's gRPC API.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <functional>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/dataset.h"
#include "common/model.h"
#include "common/safetensors.h"
#include "common/trainer.h"
#include "coordinator/service.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/time_util.h"
#include "gtest/gtest.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"
#include "tests/grpc_health.h"
#include "tests/architectures.h"
#include "tests/local_cluster.h"
#include "worker/worker_server.h"

namespace pnn {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using pnn::v1::Job;

// A worker that accepts a segment and then says nothing, ever: no updates,
// no heartbeats. Only the coordinator's liveness check can notice.
class SilentWorker final : public pnn::v1::Worker::CallbackService {
 public:
  grpc::ServerWriteReactor<pnn::v1::TrainSegmentUpdate>* TrainSegment(
      grpc::CallbackServerContext*,
      const pnn::v1::TrainSegmentRequest*) override {
    class Hang : public grpc::ServerWriteReactor<pnn::v1::TrainSegmentUpdate> {
     public:
      void OnCancel() override {
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      }
      void OnDone() override { delete this; }
    };
    ++calls_;
    return new Hang();
  }
  std::atomic<int> calls_{0};
};

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override { StartCluster(""); }

  void StartCluster(const std::string& token) {
    LocalClusterOptions options;
    options.auth_token = token;
    const absl::Status started = cluster_.Start(options);
    ASSERT_TRUE(started.ok()) << started;
  }

  void TearDown() override { cluster_.Shutdown(); }

  // Submits `request` and follows the job to its end: the job then, and
  // the events seen on the way (empty after a failure, which is recorded).
  Job RunToEnd(const pnn::v1::SubmitJobRequest& request,
               std::vector<pnn::v1::JobEvent>* events = nullptr) {
    const std::string id = cluster_.Submit(request);
    EXPECT_FALSE(id.empty());
    if (id.empty()) return Job();
    grpc::Status status;
    std::vector<pnn::v1::JobEvent> seen = cluster_.Watch(id, &status);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (events != nullptr) *events = std::move(seen);
    return cluster_.Get(id);
  }

  LocalCluster cluster_;
};

TEST_F(ClusterTest, JobRunsOnTwoWorkersInParallelAndTheModelDownloads) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  auto request = cluster_.Request(6);
  request.set_conventional_baseline(true);
  const std::string id = cluster_.Submit(request);
  ASSERT_FALSE(id.empty());
  grpc::Status status;
  const auto events = cluster_.Watch(id, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back().job().state(), pnn::v1::JOB_STATE_SUCCEEDED)
      << events.back().job().message();
  bool saw_running = false;
  for (const auto& event : events) {
    saw_running |= event.job().state() == pnn::v1::JOB_STATE_RUNNING;
  }
  EXPECT_TRUE(saw_running);

  const Job job = cluster_.Get(id);
  EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED);
  EXPECT_GT(job.test().accuracy(), 0.9);
  EXPECT_EQ(job.test().samples(), 512);
  EXPECT_GT(job.baseline_test().accuracy(), 0.9);
  ASSERT_EQ(job.segments_size(), 2);
  const auto& first = job.segments(0);
  const auto& second = job.segments(1);
  EXPECT_NE(first.worker_id(), second.worker_id());
  EXPECT_EQ(first.epochs_size(), 6);
  EXPECT_EQ(first.attempts(), 1);
  EXPECT_GT(first.bytes_received(), 0);
  EXPECT_GT(first.cost().parameter_bytes(), 0);
  // Both segments were dispatched before either finished.
  using google::protobuf::util::TimeUtil;
  EXPECT_LT(TimeUtil::TimestampToNanoseconds(first.start_time()),
            TimeUtil::TimestampToNanoseconds(second.end_time()));
  EXPECT_LT(TimeUtil::TimestampToNanoseconds(second.start_time()),
            TimeUtil::TimestampToNanoseconds(first.end_time()));
  EXPECT_GT(job.bytes_sent(), 0);
  EXPECT_EQ(job.bytes_received(), first.bytes_received() +
                                      second.bytes_received() +
                                      job.baseline().bytes_received());

  // The safetensors artifact holds the joined network; evaluated again it
  // gives the job's accuracy.
  const std::string safetensors =
      cluster_.Download(id, pnn::v1::MODEL_FORMAT_SAFETENSORS, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(static_cast<int64_t>(safetensors.size()), job.model_bytes());
  auto weights = DecodeSafetensors(safetensors);
  ASSERT_TRUE(weights.ok()) << weights.status();
  // nn.Sequential's keys (Linear modules at 0, 2, 4); back to pnn's names.
  ASSERT_EQ(weights->tensors_size(), 6);
  for (int i = 0; i < weights->tensors_size(); ++i) {
    pnn::v1::Tensor* tensor = weights->mutable_tensors(i);
    const int layer = i / 2 + 1;
    const std::string kind = i % 2 == 0 ? "weight" : "bias";
    EXPECT_EQ(tensor->name(), absl::StrCat(2 * (layer - 1), ".", kind));
    tensor->set_name(absl::StrCat("linear", layer, ".", kind));
  }
  weights->set_first_layer(1);
  weights->set_last_layer(3);
  auto model = ModelFromWeights(*weights, Mlp({36, 32, 16, 4}));
  ASSERT_TRUE(model.ok()) << model.status();
  pnn::v1::DatasetSpec toy;
  auto data = LoadDataset(cluster_.data_dir() + "/toy", toy);
  ASSERT_TRUE(data.ok());
  auto test = Evaluate(*model, data->test, data->num_classes, "cpu");
  ASSERT_TRUE(test.ok());
  EXPECT_DOUBLE_EQ(test->accuracy(), job.test().accuracy());

  const std::string native =
      cluster_.Download(id, pnn::v1::MODEL_FORMAT_PNN_WEIGHTS, &status);
  ASSERT_TRUE(status.ok());
  pnn::v1::SegmentWeights parsed;
  ASSERT_TRUE(parsed.ParseFromString(native));
  EXPECT_EQ(parsed.last_layer(), 3);
}

// A heterogeneous pool: segment 2 of 36-4-64-64-4 cut after layer 1
// (27648 training FLOPs per sample against segment 1's 864) goes to the
// worker with more threads, although segment 1 comes first and the other
// worker registered first (and so comes first in the registry, by id).
TEST_F(ClusterTest, TheHeaviestSegmentGoesToTheFastestWorker) {
  cluster_.AddWorker();
  cluster_.WaitForWorkers(1);
  worker::WorkerServer* fast = cluster_.AddWorker(
      [](worker::WorkerOptions* options) { options->threads = 2; });
  cluster_.WaitForWorkers(2);
  auto request = cluster_.Request(2);
  auto* model = request.mutable_spec()->mutable_model();
  model->clear_hidden_widths();
  for (int width : {4, 64, 64}) model->add_hidden_widths(width);
  const Job job = RunToEnd(request);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  ASSERT_EQ(job.segments_size(), 2);
  EXPECT_EQ(job.segments(1).worker_id(), fast->worker_id());
  EXPECT_NE(job.segments(0).worker_id(), fast->worker_id());
}

// Recovery epochs run on the workers: once both segments have trained, the
// joined network trains end to end as a pipeline of the two segments,
// starting from their trained weights, and the coordinator only tests.
TEST_F(ClusterTest, RecoveryEpochsRunOnTheWorkersAsAPipeline) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  auto request = cluster_.Request(3);
  request.mutable_spec()->mutable_recovery()->set_epochs(2);
  std::vector<pnn::v1::JobEvent> events;
  const Job job = RunToEnd(request, &events);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  ASSERT_EQ(job.segments_size(), 2);
  ASSERT_EQ(job.recovery_size(), 2);
  auto seconds = [](const google::protobuf::Timestamp& time) {
    return static_cast<double>(time.seconds()) + 1e-9 * time.nanos();
  };
  std::set<std::string> workers;
  for (int i = 0; i < 2; ++i) {
    const pnn::v1::TaskStatus& stage = job.recovery(i);
    EXPECT_TRUE(stage.recovery());
    EXPECT_FALSE(job.segments(i).recovery());
    EXPECT_EQ(stage.state(), pnn::v1::TASK_STATE_SUCCEEDED);
    EXPECT_EQ(stage.first_layer(), job.segments(i).first_layer());
    EXPECT_EQ(stage.epochs_size(), 2);
    workers.insert(stage.worker_id());
    // The recovery pipeline started after the segments had trained.
    EXPECT_GE(seconds(stage.start_time()), seconds(job.segments(0).end_time()));
    EXPECT_GE(seconds(stage.start_time()), seconds(job.segments(1).end_time()));
  }
  EXPECT_EQ(workers.size(), 2u) << "one stage per worker";
  EXPECT_GT(job.recovery_seconds(), 0);
  EXPECT_GT(job.joined_test_accuracy(), 0.5);
  EXPECT_GT(job.test().accuracy(), 0.9);
  EXPECT_GT(job.peer_bytes(), 0) << "the recovery pipeline's activations";
  bool logged = false;
  for (const auto& event : events) {
    logged |= absl::StrContains(event.message(),
                                "recovery epochs start on the workers");
  }
  EXPECT_TRUE(logged);
}

// Cuts balanced by measured time: Submit times the layers on a worker,
// the job carries the measured plan and trains with those cuts; with no
// idle worker to time on, Submit says so instead of guessing.
TEST_F(ClusterTest, MeasuredTimeCutsProfileTheLayersOnAWorker) {
  auto request = cluster_.Request(2);
  auto* spec = request.mutable_spec();
  spec->mutable_model()->clear_cut_after_layers();
  spec->mutable_auto_cut()->set_segments(2);
  spec->mutable_auto_cut()->set_objective(
      pnn::v1::BALANCE_OBJECTIVE_MEASURED_TIME);
  {
    grpc::ClientContext context;
    pnn::v1::SubmitJobResponse response;
    const grpc::Status refused =
        cluster_.stub()->SubmitJob(&context, request, &response);
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_THAT(refused.error_message(),
                HasSubstr("times the layers on an idle worker of device "
                          "\"cpu\""));
  }
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  const Job job = RunToEnd(request);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  const pnn::v1::CutPlan& plan = job.cut_plan();
  EXPECT_THAT(plan.profiled_on(), HasSubstr("worker test-worker-"));
  EXPECT_THAT(plan.profiled_on(), HasSubstr("(cpu, 1 thread)"));
  ASSERT_EQ(plan.segments_size(), 2);
  ASSERT_EQ(job.segments_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_GT(plan.segments(i).measured_seconds_per_batch(), 0);
    EXPECT_EQ(job.segments(i).last_layer(), plan.segments(i).last_layer());
  }
  EXPECT_EQ(job.spec().model().cut_after_layers(0), plan.cut_after_layers(0));
  // The profiled worker was handed back: both trained a segment.
  EXPECT_NE(job.segments(0).worker_id(), job.segments(1).worker_id());
}

// One worker trains both segments one after the other, but the recovery
// pipeline needs two at once: the job says so, and goes on when a second
// worker joins.
TEST_F(ClusterTest, RecoveryWaitsForAWorkerPerStageAndSaysSo) {
  cluster_.AddWorker();
  cluster_.WaitForWorkers(1);
  auto request = cluster_.Request(2);
  request.mutable_spec()->mutable_recovery()->set_epochs(1);
  const std::string id = cluster_.Submit(request);
  ASSERT_FALSE(id.empty());
  Job job = cluster_.Get(id);
  for (int i = 0; i < 800 && !absl::StrContains(job.message(), "at once");
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    job = cluster_.Get(id);
  }
  EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_RUNNING);
  EXPECT_THAT(job.message(),
              HasSubstr("waiting for 2 idle workers at once (a "
                                   "pipeline: one per stage); 1 of 1"));
  EXPECT_EQ(job.segments(0).state(), pnn::v1::TASK_STATE_SUCCEEDED);
  EXPECT_EQ(job.segments(1).state(), pnn::v1::TASK_STATE_SUCCEEDED);
  EXPECT_EQ(job.recovery(0).state(), pnn::v1::TASK_STATE_QUEUED);
  cluster_.AddWorker();
  grpc::Status status;
  const auto events = cluster_.Watch(id, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  job = cluster_.Get(id);
  EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  EXPECT_EQ(job.recovery(1).state(), pnn::v1::TASK_STATE_SUCCEEDED);
}

TEST_F(ClusterTest, WorkersAndAJobsLogAreVisibleAndHealthNamesTheService) {
  cluster_.AddWorker();
  cluster_.WaitForWorkers(1);
  const std::string id = cluster_.Submit(cluster_.Request(1));
  grpc::Status status;
  cluster_.Watch(id, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();

  grpc::ClientContext log_context;
  pnn::v1::GetJobLogRequest log_request;
  log_request.set_job_id(id);
  pnn::v1::GetJobLogResponse log;
  status = cluster_.stub()->GetJobLog(&log_context, log_request, &log);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<std::string> messages;
  for (const auto& entry : log.entries()) messages.push_back(entry.message());
  EXPECT_THAT(messages, Contains(HasSubstr("dispatched to worker-")));
  EXPECT_THAT(messages, Contains(HasSubstr("epoch 1/1")));
  EXPECT_EQ(messages.back(), "job succeeded");

  grpc::ClientContext workers_context;
  pnn::v1::ListWorkersResponse workers;
  status = cluster_.stub()->ListWorkers(&workers_context, {}, &workers);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(workers.workers_size(), 1);
  EXPECT_EQ(workers.workers(0).info().address(),
            cluster_.Get(id).segments(0).worker_address());

  auto health = CheckHealth(MakeChannel(cluster_.target()),
                            "pnn.v1.Coordinator");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthServing());
}

TEST_F(ClusterTest, UnknownJobsAndMissingModelsAreClearErrors) {
  grpc::Status status;
  cluster_.Watch("job-none", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  cluster_.Download("job-none", pnn::v1::MODEL_FORMAT_SAFETENSORS, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  // No worker: stays queued.
  const std::string queued = cluster_.Submit(cluster_.Request(1));
  cluster_.Download(queued, pnn::v1::MODEL_FORMAT_SAFETENSORS, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(cluster_.Get(queued).message(),
              HasSubstr("waiting for a worker"));

  grpc::ClientContext context;
  pnn::v1::SubmitJobResponse response;
  auto bad = cluster_.Request(1);
  bad.mutable_spec()->mutable_model()->set_cut_after_layers(0, 9);
  status = cluster_.stub()->SubmitJob(&context, bad, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("model.cut_after_layers[0]"));
}

// Malformed requests at the gRPC edge, each with the code a client can act
// on; the coordinator keeps serving afterwards and stores nothing.
TEST_F(ClusterTest, MalformedRequestsGetPreciseCodes) {
  struct Case {
    std::string name;
    std::function<grpc::Status()> call;
    grpc::StatusCode expected;
    std::string message;
  };
  auto submit = [this](std::function<void(pnn::v1::SubmitJobRequest*)> edit) {
    return [this, edit] {
      pnn::v1::SubmitJobRequest request = cluster_.Request(1);
      edit(&request);
      grpc::ClientContext context;
      pnn::v1::SubmitJobResponse response;
      return cluster_.stub()->SubmitJob(&context, request, &response);
    };
  };
  const std::vector<Case> cases = {
      {"empty spec uses defaults but the default data set is absent",
       [this] {
         grpc::ClientContext context;
         pnn::v1::SubmitJobResponse response;
         return cluster_.stub()->SubmitJob(&context, {}, &response);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "dataset"},
      {"negative width", submit([](auto* r) {
         r->mutable_spec()->mutable_model()->set_hidden_widths(0, -1);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "model.hidden_widths[0]"},
      {"cut beyond the network", submit([](auto* r) {
         r->mutable_spec()->mutable_model()->set_cut_after_layers(0, 3);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "model.cut_after_layers[0]"},
      {"zero batch", submit([](auto* r) {
         r->mutable_spec()->mutable_training()->set_batch_size(-4);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "training.batch_size"},
      {"NaN learning rate", submit([](auto* r) {
         r->mutable_spec()->mutable_training()->set_learning_rate(std::nanf(""));
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "training.learning_rate"},
      {"infinite kappa", submit([](auto* r) {
         r->mutable_spec()->mutable_sil()->set_kappa(INFINITY);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "sil.kappa"},
      {"unknown enum value", submit([](auto* r) {
         r->mutable_spec()->mutable_model()->set_activation(
             static_cast<pnn::v1::Activation>(77));
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "model.activation"},
      {"unknown parallelism", submit([](auto* r) {
         r->mutable_spec()->set_parallelism(
             static_cast<pnn::v1::Parallelism>(9));
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "parallelism"},
      {"too many evaluations per epoch", submit([](auto* r) {
         r->mutable_spec()->set_evaluations_per_epoch(21);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "evaluations_per_epoch"},
      {"recovery epochs for an end-to-end job", submit([](auto* r) {
         r->mutable_spec()->set_parallelism(
             pnn::v1::PARALLELISM_MODEL_PARALLEL);
         r->mutable_spec()->mutable_recovery()->set_epochs(1);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "recovery.epochs"},
      {"path traversal", submit([](auto* r) {
         r->mutable_spec()->mutable_dataset()->set_path("../../etc");
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "dataset.path"},
      {"absolute path", submit([](auto* r) {
         r->mutable_spec()->mutable_dataset()->set_path("/etc");
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "dataset.path"},
      {"a model too large to allocate", submit([](auto* r) {
         r->mutable_spec()->mutable_model()->set_hidden_widths(0, 65536);
         r->mutable_spec()->mutable_model()->set_hidden_widths(1, 65536);
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "parameters"},
      {"unknown device", submit([](auto* r) {
         r->mutable_spec()->set_device("tpu:0");
       }),
       grpc::StatusCode::INVALID_ARGUMENT, "device"},
      {"request over the size limit", submit([](auto* r) {
         r->mutable_spec()->set_name(std::string(kMaxRequestBytes + 1, 'x'));
       }),
       grpc::StatusCode::RESOURCE_EXHAUSTED, ""},
      {"unknown job",
       [this] {
         grpc::ClientContext context;
         pnn::v1::GetJobRequest request;
         request.set_job_id("job-000000000000");
         Job job;
         return cluster_.stub()->GetJob(&context, request, &job);
       },
       grpc::StatusCode::NOT_FOUND, "job-000000000000"},
      {"cancel unknown job",
       [this] {
         grpc::ClientContext context;
         pnn::v1::CancelJobRequest request;
         Job job;
         return cluster_.stub()->CancelJob(&context, request, &job);
       },
       grpc::StatusCode::NOT_FOUND, "no job"},
      {"forged page token",
       [this] {
         grpc::ClientContext context;
         pnn::v1::ListJobsRequest request;
         request.set_page_token("'; DROP TABLE jobs");
         pnn::v1::ListJobsResponse response;
         return cluster_.stub()->ListJobs(&context, request, &response);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "page_token"},
      {"huge page",
       [this] {
         grpc::ClientContext context;
         pnn::v1::ListJobsRequest request;
         request.set_page_size(1 << 30);
         pnn::v1::ListJobsResponse response;
         return cluster_.stub()->ListJobs(&context, request, &response);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "page_size"},
      {"worker without address",
       [this] {
         grpc::ClientContext context;
         pnn::v1::RegisterWorkerRequest request;
         pnn::v1::RegisterWorkerResponse response;
         return cluster_.stub()->RegisterWorker(&context, request, &response);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "worker.address"},
      {"heartbeat of a stranger",
       [this] {
         grpc::ClientContext context;
         pnn::v1::HeartbeatRequest request;
         request.set_worker_id("worker-999");
         pnn::v1::HeartbeatResponse response;
         return cluster_.stub()->Heartbeat(&context, request, &response);
       },
       grpc::StatusCode::NOT_FOUND, "register again"},
  };
  for (const auto& c : cases) {
    const grpc::Status status = c.call();
    EXPECT_EQ(status.error_code(), c.expected)
        << c.name << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.message)) << c.name;
  }
  grpc::ClientContext context;
  pnn::v1::ListJobsResponse listed;
  ASSERT_TRUE(cluster_.stub()->ListJobs(&context, {}, &listed).ok());
  EXPECT_EQ(listed.jobs_size(), 0);
}

TEST_F(ClusterTest, CancellingARunningJobFreesItsWorkers) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  const std::string id = cluster_.Submit(cluster_.Request(5000));
  ASSERT_FALSE(id.empty());
  for (int i = 0; i < 200; ++i) {
    const Job job = cluster_.Get(id);
    ASSERT_EQ(job.segments_size(), 2);
    if (job.segments(0).state() == pnn::v1::TASK_STATE_RUNNING &&
        job.segments(0).epochs_size() > 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  grpc::ClientContext context;
  pnn::v1::CancelJobRequest cancel;
  cancel.set_job_id(id);
  Job cancelled;
  ASSERT_TRUE(cluster_.stub()->CancelJob(&context, cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), pnn::v1::JOB_STATE_CANCELLED);
  for (const auto& segment : cancelled.segments()) {
    EXPECT_EQ(segment.state(), pnn::v1::TASK_STATE_CANCELLED);
  }
  // The workers stop and take the next job.
  const std::string next = cluster_.Submit(cluster_.Request(2));
  grpc::Status status;
  const auto events = cluster_.Watch(next, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(events.back().job().state(), pnn::v1::JOB_STATE_SUCCEEDED);
  const Job final_state = cluster_.Get(id);
  for (const auto& segment : final_state.segments()) {
    EXPECT_EQ(segment.state(), pnn::v1::TASK_STATE_CANCELLED);
  }
}

TEST(ClusterAssemblyTest, CancelDuringAssemblyLeavesNoModel) {
  // Fault: a job cancelled while the coordinator joined and tested it
  // ended CANCELLED with a downloadable model (and files left behind).
  // A wide network on a large test set keeps the final test pass long
  // enough for the cancel to land in it.
  LocalCluster cluster;
  LocalClusterOptions options;
  options.train_samples = 128;
  options.test_samples = 6000;
  ASSERT_TRUE(cluster.Start(options).ok());
  cluster.AddWorker();
  cluster.AddWorker();
  cluster.WaitForWorkers(2);
  pnn::v1::SubmitJobRequest request = LocalCluster::Request(1);
  request.mutable_spec()->mutable_model()->set_hidden_widths(0, 1536);
  request.mutable_spec()->mutable_model()->set_hidden_widths(1, 1536);
  const std::string id = cluster.Submit(request);
  ASSERT_FALSE(id.empty());
  bool assembling = false;
  for (int i = 0; i < 6000 && !assembling; ++i) {
    const pnn::v1::JobState state = cluster.Get(id).state();
    ASSERT_FALSE(IsFinal(state)) << "the job ended before its assembly";
    assembling = state == pnn::v1::JOB_STATE_ASSEMBLING;
    if (!assembling) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(assembling);
  grpc::ClientContext context;
  pnn::v1::CancelJobRequest cancel;
  cancel.set_job_id(id);
  Job cancelled;
  ASSERT_TRUE(cluster.stub()->CancelJob(&context, cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), pnn::v1::JOB_STATE_CANCELLED);
  cluster.Shutdown();  // waits for the assembly to end
  auto job = cluster.coordinator().GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), pnn::v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job->model_bytes(), 0);
  EXPECT_EQ(cluster.coordinator()
                .ModelPath(id, pnn::v1::MODEL_FORMAT_SAFETENSORS)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  for (const auto& entry : std::filesystem::directory_iterator(
           std::filesystem::path(cluster.state_dir()) / "models")) {
    ADD_FAILURE() << "left behind: " << entry.path();
  }
}

TEST_F(ClusterTest, ASilentWorkerIsDeclaredLostAndItsSegmentRetried) {
  // The silent worker registers by hand and never heartbeats.
  SilentWorker silent;
  auto silent_server = cluster_.ServeAndRegister(&silent);
  ASSERT_TRUE(silent_server.ok()) << silent_server.status();
  auto request = cluster_.Request(2);
  request.mutable_spec()->mutable_model()->clear_cut_after_layers();
  request.mutable_spec()->mutable_model()->add_cut_after_layers(2);
  const std::string id = cluster_.Submit(request);
  for (int i = 0; i < 100 && silent.calls_ == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(silent.calls_, 1);
  // A real worker joins; once the silent one is declared lost (600 ms),
  // its segment moves to the real worker and the job completes.
  cluster_.AddWorker();
  grpc::Status status;
  const auto events = cluster_.Watch(id, &status);
  ASSERT_TRUE(status.ok());
  const Job job = cluster_.Get(id);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  int retried = 0;
  for (const auto& segment : job.segments()) {
    if (segment.attempts() == 2) {
      ++retried;
      EXPECT_THAT(segment.error(), HasSubstr("no heartbeat"));
    }
  }
  EXPECT_EQ(retried, 1);
  bool announced = false;
  for (const auto& event : events) {
    announced |= absl::StrContains(event.message(), "will be retried");
  }
  EXPECT_TRUE(announced);
  silent_server->server->Shutdown();
}

// Many small jobs submitted at once from several threads while others poll
// their status: every job reaches a final state, none is lost, and the
// services keep answering throughout.
TEST_F(ClusterTest, ManyConcurrentJobsAllFinish) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  constexpr int kSubmitters = 4;
  constexpr int kJobsEach = 6;
  std::mutex mu;
  std::vector<std::string> ids;
  std::atomic<int> refused{0};
  std::vector<std::thread> submitters;
  for (int t = 0; t < kSubmitters; ++t) {
    submitters.emplace_back([&] {
      auto stub =
          pnn::v1::Coordinator::NewStub(MakeChannel(cluster_.target()));
      for (int j = 0; j < kJobsEach; ++j) {
        grpc::ClientContext context;
        pnn::v1::SubmitJobResponse response;
        if (!stub->SubmitJob(&context, cluster_.Request(1), &response).ok()) {
          ++refused;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        ids.push_back(response.job_id());
      }
    });
  }
  std::atomic<bool> done{false};
  std::atomic<int> queries{0};
  std::atomic<int> failed_queries{0};
  std::thread poller([&] {
    auto stub = pnn::v1::Coordinator::NewStub(MakeChannel(cluster_.target()));
    while (!done) {
      grpc::ClientContext context;
      pnn::v1::ListJobsResponse response;
      if (!stub->ListJobs(&context, {}, &response).ok()) ++failed_queries;
      ++queries;
    }
  });
  for (auto& thread : submitters) thread.join();
  EXPECT_EQ(refused, 0);
  ASSERT_EQ(ids.size(), static_cast<size_t>(kSubmitters * kJobsEach));
  int succeeded = 0;
  for (const std::string& id : ids) {
    Job job;
    for (int i = 0; i < 1200; ++i) {
      job = cluster_.Get(id);
      if (IsFinal(job.state())) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    succeeded += job.state() == pnn::v1::JOB_STATE_SUCCEEDED;
    EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED)
        << id << ": " << job.message();
  }
  done = true;
  poller.join();
  EXPECT_EQ(succeeded, kSubmitters * kJobsEach);
  EXPECT_GT(queries, 10);
  EXPECT_EQ(failed_queries, 0);
  grpc::ClientContext context;
  pnn::v1::ListJobsRequest all;
  all.set_page_size(1000);
  pnn::v1::ListJobsResponse listed;
  ASSERT_TRUE(cluster_.stub()->ListJobs(&context, all, &listed).ok());
  EXPECT_EQ(listed.jobs_size(), kSubmitters * kJobsEach);
}

class AuthenticatedClusterTest : public ClusterTest {
 protected:
  void SetUp() override { StartCluster("s3cret-token"); }
};

TEST_F(AuthenticatedClusterTest, RightTokenWorksMissingOrWrongTokenIsRefused) {
  // A worker with the wrong token cannot register; the right one can.
  cluster_.AddWorker(
      [](worker::WorkerOptions* options) {
        options->auth_token = "wrong-token";
      });
  cluster_.AddWorker();  // the cluster's token, s3cret-token
  cluster_.WaitForWorkers(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(cluster_.RegisteredWorkers(), 1);

  auto call_submit = [this](const std::string& token) {
    grpc::ClientContext context;
    AttachAuthToken(token, &context);
    pnn::v1::SubmitJobResponse response;
    grpc::Status status =
        cluster_.stub()->SubmitJob(&context, cluster_.Request(2), &response);
    return std::make_pair(status, response.job_id());
  };
  for (const std::string& token : {std::string(), std::string("nope")}) {
    auto [status, id] = call_submit(token);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_THAT(status.error_message(), ::testing::Not(HasSubstr("s3cret")));
  }
  {
    grpc::ClientContext context;
    pnn::v1::WatchJobRequest request;
    request.set_job_id("job-x");
    auto reader = cluster_.stub()->WatchJob(&context, request);
    pnn::v1::JobEvent event;
    EXPECT_FALSE(reader->Read(&event));
    EXPECT_EQ(reader->Finish().error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  auto [status, id] = call_submit("s3cret-token");
  ASSERT_TRUE(status.ok()) << status.error_message();
  // The coordinator passes its token to the worker with the task.
  for (int i = 0; i < 400; ++i) {
    grpc::ClientContext context;
    AttachAuthToken("s3cret-token", &context);
    pnn::v1::GetJobRequest request;
    request.set_job_id(id);
    Job job;
    ASSERT_TRUE(cluster_.stub()->GetJob(&context, request, &job).ok());
    if (job.state() == pnn::v1::JOB_STATE_SUCCEEDED) break;
    ASSERT_NE(job.state(), pnn::v1::JOB_STATE_FAILED) << job.message();
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  {
    grpc::ClientContext context;
    AttachAuthToken("s3cret-token", &context);
    pnn::v1::GetJobRequest request;
    request.set_job_id(id);
    Job job;
    ASSERT_TRUE(cluster_.stub()->GetJob(&context, request, &job).ok());
    EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED);
  }
  // Workers accept training only from a caller with the token.
  auto worker = pnn::v1::Worker::NewStub(
      MakeChannel(cluster_.workers().back()->listen_address()));
  grpc::ClientContext context;
  pnn::v1::TrainSegmentRequest request;
  request.mutable_task()->set_job_id("intruder");
  auto reader = worker->TrainSegment(&context, request);
  pnn::v1::TrainSegmentUpdate update;
  EXPECT_FALSE(reader->Read(&update));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

TEST(SeparateTokensTest, ClientsCannotRegisterAndWorkersCannotSubmit) {
  // Fault: clients and workers shared one token, so any client could
  // register as a worker (and take over a worker's address).
  LocalCluster cluster;
  LocalClusterOptions options;
  options.auth_token = "client-token";
  options.worker_token = "worker-token";
  ASSERT_TRUE(cluster.Start(options).ok());
  cluster.AddWorker();  // registers with the worker token
  cluster.WaitForWorkers(1);
  auto call = [&](const std::string& token, bool submit) {
    grpc::ClientContext context;
    AttachAuthToken(token, &context);
    if (submit) {
      pnn::v1::SubmitJobResponse response;
      return cluster.stub()->SubmitJob(&context, LocalCluster::Request(2),
                                       &response);
    }
    pnn::v1::RegisterWorkerRequest request;
    request.mutable_worker()->set_address("127.0.0.1:9");
    pnn::v1::RegisterWorkerResponse response;
    return cluster.stub()->RegisterWorker(&context, request, &response);
  };
  EXPECT_EQ(call("client-token", /*submit=*/false).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(call("worker-token", /*submit=*/true).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(cluster.RegisteredWorkers(), 1);
  // A client's job trains on the worker: the coordinator sends the
  // worker token with the task.
  grpc::ClientContext context;
  AttachAuthToken("client-token", &context);
  pnn::v1::SubmitJobResponse submitted;
  ASSERT_TRUE(cluster.stub()
                  ->SubmitJob(&context, LocalCluster::Request(2), &submitted)
                  .ok());
  auto job = cluster.coordinator().GetJob(submitted.job_id());
  for (int i = 0; i < 800 && job.ok() && !IsFinal(job->state()); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    job = cluster.coordinator().GetJob(submitted.job_id());
  }
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), pnn::v1::JOB_STATE_SUCCEEDED) << job->message();
}

// Checks what every job with evaluation points has: a time-ordered curve
// that ends with the trained model, and checkpoint bytes kept apart from
// the training traffic.
void ExpectACurve(const Job& job, int points_at_least) {
  ASSERT_GE(job.evaluations_size(), points_at_least);
  double last_seconds = 0;
  for (const auto& point : job.evaluations()) {
    EXPECT_GE(point.wall_seconds(), last_seconds);
    last_seconds = point.wall_seconds();
    EXPECT_GT(point.test_accuracy(), 0);
    EXPECT_GE(point.cpu_seconds(), 0);
  }
  EXPECT_LE(last_seconds, job.training_seconds() + 1e-6);
  EXPECT_DOUBLE_EQ(job.evaluations().rbegin()->test_accuracy(),
                   job.joined_test_accuracy());
  EXPECT_DOUBLE_EQ(job.evaluations().rbegin()->epochs_done(),
                   job.spec().training().epochs());
  EXPECT_GT(job.checkpoint_bytes(), 0);
  int64_t received = 0;
  for (const auto& segment : job.segments()) received += segment.bytes_received();
  EXPECT_EQ(job.bytes_received(), received);
}

TEST_F(ClusterTest, ConventionalJobTrainsTheWholeNetworkWithAnAccuracyCurve) {
  cluster_.AddWorker();
  cluster_.WaitForWorkers(1);
  auto request = cluster_.Request(3);
  request.mutable_spec()->set_parallelism(pnn::v1::PARALLELISM_CONVENTIONAL);
  request.mutable_spec()->set_evaluations_per_epoch(2);
  const std::string id = cluster_.Submit(request);
  grpc::Status status;
  cluster_.Watch(id, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const Job job = cluster_.Get(id);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  ASSERT_EQ(job.segments_size(), 1);
  EXPECT_EQ(job.segments(0).first_layer(), 1);
  EXPECT_EQ(job.segments(0).last_layer(), 3);
  EXPECT_GT(job.test().accuracy(), 0.9);
  EXPECT_GT(job.training_seconds(), 0);
  ExpectACurve(job, 6);
  EXPECT_EQ(job.evaluations_size(), 6);  // one task: one point per checkpoint
  EXPECT_DOUBLE_EQ(job.evaluations(0).epochs_done(), 0.5);
  // Conventional jobs have their own baseline already.
  request.set_conventional_baseline(true);
  grpc::ClientContext context;
  pnn::v1::SubmitJobResponse response;
  status = cluster_.stub()->SubmitJob(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("conventional_baseline"));
}

TEST_F(ClusterTest, PartitionedCurveJoinsTheSegmentsLatestCheckpoints) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  auto request = cluster_.Request(2);
  request.mutable_spec()->set_evaluations_per_epoch(2);
  const std::string id = cluster_.Submit(request);
  grpc::Status status;
  cluster_.Watch(id, &status);
  const Job job = cluster_.Get(id);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  // Four checkpoints per segment; a point needs both segments.
  ExpectACurve(job, 1);
  EXPECT_LE(job.evaluations_size(), 8);
  EXPECT_GT(job.evaluations().rbegin()->test_accuracy(), 0.5);  // 4 classes
}

TEST_F(ClusterTest, AWorkerPreloadsItsDataSetOrRefusesToStart) {
  worker::WorkerOptions options;
  options.listen_host = "127.0.0.1";
  options.data_dir = cluster_.data_dir();
  options.threads = 1;
  options.preload_datasets = {"no-such-data"};
  worker::WorkerServer cold(options);
  auto refused = cold.Start();
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(),
              HasSubstr("preloading data set \"no-such-data\""));
  options.preload_datasets = {"toy"};
  worker::WorkerServer warm(options);
  auto started = warm.Start();
  ASSERT_TRUE(started.ok()) << started.status();
  warm.Shutdown();
}

// A worker that trains one epoch in no time, reports it with a resumable
// state, and then crashes (the stream ends UNAVAILABLE).
class CrashAfterOneEpochWorker final
    : public pnn::v1::Worker::CallbackService {
 public:
  static constexpr double kMarkerLoss = 0.4321;

  grpc::ServerWriteReactor<pnn::v1::TrainSegmentUpdate>* TrainSegment(
      grpc::CallbackServerContext*,
      const pnn::v1::TrainSegmentRequest* request) override {
    ++calls_;
    const auto& task = request->task();
    // Real initial weights, so the resumed run can still learn.
    SegmentModel model(TaskArchitecture(task));
    InitializeWeights(model, task.seed());
    class Reactor
        : public grpc::ServerWriteReactor<pnn::v1::TrainSegmentUpdate> {
     public:
      explicit Reactor(pnn::v1::TrainSegmentUpdate update)
          : update_(std::move(update)) {
        StartWrite(&update_);
      }
      void OnWriteDone(bool) override {
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker crashed"));
      }
      void OnDone() override { delete this; }

     private:
      pnn::v1::TrainSegmentUpdate update_;
    };
    pnn::v1::TrainSegmentUpdate update;
    auto* checkpoint = update.mutable_checkpoint();
    checkpoint->set_epoch(1);
    checkpoint->set_epochs_done(1);
    auto* state = checkpoint->mutable_state();
    state->set_epochs_done(1);
    *state->mutable_weights() = ExportWeights(model, task.segment_index());
    auto* epoch = state->add_epochs();
    epoch->set_epoch(1);
    epoch->set_train_loss(kMarkerLoss);
    return new Reactor(std::move(update));
  }
  std::atomic<int> calls_{0};
};

TEST_F(ClusterTest, ARetriedSegmentResumesFromItsLastFinishedEpoch) {
  CrashAfterOneEpochWorker crashing;
  auto crashing_server = cluster_.ServeAndRegister(&crashing);
  ASSERT_TRUE(crashing_server.ok()) << crashing_server.status();
  auto request = cluster_.Request(3);
  request.mutable_spec()->set_parallelism(pnn::v1::PARALLELISM_CONVENTIONAL);
  const std::string id = cluster_.Submit(request);
  for (int i = 0; i < 200 && crashing.calls_ == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(crashing.calls_, 1);
  cluster_.AddWorker();
  grpc::Status status;
  cluster_.Watch(id, &status);
  const Job job = cluster_.Get(id);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  const auto& task = job.segments(0);
  EXPECT_EQ(task.attempts(), 2);
  EXPECT_THAT(task.error(), HasSubstr("worker crashed"));
  EXPECT_EQ(task.resumed_from_epoch(), 1);
  // Epoch 1 is the crashed attempt's; the real worker trained 2 and 3.
  ASSERT_EQ(task.epochs_size(), 3);
  EXPECT_DOUBLE_EQ(task.epochs(0).train_loss(),
                   CrashAfterOneEpochWorker::kMarkerLoss);
  EXPECT_EQ(task.epochs(2).epoch(), 3);
  EXPECT_GT(job.test().accuracy(), 0.8);
  crashing_server->server->Shutdown();
}

}  // namespace
}  // namespace pnn
