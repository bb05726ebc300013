// Bearer-token authentication for pnn's RPCs. When a deployment sets a
// token, clients and workers send "authorization: Bearer <token>" with every
// call, and the services refuse calls without it (UNAUTHENTICATED). The
// same token lets the coordinator call its workers, so a worker accepts
// TrainSegment only from its coordinator. The standard health and
// reflection services stay open: probes and tooling need them, and they
// reveal nothing about jobs.
//
// Tokens never appear in logs, statuses or metrics.
#ifndef PNN_RPC_AUTH_H_
#define PNN_RPC_AUTH_H_

#include <map>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace pnn {

// The environment variable every pnn program reads a token from when no
// token file is given.
inline constexpr char kAuthTokenEnvironment[] = "PNN_AUTH_TOKEN";

// The token from `token_file` (surrounding whitespace removed) or, when the
// path is empty, from $PNN_AUTH_TOKEN; "" when neither is set (no
// authentication). An unreadable or empty file is an error.
absl::StatusOr<std::string> LoadAuthToken(const std::string& token_file);

// Adds the token to an outgoing call; nothing when `token` is empty.
void AttachAuthToken(const std::string& token, grpc::ClientContext* context);

// OK when `expected` is empty or the call carries exactly that token
// (compared in constant time); otherwise UNAUTHENTICATED.
absl::Status CheckAuthToken(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata,
    const std::string& expected);

}  // namespace pnn

#endif  // PNN_RPC_AUTH_H_
