// The worker's training thread: takes one segment task at a time, loads its
// data set (cached), trains it with pnn::TrainSegment and reports updates
// to the task's observer. Free of gRPC so it can be driven directly.
//
// Thread safety: every public method may be called from any thread; RPC
// threads only hand work over (TrySubmit, Cancel) and never block on
// training. Observers are called on the training thread only.
#ifndef PNN_WORKER_SEGMENT_RUNNER_H_
#define PNN_WORKER_SEGMENT_RUNNER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
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

struct SegmentRunnerOptions {
  std::string data_dir;  // data root that task.dataset().path is under
  std::string device = "cpu";
  int threads = 1;          // torch intra-op threads while training
  std::string worker_name;  // reported in SegmentStarted
  int64_t batch_report_interval = 50;
  int max_cached_datasets = 2;
  WorkerMetrics* metrics = nullptr;  // not owned; null: no metrics
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

  // Stops the given segment if it is queued or training here; its observer
  // then finishes with CANCELLED. Returns whether it was found.
  bool Cancel(const std::string& job_id, int segment_index);

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
  };

  void Loop();
  // Runs one job on the training thread and returns its final status; the
  // result, if any, is stored into *result.
  absl::Status Run(Job& job, pnn::v1::SegmentResult* result);

  const SegmentRunnerOptions options_;
  std::unique_ptr<DatasetCache> datasets_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::shared_ptr<Job> queued_;   // guarded by mutex_
  std::shared_ptr<Job> running_;  // guarded by mutex_
  bool stopping_ = false;         // guarded by mutex_
  std::thread thread_;
};

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_SEGMENT_RUNNER_H_
