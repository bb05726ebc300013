// Model-parallel jobs (PARALLELISM_MODEL_PARALLEL) through the services:
// the real coordinator and workers on loopback, in-process. Activations and
// gradients travel between the workers (Worker.StageForward) every batch.
#include <ATen/ATen.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "common/partition.h"
#include "common/tensor_codec.h"
#include "coordinator/service.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"
#include "tests/local_cluster.h"
#include "tests/test_util.h"
#include "worker/worker_server.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;
using pnn::v1::Job;

constexpr int kTrainSamples = 2048;
constexpr int kBatch = 32;

class PipelineClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LocalClusterOptions options;
    options.train_samples = kTrainSamples;
    options.worker_timeout = absl::Milliseconds(800);
    // Workers call each other with the deployment's token.
    options.auth_token = kToken;
    const absl::Status started = cluster_.Start(options);
    ASSERT_TRUE(started.ok()) << started;
  }

  void TearDown() override { cluster_.Shutdown(); }

  // 36-32-16-4 (cut after layer 1) or, with `three_stages`, 36-32-24-16-4
  // cut after layers 1 and 2. micro_batches 0: the default (4 per stage).
  static pnn::v1::SubmitJobRequest Request(
      int epochs, bool three_stages = false, int micro_batches = 0,
      pnn::v1::PipelineSchedule schedule =
          pnn::v1::PIPELINE_SCHEDULE_UNSPECIFIED) {
    pnn::v1::SubmitJobRequest request = LocalCluster::Request(epochs);
    auto* spec = request.mutable_spec();
    if (three_stages) {
      spec->mutable_model()->set_hidden_widths(1, 24);
      spec->mutable_model()->add_hidden_widths(16);
      spec->mutable_model()->add_cut_after_layers(2);
    }
    spec->mutable_training()->set_batch_size(kBatch);
    spec->set_parallelism(pnn::v1::PARALLELISM_MODEL_PARALLEL);
    spec->mutable_pipeline()->set_micro_batches(micro_batches);
    spec->mutable_pipeline()->set_schedule(schedule);
    return request;
  }

  Job WaitUntil(const std::string& id,
                const std::function<bool(const Job&)>& done,
                int seconds = 120) {
    Job job;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    do {
      job = cluster_.Get(id);
      if (done(job)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } while (std::chrono::steady_clock::now() < deadline);
    return job;
  }

  Job WaitForEnd(const std::string& id) {
    return WaitUntil(id, [](const Job& job) { return IsFinal(job.state()); });
  }

  static constexpr char kToken[] = "pipeline-test-token";
  TempDir empty_;  // a data root without the data set
  LocalCluster cluster_;
};

TEST_F(PipelineClusterTest, ModelParallelJobTrainsAcrossTwoWorkers) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  // One micro-batch per batch: the bytes below are one call per batch.
  auto request = Request(/*epochs=*/2, false, /*micro_batches=*/1);
  request.mutable_spec()->set_evaluations_per_epoch(2);
  const std::string id = cluster_.Submit(request);
  const Job job = WaitForEnd(id);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  ASSERT_EQ(job.segments_size(), 2);
  const auto& first = job.segments(0);
  const auto& last = job.segments(1);
  EXPECT_NE(first.worker_id(), last.worker_id());
  EXPECT_EQ(first.attempts(), 1);
  EXPECT_EQ(last.epochs_size(), 2);
  // Every stage reports the pipeline's loss.
  EXPECT_NEAR(first.epochs(1).train_loss(), last.epochs(1).train_loss(),
              1e-6);
  EXPECT_GT(job.test().accuracy(), 0.8);

  // Every batch, the cut's activations [32, 32] go forward and their
  // gradient comes back: at least 2 x 4 KiB of floats per batch.
  const int64_t batches = 2 * (kTrainSamples / kBatch);
  const int64_t floor = 2 * batches * kBatch * 32 * 4;
  EXPECT_GE(job.peer_bytes(), floor);
  EXPECT_LT(job.peer_bytes(), floor * 12 / 10);  // little framing on top
  // Counted once, by the stage that sends the activations.
  EXPECT_GT(first.cost().peer_bytes_sent(), batches * kBatch * 32 * 4);
  EXPECT_GT(first.cost().peer_bytes_received(), batches * kBatch * 32 * 4);
  EXPECT_EQ(last.cost().peer_bytes_sent(), 0);
  EXPECT_EQ(job.peer_bytes(), first.cost().peer_bytes_sent() +
                                  first.cost().peer_bytes_received());
  // The stages checkpointed the same batches: 2 evaluations per epoch.
  ASSERT_EQ(job.evaluations_size(), 4);
  EXPECT_DOUBLE_EQ(job.evaluations(3).epochs_done(), 2.0);
  EXPECT_DOUBLE_EQ(job.evaluations(3).test_accuracy(), job.test().accuracy());

  // Exactly conventional training: the same network trained end to end on
  // one worker with the same seed tests the same. (Matrices this small stay
  // on one BLAS thread; with larger ones, OpenBLAS's own threads, which
  // --threads does not limit, can change the last bits of a result.)
  auto conventional = Request(/*epochs=*/2);
  conventional.mutable_spec()->set_parallelism(
      pnn::v1::PARALLELISM_CONVENTIONAL);
  conventional.mutable_spec()->clear_pipeline();
  const Job whole = WaitForEnd(cluster_.Submit(conventional));
  ASSERT_EQ(whole.state(), pnn::v1::JOB_STATE_SUCCEEDED) << whole.message();
  EXPECT_NEAR(whole.test().accuracy(), job.test().accuracy(), 1e-9);
  EXPECT_NEAR(whole.test().loss(), job.test().loss(), 1e-4);
  EXPECT_EQ(whole.peer_bytes(), 0);
}

// Micro-batches over gRPC, several calls in flight: the same training as
// one micro-batch per batch up to the order of sums, with the measured
// bubble and the activations each schedule keeps in the job.
TEST_F(PipelineClusterTest, MicroBatchedSchedulesTrainLikeOneMicroBatch) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  const Job whole = WaitForEnd(cluster_.Submit(Request(2, false, 1)));
  ASSERT_EQ(whole.state(), pnn::v1::JOB_STATE_SUCCEEDED) << whole.message();
  EXPECT_EQ(whole.pipeline().micro_batches(), 1);
  EXPECT_DOUBLE_EQ(whole.pipeline().bubble_formula(), 0.5);
  for (auto schedule :
       {pnn::v1::PIPELINE_SCHEDULE_GPIPE, pnn::v1::PIPELINE_SCHEDULE_1F1B}) {
    const Job job = WaitForEnd(cluster_.Submit(Request(2, false, 4, schedule)));
    ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
    for (int e = 0; e < 2; ++e) {
      EXPECT_NEAR(job.segments(1).epochs(e).train_loss(),
                  whole.segments(1).epochs(e).train_loss(), 1e-4)
          << schedule;
    }
    EXPECT_NEAR(job.test().accuracy(), whole.test().accuracy(), 0.01);
    const pnn::v1::PipelineReport& pipeline = job.pipeline();
    EXPECT_EQ(pipeline.micro_batches(), 4);
    EXPECT_EQ(pipeline.schedule(), schedule);
    EXPECT_DOUBLE_EQ(pipeline.bubble_formula(), 1.0 / 5);
    ASSERT_EQ(pipeline.stage_idle_fractions_size(), 2);
    for (double idle : pipeline.stage_idle_fractions()) {
      EXPECT_GT(idle, 0);
      EXPECT_LT(idle, 1);
    }
    EXPECT_DOUBLE_EQ(pipeline.bubble_fraction(),
                     std::min(pipeline.stage_idle_fractions(0),
                              pipeline.stage_idle_fractions(1)));
    // GPipe keeps every micro-batch of a batch; 1F1B's first stage two
    // (itself and the one in the last stage), the last stage one.
    const bool gpipe = schedule == pnn::v1::PIPELINE_SCHEDULE_GPIPE;
    EXPECT_EQ(job.segments(0).cost().micro_batches_kept(), gpipe ? 4 : 2);
    EXPECT_EQ(job.segments(1).cost().micro_batches_kept(), gpipe ? 4 : 1);
    EXPECT_EQ(pipeline.activation_bytes(),
              job.segments(0).cost().activation_bytes() +
                  job.segments(1).cost().activation_bytes());
    if (gpipe) {
      // And the output gradients of its linear layer (32 wide) that wait
      // for the batch's end (common/weight_gradient_tape.h).
      EXPECT_EQ(job.segments(0).cost().activation_bytes(),
                whole.segments(0).cost().activation_bytes() +
                    32 * kBatch * 4);
    } else {
      EXPECT_EQ(job.segments(0).cost().activation_bytes() * 2,
                whole.segments(0).cost().activation_bytes());
    }
  }
}

// Cuts chosen by the coordinator: the job says where and what it predicted,
// and trains with them; a budget no split fits is refused at submission.
TEST_F(PipelineClusterTest, TheCoordinatorChoosesTheCutsWhenAsked) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  auto request = Request(/*epochs=*/1);
  request.mutable_spec()->mutable_model()->clear_cut_after_layers();
  request.mutable_spec()->mutable_auto_cut()->set_segments(2);
  const Job job = WaitForEnd(cluster_.Submit(request));
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  // 36-32-16-4: the first layer (2 x 36 x 32 x 2 FLOPs) outweighs the rest
  // (3 x (32 x 16 + 16 x 4) x 2).
  ASSERT_EQ(job.cut_plan().cut_after_layers_size(), 1);
  EXPECT_EQ(job.cut_plan().cut_after_layers(0), 1);
  EXPECT_EQ(job.spec().model().cut_after_layers(0), 1);
  EXPECT_FALSE(job.spec().has_auto_cut());
  ASSERT_EQ(job.cut_plan().segments_size(), 2);
  EXPECT_EQ(job.cut_plan().segments(0).training_flops_per_sample(),
            2 * 2 * 36 * 32);
  EXPECT_EQ(job.segments_size(), 2);
  EXPECT_EQ(job.segments(1).first_layer(), 2);
  // Four micro-batches per stage, counted once the stages were known.
  EXPECT_EQ(job.spec().pipeline().micro_batches(), 8);

  request.mutable_spec()->mutable_auto_cut()->Clear();
  request.mutable_spec()->mutable_auto_cut()->set_device_memory_bytes(100);
  grpc::ClientContext context;
  AttachAuthToken(kToken, &context);
  pnn::v1::SubmitJobResponse response;
  const grpc::Status refused =
      cluster_.stub()->SubmitJob(&context, request, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.error_message(),
              HasSubstr("smallest budget that would work"));
}

TEST_F(PipelineClusterTest, ThreeStagesPassActivationsThroughTheMiddle) {
  for (int i = 0; i < 3; ++i) cluster_.AddWorker();
  cluster_.WaitForWorkers(3);
  // 1F1B with 6 micro-batches: the middle stage receives, forwards and
  // answers several at once.
  const Job job = WaitForEnd(cluster_.Submit(
      Request(/*epochs=*/1, true, 6, pnn::v1::PIPELINE_SCHEDULE_1F1B)));
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  ASSERT_EQ(job.segments_size(), 3);
  EXPECT_EQ(job.segments(1).cost().micro_batches_kept(), 2);
  // The first two stages each send to the next one: cut widths 32 and 24.
  const int64_t batches = kTrainSamples / kBatch;
  EXPECT_GE(job.segments(0).cost().peer_bytes_sent(),
            batches * kBatch * 32 * 4);
  EXPECT_GE(job.segments(1).cost().peer_bytes_sent(),
            batches * kBatch * 24 * 4);
  EXPECT_EQ(job.segments(2).cost().peer_bytes_sent(), 0);
  EXPECT_GE(job.peer_bytes(), 2 * batches * kBatch * (32 + 24) * 4);
  EXPECT_GT(job.test().accuracy(), 0.5);
}

TEST_F(PipelineClusterTest, StagesWaitForEnoughIdleWorkersAtOnce) {
  cluster_.AddWorker();
  cluster_.WaitForWorkers(1);
  const std::string id = cluster_.Submit(Request(/*epochs=*/1));
  // One worker is not enough for two stages, and none starts alone.
  Job job = WaitUntil(id, [](const Job& job) {
    return absl::StrContains(job.message(), "idle workers at once");
  }, 10);
  EXPECT_THAT(job.message(), HasSubstr("waiting for 2 idle workers at once"));
  EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_QUEUED);
  for (const auto& segment : job.segments()) {
    EXPECT_NE(segment.state(), pnn::v1::TASK_STATE_RUNNING);
  }
  cluster_.AddWorker();
  job = WaitForEnd(id);
  EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
}

TEST_F(PipelineClusterTest, LostStageWorkerRestartsThePipelineElsewhere) {
  for (int i = 0; i < 3; ++i) cluster_.AddWorker();
  cluster_.WaitForWorkers(3);
  const std::string id = cluster_.Submit(Request(/*epochs=*/30));
  // Mid-training, the last stage's worker goes away.
  Job job = WaitUntil(id, [](const Job& job) {
    return job.segments_size() == 2 && job.segments(1).progress() > 0.05;
  });
  ASSERT_GT(job.segments(1).progress(), 0.05);
  const std::string lost = job.segments(1).worker_address();
  for (auto& worker : cluster_.workers()) {
    if (worker->advertise_address() == lost) worker->Shutdown();
  }
  job = WaitForEnd(id);
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  // Both stages trained again, together, away from the lost worker.
  EXPECT_GE(job.segments(0).attempts(), 2);
  EXPECT_EQ(job.segments(1).attempts(), job.segments(0).attempts());
  EXPECT_NE(job.segments(1).worker_address(), lost);
  EXPECT_NE(job.segments(0).worker_address(), lost);
  EXPECT_EQ(job.segments(1).epochs_size(), 30);
}

TEST_F(PipelineClusterTest, CancellingTheJobStopsEveryStagePromptly) {
  cluster_.AddWorker();
  cluster_.AddWorker();
  cluster_.WaitForWorkers(2);
  const std::string id = cluster_.Submit(Request(/*epochs=*/200));
  Job job = WaitUntil(id, [](const Job& job) {
    return job.segments_size() == 2 && job.segments(1).progress() > 0;
  });
  ASSERT_GT(job.segments(1).progress(), 0);
  grpc::ClientContext context;
  AttachAuthToken(kToken, &context);
  pnn::v1::CancelJobRequest cancel;
  cancel.set_job_id(id);
  Job cancelled;
  ASSERT_TRUE(cluster_.stub()->CancelJob(&context, cancel, &cancelled).ok());
  EXPECT_EQ(WaitForEnd(id).state(), pnn::v1::JOB_STATE_CANCELLED);
  // Both stages stop between batches, the waiting one included.
  const auto& workers = cluster_.workers();
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while ((workers[0]->busy() || workers[1]->busy()) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_FALSE(workers[0]->busy());
  EXPECT_FALSE(workers[1]->busy());
}

TEST_F(PipelineClusterTest, AStageThatCannotWorkFailsTheJobNamingIt) {
  // Workers without the data set: the first stage cannot read it, and no
  // retry would help.
  const auto without_data = [this](worker::WorkerOptions* options) {
    options->data_dir = empty_.path();
  };
  cluster_.AddWorker(without_data);
  cluster_.AddWorker(without_data);
  cluster_.WaitForWorkers(2);
  const Job job = WaitForEnd(cluster_.Submit(Request(/*epochs=*/3)));
  ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_FAILED);
  EXPECT_THAT(job.message(), HasSubstr("segment 1/2"));
  EXPECT_THAT(job.message(), HasSubstr(job.segments(0).worker_id()));
  EXPECT_THAT(job.message(), HasSubstr("model-parallel"));
  EXPECT_EQ(job.segments(0).state(), pnn::v1::TASK_STATE_FAILED);
  EXPECT_EQ(job.segments(1).state(), pnn::v1::TASK_STATE_CANCELLED);
  EXPECT_EQ(job.segments(0).attempts(), 1);
}

// The worker's side of StageForward, driven directly: a standalone worker,
// a stage task handed to it by hand.
class StageForwardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    worker::WorkerOptions options;
    options.listen_host = "127.0.0.1";
    options.data_dir = data_.path();
    options.threads = 1;
    options.auth_token = "t";
    options.stage_idle_timeout_ms = 1500;
    options.name = "standalone";
    worker_ = std::make_unique<worker::WorkerServer>(options);
    auto port = worker_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    stub_ = pnn::v1::Worker::NewStub(
        MakeChannel(absl::StrCat("127.0.0.1:", *port)));

    pnn::v1::JobSpec spec;
    spec.mutable_model()->add_hidden_widths(8);
    spec.mutable_model()->add_cut_after_layers(1);
    spec.mutable_training()->set_epochs(1);
    spec.mutable_dataset()->set_path("toy");
    spec.set_parallelism(pnn::v1::PARALLELISM_MODEL_PARALLEL);
    auto resolved = ResolveJobSpec(spec);
    ASSERT_TRUE(resolved.ok()) << resolved.status();
    auto tasks = PlanSegmentTasks(*resolved, ImageShape{1, 6, 6}, 4, "job-stage");
    ASSERT_TRUE(tasks.ok()) << tasks.status();
    task_ = (*tasks)[1];
    task_.mutable_pipeline()->set_session_id("session-1");
  }

  void TearDown() override { worker_->Shutdown(); }

  // Starts the stage task; its stream stays open in `stream_`.
  void StartStage() {
    train_context_ = std::make_unique<grpc::ClientContext>();
    AttachAuthToken("t", train_context_.get());
    pnn::v1::TrainSegmentRequest request;
    *request.mutable_task() = task_;
    stream_ = stub_->TrainSegment(train_context_.get(), request);
    pnn::v1::TrainSegmentUpdate update;
    ASSERT_TRUE(stream_->Read(&update));
    ASSERT_TRUE(update.has_started());
  }

  grpc::Status Forward(const pnn::v1::StageForwardRequest& request,
                       pnn::v1::StageForwardResponse* response,
                       const std::string& token = "t") {
    grpc::ClientContext context;
    AttachAuthToken(token, &context);
    return stub_->StageForward(&context, request, response);
  }

  pnn::v1::StageForwardRequest Batch(int64_t batch,
                                     const std::string& session) {
    pnn::v1::StageForwardRequest request;
    request.set_job_id("job-stage");
    request.set_session_id(session);
    request.set_stage_index(1);
    *request.mutable_activations() =
        TensorToProto("activations", at::randn({4, 8}));
    for (int label : {0, 1, 2, 3}) request.add_labels(label);
    request.set_epoch(1);
    request.set_batch(batch);
    request.set_batches_per_epoch(2);
    return request;
  }

  TempDir data_;
  std::unique_ptr<worker::WorkerServer> worker_;
  std::unique_ptr<pnn::v1::Worker::Stub> stub_;
  pnn::v1::SegmentTask task_;
  std::unique_ptr<grpc::ClientContext> train_context_;
  std::unique_ptr<grpc::ClientReader<pnn::v1::TrainSegmentUpdate>> stream_;
};

TEST_F(StageForwardTest, RefusesCallsThatAreNotForTheRunningStage) {
  pnn::v1::StageForwardResponse response;
  EXPECT_EQ(Forward(Batch(1, "session-1"), &response, "wrong").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // No stage yet: the caller should retry.
  EXPECT_EQ(Forward(Batch(1, "session-1"), &response).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  StartStage();
  grpc::Status other = Forward(Batch(1, "session-0"), &response);
  EXPECT_EQ(other.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(other.error_message(), HasSubstr("session-1"));
  auto wrong_stage = Batch(1, "session-1");
  wrong_stage.set_stage_index(2);
  EXPECT_EQ(Forward(wrong_stage, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);

  // The right calls train the stage and end it with its result.
  for (int64_t batch : {1, 2}) {
    grpc::Status status = Forward(Batch(batch, "session-1"), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.input_gradient().shape_size(), 2);
    EXPECT_EQ(response.input_gradient().shape(1), 8);
    EXPECT_GT(response.loss(), 0);
  }
  pnn::v1::StageForwardRequest finish = Batch(3, "session-1");
  finish.clear_activations();
  finish.set_finish(true);
  ASSERT_TRUE(Forward(finish, &response).ok());
  pnn::v1::TrainSegmentUpdate update;
  bool got_result = false;
  while (stream_->Read(&update)) got_result |= update.has_result();
  EXPECT_TRUE(stream_->Finish().ok());
  EXPECT_TRUE(got_result);
  // A late call hears that the stage has ended instead of retrying.
  grpc::Status late = Forward(Batch(1, "session-1"), &response);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(late.error_message(), HasSubstr("ended"));
}

TEST_F(StageForwardTest, AWaitingStageGivesUpWithoutBatches) {
  StartStage();
  const auto start = std::chrono::steady_clock::now();
  pnn::v1::TrainSegmentUpdate update;
  while (stream_->Read(&update)) {
  }
  const grpc::Status status = stream_->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status.error_message(), HasSubstr("no batch"));
  EXPECT_LT(std::chrono::steady_clock::now() - start,
            std::chrono::seconds(10));
}

TEST_F(StageForwardTest, CancelStopsAWaitingStageAtOnce) {
  StartStage();
  grpc::ClientContext context;
  AttachAuthToken("t", &context);
  pnn::v1::CancelSegmentRequest cancel;
  cancel.set_job_id("job-stage");
  cancel.set_segment_index(1);
  pnn::v1::CancelSegmentResponse cancelled;
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(stub_->CancelSegment(&context, cancel, &cancelled).ok());
  EXPECT_TRUE(cancelled.cancelled());
  pnn::v1::TrainSegmentUpdate update;
  while (stream_->Read(&update)) {
  }
  EXPECT_EQ(stream_->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(std::chrono::steady_clock::now() - start,
            std::chrono::milliseconds(1000));
}

}  // namespace
}  // namespace pnn
