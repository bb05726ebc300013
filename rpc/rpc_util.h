// Helpers both services and pnnctl share at the gRPC edge: status
// conversion, message-size limits, channel and server settings. No libtorch.
#ifndef PNN_RPC_RPC_UTIL_H_
#define PNN_RPC_RPC_UTIL_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"

namespace pnn {

// Largest gRPC message pnn sends or accepts (segment weights travel in one
// message; 256 MiB is ~64M float32 parameters per segment).
inline constexpr int kMaxMessageBytes = 256 << 20;

// absl::Status <-> grpc::Status with the same canonical code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// A channel to `target` that accepts messages up to kMaxMessageBytes;
// plaintext unless `credentials` are given (rpc/tls.h).
std::shared_ptr<grpc::Channel> MakeChannel(
    const std::string& target,
    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

// Largest request a user-facing server accepts (job specs, queries): far
// above any real request, far below what could hurt the process.
inline constexpr int kMaxRequestBytes = 4 << 20;

// Applies pnn's message-size limits to a server under construction:
// requests up to `max_request_bytes`, responses up to kMaxMessageBytes.
void ConfigureServerBuilder(grpc::ServerBuilder* builder,
                            int max_request_bytes = kMaxMessageBytes);

}  // namespace pnn

#endif  // PNN_RPC_RPC_UTIL_H_
