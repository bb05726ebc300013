// The pnn.v1.Worker gRPC service (callback API): a thin edge over
// SegmentRunner. RPC threads validate and hand work to the runner's
// training thread; a per-call reactor streams the queued updates back.
//
// Thread safety: registered with one grpc::Server; the runner must outlive
// the server (shut the server down before destroying the runner).
#ifndef PNN_WORKER_WORKER_SERVICE_H_
#define PNN_WORKER_WORKER_SERVICE_H_

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "pnn/v1/worker.grpc.pb.h"
#include "worker/segment_runner.h"

namespace pnn {
namespace worker {
struct WorkerMetrics;
}  // namespace worker
}  // namespace pnn

namespace pnn {
namespace worker {

class WorkerService final : public pnn::v1::Worker::CallbackService {
 public:
  // Neither is owned; `metrics` may be null. A non-empty `auth_token` is
  // required on every call (rpc/auth.h).
  explicit WorkerService(SegmentRunner* runner,
                         WorkerMetrics* metrics = nullptr,
                         std::string auth_token = "")
      : runner_(runner),
        metrics_(metrics),
        auth_token_(std::move(auth_token)) {}

  // Streams started, progress, epoch and finally result updates; the
  // status is the training outcome (see worker.proto).
  grpc::ServerWriteReactor<pnn::v1::TrainSegmentUpdate>* TrainSegment(
      grpc::CallbackServerContext* context,
      const pnn::v1::TrainSegmentRequest* request) override;

  grpc::ServerUnaryReactor* CancelSegment(
      grpc::CallbackServerContext* context,
      const pnn::v1::CancelSegmentRequest* request,
      pnn::v1::CancelSegmentResponse* response) override;

  // Hands the batch to this worker's pipeline stage (SegmentRunner::
  // SubmitStageBatch); the training thread completes the call, so no gRPC
  // thread waits for training. Takes the deployment's token, which the
  // previous stage's worker sends like the coordinator does.
  grpc::ServerUnaryReactor* StageForward(
      grpc::CallbackServerContext* context,
      const pnn::v1::StageForwardRequest* request,
      pnn::v1::StageForwardResponse* response) override;

 private:
  // UNAUTHENTICATED (and counted) when the call lacks the token.
  absl::Status Authenticate(const grpc::CallbackServerContext* context);

  SegmentRunner* const runner_;
  WorkerMetrics* const metrics_;
  const std::string auth_token_;
};

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_WORKER_SERVICE_H_
