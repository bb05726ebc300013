// `pnnctl workers` and `pnnctl logs`: the coordinator's view of its workers
// (ListWorkers) and a job's log (GetJobLog, then WatchJob with --follow).
//
// The Run* functions behave as those of commands.h: they write results to
// `out`, errors to `err`, and return the exit status. The Format* functions
// are pure, so tests pass a fixed `now`.
#ifndef PNN_CLIENT_CLUSTER_COMMANDS_H_
#define PNN_CLIENT_CLUSTER_COMMANDS_H_

#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "client/commands.h"
#include "client/format.h"
#include "pnn/v1/coordinator.pb.h"

namespace pnn::client {

// "idle", "busy JOB task N", "draining [JOB task N]" (deregistered) or
// "backed off until HH:MM:SS" (while `now` is before backed_off_until).
std::string WorkerState(const pnn::v1::WorkerStatus& worker, absl::Time now,
                        const FormatOptions& options);

// "0.4s ago", "12s ago", "3m4s ago"; "-" for an unset time.
std::string Ago(const google::protobuf::Timestamp& time, absl::Time now);

// A table, one row per worker: id, name, address, device, threads, state,
// last heartbeat; at most 100 columns (a long name is cut, with '~').
std::string FormatWorkerList(const std::vector<pnn::v1::WorkerStatus>& workers,
                             absl::Time now, const FormatOptions& options);

// One log line: "2023-11-14 22:13:20.123  message".
std::string FormatLogEntry(const pnn::v1::JobLogEntry& entry,
                           const FormatOptions& options);

// Lists the workers: the table, or the ListWorkersResponse as JSON.
int RunWorkers(const ClientOptions& options, std::ostream& out,
               std::ostream& err);

// Prints the job's log, oldest first (JSON: the GetJobLogResponse). With
// `follow`, then the messages of the job's events until it ends (JSON: one
// JobLogEntry per line throughout). Exit 0 once the log (and, following,
// the job) has ended, whatever the job's state.
int RunLogs(const ClientOptions& options, const std::string& job_id,
            bool follow, std::ostream& out, std::ostream& err);

}  // namespace pnn::client

#endif  // PNN_CLIENT_CLUSTER_COMMANDS_H_
