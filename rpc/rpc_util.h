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

// An insecure channel to `target` that accepts messages up to
// kMaxMessageBytes.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target);

// Applies pnn's limits (message sizes) to a server under construction.
void ConfigureServerBuilder(grpc::ServerBuilder* builder);

}  // namespace pnn

#endif  // PNN_RPC_RPC_UTIL_H_
