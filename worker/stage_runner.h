// The worker's training thread for a model-parallel pipeline stage after
// the first. Such a stage reads no data: it serves the micro-batches that
// the previous stage's StageForward calls hand over (SegmentRunner::
// SubmitStageBatch queues them; several are in flight) with a
// PipelineStageTrainer, in the order of the task's schedule
// (common/pipeline_schedule.h), answering each call with its gradient when
// its backward has run; a middle stage sends its own output on to the
// next stage (PipelineLink). A call
// with `finish` ends the task with the stage's result. Plain segments, and
// a pipeline's first stage, are run by SegmentRunner itself.
//
// Thread safety: a StageRunner lives on the training thread and is used by
// it alone; only its StageIntake is shared with the RPC threads.
#ifndef PNN_WORKER_STAGE_RUNNER_H_
#define PNN_WORKER_STAGE_RUNNER_H_

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pnn/v1/segment.pb.h"
#include "worker/segment_runner.h"

namespace pnn {

class PipelineStageTrainer;
struct TrainOptions;

namespace worker {

class PipelineLink;

// Where a stage's StageForward calls come from: the runner's queue for the
// task. Called on the training thread; implementations lock what they
// share with the RPC threads.
class StageIntake {
 public:
  virtual ~StageIntake() = default;
  // The next queued call, after waiting up to `timeout` for one; nullopt
  // when none came, or sooner when a stop was requested.
  virtual std::optional<StageCall> Next(std::chrono::milliseconds timeout) = 0;
  // Ends the intake: later calls are refused and calls still queued finish
  // with `status`. Later Close calls change nothing.
  virtual void Close(const absl::Status& status) = 0;
};

// Turns the status a stage ends with into the task's: a stop (CANCELLED)
// into the reason the worker stopped it, any other error named with the
// worker.
using StageEndStatus = std::function<absl::Status(const absl::Status&)>;

class StageRunner {
 public:
  // `task` must be a pipeline stage after the first. `options`, `intake`
  // and the functions must outlive Run(); `should_stop` is polled while
  // waiting and between batches.
  StageRunner(const SegmentRunnerOptions& options,
              const pnn::v1::SegmentTask& task, StageIntake* intake,
              std::function<bool()> should_stop, StageEndStatus end_status);
  ~StageRunner();
  StageRunner(const StageRunner&) = delete;
  StageRunner& operator=(const StageRunner&) = delete;

  // Trains the stage with `train_options` (its callbacks report to the
  // task's observer) until `finish`, an error, a stop, or no call for
  // stage_idle_timeout_ms (DEADLINE_EXCEEDED: the previous stage is gone).
  // Every call taken gets exactly one answer, and the intake is closed
  // before Run returns. On OK *result is the stage's result, with the
  // bytes it exchanged with the next stage. Call once.
  absl::Status Run(const TrainOptions& train_options,
                   pnn::v1::SegmentResult* result);

 private:
  // Ends the task with `status` (mapped by end_status): closes the intake
  // first, so that nothing new queues up behind a stage that is gone.
  absl::Status End(const absl::Status& status);
  // Serves calls until the task ends; returns how.
  absl::Status Serve(pnn::v1::SegmentResult* result);
  // The next call, waiting up to stage_idle_timeout_ms; CANCELLED when
  // stopped, DEADLINE_EXCEEDED when none came (the caller End()s).
  absl::StatusOr<StageCall> NextCall();
  // Trains the batch that `first` (any of its micro-batches) opens: its
  // micro-batches in the schedule's order, each call answered with its
  // gradient once its backward has run.
  absl::Status ServeBatch(StageCall first);
  // Answers `finish`: the stages after this one first, so that every stage
  // has its result before the first stage reports success.
  absl::Status FinishStage(pnn::v1::SegmentResult* result);

  const SegmentRunnerOptions& options_;
  pnn::v1::SegmentTask task_;
  StageIntake* const intake_;
  const std::function<bool()> should_stop_;
  const StageEndStatus end_status_;
  const std::string name_;  // for messages
  std::unique_ptr<PipelineStageTrainer> trainer_;
  std::unique_ptr<PipelineLink> link_;  // null for the last stage
};

// How messages name a pipeline stage.
std::string DescribeStage(const std::string& job_id, const std::string& session,
                          int stage);

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_STAGE_RUNNER_H_
