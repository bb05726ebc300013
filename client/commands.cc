#include "client/commands.h"

#include <google/protobuf/struct.pb.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/exit_codes.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"

namespace pnn::client {

const char kUsage[] = R"(the command-line client of the pnn coordinator.

Usage: pnnctl COMMAND [ARGS] [FLAGS]
       pnnctl COMMAND --help     the flags of one command

Commands:
  submit [JOB.json]  Submit a job and print its id. JOB.json is protobuf JSON
                     of a pnn.v1.JobSpec, or of a pnn.v1.SubmitJobRequest (a
                     top-level "spec" key). These flags override its fields,
                     or build a spec without a file:
                       --epochs N --train-limit N --test-limit N
                       --hidden-widths W,W,... --cut-after L,L,... --kappa K
                       --seed S --dataset PATH --recovery-epochs N
                       --device cpu|cuda|cuda:N --name TEXT
                       --parallelism partitioned|model_parallel|conventional
                       --evaluations-per-epoch N
                       --micro-batches N --schedule gpipe|1f1b (model_parallel)
                       --baseline (also train the unsplit network to compare)
                     --watch: then follow the job as `watch` does.
  get ID             Show a job: state, progress, or results once it ended.
                     Exit 0 whatever the job's state.
  list               List jobs, newest first. --state running,succeeded,...
                     --page-size N --page-token TOKEN --all (every page)
  watch ID           Follow a job: a progress bar per segment (and for the
                     baseline) until it ends, then its result table.
  logs ID            The job's log, oldest first; -f: then follow its
                     events until it ends.
  cancel ID          Cancel a job that has not ended.
  download ID        Save the trained model of a succeeded job.
                     -o FILE (default: the name the coordinator suggests)
                     --format safetensors|pnn (default safetensors)
  workers            The workers the coordinator knows: idle, busy (job and
                     task), draining or backed off; last heartbeat.
  health [SERVICE]   Standard gRPC health check (grpc.health.v1) of the
                     coordinator, or of one of its services.
  help [COMMAND]     This text, or the flags of COMMAND.

Output:
  -o json            after any command but download: protobuf JSON with the
                     .proto field names and every field; watch and logs -f
                     print one JSON object per line (--output json before
                     the command works for every command)

Global flags (before or after the command):
  --coordinator HOST:PORT  default: $PNN_COORDINATOR, else localhost:50051
  --token-file FILE        bearer token for a coordinator that requires one
                           (default: $PNN_AUTH_TOKEN)
  --tls-ca FILE            connect with TLS, verifying the coordinator
                           against this CA (PEM); --tls-cert/--tls-key add a
                           client certificate
  --timeout DURATION       deadline of unary calls, e.g. 30s, 2m (default 30s)

Flags are kebab-case; snake_case (--train_limit) is accepted too, and
--flag=value works as well as --flag value.

Exit status:
  0  success; watch and submit --watch: the job SUCCEEDED
  1  usage or local error: bad flag, unreadable or invalid JOB.json, I/O
  2  RPC error: coordinator unreachable, NOT_FOUND, INVALID_ARGUMENT, ...
     (stderr starts with the gRPC code name); health: not SERVING
  3  the watched job ended FAILED
  4  the watched job ended CANCELLED
)";

namespace {

using pnn::v1::Coordinator;
using pnn::v1::Job;
using pnn::v1::JobEvent;

// main() has checked the TLS files (CheckTls), so this cannot fail.
std::shared_ptr<grpc::ChannelCredentials> Credentials(
    const ClientOptions& options) {
  return MakeChannelCredentials(options.tls).value_or(
      grpc::InsecureChannelCredentials());
}

void SetDeadline(const ClientOptions& options, grpc::ClientContext* context) {
  if (options.timeout == absl::InfiniteDuration() ||
      options.timeout <= absl::ZeroDuration()) {
    return;
  }
  context->set_deadline(std::chrono::system_clock::now() +
                        absl::ToChronoMilliseconds(options.timeout));
}

int LocalFailure(absl::string_view message, std::ostream& err) {
  err << "pnnctl: " << message << "\n";
  return kExitUsage;
}


int Watch(Coordinator::Stub& stub, const ClientOptions& options,
          const std::string& job_id, std::ostream& out, std::ostream& err) {
  grpc::ClientContext context;
  AttachAuthToken(options.auth_token, &context);
  pnn::v1::WatchJobRequest request;
  request.set_job_id(job_id);
  std::unique_ptr<grpc::ClientReader<JobEvent>> reader =
      stub.WatchJob(&context, request);
  ProgressDisplay display(&out, options.redraw, options.format);
  JobEvent event;
  std::optional<Job> last;
  while (reader->Read(&event)) {
    last = event.job();
    if (options.output == OutputFormat::kJson) {
      out << ToJson(event, /*multiline=*/false);
      out.flush();
    } else {
      display.Update(event);
    }
    if (IsFinalState(last->state())) {
      // The coordinator closes the stream after the final event; do not
      // depend on it to return.
      context.TryCancel();
      break;
    }
  }
  const grpc::Status status = reader->Finish();
  if (!last || !IsFinalState(last->state())) {
    if (!status.ok()) return RpcFailure(options, status, "WatchJob", err);
    err << "the coordinator ended the watch of job " << job_id
        << " before the job ended (last state "
        << (last ? JobStateName(last->state()) : "unknown")
        << "); run `pnnctl watch " << job_id << "` again\n";
    return kExitRpcError;
  }
  if (options.output == OutputFormat::kTable) {
    out << "\n" << FormatResultTable(*last);
    out.flush();
  }
  const ExitCode code = ExitCodeForFinalState(last->state());
  if (code != kExitOk) {
    err << "job " << job_id << " ended " << JobStateName(last->state());
    if (!last->message().empty()) err << ": " << last->message();
    err << "\n";
  }
  return code;
}

// The last path component of a name the coordinator suggests, so that a
// server cannot make pnnctl write outside the current directory.
std::string SafeFileName(const std::string& suggested) {
  const size_t slash = suggested.find_last_of('/');
  std::string name =
      slash == std::string::npos ? suggested : suggested.substr(slash + 1);
  if (name == "." || name == "..") return "";
  return name;
}

}  // namespace

int RunSubmit(const ClientOptions& options,
              const pnn::v1::SubmitJobRequest& request, bool watch,
              std::ostream& out, std::ostream& err) {
  std::unique_ptr<Coordinator::Stub> stub = NewStub(options);
  grpc::ClientContext context;
  AttachAuthToken(options.auth_token, &context);
  SetDeadline(options, &context);
  pnn::v1::SubmitJobResponse response;
  const grpc::Status status = stub->SubmitJob(&context, request, &response);
  if (!status.ok()) return RpcFailure(options, status, "SubmitJob", err);
  if (options.output == OutputFormat::kJson) {
    out << ToJson(response, /*multiline=*/!watch);
  } else {
    out << response.job_id() << "\n";
  }
  out.flush();
  if (!watch) return kExitOk;
  return Watch(*stub, options, response.job_id(), out, err);
}

int RunGet(const ClientOptions& options, const std::string& job_id,
           std::ostream& out, std::ostream& err) {
  std::unique_ptr<Coordinator::Stub> stub = NewStub(options);
  grpc::ClientContext context;
  AttachAuthToken(options.auth_token, &context);
  SetDeadline(options, &context);
  pnn::v1::GetJobRequest request;
  request.set_job_id(job_id);
  Job job;
  const grpc::Status status = stub->GetJob(&context, request, &job);
  if (!status.ok()) return RpcFailure(options, status, "GetJob", err);
  if (options.output == OutputFormat::kJson) {
    out << ToJson(job, /*multiline=*/true);
  } else {
    out << FormatJobDetails(job, options.format);
  }
  return kExitOk;
}

int RunList(const ClientOptions& options, const ListOptions& list,
            std::ostream& out, std::ostream& err) {
  std::unique_ptr<Coordinator::Stub> stub = NewStub(options);
  pnn::v1::ListJobsRequest request;
  for (pnn::v1::JobState state : list.states) request.add_states(state);
  request.set_page_size(list.page_size);
  request.set_page_token(list.page_token);
  pnn::v1::ListJobsResponse all;
  while (true) {
    grpc::ClientContext context;
    AttachAuthToken(options.auth_token, &context);
    SetDeadline(options, &context);
    pnn::v1::ListJobsResponse page;
    const grpc::Status status = stub->ListJobs(&context, request, &page);
    if (!status.ok()) return RpcFailure(options, status, "ListJobs", err);
    for (Job& job : *page.mutable_jobs()) *all.add_jobs() = std::move(job);
    all.set_next_page_token(page.next_page_token());
    if (!list.all || page.next_page_token().empty()) break;
    if (page.next_page_token() == request.page_token()) {
      err << "the coordinator returned page token '" << page.next_page_token()
          << "' twice; stopping instead of looping\n";
      return kExitRpcError;
    }
    request.set_page_token(page.next_page_token());
  }
  if (options.output == OutputFormat::kJson) {
    out << ToJson(all, /*multiline=*/true);
  } else {
    const std::vector<Job> jobs(all.jobs().begin(), all.jobs().end());
    out << FormatJobList(jobs, options.format);
    if (!all.next_page_token().empty()) {
      // stderr, so the table on stdout stays one clean block for scripts.
      err << "more jobs: pnnctl list --page_token=" << all.next_page_token()
          << " (or --all)\n";
    }
  }
  return kExitOk;
}

int RunWatch(const ClientOptions& options, const std::string& job_id,
             std::ostream& out, std::ostream& err) {
  std::unique_ptr<Coordinator::Stub> stub = NewStub(options);
  return Watch(*stub, options, job_id, out, err);
}

int RunCancel(const ClientOptions& options, const std::string& job_id,
              std::ostream& out, std::ostream& err) {
  std::unique_ptr<Coordinator::Stub> stub = NewStub(options);
  grpc::ClientContext context;
  AttachAuthToken(options.auth_token, &context);
  SetDeadline(options, &context);
  pnn::v1::CancelJobRequest request;
  request.set_job_id(job_id);
  Job job;
  const grpc::Status status = stub->CancelJob(&context, request, &job);
  if (!status.ok()) return RpcFailure(options, status, "CancelJob", err);
  if (options.output == OutputFormat::kJson) {
    out << ToJson(job, /*multiline=*/true);
  } else if (job.state() == pnn::v1::JOB_STATE_CANCELLED) {
    out << "job " << job.job_id() << ": CANCELLED\n";
  } else if (IsFinalState(job.state())) {
    out << "job " << job.job_id()
        << " had already ended: " << JobStateName(job.state()) << "\n";
  } else {
    out << "job " << job.job_id() << ": cancelling (now "
        << JobStateName(job.state()) << ")\n";
  }
  return kExitOk;
}

int RunDownload(const ClientOptions& options, const DownloadOptions& download,
                std::ostream& out, std::ostream& err) {
  std::unique_ptr<Coordinator::Stub> stub = NewStub(options);
  grpc::ClientContext context;
  AttachAuthToken(options.auth_token, &context);
  pnn::v1::DownloadModelRequest request;
  request.set_job_id(download.job_id);
  request.set_format(download.format);
  std::unique_ptr<grpc::ClientReader<pnn::v1::ModelChunk>> reader =
      stub->DownloadModel(&context, request);

  std::string path;
  std::string temp_path;
  std::FILE* file = nullptr;
  int64_t written = 0;
  int64_t total = -1;
  std::string failure;  // set on the first error; the stream is then dropped
  bool local_failure = false;
  pnn::v1::ModelChunk chunk;
  while (reader->Read(&chunk)) {
    if (file == nullptr) {
      path = download.path;
      if (path.empty()) path = SafeFileName(chunk.filename());
      if (path.empty()) {
        path = absl::StrCat(download.job_id,
                            download.format == pnn::v1::MODEL_FORMAT_PNN_WEIGHTS
                                ? ".pnn"
                                : ".safetensors");
      }
      temp_path = path + ".tmp";
      file = std::fopen(temp_path.c_str(), "wb");
      if (file == nullptr) {
        failure = absl::StrCat("cannot write ", temp_path, ": ",
                               std::strerror(errno));
        local_failure = true;
        break;
      }
    }
    if (chunk.total_bytes() > 0) total = chunk.total_bytes();
    if (chunk.offset() != written) {
      failure = absl::StrCat("the coordinator sent a chunk at offset ",
                             chunk.offset(), " after ", written,
                             " bytes; download again");
      break;
    }
    if (!chunk.data().empty() &&
        std::fwrite(chunk.data().data(), 1, chunk.data().size(), file) !=
            chunk.data().size()) {
      failure =
          absl::StrCat("cannot write ", temp_path, ": ", std::strerror(errno));
      local_failure = true;
      break;
    }
    written += static_cast<int64_t>(chunk.data().size());
  }
  if (!failure.empty()) context.TryCancel();
  const grpc::Status status = reader->Finish();
  if (failure.empty() && !status.ok()) {
    if (file != nullptr) {
      std::fclose(file);
      std::remove(temp_path.c_str());
    }
    return RpcFailure(options, status, "DownloadModel", err);
  }
  if (failure.empty() && file == nullptr) {
    err << "the coordinator sent no model data for job " << download.job_id
        << "\n";
    return kExitRpcError;
  }
  if (failure.empty() && total >= 0 && written != total) {
    failure = absl::StrCat("the download ended after ", written, " of ", total,
                           " bytes; download again");
  }
  // Flush to the disk before the rename, so the final name never refers to
  // a file whose data a crash could lose.
  if (failure.empty() &&
      (std::fflush(file) != 0 || ::fsync(fileno(file)) != 0)) {
    failure =
        absl::StrCat("cannot write ", temp_path, ": ", std::strerror(errno));
    local_failure = true;
  }
  if (file != nullptr && std::fclose(file) != 0 && failure.empty()) {
    failure =
        absl::StrCat("cannot write ", temp_path, ": ", std::strerror(errno));
    local_failure = true;
  }
  if (failure.empty() && std::rename(temp_path.c_str(), path.c_str()) != 0) {
    failure = absl::StrCat("cannot rename ", temp_path, " to ", path, ": ",
                           std::strerror(errno));
    local_failure = true;
  }
  if (!failure.empty()) {
    if (file != nullptr) std::remove(temp_path.c_str());
    if (local_failure) return LocalFailure(failure, err);
    err << failure << "\n";
    return kExitRpcError;
  }
  if (options.output == OutputFormat::kJson) {
    google::protobuf::Struct result;
    auto& fields = *result.mutable_fields();
    fields["job_id"].set_string_value(download.job_id);
    fields["path"].set_string_value(path);
    fields["bytes"].set_number_value(static_cast<double>(written));
    fields["format"].set_string_value(
        pnn::v1::ModelFormat_Name(download.format));
    out << ToJson(result, /*multiline=*/true);
  } else {
    out << path << " " << written << " bytes (" << FormatBytes(written)
        << ")\n";
  }
  return kExitOk;
}

int RunHealth(const ClientOptions& options, const std::string& service,
              std::ostream& out, std::ostream& err) {
  std::unique_ptr<grpc::health::v1::Health::Stub> stub =
      grpc::health::v1::Health::NewStub(
          MakeChannel(options.coordinator, Credentials(options)));
  grpc::ClientContext context;
  AttachAuthToken(options.auth_token, &context);
  SetDeadline(options, &context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    const std::string detail = absl::StrCat(StatusCodeName(status.error_code()),
                                            ": ", status.error_message());
    if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      err << detail << " (health check at " << options.coordinator
          << "); the server does not serve grpc.health.v1.Health\n";
      return kExitRpcError;
    }
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      err << detail << " (health check at " << options.coordinator
          << "); the server has no health status for service '" << service
          << "'; omit SERVICE to check the server as a whole\n";
      return kExitRpcError;
    }
    return RpcFailure(options, status, "Health/Check", err);
  }
  const std::string state =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
          response.status());
  if (options.output == OutputFormat::kJson) {
    out << ToJson(response, /*multiline=*/true);
  } else {
    out << options.coordinator
        << (service.empty() ? "" : absl::StrCat(" ", service)) << ": " << state
        << "\n";
  }
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    err << "coordinator at " << options.coordinator << " is " << state << "\n";
    return kExitRpcError;
  }
  return kExitOk;
}

std::unique_ptr<Coordinator::Stub> NewStub(const ClientOptions& options) {
  return Coordinator::NewStub(
      MakeChannel(options.coordinator, Credentials(options)));
}

void PrepareCall(const ClientOptions& options, bool deadline,
                 grpc::ClientContext* context) {
  AttachAuthToken(options.auth_token, context);
  if (deadline) SetDeadline(options, context);
}

int RpcFailure(const ClientOptions& options, const grpc::Status& status,
               absl::string_view rpc, std::ostream& err) {
  err << DescribeRpcError(status, options.coordinator, rpc) << "\n";
  return kExitRpcError;
}

}  // namespace pnn::client
