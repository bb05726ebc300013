// The worker's training thread: takes one segment task at a time, loads its
// data set (cached), trains it with pnn::TrainSegment and reports updates
// to the task's observer. Free of gRPC so it can be driven directly.
//
// Model-parallel tasks (task.pipeline set) are pipeline stages. The first
// stage trains like any segment, but sends every micro-batch's output to the
// next stage (DownstreamStage, StageForward over gRPC, several calls in
// flight) and backpropagates the gradients it gets back. A later stage does not
// read the data: the StageForward calls of the previous stage are handed over
// here (SubmitStageBatch) and served on the training thread by a StageRunner
// (worker/stage_runner.h). A request with `finish` ends the stage's task
// with its result.
//
// Thread safety: every public method may be called from any thread; RPC
// threads only hand work over (TrySubmit, Cancel, SubmitStageBatch) and
// never block on training. Observers and StageBatchDone callbacks are
// called on the training thread only.
#ifndef PNN_WORKER_SEGMENT_RUNNER_H_
#define PNN_WORKER_SEGMENT_RUNNER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "pnn/v1/segment.pb.h"
#include "pnn/v1/worker.pb.h"

namespace pnn {

class DatasetCache;

namespace worker {

struct WorkerMetrics;

// Receives one task's updates, in order: started, then progress / epoch
// updates, then the result (on success), then exactly one OnFinish.
class SegmentObserver {
 public:
  virtual ~SegmentObserver() = default;
  virtual void OnUpdate(pnn::v1::TrainSegmentUpdate update) = 0;
  virtual void OnFinish(const absl::Status& status) = 0;
  // Polled between batches: true when nobody waits for the result any more
  // (the client cancelled the RPC), which stops training.
  virtual bool Abandoned() const = 0;
};

// The next stage of a model-parallel pipeline, seen from the stage that
// sends it activations. worker/stage_client.h implements it over gRPC;
// tests may fake it. Thread-safe: calls may be in flight together (one per
// micro-batch of a batch).
class DownstreamStage {
 public:
  // Cancels the calls in flight and waits until each has called its
  // `done`.
  virtual ~DownstreamStage() = default;
  // Starts one StageForward call and returns at once; `done` runs exactly
  // once, on another thread, with the call's status (UNAVAILABLE while the
  // next stage's task has not started there), after *response is filled.
  // `request` and `response` must stay valid until then.
  virtual void Start(const pnn::v1::StageForwardRequest& request,
                     pnn::v1::StageForwardResponse* response,
                     std::function<void(const absl::Status&)> done) = 0;
  // Cancels every call in flight: each `done` gets CANCELLED (unless the
  // call finished first).
  virtual void CancelAll() = 0;
};

struct SegmentRunnerOptions {
  std::string data_dir;  // data root that task.dataset().path is under
  std::string device = "cpu";
  int threads = 1;          // torch intra-op threads while training
  std::string worker_name;  // reported in SegmentStarted
  int64_t batch_report_interval = 50;
  int max_cached_datasets = 2;
  WorkerMetrics* metrics = nullptr;  // not owned; null: no metrics
  // Opens the link to the next pipeline stage's worker at `address`
  // (host:port). Unset: this worker refuses pipeline stages that have a
  // next stage.
  std::function<std::unique_ptr<DownstreamStage>(const std::string& address)>
      connect_downstream;
  // A stage keeps retrying a next stage that answers UNAVAILABLE (its task
  // has not started yet, or its worker cannot be reached) for this long.
  int64_t downstream_retry_ms = 30000;
  // A stage after the first gives up when no batch arrives for this long:
  // the previous stage is gone, and nobody may have told this worker.
  int64_t stage_idle_timeout_ms = 60000;
};

// Completes one StageForward call handed over with SubmitStageBatch: OK
// with the response filled in, or the error to return to the caller.
using StageBatchDone = std::function<void(const absl::Status&)>;

// One StageForward call handed over with SubmitStageBatch, queued for the
// training thread.
struct StageCall {
  const pnn::v1::StageForwardRequest* request;
  pnn::v1::StageForwardResponse* response;
  StageBatchDone done;
};

class SegmentRunner {
 public:
  // Starts the training thread.
  explicit SegmentRunner(SegmentRunnerOptions options);
  // Calls Shutdown().
  ~SegmentRunner();
  SegmentRunner(const SegmentRunner&) = delete;
  SegmentRunner& operator=(const SegmentRunner&) = delete;

  // Queues `task` for the training thread and returns at once.
  // RESOURCE_EXHAUSTED while another task is queued or training,
  // UNAVAILABLE after Shutdown(). On OK the observer will get OnFinish
  // exactly once; otherwise it is never called.
  absl::Status TrySubmit(const pnn::v1::SegmentTask& task,
                         std::shared_ptr<SegmentObserver> observer);

  // Loads the data set at `path` (under data_dir, every sample) into the
  // cache that tasks read from. Blocks; call before taking tasks.
  absl::Status Preload(const std::string& path);

  // Stops the given segment if it is queued or training here; its observer
  // then finishes with CANCELLED. Returns whether it was found.
  bool Cancel(const std::string& job_id, int segment_index);

  // Hands one StageForward call to the pipeline stage queued or running
  // here. On OK the training thread fills `*response` and calls `done`
  // exactly once (with an error if the stage ends first); `request` and
  // `response` must stay valid until then. Otherwise `done` is never
  // called, and the status says why: UNAVAILABLE when no pipeline stage is
  // queued or running here (yet: the caller retries), FAILED_PRECONDITION
  // when the stage here belongs to another job, run (session) or stage
  // index, or has ended.
  absl::Status SubmitStageBatch(const pnn::v1::StageForwardRequest* request,
                                pnn::v1::StageForwardResponse* response,
                                StageBatchDone done);

  // True from a successful TrySubmit until training has returned (the
  // observer may still be receiving the result and the final status).
  bool busy() const;

  // Refuses new tasks and stops the queued or running one (CANCELLED),
  // without waiting. Idempotent.
  void RequestStop();

  // RequestStop(), then joins the training thread. Idempotent.
  void Shutdown();

  const SegmentRunnerOptions& options() const { return options_; }

 private:
  enum class StopReason : int { kNone = 0, kCancelSegment, kShutdown };
  struct Job {
    pnn::v1::SegmentTask task;
    std::shared_ptr<SegmentObserver> observer;
    std::atomic<int> stop{static_cast<int>(StopReason::kNone)};
    // A pipeline stage after the first: calls waiting for the training
    // thread, and whether it still takes any. Guarded by the runner's
    // mutex_.
    std::deque<StageCall> stage_calls;
    bool stage_closed = false;
  };

  // A job's queue of StageForward calls, as its StageRunner sees it.
  class JobIntake;

  void Loop();
  // Runs one job on the training thread and returns its final status; the
  // result, if any, is stored into *result.
  absl::Status Run(Job& job, pnn::v1::SegmentResult* result);
  // Run() for a plain segment or a pipeline's first stage: loads the data
  // set and trains with TrainSegment.
  absl::Status RunSegment(Job& job, pnn::v1::SegmentResult* result);
  // Run() for a profiling task (task.profile): times each layer, trains
  // nothing, reads no data set.
  absl::Status RunProfile(Job& job, pnn::v1::SegmentResult* result);
  // Run() for a pipeline stage after the first: a StageRunner serves its
  // StageForward calls until `finish`, an error, a stop or the idle
  // timeout.
  absl::Status RunStage(Job& job, pnn::v1::SegmentResult* result);
  // Whether `job` is to stop: Cancel, shutdown, or its client went away.
  bool ShouldStop(const Job& job) const;
  // The status a stopped job ends with, given the CANCELLED one that
  // training stopped with: says who stopped it.
  absl::Status StopStatus(const Job& job, const absl::Status& status) const;
  // A job's error as its client hears it: a stop as StopStatus says, any
  // other error with this worker's name.
  absl::Status EndStatus(const Job& job, const absl::Status& status) const;
  // Ends a stage's intake: later SubmitStageBatch calls are refused, and
  // calls still waiting finish with `status`.
  void CloseStage(Job& job, const absl::Status& status);

  const SegmentRunnerOptions options_;
  std::unique_ptr<DatasetCache> datasets_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<Job> queued_;   // guarded by mutex_
  std::shared_ptr<Job> running_;  // guarded by mutex_
  bool stopping_ = false;         // guarded by mutex_
  // Wakes a stage's training thread for a new call or a stop.
  std::condition_variable stage_wake_;
  // The last pipeline stage that ended here ("job/session/stage") and how,
  // so that a late call is told it ended instead of being asked to retry.
  std::string ended_stage_;         // guarded by mutex_
  absl::Status ended_stage_status_;  // guarded by mutex_
  std::thread thread_;
};

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_SEGMENT_RUNNER_H_
