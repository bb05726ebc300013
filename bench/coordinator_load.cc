// pnn-coordinator-load: how the coordinator's request handlers fare while
// it does its heavy work, and what finished jobs cost it.
//
// Phase 1 (heartbeats under resume-state writes): an in-process coordinator
// on loopback, N hand-written workers that each hold one conventional
// task's stream and send a resumable state of --state_mb MB every
// --state_interval_ms (what a real worker sends once per epoch, faster),
// and a probe that measures Heartbeat and GetJob latency, first with the
// workers idle, then under that load, side by side.
// Phase 2 (finished jobs): --finished_jobs jobs of the default network
// whose hand-written worker returns freshly initialised weights at once;
// the coordinator assembles and tests each one (synthetic data), then its
// RSS is read (a real pnn-coordinator process), it is restarted on the
// same state, and the time until it answers again and its RSS are read.
//
// Loopback only; every server it starts is stopped before it exits.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "common/dataset.h"
#include "common/model.h"
#include "coordinator/service.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/rpc_util.h"

ABSL_FLAG(int32_t, segments, 8, "Concurrent tasks streaming resume states.");
ABSL_FLAG(int32_t, state_mb, 4, "Size of each resumable state (MB).");
ABSL_FLAG(int32_t, state_interval_ms, 100,
          "How often each task sends a state.");
ABSL_FLAG(int32_t, seconds, 15, "Length of each measurement window.");
ABSL_FLAG(int32_t, finished_jobs, 400, "Jobs for phase 2 (0: skip it).");
ABSL_FLAG(std::string, coordinator_binary, "coordinator/pnn-coordinator",
          "The pnn-coordinator binary phase 2 starts.");
ABSL_FLAG(std::string, work_dir, "/tmp/pnn-coordinator-load",
          "Where the data set and the coordinator's state go (emptied).");

namespace pnn {
namespace {

using Clock = std::chrono::steady_clock;

double Milliseconds(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Holds each task's stream open and sends resumable states until it is
// cancelled; with `finish`, returns valid weights at once instead.
class StreamingWorker final : public pnn::v1::Worker::Service {
 public:
  StreamingWorker(bool finish, int state_bytes, int interval_ms)
      : finish_(finish), state_bytes_(state_bytes), interval_ms_(interval_ms) {}

  grpc::Status TrainSegment(
      grpc::ServerContext* context, const pnn::v1::TrainSegmentRequest* request,
      grpc::ServerWriter<pnn::v1::TrainSegmentUpdate>* writer) override {
    const pnn::v1::SegmentTask& task = request->task();
    pnn::v1::TrainSegmentUpdate update;
    update.mutable_started()->set_device("cpu");
    writer->Write(update);
    if (finish_) {
      SegmentModel model(pnn::TaskArchitecture(task));
      update.Clear();
      *update.mutable_result()->mutable_weights() =
          ExportWeights(model, task.segment_index());
      writer->Write(update);
      return grpc::Status::OK;
    }
    update.Clear();
    pnn::v1::TrainingState* state =
        update.mutable_checkpoint()->mutable_state();
    state->mutable_weights()->set_segment_index(task.segment_index());
    state->mutable_weights()->add_tensors()->set_data(
        std::string(state_bytes_, '\x01'));
    for (int epoch = 0; !context->IsCancelled(); ++epoch) {
      state->set_epochs_done(epoch % task.training().epochs() + 1);
      if (!writer->Write(update)) break;
      states_sent_.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms_));
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  }
  int64_t states_sent() const { return states_sent_.load(); }

 private:
  const bool finish_;
  const int state_bytes_;
  const int interval_ms_;
  std::atomic<int64_t> states_sent_{0};
};

struct Latencies {
  std::vector<double> heartbeat_ms;
  std::vector<double> get_job_ms;
};

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1,
                         static_cast<size_t>(p * values.size()))];
}

// Heartbeats (as a worker no job can use) and GetJob calls, one every 5 ms
// each, for `seconds`.
Latencies Probe(pnn::v1::Coordinator::Stub* stub, const std::string& job_id,
                int seconds) {
  pnn::v1::RegisterWorkerRequest registration;
  registration.mutable_worker()->set_address("127.0.0.1:1");
  registration.mutable_worker()->set_device("cuda:7");  // matches no job
  pnn::v1::RegisterWorkerResponse registered;
  {
    grpc::ClientContext context;
    stub->RegisterWorker(&context, registration, &registered);
  }
  Latencies latencies;
  const auto end = Clock::now() + std::chrono::seconds(seconds);
  while (Clock::now() < end) {
    pnn::v1::HeartbeatRequest heartbeat;
    heartbeat.set_worker_id(registered.worker_id());
    pnn::v1::HeartbeatResponse ignored;
    grpc::ClientContext beat;
    auto start = Clock::now();
    stub->Heartbeat(&beat, heartbeat, &ignored);
    latencies.heartbeat_ms.push_back(Milliseconds(Clock::now() - start));
    pnn::v1::GetJobRequest get;
    get.set_job_id(job_id);
    pnn::v1::Job job;
    grpc::ClientContext query;
    start = Clock::now();
    stub->GetJob(&query, get, &job);
    latencies.get_job_ms.push_back(Milliseconds(Clock::now() - start));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return latencies;
}

void Print(const char* label, const Latencies& latencies) {
  std::printf(
      "%-28s heartbeat p50 %6.2f ms  p99 %6.2f ms  max %7.2f ms | GetJob "
      "p50 %6.2f ms  p99 %6.2f ms  max %7.2f ms  (%zu calls each)\n",
      label, Percentile(latencies.heartbeat_ms, 0.5),
      Percentile(latencies.heartbeat_ms, 0.99),
      Percentile(latencies.heartbeat_ms, 1.0),
      Percentile(latencies.get_job_ms, 0.5),
      Percentile(latencies.get_job_ms, 0.99),
      Percentile(latencies.get_job_ms, 1.0), latencies.heartbeat_ms.size());
  std::fflush(stdout);
}

std::unique_ptr<grpc::Server> Serve(grpc::Service* service, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.RegisterService(service);
  return builder.BuildAndStart();
}

CoordinatorServer::Options ServerOptions(const std::string& work) {
  CoordinatorServer::Options options;
  options.listen_host = "127.0.0.1";
  options.coordinator.state_dir = work + "/state";
  options.coordinator.data_dir = work + "/data";
  options.coordinator.max_active_jobs = 1000;
  return options;
}

pnn::v1::SubmitJobRequest Job(int epochs, bool default_network) {
  pnn::v1::SubmitJobRequest request;
  auto* spec = request.mutable_spec();
  spec->set_parallelism(default_network ? pnn::v1::PARALLELISM_PARTITIONED
                                        : pnn::v1::PARALLELISM_CONVENTIONAL);
  if (!default_network) spec->mutable_model()->add_hidden_widths(16);
  spec->mutable_training()->set_epochs(epochs);
  spec->mutable_dataset()->set_path("toy");
  return request;
}

std::string Submit(pnn::v1::Coordinator::Stub* stub,
                   const pnn::v1::SubmitJobRequest& request) {
  grpc::ClientContext context;
  pnn::v1::SubmitJobResponse response;
  const grpc::Status status = stub->SubmitJob(&context, request, &response);
  if (!status.ok()) {
    std::fprintf(stderr, "submit: %s\n", status.error_message().c_str());
  }
  return response.job_id();
}

void RegisterServed(pnn::v1::Coordinator::Stub* stub, int port) {
  grpc::ClientContext context;
  pnn::v1::RegisterWorkerRequest request;
  request.mutable_worker()->set_address(absl::StrCat("127.0.0.1:", port));
  pnn::v1::RegisterWorkerResponse response;
  stub->RegisterWorker(&context, request, &response);
}

void HeartbeatPhase(const std::string& work) {
  const int segments = absl::GetFlag(FLAGS_segments);
  const int seconds = absl::GetFlag(FLAGS_seconds);
  CoordinatorServer::Options options = ServerOptions(work);
  // The hand-written workers do not heartbeat: keep them registered.
  options.coordinator.worker_timeout = absl::Hours(1);
  CoordinatorServer server(options);
  auto port = server.Start();
  if (!port.ok()) {
    std::fprintf(stderr, "coordinator: %s\n",
                 std::string(port.status().message()).c_str());
    std::exit(1);
  }
  auto stub = pnn::v1::Coordinator::NewStub(
      MakeChannel(absl::StrCat("127.0.0.1:", *port)));
  StreamingWorker worker(/*finish=*/false,
                         absl::GetFlag(FLAGS_state_mb) << 20,
                         absl::GetFlag(FLAGS_state_interval_ms));
  std::vector<std::unique_ptr<grpc::Server>> servers;
  const std::string probe_job = Submit(stub.get(), Job(100, false));
  Print("idle (no task running)", Probe(stub.get(), probe_job, seconds));
  // Cancel the probe job so that it does not take a worker.
  {
    grpc::ClientContext context;
    pnn::v1::CancelJobRequest cancel;
    cancel.set_job_id(probe_job);
    pnn::v1::Job ignored;
    stub->CancelJob(&context, cancel, &ignored);
  }
  std::vector<std::string> jobs;
  for (int i = 0; i < segments; ++i) {
    int worker_port = 0;
    servers.push_back(Serve(&worker, &worker_port));
    RegisterServed(stub.get(), worker_port);
    jobs.push_back(Submit(stub.get(), Job(100, false)));
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const int64_t before = worker.states_sent();
  const Latencies loaded = Probe(stub.get(), jobs.front(), seconds);
  const int64_t sent = worker.states_sent() - before;
  Print(absl::StrCat(segments, " tasks writing states").c_str(), loaded);
  std::printf("  resume states stored during the window: %lld (%.0f MB/s)\n",
              static_cast<long long>(sent),
              static_cast<double>(sent) * absl::GetFlag(FLAGS_state_mb) /
                  seconds);
  for (const std::string& id : jobs) {
    grpc::ClientContext context;
    pnn::v1::CancelJobRequest cancel;
    cancel.set_job_id(id);
    pnn::v1::Job ignored;
    stub->CancelJob(&context, cancel, &ignored);
  }
  server.Shutdown();
  for (auto& s : servers) s->Shutdown();
}

// A pnn-coordinator process on loopback, its port read from its log.
class CoordinatorProcess {
 public:
  CoordinatorProcess(const std::string& binary, const std::string& work)
      : log_(work + "/coordinator.log") {
    std::filesystem::remove(log_);
    pid_ = fork();
    if (pid_ == 0) {
      std::freopen(log_.c_str(), "a", stderr);
      const std::string state = "--state_dir=" + work + "/state";
      const std::string data = "--data_dir=" + work + "/data";
      execl(binary.c_str(), binary.c_str(), "--port=0", "--metrics_port=-1",
            "--listen_host=127.0.0.1", "--max_active_jobs=1000",
            "--worker_timeout_ms=3600000", "--threads=1", state.c_str(),
            data.c_str(), static_cast<char*>(nullptr));
      std::_Exit(127);
    }
  }
  ~CoordinatorProcess() { Stop(); }
  // The port once it listens; 0 if it never does within 60 s.
  int WaitForPort() {
    for (int i = 0; i < 6000; ++i) {
      std::ifstream log(log_);
      std::string line;
      while (std::getline(log, line)) {
        const std::string marker = "listening on 127.0.0.1:";
        const size_t at = line.find(marker);
        if (at != std::string::npos) {
          return std::stoi(line.substr(at + marker.size()));
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return 0;
  }
  int64_t RssBytes() const {
    std::ifstream status("/proc/" + std::to_string(pid_) + "/status");
    std::string key;
    while (status >> key) {
      if (key == "VmRSS:") {
        int64_t kib = 0;
        status >> kib;
        return kib * 1024;
      }
      status.ignore(1 << 20, '\n');
    }
    return 0;
  }
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  const std::string log_;
  pid_t pid_ = -1;
};

void FinishedJobsPhase(const std::string& work) {
  const int count = absl::GetFlag(FLAGS_finished_jobs);
  if (count <= 0) return;
  std::filesystem::remove_all(work + "/state");
  auto coordinator = std::make_unique<CoordinatorProcess>(
      absl::GetFlag(FLAGS_coordinator_binary), work);
  const int port = coordinator->WaitForPort();
  if (port == 0) {
    std::fprintf(stderr, "pnn-coordinator did not start; see %s\n",
                 (work + "/coordinator.log").c_str());
    std::exit(1);
  }
  auto stub = pnn::v1::Coordinator::NewStub(
      MakeChannel(absl::StrCat("127.0.0.1:", port)));
  std::printf("pnn-coordinator RSS at start: %.0f MB\n",
              coordinator->RssBytes() / 1e6);
  StreamingWorker worker(/*finish=*/true, 0, 0);
  std::vector<std::unique_ptr<grpc::Server>> servers;
  for (int i = 0; i < 2; ++i) {
    int worker_port = 0;
    servers.push_back(Serve(&worker, &worker_port));
    RegisterServed(stub.get(), worker_port);
  }
  const auto started = Clock::now();
  std::vector<std::string> ids;
  for (int i = 0; i < count; ++i) ids.push_back(Submit(stub.get(), Job(1, true)));
  int succeeded = 0;
  for (const std::string& id : ids) {
    for (;;) {
      grpc::ClientContext context;
      pnn::v1::GetJobRequest request;
      request.set_job_id(id);
      pnn::v1::Job job;
      const grpc::Status status = stub->GetJob(&context, request, &job);
      if (status.ok() && job.state() == pnn::v1::JOB_STATE_SUCCEEDED) {
        ++succeeded;
        break;
      }
      if (!status.ok() || job.state() == pnn::v1::JOB_STATE_FAILED ||
          job.state() == pnn::v1::JOB_STATE_CANCELLED) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  std::printf("%d/%d default-network jobs succeeded in %.1f s\n", succeeded,
              count, Milliseconds(Clock::now() - started) / 1000);
  std::printf("pnn-coordinator RSS with %d finished jobs: %.0f MB\n",
              succeeded, coordinator->RssBytes() / 1e6);
  for (auto& s : servers) s->Shutdown();
  coordinator->Stop();
  const auto restart = Clock::now();
  coordinator = std::make_unique<CoordinatorProcess>(
      absl::GetFlag(FLAGS_coordinator_binary), work);
  const int again = coordinator->WaitForPort();
  stub = pnn::v1::Coordinator::NewStub(
      MakeChannel(absl::StrCat("127.0.0.1:", again)));
  pnn::v1::ListJobsRequest list;
  list.set_page_size(1000);
  pnn::v1::ListJobsResponse listed;
  grpc::ClientContext context;
  const grpc::Status status = stub->ListJobs(&context, list, &listed);
  std::printf("restart on the same state: %d jobs listed after %.0f ms "
              "(process start to first answer), RSS %.0f MB\n",
              status.ok() ? listed.jobs_size() : -1,
              Milliseconds(Clock::now() - restart), coordinator->RssBytes() / 1e6);
  coordinator->Stop();
}

}  // namespace
}  // namespace pnn

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string work = absl::GetFlag(FLAGS_work_dir);
  std::filesystem::remove_all(work);
  pnn::SyntheticDatasetOptions toy;
  toy.train_samples = 1024;
  toy.test_samples = 1024;
  toy.rows = 28;
  toy.cols = 28;
  toy.num_classes = 10;
  if (absl::Status written =
          pnn::WriteDatasetAsIdx(pnn::MakeSyntheticDataset(toy), work + "/data/toy");
      !written.ok()) {
    std::fprintf(stderr, "%s\n", std::string(written.message()).c_str());
    return 1;
  }
  pnn::HeartbeatPhase(work);
  pnn::FinishedJobsPhase(work);
  std::filesystem::remove_all(work);
  return 0;
}
