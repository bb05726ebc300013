// Runs one task's TrainSegment call on a worker: sends the request, hands
// every update to `on_update` as it arrives, and says how the stream ended,
// with the result's weights. The coordinator owns the call's context (to
// cancel it) and the thread; tests substitute a driver to fake workers.
//
// Thread safety: Run is called from many threads at once.
#ifndef PNN_COORDINATOR_TASK_DRIVER_H_
#define PNN_COORDINATOR_TASK_DRIVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "pnn/v1/worker.pb.h"

namespace grpc {
class ChannelCredentials;
class ClientContext;
}  // namespace grpc

namespace pnn {

struct TaskRun {
  absl::Status status;                             // how the stream ended
  std::optional<pnn::v1::SegmentWeights> weights;  // the result's, if any
};

class TaskDriver {
 public:
  using OnUpdate = std::function<void(const pnn::v1::TrainSegmentUpdate& update,
                                      int64_t bytes)>;
  virtual ~TaskDriver() = default;
  // Blocks until the stream ends (or `context` is cancelled).
  virtual TaskRun Run(const std::string& address,
                      const pnn::v1::TrainSegmentRequest& request,
                      grpc::ClientContext* context,
                      const OnUpdate& on_update) = 0;
};

// The real driver: Worker.TrainSegment over gRPC with the coordinator's
// channel credentials, sending `token` (rpc/auth.h) with every call.
std::shared_ptr<TaskDriver> MakeGrpcTaskDriver(
    std::shared_ptr<grpc::ChannelCredentials> credentials, std::string token);

}  // namespace pnn

#endif  // PNN_COORDINATOR_TASK_DRIVER_H_
