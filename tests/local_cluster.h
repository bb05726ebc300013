// A whole pnn cluster in one test process, for the cluster tests.
//
// Contract: LocalCluster::Start writes the synthetic "toy" data set under a
// fresh data root (data_dir()), then starts the real CoordinatorServer on
// 127.0.0.1 with a free port. AddWorker starts real in-process
// WorkerServers that register with it; ServeAndRegister serves a
// hand-written Worker service on 127.0.0.1 and registers it by hand. The
// client helpers (Submit, Get, Watch, Download, RegisterWorker) carry the
// cluster's token, if it has one, and report RPC failures through gtest
// expectations. Shutdown (also run by the destructor) stops the workers,
// then the coordinator; the temporary directories go with the object.
// Not thread-safe, except Request and the stub's calls.
#ifndef PNN_TESTS_LOCAL_CLUSTER_H_
#define PNN_TESTS_LOCAL_CLUSTER_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/dataset.h"
#include "coordinator/service.h"
#include "gtest/gtest.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"
#include "tests/test_util.h"
#include "worker/worker_server.h"

namespace pnn {

struct LocalClusterOptions {
  // Samples of the synthetic "toy" data set (36 pixels, 4 classes).
  int train_samples = 2048;
  int test_samples = 512;
  // The coordinator's token; workers and the client helpers use it too.
  // Empty: no authentication.
  std::string auth_token;
  // The workers' own token (Coordinator::Options::worker_token); empty:
  // they use auth_token.
  std::string worker_token;
  absl::Duration heartbeat_interval = absl::Milliseconds(100);
  absl::Duration worker_timeout = absl::Milliseconds(600);
};

// Whether a job has reached a state it never leaves.
inline bool IsFinal(pnn::v1::JobState state) {
  return state == pnn::v1::JOB_STATE_SUCCEEDED ||
         state == pnn::v1::JOB_STATE_FAILED ||
         state == pnn::v1::JOB_STATE_CANCELLED;
}

class LocalCluster {
 public:
  // A hand-written Worker service served on loopback and registered.
  struct ServedWorker {
    std::unique_ptr<grpc::Server> server;
    std::string address;    // 127.0.0.1:port
    std::string worker_id;  // what the coordinator assigned
  };
  using WorkerEdit = std::function<void(worker::WorkerOptions*)>;

  LocalCluster() = default;
  ~LocalCluster() { Shutdown(); }
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  // Writes the data set and starts the coordinator; call once.
  absl::Status Start(LocalClusterOptions options = {}) {
    options_ = std::move(options);
    SyntheticDatasetOptions toy;
    toy.train_samples = options_.train_samples;
    toy.test_samples = options_.test_samples;
    absl::Status written =
        WriteDatasetAsIdx(MakeSyntheticDataset(toy), data_.path() + "/toy");
    if (!written.ok()) return written;
    CoordinatorServer::Options server;
    server.listen_host = "127.0.0.1";
    server.coordinator.state_dir = state_.path();
    server.coordinator.data_dir = data_.path();
    server.coordinator.heartbeat_interval = options_.heartbeat_interval;
    server.coordinator.worker_timeout = options_.worker_timeout;
    server.coordinator.auth_token = options_.auth_token;
    server.coordinator.worker_token = options_.worker_token;
    coordinator_ = std::make_unique<CoordinatorServer>(server);
    absl::StatusOr<int> port = coordinator_->Start();
    if (!port.ok()) return port.status();
    target_ = absl::StrCat("127.0.0.1:", *port);
    stub_ = pnn::v1::Coordinator::NewStub(MakeChannel(target_));
    return absl::OkStatus();
  }

  // Stops every worker, then the coordinator. Safe to call again.
  void Shutdown() {
    for (auto& worker : workers_) worker->Shutdown();
    if (coordinator_ != nullptr) coordinator_->Shutdown();
  }

  // Starts a worker (one training thread, the cluster's data root and
  // token, named "test-worker-N"), after `edit` has changed its options.
  worker::WorkerServer* AddWorker(const WorkerEdit& edit = nullptr) {
    worker::WorkerOptions options;
    options.auth_token = options_.worker_token.empty() ? options_.auth_token
                                                       : options_.worker_token;
    options.listen_host = "127.0.0.1";
    options.coordinator = target_;
    options.data_dir = data_.path();
    options.threads = 1;
    options.name = absl::StrCat("test-worker-", workers_.size() + 1);
    if (edit) edit(&options);
    workers_.push_back(std::make_unique<worker::WorkerServer>(options));
    absl::StatusOr<int> port = workers_.back()->Start();
    EXPECT_TRUE(port.ok()) << port.status();
    return workers_.back().get();
  }

  int RegisteredWorkers() {
    return coordinator_->coordinator().registered_workers();
  }

  // Waits up to 10 s until exactly `count` workers are registered (more
  // joining or lost ones leaving); a fatal failure if that never happens.
  void WaitForWorkers(int count) {
    for (int i = 0; i < 400 && RegisteredWorkers() != count; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    ASSERT_EQ(RegisteredWorkers(), count);
  }

  // Serves `service` on 127.0.0.1 (free port) and registers it with the
  // coordinator under `name`.
  absl::StatusOr<ServedWorker> ServeAndRegister(grpc::Service* service,
                                                const std::string& name = "") {
    ServedWorker served;
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(service);
    served.server = builder.BuildAndStart();
    if (served.server == nullptr || port == 0) {
      return absl::UnavailableError("the hand-written worker did not start");
    }
    served.address = absl::StrCat("127.0.0.1:", port);
    grpc::ClientContext context;
    AttachAuthToken(options_.auth_token, &context);
    pnn::v1::RegisterWorkerRequest request;
    request.mutable_worker()->set_address(served.address);
    if (!name.empty()) request.mutable_worker()->set_name(name);
    pnn::v1::RegisterWorkerResponse response;
    const grpc::Status status =
        stub_->RegisterWorker(&context, request, &response);
    if (!status.ok()) {
      served.server->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("RegisterWorker: ", status.error_message()));
    }
    served.worker_id = response.worker_id();
    return served;
  }

  // Two segments of the toy data set: layers 1..1 (input -> 32) and 2..3
  // (32 -> 16 -> classes), batches of 32, everything else the defaults.
  static pnn::v1::SubmitJobRequest Request(int epochs) {
    pnn::v1::SubmitJobRequest request;
    auto* spec = request.mutable_spec();
    spec->mutable_model()->add_hidden_widths(32);
    spec->mutable_model()->add_hidden_widths(16);
    spec->mutable_model()->add_cut_after_layers(1);
    spec->mutable_training()->set_epochs(epochs);
    spec->mutable_training()->set_batch_size(32);
    spec->mutable_dataset()->set_path("toy");
    return request;
  }

  // Submits `request`; expects success and returns the job's id.
  std::string Submit(const pnn::v1::SubmitJobRequest& request) {
    grpc::ClientContext context;
    AttachAuthToken(options_.auth_token, &context);
    pnn::v1::SubmitJobResponse response;
    grpc::Status status = stub_->SubmitJob(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.job_id();
  }

  pnn::v1::Job Get(const std::string& id) {
    grpc::ClientContext context;
    AttachAuthToken(options_.auth_token, &context);
    pnn::v1::GetJobRequest request;
    request.set_job_id(id);
    pnn::v1::Job job;
    EXPECT_TRUE(stub_->GetJob(&context, request, &job).ok());
    return job;
  }

  // Follows WatchJob to the end (at most 120 s); returns every event.
  std::vector<pnn::v1::JobEvent> Watch(const std::string& id,
                                       grpc::Status* status) {
    grpc::ClientContext context;
    AttachAuthToken(options_.auth_token, &context);
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(120));
    pnn::v1::WatchJobRequest request;
    request.set_job_id(id);
    auto reader = stub_->WatchJob(&context, request);
    std::vector<pnn::v1::JobEvent> events;
    pnn::v1::JobEvent event;
    while (reader->Read(&event)) events.push_back(event);
    *status = reader->Finish();
    return events;
  }

  // Downloads the job's model; expects the chunks in order.
  std::string Download(const std::string& id, pnn::v1::ModelFormat format,
                       grpc::Status* status) {
    grpc::ClientContext context;
    AttachAuthToken(options_.auth_token, &context);
    pnn::v1::DownloadModelRequest request;
    request.set_job_id(id);
    request.set_format(format);
    auto reader = stub_->DownloadModel(&context, request);
    std::string bytes;
    pnn::v1::ModelChunk chunk;
    while (reader->Read(&chunk)) {
      EXPECT_EQ(chunk.offset(), static_cast<int64_t>(bytes.size()));
      bytes += chunk.data();
    }
    *status = reader->Finish();
    return bytes;
  }

  const std::string& data_dir() const { return data_.path(); }
  const std::string& state_dir() const { return state_.path(); }
  Coordinator& coordinator() { return coordinator_->coordinator(); }
  const std::string& target() const { return target_; }  // host:port
  pnn::v1::Coordinator::Stub* stub() { return stub_.get(); }
  // In the order AddWorker started them.
  const std::vector<std::unique_ptr<worker::WorkerServer>>& workers() const {
    return workers_;
  }

 private:
  LocalClusterOptions options_;
  TempDir data_;
  TempDir state_;
  std::unique_ptr<CoordinatorServer> coordinator_;
  std::vector<std::unique_ptr<worker::WorkerServer>> workers_;
  std::string target_;
  std::unique_ptr<pnn::v1::Coordinator::Stub> stub_;
};

}  // namespace pnn

#endif  // PNN_TESTS_LOCAL_CLUSTER_H_
