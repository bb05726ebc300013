#include "client/cluster_commands.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/exit_codes.h"
#include "pnn/v1/coordinator.grpc.pb.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"
#include "rpc/tls.h"

namespace pnn::client {
namespace {

using pnn::v1::Coordinator;

bool BackedOff(const pnn::v1::WorkerStatus& worker, absl::Time now) {
  return worker.has_backed_off_until() &&
         ToTime(worker.backed_off_until()) > now;
}

void PrintLogEntry(const pnn::v1::JobLogEntry& entry,
                   const ClientOptions& options, std::ostream& out) {
  if (options.output == OutputFormat::kJson) {
    out << ToJson(entry, /*multiline=*/false);
  } else {
    out << FormatLogEntry(entry, options.format) << "\n";
  }
  out.flush();
}

// Follows the job's events after its log, printing each new message, until
// the job ends.
int FollowLog(Coordinator::Stub& stub, const ClientOptions& options,
              const std::string& job_id, const pnn::v1::JobLogEntry* last,
              std::ostream& out, std::ostream& err) {
  grpc::ClientContext context;
  PrepareCall(options, /*deadline=*/false, &context);
  pnn::v1::WatchJobRequest request;
  request.set_job_id(job_id);
  std::unique_ptr<grpc::ClientReader<pnn::v1::JobEvent>> reader =
      stub.WatchJob(&context, request);
  pnn::v1::JobEvent event;
  std::string last_message = last != nullptr ? last->message() : "";
  bool ended = false;
  while (reader->Read(&event)) {
    // The first event repeats the job's current state, usually the log's
    // last entry: print a message only once in a row.
    if (!event.message().empty() && event.message() != last_message) {
      pnn::v1::JobLogEntry entry;
      *entry.mutable_time() = event.time();
      entry.set_message(event.message());
      PrintLogEntry(entry, options, out);
      last_message = event.message();
    }
    if (IsFinalState(event.job().state())) {
      ended = true;
      context.TryCancel();
      break;
    }
  }
  const grpc::Status status = reader->Finish();
  if (ended) return kExitOk;
  if (!status.ok()) return RpcFailure(options, status, "WatchJob", err);
  err << "the coordinator ended the watch of job " << job_id
      << " before the job ended; run `pnnctl logs -f " << job_id << "` again\n";
  return kExitRpcError;
}

}  // namespace

std::string Ago(const google::protobuf::Timestamp& time, absl::Time now) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  const double seconds =
      std::max(0.0, absl::ToDoubleSeconds(now - ToTime(time)));
  if (seconds < 10) return absl::StrFormat("%.1fs ago", seconds);
  if (seconds < 60) return absl::StrFormat("%.0fs ago", std::floor(seconds));
  const int64_t whole = static_cast<int64_t>(seconds);
  if (whole < 3600) {
    return absl::StrFormat("%dm%ds ago", whole / 60, whole % 60);
  }
  return absl::StrFormat("%dh%dm ago", whole / 3600, whole / 60 % 60);
}

std::string WorkerState(const pnn::v1::WorkerStatus& worker, absl::Time now,
                        const FormatOptions& options) {
  if (worker.deregistered()) {
    return worker.job_id().empty()
               ? "draining"
               : absl::StrCat("draining ", worker.job_id(), " task ",
                              worker.task_index());
  }
  if (!worker.job_id().empty()) {
    // A task index < 0: work that is no job's task yet (the profiling pass
    // of a job being submitted), which the job id field describes.
    if (worker.task_index() < 0) return absl::StrCat("busy ", worker.job_id());
    return absl::StrCat("busy ", worker.job_id(), " task ",
                        worker.task_index());
  }
  if (BackedOff(worker, now)) {
    return absl::StrCat(
        "backed off until ",
        absl::FormatTime("%H:%M:%S", ToTime(worker.backed_off_until()),
                         options.time_zone));
  }
  return "idle";
}

std::string FormatWorkerList(const std::vector<pnn::v1::WorkerStatus>& workers,
                             absl::Time now, const FormatOptions& options) {
  std::vector<std::vector<std::string>> rows = {{"WORKER ID", "NAME", "ADDRESS",
                                                 "DEVICE", "THREADS", "STATE",
                                                 "HEARTBEAT"}};
  for (const pnn::v1::WorkerStatus& worker : workers) {
    const pnn::v1::WorkerInfo& info = worker.info();
    rows.push_back({worker.worker_id(), info.name().empty() ? "-" : info.name(),
                    info.address().empty() ? "-" : info.address(),
                    info.device().empty() ? "cpu" : info.device(),
                    info.threads() > 0 ? absl::StrCat(info.threads()) : "-",
                    WorkerState(worker, now, options),
                    Ago(worker.last_heartbeat_time(), now)});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) {
      widths[c] = std::max(widths[c], row[c].size());
    }
  }
  // 100 columns at most: the name (for people; the id identifies) gives
  // way first, cut with a trailing '~'.
  constexpr size_t kMaxWidth = 100;
  constexpr size_t kName = 1;
  size_t total = 2 * (widths.size() - 1);
  for (size_t width : widths) total += width;
  if (total > kMaxWidth) {
    widths[kName] -= std::min(widths[kName] - 4, total - kMaxWidth);
    for (auto& row : rows) {
      if (row[kName].size() > widths[kName]) {
        row[kName] = row[kName].substr(0, widths[kName] - 1) + "~";
      }
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      if (c > 0) line += "  ";
      const std::string pad(widths[c] - row[c].size(), ' ');
      line += c == 4 ? pad + row[c] : row[c] + pad;  // threads: a number
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string FormatLogEntry(const pnn::v1::JobLogEntry& entry,
                           const FormatOptions& options) {
  const std::string time =
      entry.has_time()
          ? absl::FormatTime("%Y-%m-%d %H:%M:%E3S", ToTime(entry.time()),
                             options.time_zone)
          : std::string(23, '-');
  return absl::StrCat(time, "  ", entry.message());
}

int RunWorkers(const ClientOptions& options, std::ostream& out,
               std::ostream& err) {
  std::unique_ptr<Coordinator::Stub> stub = NewStub(options);
  grpc::ClientContext context;
  PrepareCall(options, /*deadline=*/true, &context);
  pnn::v1::ListWorkersResponse response;
  const grpc::Status status =
      stub->ListWorkers(&context, pnn::v1::ListWorkersRequest(), &response);
  if (!status.ok()) return RpcFailure(options, status, "ListWorkers", err);
  if (options.output == OutputFormat::kJson) {
    out << ToJson(response, /*multiline=*/true);
    return kExitOk;
  }
  if (response.workers().empty()) {
    err << "no workers are registered with the coordinator at "
        << options.coordinator << "\n";
    return kExitOk;
  }
  const std::vector<pnn::v1::WorkerStatus> workers(response.workers().begin(),
                                                   response.workers().end());
  out << FormatWorkerList(workers, absl::Now(), options.format);
  return kExitOk;
}

int RunLogs(const ClientOptions& options, const std::string& job_id,
            bool follow, std::ostream& out, std::ostream& err) {
  std::unique_ptr<Coordinator::Stub> stub = NewStub(options);
  grpc::ClientContext context;
  PrepareCall(options, /*deadline=*/true, &context);
  pnn::v1::GetJobLogRequest request;
  request.set_job_id(job_id);
  pnn::v1::GetJobLogResponse response;
  const grpc::Status status = stub->GetJobLog(&context, request, &response);
  if (!status.ok()) return RpcFailure(options, status, "GetJobLog", err);
  if (response.dropped_entries() > 0) {
    // stderr, so that stdout stays the log itself.
    err << "(" << response.dropped_entries()
        << " older entries were dropped by the coordinator)\n";
  }
  if (options.output == OutputFormat::kJson && !follow) {
    out << ToJson(response, /*multiline=*/true);
    return kExitOk;
  }
  for (const pnn::v1::JobLogEntry& entry : response.entries()) {
    PrintLogEntry(entry, options, out);
  }
  if (!follow) return kExitOk;
  const pnn::v1::JobLogEntry* last =
      response.entries().empty()
          ? nullptr
          : &response.entries(response.entries_size() - 1);
  return FollowLog(*stub, options, job_id, last, out, err);
}

}  // namespace pnn::client
