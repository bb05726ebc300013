// The gRPC edge of the coordinator: pnn.v1.Coordinator on the callback
// API. Handlers validate, call Coordinator (which returns absl::Status) and
// convert at the edge; nothing here blocks a reactor thread.
#ifndef PNN_COORDINATOR_SERVICE_H_
#define PNN_COORDINATOR_SERVICE_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"
#include "pnn/v1/coordinator.grpc.pb.h"

namespace pnn {

class CoordinatorService final : public pnn::v1::Coordinator::CallbackService {
 public:
  // `coordinator` must outlive the service.
  explicit CoordinatorService(Coordinator* coordinator)
      : coordinator_(coordinator) {}

  grpc::ServerUnaryReactor* SubmitJob(
      grpc::CallbackServerContext* context,
      const pnn::v1::SubmitJobRequest* request,
      pnn::v1::SubmitJobResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const pnn::v1::GetJobRequest* request,
                                   pnn::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(
      grpc::CallbackServerContext* context,
      const pnn::v1::ListJobsRequest* request,
      pnn::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const pnn::v1::CancelJobRequest* request,
                                      pnn::v1::Job* response) override;
  grpc::ServerWriteReactor<pnn::v1::JobEvent>* WatchJob(
      grpc::CallbackServerContext* context,
      const pnn::v1::WatchJobRequest* request) override;
  grpc::ServerWriteReactor<pnn::v1::ModelChunk>* DownloadModel(
      grpc::CallbackServerContext* context,
      const pnn::v1::DownloadModelRequest* request) override;
  grpc::ServerUnaryReactor* GetJobLog(
      grpc::CallbackServerContext* context,
      const pnn::v1::GetJobLogRequest* request,
      pnn::v1::GetJobLogResponse* response) override;
  grpc::ServerUnaryReactor* ListWorkers(
      grpc::CallbackServerContext* context,
      const pnn::v1::ListWorkersRequest* request,
      pnn::v1::ListWorkersResponse* response) override;
  grpc::ServerUnaryReactor* RegisterWorker(
      grpc::CallbackServerContext* context,
      const pnn::v1::RegisterWorkerRequest* request,
      pnn::v1::RegisterWorkerResponse* response) override;
  grpc::ServerUnaryReactor* DeregisterWorker(
      grpc::CallbackServerContext* context,
      const pnn::v1::DeregisterWorkerRequest* request,
      pnn::v1::DeregisterWorkerResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(
      grpc::CallbackServerContext* context,
      const pnn::v1::HeartbeatRequest* request,
      pnn::v1::HeartbeatResponse* response) override;

 private:
  // UNAUTHENTICATED (and counted) when the coordinator has a token and the
  // call does not carry it.
  // Client calls need the client token, worker calls (register, heartbeat,
  // deregister) the worker token (coordinator.h, Options).
  absl::Status Authenticate(const grpc::CallbackServerContext* context);
  absl::Status AuthenticateWorker(const grpc::CallbackServerContext* context);

  Coordinator* const coordinator_;
};

// A coordinator and its gRPC server (with health checking and reflection),
// for main() and for tests that want a real server in-process.
class CoordinatorServer {
 public:
  struct Options {
    Coordinator::Options coordinator;
    std::string listen_host = "0.0.0.0";
    int port = 0;  // 0: pick a free port
  };
  explicit CoordinatorServer(Options options);
  ~CoordinatorServer();

  // Starts serving; returns the bound port.
  absl::StatusOr<int> Start();
  // Stops accepting calls, ends open streams, then stops the coordinator.
  void Shutdown();
  Coordinator& coordinator() { return *coordinator_; }
  int port() const { return port_; }

 private:
  Options options_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<CoordinatorService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_SERVICE_H_
