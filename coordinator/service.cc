#include "coordinator/service.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <fstream>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"

namespace pnn {
namespace {

grpc::ServerUnaryReactor* Respond(grpc::CallbackServerContext* context,
                                  const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

template <typename T, typename Message>
grpc::ServerUnaryReactor* RespondWith(grpc::CallbackServerContext* context,
                                      absl::StatusOr<T> result,
                                      Message* response) {
  if (result.ok()) *response = *std::move(result);
  return Respond(context, result.status());
}

// A stream that ends at once with `status` (a refused call).
template <typename T>
class RefusedStream final : public grpc::ServerWriteReactor<T> {
 public:
  explicit RefusedStream(const absl::Status& status) {
    this->Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};

// Streams a job's events until it reaches a final state or the client
// goes away. Owned by gRPC: deletes itself in OnDone.
class WatchReactor final : public grpc::ServerWriteReactor<pnn::v1::JobEvent> {
 public:
  WatchReactor(Coordinator* coordinator, const std::string& job_id)
      : coordinator_(coordinator) {
    queue_ = std::make_shared<JobEventQueue>([this] { MaybeWrite(); });
    absl::Status status = coordinator_->Watch(job_id, queue_);
    if (!status.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        finishing_ = true;
      }
      Finish(ToGrpcStatus(status));
    }
  }

  void OnWriteDone(bool ok) override {
    bool finish = false;
    grpc::Status status = grpc::Status::OK;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (finishing_) return;
      if (!ok || cancelled_) {
        finishing_ = finish = true;
        status = grpc::Status(grpc::StatusCode::CANCELLED, "watch ended");
      } else if (wrote_final_) {
        finishing_ = finish = true;
      }
    }
    if (finish) {
      Finish(status);
      return;
    }
    MaybeWrite();
  }

  void OnCancel() override {
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      if (!writing_ && !finishing_) finishing_ = finish = true;
    }
    if (finish) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
    }
  }

  void OnDone() override {
    queue_->Close();
    coordinator_->Unwatch(queue_);
    delete this;
  }

 private:
  void MaybeWrite() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (writing_ || finishing_ || cancelled_ || wrote_final_) return;
      std::optional<pnn::v1::JobEvent> next = queue_->Pop();
      if (!next.has_value()) return;
      current_ = *std::move(next);
      writing_ = true;
      wrote_final_ = IsFinal(current_.job().state());
    }
    StartWrite(&current_);
  }

  Coordinator* const coordinator_;
  std::shared_ptr<JobEventQueue> queue_;
  std::mutex mu_;
  pnn::v1::JobEvent current_;
  bool writing_ = false;
  bool finishing_ = false;
  bool cancelled_ = false;
  bool wrote_final_ = false;
};

// Streams a model file in chunks. Owned by gRPC.
class DownloadReactor final
    : public grpc::ServerWriteReactor<pnn::v1::ModelChunk> {
 public:
  DownloadReactor(Coordinator* coordinator,
                  const pnn::v1::DownloadModelRequest& request) {
    auto path = coordinator->ModelPath(request.job_id(), request.format());
    if (!path.ok()) {
      Finish(ToGrpcStatus(path.status()));
      return;
    }
    file_.open(*path, std::ios::binary);
    if (!file_) {
      Finish(grpc::Status(grpc::StatusCode::DATA_LOSS,
                          absl::StrCat("model file of job ", request.job_id(),
                                       " is missing on the coordinator")));
      return;
    }
    file_.seekg(0, std::ios::end);
    total_ = file_.tellg();
    file_.seekg(0);
    const size_t slash = path->find_last_of('/');
    filename_ = slash == std::string::npos ? *path : path->substr(slash + 1);
    NextChunk();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "download aborted"));
      return;
    }
    NextChunk();
  }

  void OnDone() override { delete this; }

 private:
  static constexpr int64_t kChunkBytes = 1 << 20;

  void NextChunk() {
    if (offset_ >= total_ && offset_ > 0) {
      Finish(grpc::Status::OK);
      return;
    }
    chunk_.Clear();
    if (offset_ == 0) chunk_.set_filename(filename_);
    chunk_.set_total_bytes(total_);
    chunk_.set_offset(offset_);
    std::string data(static_cast<size_t>(std::min(kChunkBytes, total_ - offset_)),
                     '\0');
    file_.read(data.data(), static_cast<std::streamsize>(data.size()));
    if (!file_) {
      Finish(grpc::Status(grpc::StatusCode::DATA_LOSS, "model file unreadable"));
      return;
    }
    offset_ += static_cast<int64_t>(data.size());
    *chunk_.mutable_data() = std::move(data);
    if (total_ == 0) offset_ = 1;  // an empty file still gets one chunk
    StartWrite(&chunk_);
  }

  std::ifstream file_;
  std::string filename_;
  int64_t total_ = 0;
  int64_t offset_ = 0;
  pnn::v1::ModelChunk chunk_;
};

}  // namespace

absl::Status CoordinatorService::Authenticate(
    const grpc::CallbackServerContext* context) {
  absl::Status status = CheckAuthToken(context->client_metadata(),
                                       coordinator_->auth_token());
  if (!status.ok()) coordinator_->RecordUnauthenticated();
  return status;
}

absl::Status CoordinatorService::AuthenticateWorker(
    const grpc::CallbackServerContext* context) {
  absl::Status status = CheckAuthToken(context->client_metadata(),
                                       coordinator_->worker_token());
  if (!status.ok()) coordinator_->RecordUnauthenticated();
  return status;
}

grpc::ServerUnaryReactor* CoordinatorService::SubmitJob(
    grpc::CallbackServerContext* context,
    const pnn::v1::SubmitJobRequest* request,
    pnn::v1::SubmitJobResponse* response) {
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  // A job that is profiled first is submitted on a coordinator thread, and
  // the call finishes from there.
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  coordinator_->SubmitAsync(
      *request, [reactor, response](absl::StatusOr<pnn::v1::Job> job) {
        if (job.ok()) {
          response->set_job_id(job->job_id());
          *response->mutable_job() = *std::move(job);
        }
        reactor->Finish(ToGrpcStatus(job.status()));
      });
  return reactor;
}

grpc::ServerUnaryReactor* CoordinatorService::GetJob(
    grpc::CallbackServerContext* context, const pnn::v1::GetJobRequest* request,
    pnn::v1::Job* response) {
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  return RespondWith(context, coordinator_->GetJob(request->job_id()),
                     response);
}

grpc::ServerUnaryReactor* CoordinatorService::ListJobs(
    grpc::CallbackServerContext* context,
    const pnn::v1::ListJobsRequest* request,
    pnn::v1::ListJobsResponse* response) {
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  return RespondWith(context, coordinator_->ListJobs(*request), response);
}

grpc::ServerUnaryReactor* CoordinatorService::CancelJob(
    grpc::CallbackServerContext* context,
    const pnn::v1::CancelJobRequest* request, pnn::v1::Job* response) {
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  return RespondWith(context, coordinator_->CancelJob(request->job_id()),
                     response);
}

grpc::ServerUnaryReactor* CoordinatorService::GetJobLog(
    grpc::CallbackServerContext* context,
    const pnn::v1::GetJobLogRequest* request,
    pnn::v1::GetJobLogResponse* response) {
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  return RespondWith(context, coordinator_->GetJobLog(request->job_id()),
                     response);
}

grpc::ServerUnaryReactor* CoordinatorService::ListWorkers(
    grpc::CallbackServerContext* context,
    const pnn::v1::ListWorkersRequest* /*request*/,
    pnn::v1::ListWorkersResponse* response) {
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  *response = coordinator_->ListWorkers();
  return Respond(context, absl::OkStatus());
}

grpc::ServerWriteReactor<pnn::v1::JobEvent>* CoordinatorService::WatchJob(
    grpc::CallbackServerContext* context,
    const pnn::v1::WatchJobRequest* request) {
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    return new RefusedStream<pnn::v1::JobEvent>(allowed);
  }
  return new WatchReactor(coordinator_, request->job_id());
}

grpc::ServerWriteReactor<pnn::v1::ModelChunk>*
CoordinatorService::DownloadModel(grpc::CallbackServerContext* context,
                                  const pnn::v1::DownloadModelRequest* request) {
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    return new RefusedStream<pnn::v1::ModelChunk>(allowed);
  }
  return new DownloadReactor(coordinator_, *request);
}

grpc::ServerUnaryReactor* CoordinatorService::RegisterWorker(
    grpc::CallbackServerContext* context,
    const pnn::v1::RegisterWorkerRequest* request,
    pnn::v1::RegisterWorkerResponse* response) {
  if (absl::Status allowed = AuthenticateWorker(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  return RespondWith(context, coordinator_->RegisterWorker(request->worker()),
                     response);
}

grpc::ServerUnaryReactor* CoordinatorService::Heartbeat(
    grpc::CallbackServerContext* context,
    const pnn::v1::HeartbeatRequest* request,
    pnn::v1::HeartbeatResponse* response) {
  if (absl::Status allowed = AuthenticateWorker(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  return Respond(context, coordinator_->Heartbeat(*request));
}

grpc::ServerUnaryReactor* CoordinatorService::DeregisterWorker(
    grpc::CallbackServerContext* context,
    const pnn::v1::DeregisterWorkerRequest* request,
    pnn::v1::DeregisterWorkerResponse* response) {
  if (absl::Status allowed = AuthenticateWorker(context); !allowed.ok()) {
    return Respond(context, allowed);
  }
  return Respond(context, coordinator_->DeregisterWorker(request->worker_id()));
}

CoordinatorServer::CoordinatorServer(Options options)
    : options_(std::move(options)),
      coordinator_(std::make_unique<Coordinator>(options_.coordinator)),
      service_(std::make_unique<CoordinatorService>(coordinator_.get())) {}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

absl::StatusOr<int> CoordinatorServer::Start() {
  if (absl::Status status = coordinator_->Start(); !status.ok()) return status;
  // Clients may present a certificate (verified when a CA is set); users'
  // clients need not, so it is not required.
  auto credentials = MakeServerCredentials(options_.coordinator.tls,
                                           /*require_client_certificate=*/false);
  if (!credentials.ok()) return credentials.status();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Only workers' streams carry large messages, and those are responses to
  // the coordinator's own calls: requests to it stay small.
  ConfigureServerBuilder(&builder, kMaxRequestBytes);
  builder.AddListeningPort(
      absl::StrCat(options_.listen_host, ":", options_.port),
      *credentials, &port_);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options_.listen_host, ":", options_.port,
        " (port in use or address not available)"));
  }
  // Health checks may name the service, not only the whole server ("").
  server_->GetHealthCheckService()->SetServingStatus(
      pnn::v1::Coordinator::service_full_name(), true);
  return port_;
}

void CoordinatorServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::seconds(2));
  }
  coordinator_->Shutdown();
}

}  // namespace pnn
