#include "client/exit_codes.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pnn::client {

using pnn::v1::JobState;

bool IsFinalState(JobState state) {
  return state == pnn::v1::JOB_STATE_SUCCEEDED ||
         state == pnn::v1::JOB_STATE_FAILED ||
         state == pnn::v1::JOB_STATE_CANCELLED;
}

ExitCode ExitCodeForFinalState(JobState state) {
  switch (state) {
    case pnn::v1::JOB_STATE_SUCCEEDED:
      return kExitOk;
    case pnn::v1::JOB_STATE_FAILED:
      return kExitJobFailed;
    case pnn::v1::JOB_STATE_CANCELLED:
      return kExitJobCancelled;
    default:
      return kExitRpcError;
  }
}

std::string StatusCodeName(grpc::StatusCode code) {
  // gRPC and Abseil share the canonical code numbers.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string DescribeRpcError(const grpc::Status& status,
                             absl::string_view target, absl::string_view rpc) {
  const std::string code = StatusCodeName(status.error_code());
  const std::string detail =
      status.error_message().empty()
          ? code
          : absl::StrCat(code, ": ", status.error_message());
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return absl::StrCat("cannot reach coordinator at ", target, " (", detail,
                          "); is pnn-coordinator running? set --coordinator "
                          "or PNN_COORDINATOR");
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::StrCat(detail, " (", rpc, " to ", target,
                          "); the coordinator did not answer in time: raise "
                          "--timeout, or check that it is not overloaded");
    case grpc::StatusCode::NOT_FOUND:
      return absl::StrCat(detail,
                          "; `pnnctl list` shows the jobs the coordinator "
                          "knows");
    case grpc::StatusCode::INVALID_ARGUMENT:
      // Only SubmitJob validates a spec; other calls name their own field.
      if (rpc != "SubmitJob") return detail;
      return absl::StrCat(detail,
                          "; fix the named field in the job spec or the flag "
                          "that sets it");
    case grpc::StatusCode::UNIMPLEMENTED:
      return absl::StrCat(detail, " (", rpc, " at ", target,
                          "); is that address a pnn-coordinator of this "
                          "version?");
    default:
      return detail;
  }
}

}  // namespace pnn::client
