// The job table: the coordinator's records of jobs and their tasks, and
// every transition of their states. One place shows the task state machine:
//
//   WAITING --(upstream segments done)--> QUEUED --Dispatch--> RUNNING
//   RUNNING --Succeed--> SUCCEEDED
//   RUNNING --Requeue (attempt counted or given back)--> QUEUED
//   RUNNING --Fail--> FAILED (and the job FAILED)
//   any unfinished --CancelJob/FailJob--> CANCELLED
//   pipeline stage RUNNING --RestartPipeline--> CANCELLED until its stream
//   closes, then QUEUED with the other stages
//   recovery stage WAITING --(every segment done)--> QUEUED, then as a
//   pipeline stage
//
// and the job's: QUEUED -> RUNNING (first dispatch; recovery epochs run on
// the workers in this state too) -> ASSEMBLING (every segment, and every
// recovery stage, done) -> SUCCEEDED (model assembled, baseline tested),
// or FAILED / CANCELLED from any unfinished state.
//
// The wire protos (pnn.v1.Job) are produced by Snapshot(); the records keep
// what only the coordinator needs (task specs, streams, resume states).
//
// Thread safety: none of its own. The coordinator holds its lock around
// every call; every call is in-memory work only (no disk, RPC or libtorch),
// and the listener it calls must be as cheap.
#ifndef PNN_COORDINATOR_JOB_TABLE_H_
#define PNN_COORDINATOR_JOB_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/layers.h"
#include "coordinator/assembler.h"
#include "coordinator/job_store.h"
#include "coordinator/retry_policy.h"
#include "pnn/v1/coordinator.pb.h"
#include "pnn/v1/worker.pb.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace pnn {

// Segment index of the conventional baseline's task (the last task).
inline constexpr int kBaselineIndex = -1;
// Entries a job's log keeps (a few kilobytes, stored with its record).
inline constexpr size_t kMaxLogEntries = 500;

bool IsFinal(pnn::v1::JobState state);
bool IsFinal(pnn::v1::TaskState state);

struct TaskRecord {
  pnn::v1::SegmentTask task;
  pnn::v1::TaskStatus status;
  // Evaluation points (spec.evaluations_per_epoch), kept in memory until
  // the job is assembled.
  std::vector<CheckpointRecord> checkpoints;
  // The latest resumable state while the task is unfinished: a retry
  // continues from it.
  std::optional<pnn::v1::TrainingState> resume_state;
  pnn::v1::SegmentWeights weights;  // once SUCCEEDED, until assembled
  // The open TrainSegment stream, if any (a cancelled stage keeps it until
  // the worker closes it).
  std::shared_ptr<grpc::ClientContext> stream;
  std::string loss_reason;  // set when the worker was declared lost

  bool is_baseline() const { return status.segment_index() == kBaselineIndex; }
  bool is_stage() const { return task.has_pipeline(); }
  // A stage of the recovery epochs' pipeline (a partitioned job's).
  bool is_recovery() const { return task.recovery(); }
  // A segment the job trains (not the baseline, not a recovery stage).
  bool is_segment() const { return !is_baseline() && !is_recovery(); }
};

struct JobRecord {
  int64_t sequence = 0;  // submission order
  pnn::v1::Job job;      // without segments and baseline: see tasks
  // Segments by index, then the recovery stages by index (with recovery
  // epochs), then the baseline (if asked for).
  std::vector<TaskRecord> tasks;
  bool assembled = false;
  bool baseline_evaluated = false;
  bool cancel_requested = false;
  // GetJobLog: every event with a message, the newest kMaxLogEntries.
  std::deque<pnn::v1::JobLogEntry> log;
  int64_t dropped_log_entries = 0;

  const std::string& id() const { return job.job_id(); }
  int segment_count() const { return tasks.front().task.segment_count(); }
  bool streams_open() const;
};

// Coordinator work that a transition makes due.
enum class AssemblyWork { kAssemble, kEvaluateBaseline };
struct DueWork {
  std::string job_id;
  AssemblyWork work;
};

// A failed attempt as the coordinator judged it (retry_policy.h).
struct FailedAttempt {
  std::string error;  // for people
  std::string where;  // "worker-… (address)"
  RetryDecision decision;
};

class JobTable {
 public:
  // Told of every change; called inside the transition, under the
  // coordinator's lock, so it only queues work (events, store writes).
  class Listener {
   public:
    virtual ~Listener() = default;
    // `message` says what changed; empty for bare progress. `store`: the
    // change is worth writing to the job store.
    virtual void OnJobChanged(const JobRecord& record,
                              const std::string& message, bool store) = 0;
    // The job has just reached a final state.
    virtual void OnJobFinished(const JobRecord& record) = 0;
  };
  // `listener` outlives the table.
  explicit JobTable(Listener* listener) : listener_(listener) {}

  // A new job's record: its tasks (and the baseline's), QUEUED or WAITING
  // for their upstream segments. Not in the table yet.
  static absl::StatusOr<JobRecord> Plan(const pnn::v1::SubmitJobRequest& request,
                                        const pnn::v1::JobSpec& spec,
                                        const ImageShape& image,
                                        int num_classes);
  // Rows of the job store, as restored records (Restore()).
  struct Restored {
    int resumed = 0;
    int corrupt = 0;
    std::vector<DueWork> due;              // of resumed jobs
    std::vector<std::string> finished;     // their task data can go
  };
  Restored Restore(std::vector<JobStore::Loaded> loaded);

  int64_t TakeSequence() { return next_sequence_++; }
  JobRecord& Insert(JobRecord record);
  void Erase(const std::string& job_id);
  JobRecord* Find(const std::string& job_id);
  // The task, if the job and index exist.
  TaskRecord* FindTask(const std::string& job_id, int task_index);
  int CountUnfinished() const;
  // Unfinished jobs, in submission order.
  std::vector<JobRecord*> Unfinished();
  // Finished jobs older than the newest `keep` whose streams have closed,
  // erased from the table; their ids.
  std::vector<std::string> ExpireFinished(size_t keep);
  absl::StatusOr<pnn::v1::ListJobsResponse> List(
      const pnn::v1::ListJobsRequest& request) const;
  struct TaskCounts {
    std::map<pnn::v1::JobState, int> jobs;
    int queued_tasks = 0;
    int running_tasks = 0;
  };
  TaskCounts Count() const;
  // Cancels every open stream and changes nothing else (shutdown: the
  // store keeps the tasks RUNNING, to be requeued at the next start).
  void CancelStreams();

  static pnn::v1::Job Snapshot(const JobRecord& record);
  static pnn::v1::StoredJob ToStored(const JobRecord& record);
  static pnn::v1::GetJobLogResponse Log(const JobRecord& record);
  static std::string TaskName(const JobRecord& record, int task_index);

  // --- Task transitions -------------------------------------------------
  // QUEUED -> RUNNING on `worker_id`: opens the task's stream context and
  // returns the request to send (resuming from its last state, if any).
  pnn::v1::TrainSegmentRequest Dispatch(JobRecord& record, size_t index,
                                        const std::string& worker_id,
                                        const std::string& address);
  // The stages of a model-parallel job to start together now (empty when
  // its pipeline is not ready to start; see the .cc), and their session.
  std::vector<size_t> PipelineStagesToStart(const JobRecord& record) const;
  void PreparePipeline(JobRecord& record, const std::vector<size_t>& stages,
                       const std::vector<std::string>& addresses,
                       const std::string& session);
  // Bytes of the request sent to the task's worker.
  void CountSent(JobRecord& record, int index, int64_t bytes);
  // A stream update; true when it carries a resumable state to store.
  bool ApplyUpdate(JobRecord& record, int index,
                   const pnn::v1::TrainSegmentUpdate& update, int64_t bytes);
  // The task's stream has ended (before its outcome is applied).
  void EndStream(JobRecord& record, int index);
  // A stream ended after its job was cancelled or failed: the task keeps
  // (or takes) a final state.
  void SettleAfterJobEnded(JobRecord& record, int index, bool succeeded);
  // A stage cancelled for its pipeline's restart has closed: QUEUED again,
  // without its attempt counting.
  void RequeueStoppedStage(JobRecord& record, int index);
  // RUNNING -> SUCCEEDED with `weights`; later segments waiting for it may
  // be queued, and once every segment is done the recovery stages. The
  // assembly or baseline test now due, if any.
  std::optional<DueWork> Succeed(JobRecord& record, int index,
                                 pnn::v1::SegmentWeights weights,
                                 const std::string& worker_id);
  // A failed attempt of a plain task: requeued, or the task and its job
  // FAILED. True when requeued.
  bool FailAttempt(JobRecord& record, int index, const FailedAttempt& attempt);
  // A failed attempt of a pipeline stage: every stage restarts, or the job
  // FAILS. True when restarted.
  bool FailStage(JobRecord& record, int index, const FailedAttempt& attempt);
  // Marks the task's worker lost for `reason` and cancels its stream; the
  // stream's end then retries it. False when no stream is open.
  bool Lose(JobRecord& record, int index, const std::string& reason);

  // --- Job transitions --------------------------------------------------
  void Cancel(JobRecord& record);
  void Fail(JobRecord& record, const std::string& reason);
  void Assembled(JobRecord& record, const AssemblyResult& result);
  void BaselineTested(JobRecord& record, const pnn::v1::TestResult& test);
  // Sets each unfinished job's message from why its queued work waits:
  // `wait_message(device, stages)` (placement.h's WaitMessage), with the
  // device its queued tasks ask for and its pipeline's stage count.
  void SayWhyWorkWaits(
      const std::function<std::string(const std::string&, size_t)>&
          wait_message);
  // An unfinished job restored after a restart.
  std::vector<DueWork> RequeueAfterRestart(JobRecord& record);

 private:
  // Succeed for a recovery stage: the assembly, once every stage is done.
  std::optional<DueWork> RecoveryStageDone(JobRecord& record);
  void Publish(JobRecord& record, const std::string& message);
  void Progress(JobRecord& record) { Publish(record, ""); }
  void CancelTasks(JobRecord& record);
  // Sets the final state and its time, and tells the listener.
  void Finish(JobRecord& record, pnn::v1::JobState state);
  void MaybeSucceed(JobRecord& record);
  static void Refresh(JobRecord& record);

  Listener* const listener_;
  int64_t next_sequence_ = 1;
  std::map<std::string, JobRecord> jobs_;
};

int CountPipelineStages(const JobRecord& record);
// The device the job's tasks ask for ("" for the default, cpu).
const std::string& JobDevice(const JobRecord& record);

}  // namespace pnn

#endif  // PNN_COORDINATOR_JOB_TABLE_H_
