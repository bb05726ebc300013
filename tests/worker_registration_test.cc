// Registration and heartbeats against a small fake Coordinator service, and
// the pnn-worker binary itself (flags, log line, signals).
#include <grpcpp/grpcpp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "common/dataset.h"
#include "common/job_spec.h"
#include "common/partition.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "tests/grpc_health.h"
#include "tests/http_get.h"
#include "tests/test_util.h"
#include "worker/worker_server.h"

extern char** environ;

namespace pnn {
namespace worker {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// Records what workers send; answers NOT_FOUND to the first
// `not_found_heartbeats` heartbeats to simulate a coordinator restart.
class FakeCoordinator final : public pnn::v1::Coordinator::Service {
 public:
  explicit FakeCoordinator(int heartbeat_interval_ms = 50,
                           int not_found_heartbeats = 0)
      : interval_ms_(heartbeat_interval_ms),
        not_found_left_(not_found_heartbeats) {}

  grpc::Status RegisterWorker(
      grpc::ServerContext*, const pnn::v1::RegisterWorkerRequest* request,
      pnn::v1::RegisterWorkerResponse* response) override {
    std::lock_guard<std::mutex> lock(mutex_);
    registrations_.push_back(request->worker());
    response->set_worker_id("worker-" + std::to_string(registrations_.size()));
    response->set_heartbeat_interval_ms(interval_ms_);
    changed_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*,
                         const pnn::v1::HeartbeatRequest* request,
                         pnn::v1::HeartbeatResponse*) override {
    std::lock_guard<std::mutex> lock(mutex_);
    heartbeats_.push_back(*request);
    changed_.notify_all();
    if (not_found_left_ > 0) {
      --not_found_left_;
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown worker id");
    }
    return grpc::Status::OK;
  }

  grpc::Status DeregisterWorker(grpc::ServerContext*,
                                const pnn::v1::DeregisterWorkerRequest* request,
                                pnn::v1::DeregisterWorkerResponse*) override {
    std::lock_guard<std::mutex> lock(mutex_);
    deregistered_.push_back(request->worker_id());
    return grpc::Status::OK;
  }
  std::vector<std::string> deregistered() {
    std::lock_guard<std::mutex> lock(mutex_);
    return deregistered_;
  }

  // Waits up to 20 s for `condition` over (registrations, heartbeats).
  bool WaitFor(
      std::function<bool(const std::vector<pnn::v1::WorkerInfo>&,
                         const std::vector<pnn::v1::HeartbeatRequest>&)>
          condition) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, std::chrono::seconds(20), [&] {
      return condition(registrations_, heartbeats_);
    });
  }

  std::vector<pnn::v1::WorkerInfo> registrations() {
    std::lock_guard<std::mutex> lock(mutex_);
    return registrations_;
  }
  std::vector<pnn::v1::HeartbeatRequest> heartbeats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return heartbeats_;
  }

 private:
  const int interval_ms_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int not_found_left_;
  std::vector<pnn::v1::WorkerInfo> registrations_;
  std::vector<pnn::v1::HeartbeatRequest> heartbeats_;
  std::vector<std::string> deregistered_;
};

// The fake served on 127.0.0.1 (port 0: any free port).
class FakeCoordinatorServer {
 public:
  explicit FakeCoordinatorServer(FakeCoordinator* service, int port = 0) {
    grpc::ServerBuilder builder;
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port),
                             grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service);
    server_ = builder.BuildAndStart();
  }
  ~FakeCoordinatorServer() { Stop(); }
  void Stop() {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
  }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

WorkerOptions TestWorkerOptions(const std::string& coordinator) {
  WorkerOptions options;
  options.listen_host = "127.0.0.1";
  options.coordinator = coordinator;
  options.threads = 1;
  options.name = "reg-worker";
  options.registration_initial_retry_ms = 20;
  options.registration_max_retry_ms = 100;
  options.coordinator_rpc_timeout_ms = 2000;
  return options;
}

TEST(WorkerRegistrationTest, RegistersAndHeartbeats) {
  FakeCoordinator fake;
  FakeCoordinatorServer coordinator(&fake);
  ASSERT_GT(coordinator.port(), 0);
  WorkerServer worker(TestWorkerOptions(coordinator.address()));
  auto port = worker.Start();
  ASSERT_TRUE(port.ok()) << port.status();

  ASSERT_TRUE(fake.WaitFor([](const auto& registrations, const auto& beats) {
    return registrations.size() == 1 && beats.size() >= 3;
  }));
  const pnn::v1::WorkerInfo info = fake.registrations()[0];
  EXPECT_EQ(info.address(), "127.0.0.1:" + std::to_string(*port));
  EXPECT_EQ(info.name(), "reg-worker");
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.threads(), 1);
  for (const auto& beat : fake.heartbeats()) {
    EXPECT_EQ(beat.worker_id(), "worker-1");
    EXPECT_FALSE(beat.busy());
  }
  EXPECT_EQ(worker.worker_id(), "worker-1");

  // After Shutdown no more heartbeats arrive, and the worker has said it
  // stops, so the coordinator does not count it as lost.
  EXPECT_TRUE(fake.deregistered().empty());
  worker.Shutdown();
  EXPECT_EQ(fake.deregistered(), std::vector<std::string>{"worker-1"});
  const size_t beats = fake.heartbeats().size();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(fake.heartbeats().size(), beats);
}

TEST(WorkerRegistrationTest, ReRegistersWhenTheCoordinatorForgetsIt) {
  FakeCoordinator fake(/*heartbeat_interval_ms=*/50,
                       /*not_found_heartbeats=*/1);
  FakeCoordinatorServer coordinator(&fake);
  WorkerServer worker(TestWorkerOptions(coordinator.address()));
  ASSERT_TRUE(worker.Start().ok());

  ASSERT_TRUE(fake.WaitFor([](const auto& registrations, const auto& beats) {
    return registrations.size() == 2 && !beats.empty() &&
           beats.back().worker_id() == "worker-2";
  }));
  const auto registrations = fake.registrations();
  EXPECT_EQ(registrations[0].SerializeAsString(),
            registrations[1].SerializeAsString());
  EXPECT_EQ(fake.heartbeats().front().worker_id(), "worker-1");
  EXPECT_EQ(worker.worker_id(), "worker-2");
}

TEST(WorkerRegistrationTest, RetriesUntilTheCoordinatorIsUp) {
  // Find a free port, then leave it closed while the worker starts.
  int port = 0;
  {
    FakeCoordinator placeholder;
    FakeCoordinatorServer probe(&placeholder);
    port = probe.port();
  }
  ASSERT_GT(port, 0);
  WorkerServer worker(TestWorkerOptions("127.0.0.1:" + std::to_string(port)));
  ASSERT_TRUE(worker.Start().ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(worker.worker_id(), "");

  FakeCoordinator fake;
  FakeCoordinatorServer coordinator(&fake, port);
  ASSERT_EQ(coordinator.port(), port);
  EXPECT_TRUE(fake.WaitFor([](const auto& registrations, const auto& beats) {
    return registrations.size() == 1 && !beats.empty();
  }));
}

TEST(WorkerRegistrationTest, ShutdownIsPromptWhileTheCoordinatorIsDown) {
  WorkerOptions options = TestWorkerOptions("127.0.0.1:1");
  options.registration_initial_retry_ms = 10000;  // a long backoff wait
  WorkerServer worker(options);
  ASSERT_TRUE(worker.Start().ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto start = Clock::now();
  worker.Shutdown();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 2);
}

TEST(WorkerRegistrationTest, HeartbeatsReportBusyWhileTraining) {
  TempDir data_root;
  SyntheticDatasetOptions data_options;
  data_options.train_samples = 256;
  data_options.test_samples = 64;
  const std::string directory = data_root.path() + "/synthetic";
  std::filesystem::create_directory(directory);
  ASSERT_TRUE(
      WriteDatasetAsIdx(MakeSyntheticDataset(data_options), directory).ok());

  FakeCoordinator fake;
  FakeCoordinatorServer coordinator(&fake);
  WorkerOptions options = TestWorkerOptions(coordinator.address());
  options.data_dir = data_root.path();
  WorkerServer worker(options);
  auto port = worker.Start();
  ASSERT_TRUE(port.ok());
  ASSERT_TRUE(fake.WaitFor(
      [](const auto&, const auto& beats) { return !beats.empty(); }));

  pnn::v1::JobSpec spec;
  spec.mutable_model()->add_hidden_widths(16);
  spec.mutable_model()->add_cut_after_layers(1);
  spec.mutable_dataset()->set_path("synthetic");
  auto resolved = ResolveJobSpec(spec);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  auto tasks = PlanSegmentTasks(*resolved, ImageShape{1, 6, 6}, 4, "busy-job");
  ASSERT_TRUE(tasks.ok()) << tasks.status();

  auto stub = pnn::v1::Worker::NewStub(
      MakeChannel("127.0.0.1:" + std::to_string(*port)));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(60));
  pnn::v1::TrainSegmentRequest request;
  *request.mutable_task() = (*tasks)[0];
  // Far longer than the test waits; it ends by cancellation.
  request.mutable_task()->mutable_training()->set_epochs(100000);
  auto reader = stub->TrainSegment(&context, request);
  pnn::v1::TrainSegmentUpdate update;
  ASSERT_TRUE(reader->Read(&update));
  EXPECT_TRUE(fake.WaitFor(
      [](const auto&, const auto& beats) { return beats.back().busy(); }));
  context.TryCancel();
  while (reader->Read(&update)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(fake.WaitFor(
      [](const auto&, const auto& beats) { return !beats.back().busy(); }));
}

// --- The pnn-worker binary -------------------------------------------------

// A child process with its stderr on a pipe.
class Child {
 public:
  explicit Child(const std::vector<std::string>& arguments) {
    int pipe_fds[2];
    if (pipe(pipe_fds) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
    posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
    std::vector<char*> argv;
    for (const auto& argument : arguments) {
      argv.push_back(const_cast<char*>(argument.c_str()));
    }
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) !=
        0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    close(pipe_fds[1]);
    stderr_fd_ = pipe_fds[0];
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stderr_fd_ >= 0) close(stderr_fd_);
  }

  // Reads stderr until `pattern` matches a line or `seconds` pass.
  bool WaitForLine(const std::regex& pattern, std::smatch* match,
                   double seconds = 20) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
      size_t newline;
      while ((newline = buffer_.find('\n')) != std::string::npos) {
        line_ = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        if (std::regex_search(line_, *match, pattern)) return true;
      }
      const int left_ms = static_cast<int>(
          std::chrono::duration<double, std::milli>(end - Clock::now())
              .count());
      if (left_ms <= 0 || !ReadSome(left_ms)) return false;
    }
  }

  // Everything on stderr until the process closes it (or `seconds` pass).
  std::string ReadRest(double seconds = 20) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    for (;;) {
      const int left_ms = static_cast<int>(
          std::chrono::duration<double, std::milli>(end - Clock::now())
              .count());
      if (left_ms <= 0 || !ReadSome(left_ms)) return buffer_;
    }
  }

  // Exit code, or -1 after `seconds` or on a signal.
  int Wait(double seconds = 20) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) {
      int status = 0;
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

  pid_t pid() const { return pid_; }

 private:
  bool ReadSome(int timeout_ms) {
    pollfd fd{stderr_fd_, POLLIN, 0};
    if (poll(&fd, 1, timeout_ms) <= 0) return false;
    char chunk[4096];
    const ssize_t n = read(stderr_fd_, chunk, sizeof(chunk));
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int stderr_fd_ = -1;
  std::string buffer_;
  std::string line_;
};

bool HealthCheckServing(const std::string& address) {
  absl::StatusOr<std::string> health = CheckHealth(MakeChannel(address), "");
  return health.ok() && *health == HealthServing();
}

TEST(WorkerBinaryTest, RegistersServesAndExitsCleanlyOnSigterm) {
  FakeCoordinator fake;
  FakeCoordinatorServer coordinator(&fake);
  TempDir data_root;
  Child worker({PNN_WORKER_BINARY, "--coordinator=" + coordinator.address(),
                "--listen_host=127.0.0.1", "--port=0", "--threads=1",
                "--metrics_port=0", "--name=binary-worker",
                "--data_dir=" + data_root.path()});
  ASSERT_GT(worker.pid(), 0);
  std::smatch match;
  // The metrics exposer starts inside the real binary, next to libtorch
  // (see rpc/metrics.cc for why that needs care), and serves /metrics.
  ASSERT_TRUE(worker.WaitForLine(
      std::regex("^pnn-worker metrics on 127\\.0\\.0\\.1:([0-9]+)$"), &match));
  const std::string metrics = HttpGet(std::stoi(match[1].str()), "/metrics");
  EXPECT_THAT(metrics, HasSubstr("pnn_worker_busy 0"));
  EXPECT_THAT(metrics, HasSubstr("pnn_worker_segments_total{outcome=\"succeeded\"} 0"));
  EXPECT_THAT(metrics, HasSubstr("process_resident_memory_bytes"));
  ASSERT_TRUE(worker.WaitForLine(
      std::regex("^pnn-worker listening on 127\\.0\\.0\\.1:([0-9]+)$"),
      &match));
  const std::string address = "127.0.0.1:" + match[1].str();

  ASSERT_TRUE(fake.WaitFor([](const auto& registrations, const auto& beats) {
    return !registrations.empty() && !beats.empty();
  }));
  EXPECT_EQ(fake.registrations()[0].address(), address);
  EXPECT_EQ(fake.registrations()[0].name(), "binary-worker");
  EXPECT_EQ(fake.registrations()[0].threads(), 1);
  EXPECT_TRUE(HealthCheckServing(address));

  // Bad input over the wire is answered, not fatal.
  auto stub = pnn::v1::Worker::NewStub(MakeChannel(address));
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(10));
    auto reader = stub->TrainSegment(&context, {});
    pnn::v1::TrainSegmentUpdate update;
    EXPECT_FALSE(reader->Read(&update));
    EXPECT_EQ(reader->Finish().error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_TRUE(HealthCheckServing(address));

  ASSERT_EQ(kill(worker.pid(), SIGTERM), 0);
  EXPECT_EQ(worker.Wait(), 0);
  EXPECT_THAT(worker.ReadRest(), HasSubstr("shutting down"));
}

TEST(WorkerBinaryTest, SigintAlsoStopsIt) {
  Child worker({PNN_WORKER_BINARY, "--coordinator=127.0.0.1:1",
                "--listen_host=127.0.0.1", "--threads=1",
                "--metrics_port=-1"});
  std::smatch match;
  ASSERT_TRUE(worker.WaitForLine(std::regex("listening on"), &match));
  ASSERT_EQ(kill(worker.pid(), SIGINT), 0);
  EXPECT_EQ(worker.Wait(), 0);
}

TEST(WorkerBinaryTest, RejectsMissingOrMalformedFlags) {
  {
    Child worker({PNN_WORKER_BINARY});
    EXPECT_EQ(worker.Wait(), 1);
    EXPECT_THAT(worker.ReadRest(), HasSubstr("--coordinator is required"));
  }
  {
    Child worker({PNN_WORKER_BINARY, "--coordinator=nohostport"});
    EXPECT_EQ(worker.Wait(), 1);
    EXPECT_THAT(worker.ReadRest(), HasSubstr("HOST:PORT"));
  }
  {
    Child worker(
        {PNN_WORKER_BINARY, "--coordinator=127.0.0.1:1", "--device=tpu"});
    EXPECT_EQ(worker.Wait(), 1);
    EXPECT_THAT(worker.ReadRest(), HasSubstr("device"));
  }
}

}  // namespace
}  // namespace worker
}  // namespace pnn
