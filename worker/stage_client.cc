#include "worker/stage_client.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <utility>

#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"

namespace pnn {
namespace worker {
namespace {

class GrpcStage final : public DownstreamStage {
 public:
  GrpcStage(const std::string& address, StageClientOptions options)
      : options_(std::move(options)),
        stub_(pnn::v1::Worker::NewStub(
            MakeChannel(address, options_.credentials))) {}

  absl::Status Forward(const pnn::v1::StageForwardRequest& request,
                       pnn::v1::StageForwardResponse* response,
                       const std::function<bool()>& should_stop) override {
    grpc::ClientContext context;
    AttachAuthToken(options_.auth_token, &context);
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(options_.call_timeout_ms));
    // The callback API so that this thread can watch should_stop and
    // cancel the call, instead of blocking in it until the deadline.
    std::mutex mutex;
    std::condition_variable finished;
    bool done = false;
    grpc::Status status;
    stub_->async()->StageForward(
        &context, &request, response, [&](grpc::Status result) {
          std::lock_guard<std::mutex> lock(mutex);
          status = std::move(result);
          done = true;
          finished.notify_all();
        });
    bool cancelled = false;
    std::unique_lock<std::mutex> lock(mutex);
    while (!finished.wait_for(lock, std::chrono::milliseconds(20),
                              [&] { return done; })) {
      if (!cancelled && should_stop && should_stop()) {
        context.TryCancel();
        cancelled = true;
      }
    }
    return FromGrpcStatus(status);
  }

 private:
  const StageClientOptions options_;
  const std::unique_ptr<pnn::v1::Worker::Stub> stub_;
};

}  // namespace

std::unique_ptr<DownstreamStage> ConnectStage(
    const std::string& address, const StageClientOptions& options) {
  return std::make_unique<GrpcStage>(address, options);
}

}  // namespace worker
}  // namespace pnn
