// pnnctl's exit statuses and the mapping from job states and RPC failures
// to them and to messages a person can act on. Pure functions, no I/O.
#ifndef PNN_CLIENT_EXIT_CODES_H_
#define PNN_CLIENT_EXIT_CODES_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/strings/string_view.h"
#include "pnn/v1/coordinator.pb.h"

namespace pnn::client {

// Scripts branch on these; they are documented in the usage text, so keep
// the numbers stable.
enum ExitCode : int {
  kExitOk = 0,            // success; watch: the job SUCCEEDED
  kExitUsage = 1,         // usage or local error (bad flag, bad file, I/O)
  kExitRpcError = 2,      // the coordinator could not be reached or refused
  kExitJobFailed = 3,     // watched job ended FAILED
  kExitJobCancelled = 4,  // watched job ended CANCELLED
};

// Exit status for a job that a watch saw end: 0, 3 or 4. A state that is
// not final means the watch ended early, which is reported as an RPC error.
ExitCode ExitCodeForFinalState(pnn::v1::JobState state);

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsFinalState(pnn::v1::JobState state);

// What went wrong with an RPC to `target`, for stderr: the gRPC code name,
// the server's message, and a hint on what to do next. `rpc` names the
// call ("GetJob") for the DEADLINE_EXCEEDED hint. Never empty.
std::string DescribeRpcError(const grpc::Status& status,
                             absl::string_view target, absl::string_view rpc);

// "NOT_FOUND", "UNAVAILABLE", ...: the canonical name of a gRPC code.
std::string StatusCodeName(grpc::StatusCode code);

}  // namespace pnn::client

#endif  // PNN_CLIENT_EXIT_CODES_H_
