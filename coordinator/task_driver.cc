#include "coordinator/task_driver.h"

#include <grpcpp/grpcpp.h>

#include "pnn/v1/worker.grpc.pb.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"

namespace pnn {
namespace {

class GrpcTaskDriver final : public TaskDriver {
 public:
  GrpcTaskDriver(std::shared_ptr<grpc::ChannelCredentials> credentials,
                 std::string token)
      : credentials_(std::move(credentials)), token_(std::move(token)) {}

  TaskRun Run(const std::string& address,
              const pnn::v1::TrainSegmentRequest& request,
              grpc::ClientContext* context,
              const OnUpdate& on_update) override {
    auto stub = pnn::v1::Worker::NewStub(MakeChannel(address, credentials_));
    AttachAuthToken(token_, context);
    std::unique_ptr<grpc::ClientReader<pnn::v1::TrainSegmentUpdate>> reader =
        stub->TrainSegment(context, request);
    TaskRun run;
    pnn::v1::TrainSegmentUpdate update;
    while (reader->Read(&update)) {
      on_update(update, static_cast<int64_t>(update.ByteSizeLong()));
      if (update.has_result()) {
        run.weights = std::move(*update.mutable_result()->mutable_weights());
      }
    }
    run.status = FromGrpcStatus(reader->Finish());
    return run;
  }

 private:
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  const std::string token_;
};

}  // namespace

std::shared_ptr<TaskDriver> MakeGrpcTaskDriver(
    std::shared_ptr<grpc::ChannelCredentials> credentials, std::string token) {
  return std::make_shared<GrpcTaskDriver>(std::move(credentials),
                                          std::move(token));
}

}  // namespace pnn
