#include "worker/worker_service.h"

#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"
#include "worker/log.h"
#include "worker/metrics.h"

namespace pnn {
namespace worker {
namespace {

using pnn::v1::TrainSegmentUpdate;

// The hand-off between the training thread (producer) and one call's
// reactor (consumer). Both sides only decide, under the mutex, who owns the
// next reactor operation; the owner then performs it outside the mutex.
// Invariants: at most one write in flight; Finish is called exactly once and
// never while a write is in flight; once Finish was called nobody touches
// the reactor again (OnDone may delete it at any moment after that).
class UpdateStream final : public SegmentObserver {
 public:
  UpdateStream(grpc::ServerWriteReactor<TrainSegmentUpdate>* reactor,
               WorkerMetrics* metrics)
      : reactor_(reactor), metrics_(metrics) {}

  // Training thread.
  void OnUpdate(TrainSegmentUpdate update) override {
    Action action;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (finish_called_) return;  // the client is gone; drop it
      // A slow reader must not make progress messages pile up: a newer one
      // replaces an unsent older one. Epochs and the result always go out.
      if (update.has_progress() && !pending_.empty() &&
          pending_.back().has_progress()) {
        pending_.back() = std::move(update);
      } else {
        pending_.push_back(std::move(update));
      }
      action = NextLocked();
    }
    Perform(action);
  }

  void OnFinish(const absl::Status& status) override {
    Finish(ToGrpcStatus(status));
  }

  bool Abandoned() const override { return abandoned_.load(); }

  // Reactor side (gRPC threads) and the RPC handler.
  void Finish(grpc::Status status) {
    Action action;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!final_status_) final_status_ = std::move(status);
      action = NextLocked();
    }
    Perform(action);
  }

  void WriteDone(bool ok) {
    // ok == false: the stream is broken (client gone); stop training.
    if (!ok) abandoned_.store(true);
    Action action;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      write_in_flight_ = false;
      action = NextLocked();
    }
    Perform(action);
  }

  void Cancelled() {
    abandoned_.store(true);
    Action action;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      action = NextLocked();
    }
    Perform(action);
  }

 private:
  struct Action {
    enum Kind { kNone, kWrite, kFinish } kind = kNone;
    grpc::Status status;
  };

  Action NextLocked() {
    Action action;
    if (finish_called_ || write_in_flight_) return action;
    if (abandoned_.load()) {
      // Nobody reads the rest; finish now rather than when training
      // notices, so the call's resources go back at once.
      pending_.clear();
      finish_called_ = true;
      action.kind = Action::kFinish;
      action.status = final_status_.value_or(
          grpc::Status(grpc::StatusCode::CANCELLED, "TrainSegment cancelled"));
      return action;
    }
    if (!pending_.empty()) {
      in_flight_ = std::move(pending_.front());
      pending_.pop_front();
      write_in_flight_ = true;
      action.kind = Action::kWrite;
      return action;
    }
    if (final_status_) {
      finish_called_ = true;
      action.kind = Action::kFinish;
      action.status = *final_status_;
    }
    return action;
  }

  void Perform(const Action& action) {
    switch (action.kind) {
      case Action::kWrite:
        // in_flight_ is stable until OnWriteDone: only the owner of the
        // next write may replace it, and that needs this write to finish.
        if (metrics_ != nullptr) {
          metrics_->network_sent_bytes.Increment(
              static_cast<double>(in_flight_.ByteSizeLong()));
        }
        reactor_->StartWrite(&in_flight_);
        break;
      case Action::kFinish:
        reactor_->Finish(action.status);
        break;
      case Action::kNone:
        break;
    }
  }

  grpc::ServerWriteReactor<TrainSegmentUpdate>* const reactor_;
  WorkerMetrics* const metrics_;  // may be null
  std::atomic<bool> abandoned_{false};
  std::mutex mutex_;
  std::deque<TrainSegmentUpdate> pending_;    // guarded by mutex_
  TrainSegmentUpdate in_flight_;              // see Perform()
  std::optional<grpc::Status> final_status_;  // guarded by mutex_
  bool write_in_flight_ = false;              // guarded by mutex_
  bool finish_called_ = false;                // guarded by mutex_
};

// Owns nothing but its share of the stream; deletes itself in OnDone, the
// last reaction gRPC delivers.
class TrainSegmentReactor final
    : public grpc::ServerWriteReactor<TrainSegmentUpdate> {
 public:
  explicit TrainSegmentReactor(WorkerMetrics* metrics)
      : stream_(std::make_shared<UpdateStream>(this, metrics)) {}

  const std::shared_ptr<UpdateStream>& stream() const { return stream_; }

  void OnWriteDone(bool ok) override { stream_->WriteDone(ok); }
  void OnCancel() override { stream_->Cancelled(); }
  void OnDone() override { delete this; }

 private:
  // The training thread may hold the stream after OnDone; it never reaches
  // the deleted reactor because Finish was already called by then.
  std::shared_ptr<UpdateStream> stream_;
};

}  // namespace

grpc::ServerWriteReactor<TrainSegmentUpdate>* WorkerService::TrainSegment(
    grpc::CallbackServerContext* context,
    const pnn::v1::TrainSegmentRequest* request) {
  auto* reactor = new TrainSegmentReactor(metrics_);
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    reactor->stream()->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  if (metrics_ != nullptr) {
    metrics_->network_received_bytes.Increment(
        static_cast<double>(request->ByteSizeLong()));
  }
  if (!request->has_task()) {
    reactor->stream()->Finish(grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        "TrainSegmentRequest.task is missing; send the SegmentTask planned "
        "by the coordinator"));
    return reactor;
  }
  if (request->task().job_id().empty()) {
    // Without a job id the task could never be named in CancelSegment.
    reactor->stream()->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     "TrainSegmentRequest.task.job_id is empty"));
    return reactor;
  }
  const absl::Status submitted =
      runner_->TrySubmit(request->task(), reactor->stream());
  if (!submitted.ok()) {
    if (submitted.code() != absl::StatusCode::kResourceExhausted) {
      LogLine(absl::StrCat("rejected job ", request->task().job_id(),
                           " segment ", request->task().segment_index(), ": ",
                           submitted.ToString()));
    }
    reactor->stream()->Finish(ToGrpcStatus(submitted));
  }
  return reactor;
}

absl::Status WorkerService::Authenticate(
    const grpc::CallbackServerContext* context) {
  absl::Status status = CheckAuthToken(context->client_metadata(), auth_token_);
  if (!status.ok() && metrics_ != nullptr) {
    metrics_->unauthenticated_requests.Increment();
  }
  return status;
}

grpc::ServerUnaryReactor* WorkerService::CancelSegment(
    grpc::CallbackServerContext* context,
    const pnn::v1::CancelSegmentRequest* request,
    pnn::v1::CancelSegmentResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  if (request->job_id().empty()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "CancelSegmentRequest.job_id is empty"));
    return reactor;
  }
  const bool cancelled =
      runner_->Cancel(request->job_id(), request->segment_index());
  if (cancelled) {
    LogLine(absl::StrCat("CancelSegment: stopping job ", request->job_id(),
                         " segment ", request->segment_index()));
  }
  response->set_cancelled(cancelled);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::StageForward(
    grpc::CallbackServerContext* context,
    const pnn::v1::StageForwardRequest* request,
    pnn::v1::StageForwardResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status allowed = Authenticate(context); !allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  if (metrics_ != nullptr) {
    metrics_->peer_received_bytes.Increment(
        static_cast<double>(request->ByteSizeLong()));
  }
  if (request->job_id().empty() || request->session_id().empty()) {
    reactor->Finish(grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        "StageForwardRequest needs job_id and session_id"));
    return reactor;
  }
  WorkerMetrics* const metrics = metrics_;
  const absl::Status taken = runner_->SubmitStageBatch(
      request, response,
      [reactor, response, metrics](const absl::Status& status) {
        if (status.ok() && metrics != nullptr) {
          metrics->peer_sent_bytes.Increment(
              static_cast<double>(response->ByteSizeLong()));
        }
        reactor->Finish(ToGrpcStatus(status));
      });
  if (!taken.ok()) reactor->Finish(ToGrpcStatus(taken));
  return reactor;
}

}  // namespace worker
}  // namespace pnn
