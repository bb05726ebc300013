#include "worker/stage_client.h"

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

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

  ~GrpcStage() override {
    CancelAll();
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [this] { return in_flight_.empty(); });
  }

  void Start(const pnn::v1::StageForwardRequest& request,
             pnn::v1::StageForwardResponse* response,
             std::function<void(const absl::Status&)> done) override {
    auto context = std::make_shared<grpc::ClientContext>();
    AttachAuthToken(options_.auth_token, context.get());
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(options_.call_timeout_ms));
    grpc::ClientContext* const raw = context.get();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_flight_.emplace(raw, std::move(context));
    }
    // The callback API: several micro-batches are in flight at once and
    // no thread blocks in a call.
    stub_->async()->StageForward(
        raw, &request, response,
        [this, raw, done = std::move(done)](grpc::Status status) {
          done(FromGrpcStatus(status));
          std::lock_guard<std::mutex> lock(mutex_);
          in_flight_.erase(raw);
          idle_.notify_all();
        });
  }

  void CancelAll() override {
    // Cancelled outside the lock (a cancellation may complete its call on
    // this thread); the copies keep the contexts alive meanwhile.
    std::vector<std::shared_ptr<grpc::ClientContext>> calls;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& [raw, context] : in_flight_) calls.push_back(context);
    }
    for (const auto& context : calls) context->TryCancel();
  }

 private:
  const StageClientOptions options_;
  const std::unique_ptr<pnn::v1::Worker::Stub> stub_;
  std::mutex mutex_;
  std::condition_variable idle_;
  // Each call's context, until its completion has run.
  std::map<grpc::ClientContext*, std::shared_ptr<grpc::ClientContext>>
      in_flight_;  // guarded by mutex_
};

}  // namespace

std::unique_ptr<DownstreamStage> ConnectStage(
    const std::string& address, const StageClientOptions& options) {
  return std::make_unique<GrpcStage>(address, options);
}

}  // namespace worker
}  // namespace pnn
