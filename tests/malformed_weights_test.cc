// A worker that reports malformed weights: a fake pnn.v1.Worker on
// loopback registers with the real coordinator (in-process) and answers
// TrainSegment with a result whose weights are bent in one way or another
// (wrong shapes, missing or extra tensors, garbage bytes, NaN, shapes that
// promise far more than the bytes sent). The coordinator must fail that
// job with a reason naming the malformed weights, never crash, and keep
// serving: afterwards a real worker trains another job to the end.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/layers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "tests/local_cluster.h"
#include "worker/worker_server.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;
using pnn::v1::Job;

// A worker that "trains" instantly and returns weights built for the task,
// then bent by `mutate` (wrong shapes, missing tensors, garbage bytes...).
// With no mutation the weights are valid (every parameter 0.01).
class WeightsWorker final : public pnn::v1::Worker::CallbackService {
 public:
  using Mutation = std::function<void(pnn::v1::SegmentWeights*)>;

  static pnn::v1::SegmentWeights ValidWeights(const pnn::v1::SegmentTask& task) {
    pnn::v1::SegmentWeights weights;
    weights.set_segment_index(task.segment_index());
    weights.set_first_layer(task.first_layer());
    weights.set_last_layer(task.last_layer());
    const auto shapes = pnn::InferShapes(pnn::TaskArchitecture(task));
    for (int layer = task.first_layer(); layer <= task.last_layer(); ++layer) {
      const int64_t in = (*shapes)[layer - task.first_layer()].input[0];
      const int64_t out = (*shapes)[layer - task.first_layer()].output[0];
      auto add = [&](const char* kind, std::vector<int64_t> shape) {
        auto* tensor = weights.add_tensors();
        tensor->set_name(absl::StrCat("linear", layer, ".", kind));
        int64_t elements = 1;
        for (int64_t dim : shape) {
          tensor->add_shape(dim);
          elements *= dim;
        }
        const std::vector<float> values(elements, 0.01f);
        tensor->set_data(values.data(), values.size() * sizeof(float));
      };
      add("weight", {out, in});
      add("bias", {out});
    }
    return weights;
  }

  void set_mutation(Mutation mutation) {
    std::lock_guard<std::mutex> lock(mu_);
    mutation_ = std::move(mutation);
  }

  grpc::ServerWriteReactor<pnn::v1::TrainSegmentUpdate>* TrainSegment(
      grpc::CallbackServerContext*,
      const pnn::v1::TrainSegmentRequest* request) override {
    ++calls_;
    std::vector<pnn::v1::TrainSegmentUpdate> updates(2);
    updates[0].mutable_started()->set_worker_name("weights-worker");
    auto* result = updates[1].mutable_result();
    result->set_segment_index(request->task().segment_index());
    *result->mutable_weights() = ValidWeights(request->task());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (mutation_) mutation_(result->mutable_weights());
    }
    return new Writer(std::move(updates));
  }

  std::atomic<int> calls_{0};

 private:
  // Writes the updates one after another, then ends the stream with OK.
  class Writer : public grpc::ServerWriteReactor<pnn::v1::TrainSegmentUpdate> {
   public:
    explicit Writer(std::vector<pnn::v1::TrainSegmentUpdate> updates)
        : updates_(std::move(updates)) {
      Next();
    }
    void OnWriteDone(bool ok) override {
      if (ok) {
        Next();
      } else {
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      }
    }
    void OnDone() override { delete this; }

   private:
    void Next() {
      if (next_ < updates_.size()) {
        StartWrite(&updates_[next_++]);
      } else {
        Finish(grpc::Status::OK);
      }
    }
    std::vector<pnn::v1::TrainSegmentUpdate> updates_;
    size_t next_ = 0;
  };

  std::mutex mu_;
  Mutation mutation_;
};

// The real coordinator on loopback with a toy data set; workers join by
// hand (the fake) or as real in-process worker servers.
class MalformedWeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const absl::Status started = cluster_.Start();
    ASSERT_TRUE(started.ok()) << started;
  }

  void TearDown() override { cluster_.Shutdown(); }

  // Follows WatchJob until the job ends; returns the final job.
  Job WaitUntilFinal(const std::string& id) {
    grpc::Status status;
    cluster_.Watch(id, &status);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return cluster_.Get(id);
  }

  grpc::Status DownloadStatus(const std::string& id) {
    grpc::Status status;
    cluster_.Download(id, pnn::v1::MODEL_FORMAT_SAFETENSORS, &status);
    return status;
  }

  LocalCluster cluster_;
};

// A worker that reports malformed weights fails that job with a clear
// reason (the coordinator checks every result before using it): no crash,
// no retry (DATA_LOSS is not retryable: the coordinator treats it like a
// diverged loss), and nothing else is affected: the coordinator keeps
// serving, and a real worker trains the next job to the end.
TEST_F(MalformedWeightsTest, FailOnlyThatJobWithTheReason) {
  WeightsWorker fake;
  auto fake_server = cluster_.ServeAndRegister(&fake, "weights-worker");
  ASSERT_TRUE(fake_server.ok()) << fake_server.status();
  const std::string fake_id = fake_server->worker_id;
  // The fake heartbeats like a real worker, so that it stays registered
  // however slowly the cases run.
  std::atomic<bool> beating{true};
  std::thread heartbeat([&] {
    auto stub = pnn::v1::Coordinator::NewStub(MakeChannel(cluster_.target()));
    while (beating) {
      grpc::ClientContext context;
      pnn::v1::HeartbeatRequest request;
      request.set_worker_id(fake_id);
      pnn::v1::HeartbeatResponse response;
      stub->Heartbeat(&context, request, &response);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });

  auto tensor = [](pnn::v1::SegmentWeights* weights, const std::string& kind,
                   bool last) -> pnn::v1::Tensor* {
    const int layer = last ? weights->last_layer() : weights->first_layer();
    const std::string name = absl::StrCat("linear", layer, ".", kind);
    for (auto& t : *weights->mutable_tensors()) {
      if (t.name() == name) return &t;
    }
    ADD_FAILURE() << "no tensor " << name;
    static pnn::v1::Tensor dummy;
    return &dummy;
  };
  struct Case {
    std::string name;
    WeightsWorker::Mutation mutate;
    std::string reason;  // besides "malformed weights"
  };
  const std::vector<Case> cases = {
      {"weight matrix transposed (right bytes, wrong shape)",
       [&](auto* w) {
         auto* t = tensor(w, "weight", false);
         const int64_t rows = t->shape(0);
         t->set_shape(0, t->shape(1));
         t->set_shape(1, rows);
       },
       ""},
      {"bias of the wrong length",
       [&](auto* w) {
         auto* t = tensor(w, "bias", true);
         t->set_shape(0, t->shape(0) + 1);
         t->mutable_data()->append(std::string(sizeof(float), '\0'));
       },
       "bias"},
      {"weight with three dimensions",
       [&](auto* w) { tensor(w, "weight", false)->add_shape(1); },
       "has shape [32, 36, 1], the model needs [32, 36]"},
      {"missing bias", [&](auto* w) { w->mutable_tensors()->RemoveLast(); },
       ""},
      {"no tensors at all", [](auto* w) { w->clear_tensors(); },
       "expected 2 tensors"},
      {"an extra tensor",
       [](auto* w) {
         auto* extra = w->add_tensors();
         extra->set_name("linear99.weight");
         extra->add_shape(1);
         extra->set_data(std::string(sizeof(float), '\0'));
       },
       ""},
      {"a tensor twice",
       [](auto* w) { *w->add_tensors() = w->tensors(0); }, "twice"},
      {"garbage bytes of the wrong length",
       [&](auto* w) {
         tensor(w, "weight", false)->set_data("definitely not float32 data");
       },
       "bytes of float32 data"},
      {"data truncated by one byte",
       [&](auto* w) { tensor(w, "weight", false)->mutable_data()->pop_back(); },
       "bytes of float32 data"},
      {"NaN values",
       [&](auto* w) {
         const float nan = std::nanf("");
         tensor(w, "bias", false)->mutable_data()->replace(0, sizeof(float),
             reinterpret_cast<const char*>(&nan), sizeof(float));
       },
       "NaN or Inf"},
      {"no layer range (empty weights)",
       [](auto* w) { w->Clear(); }, "were expected"},
      {"layers of another segment",
       [](auto* w) {
         w->set_first_layer(w->first_layer() + 1);
         w->set_last_layer(w->last_layer() + 1);
       },
       ""},
      {"negative dimension",
       [&](auto* w) { tensor(w, "bias", false)->set_shape(0, -1); }, ""},
      // Shapes that promise far more than the bytes sent: refused before
      // anything of that size is allocated (2^62 parameters; 16 GiB).
      {"a declared shape of 2^31-1 x 2^31-1 with four bytes",
       [&](auto* w) {
         auto* t = tensor(w, "weight", false);
         t->set_shape(0, INT32_MAX);
         t->set_shape(1, INT32_MAX);
         t->set_data(std::string(sizeof(float), '\0'));
       },
       "has shape"},
      {"a declared shape of 65536 x 65536 with the original bytes",
       [&](auto* w) {
         auto* t = tensor(w, "weight", true);
         t->set_shape(0, 65536);
         t->set_shape(1, 65536);
       },
       "has shape"},
  };
  std::vector<std::string> failed_ids;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    fake.set_mutation(c.mutate);
    const int calls_before = fake.calls_;
    const std::string id = cluster_.Submit(cluster_.Request(1));
    ASSERT_FALSE(id.empty());
    const Job job = WaitUntilFinal(id);
    ASSERT_EQ(job.state(), pnn::v1::JOB_STATE_FAILED) << job.message();
    EXPECT_THAT(job.message(), HasSubstr("malformed weights"));
    EXPECT_THAT(job.message(), HasSubstr(fake_id));
    EXPECT_THAT(job.message(), HasSubstr(c.reason));
    // DATA_LOSS is final: one attempt, on the fake, no retry.
    EXPECT_EQ(fake.calls_ - calls_before, 1);
    int failed_segments = 0;
    for (const auto& segment : job.segments()) {
      if (segment.state() != pnn::v1::TASK_STATE_FAILED) continue;
      ++failed_segments;
      EXPECT_EQ(segment.attempts(), 1);
      EXPECT_THAT(segment.error(), ::testing::StartsWith("DATA_LOSS: "));
      EXPECT_THAT(segment.error(), HasSubstr("malformed weights"));
    }
    EXPECT_EQ(failed_segments, 1);
    EXPECT_EQ(job.model_bytes(), 0);
    EXPECT_EQ(DownloadStatus(id).error_code(),
              grpc::StatusCode::FAILED_PRECONDITION);
    failed_ids.push_back(id);
  }

  // The fake's weights are valid unless bent: a control job succeeds on it.
  fake.set_mutation(nullptr);
  const std::string control = cluster_.Submit(cluster_.Request(1));
  {
    const Job job = WaitUntilFinal(control);
    EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  }

  // The fake leaves; a real worker trains the next job to the end.
  beating = false;
  heartbeat.join();
  fake_server->server->Shutdown();
  ASSERT_NO_FATAL_FAILURE(cluster_.WaitForWorkers(0));
  cluster_.AddWorker([](worker::WorkerOptions* options) {
    options->name = "real-worker";
  });
  ASSERT_NO_FATAL_FAILURE(cluster_.WaitForWorkers(1));
  const std::string after = cluster_.Submit(cluster_.Request(2));
  const Job job = WaitUntilFinal(after);
  EXPECT_EQ(job.state(), pnn::v1::JOB_STATE_SUCCEEDED) << job.message();
  EXPECT_GT(job.test().accuracy(), 0.5);

  // Every job is still there, with its outcome.
  grpc::ClientContext context;
  pnn::v1::ListJobsRequest all;
  all.set_page_size(100);
  pnn::v1::ListJobsResponse listed;
  ASSERT_TRUE(cluster_.stub()->ListJobs(&context, all, &listed).ok());
  EXPECT_EQ(listed.jobs_size(), static_cast<int>(cases.size()) + 2);
  for (const std::string& id : failed_ids) {
    EXPECT_EQ(cluster_.Get(id).state(), pnn::v1::JOB_STATE_FAILED) << id;
  }
  std::printf("malformed weights: %zu malformed results tried, %zu jobs "
              "failed with the reason, %d calls to the fake worker; then 2 "
              "jobs succeeded\n",
              cases.size(), failed_ids.size(), fake.calls_.load());
}

}  // namespace
}  // namespace pnn
