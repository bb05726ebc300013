// The gRPC side of a model-parallel pipeline: a stage's link to the next
// stage's worker (Worker.StageForward). No libtorch in this header.
#ifndef PNN_WORKER_STAGE_CLIENT_H_
#define PNN_WORKER_STAGE_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "worker/segment_runner.h"

namespace pnn {
namespace worker {

struct StageClientOptions {
  // Sent with every call (rpc/auth.h): the deployment's token, which every
  // worker also accepts.
  std::string auth_token;
  // Null: plaintext. Otherwise the worker's own TLS client credentials
  // (its certificate doubles as a client certificate for mutual TLS).
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // One call carries a micro-batch through every later stage and back
  // (behind the others of its batch); a call that takes longer than this
  // is DEADLINE_EXCEEDED.
  int64_t call_timeout_ms = 300000;
};

// A DownstreamStage that calls Worker.StageForward at `address` over one
// channel with gRPC's callback API: several calls in flight at once, each
// cancellable (CancelAll); destroying it cancels and waits for them.
std::unique_ptr<DownstreamStage> ConnectStage(
    const std::string& address, const StageClientOptions& options);

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_STAGE_CLIENT_H_
