// The standard gRPC health check, called without generated health stubs
// (Debian ships no grpc health proto library for C++).
#ifndef PNN_TESTS_GRPC_HEALTH_H_
#define PNN_TESTS_GRPC_HEALTH_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pnn {

// The encoded HealthCheckResponse of a SERVING service.
inline const std::string& HealthServing() {
  static const std::string serving("\x08\x01", 2);
  return serving;
}

// grpc.health.v1.Health/Check for `service` ("" asks about the whole
// server): the response's bytes, or the call's error.
inline absl::StatusOr<std::string> CheckHealth(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  grpc::GenericStub generic(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(10));
  // HealthCheckRequest { string service = 1; }, encoded by hand (a one-byte
  // length: service names under 128 bytes).
  std::string encoded;
  if (!service.empty()) {
    encoded = std::string("\x0a", 1) + static_cast<char>(service.size()) +
              service;
  }
  grpc::Slice request_slice(encoded);
  grpc::ByteBuffer request(&request_slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check",
                    grpc::StubOptions(), &request, &response,
                    [&done](grpc::Status status) { done.set_value(status); });
  const grpc::Status status = done.get_future().get();
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) {
    return absl::InternalError("cannot read the health response");
  }
  std::string bytes;
  for (const auto& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return bytes;
}

}  // namespace pnn

#endif  // PNN_TESTS_GRPC_HEALTH_H_
