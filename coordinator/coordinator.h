// The coordinator's logic, independent of the gRPC server that exposes it:
// the job table and state machine, the scheduling of segment tasks on
// registered workers, worker liveness, assembly and the test pass. It wires
// together the components beside it (worker_registry.h, placement.h,
// retry_policy.h, task_driver.h, assembler.h, job_store.h, job_events.h;
// docs/DESIGN.md, "The coordinator's components").
//
// Thread safety: every public method may be called from any thread. The
// coordinator owns its threads: one scheduler thread, one thread per task
// being trained (it drives the worker's TrainSegment stream), and one
// assembly thread that runs the libtorch work (joining, recovery epochs,
// test pass). RPC handlers only call the short, non-blocking methods below.
// Errors are absl::Status with messages meant for the person who submitted
// the job.
#ifndef PNN_COORDINATOR_COORDINATOR_H_
#define PNN_COORDINATOR_COORDINATOR_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/assembler.h"
#include "coordinator/job_events.h"
#include "coordinator/retry_policy.h"
#include "coordinator/worker_registry.h"
#include "pnn/v1/coordinator.pb.h"
#include "pnn/v1/worker.pb.h"
#include "rpc/tls.h"

namespace grpc {
class ClientContext;
}  // namespace grpc
namespace prometheus {
class Registry;
}  // namespace prometheus

namespace pnn {

class DatasetCache;
class TaskDriver;
class JobStore;
struct Dataset;
struct DatasetShape;
struct CoordinatorMetrics;

class Coordinator {
 public:
  struct Options {
    // Model artifacts are written under <state_dir>/models.
    std::string state_dir = "pnn-state";
    // Data sets named by jobs are read from here (assembly, test pass, and
    // validation at submission); workers have their own copy.
    std::string data_dir = "/usr/share/datasets";
    // Intra-op threads for the coordinator's own libtorch work.
    int threads = 1;
    // Where the coordinator joins and tests models ("cpu", "cuda",
    // "cuda:N"); a job's device only chooses its workers.
    std::string device = "cpu";
    absl::Duration heartbeat_interval = absl::Seconds(1);
    // A worker silent for this long is declared lost and its task retried.
    absl::Duration worker_timeout = absl::Seconds(5);
    // Attempts per task before the job fails.
    int max_attempts = 3;
    // Jobs not yet in a final state; more are refused (RESOURCE_EXHAUSTED).
    int max_active_jobs = 64;
    // Finished jobs kept (listed, with their models); older ones are
    // deleted with their model files. 0: keep every job.
    int keep_finished_jobs = 0;
    // Bearer token (rpc/auth.h) the service requires from its clients.
    std::string auth_token;
    // Token of the workers: required of RegisterWorker, Heartbeat and
    // DeregisterWorker, and sent to workers with every task. Empty:
    // auth_token serves both (one shared token). With separate tokens a
    // client cannot register as a worker, nor a worker submit jobs.
    std::string worker_token;
    // TLS (rpc/tls.h): the service's certificate, and the certificate the
    // coordinator presents to workers (mutual TLS) with the CA that signed
    // theirs. Empty: plaintext.
    TlsFiles tls;
    // Runs the tasks' TrainSegment calls; null: over gRPC (with `tls` and
    // the worker token). Tests substitute one to fake workers.
    std::shared_ptr<TaskDriver> task_driver;
    // Where the coordinator's metrics are registered; null: no metrics.
    std::shared_ptr<prometheus::Registry> metrics_registry;
  };

  explicit Coordinator(Options options);
  ~Coordinator();  // calls Shutdown()
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Opens the job store (<state_dir>/jobs.db), restores the jobs in it and
  // starts the scheduler and assembly threads. Jobs that were unfinished
  // resume: segments that had finished keep their weights, the others are
  // queued again. Fails when the state directory or store is unusable.
  absl::Status Start();
  // Cancels running tasks and joins every thread. Idempotent.
  void Shutdown();

  // Job API.
  absl::StatusOr<pnn::v1::Job> Submit(const pnn::v1::SubmitJobRequest& request);
  absl::StatusOr<pnn::v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<pnn::v1::ListJobsResponse> ListJobs(
      const pnn::v1::ListJobsRequest& request);
  absl::StatusOr<pnn::v1::Job> CancelJob(const std::string& job_id);
  // Registers `queue` for the job's events and pushes the current snapshot
  // into it. Unwatch() before destroying the queue's consumer.
  absl::Status Watch(const std::string& job_id,
                     std::shared_ptr<JobEventQueue> queue);
  void Unwatch(const std::shared_ptr<JobEventQueue>& queue);
  // Path of the job's model artifact in `format`; FAILED_PRECONDITION
  // while the job has no model.
  absl::StatusOr<std::string> ModelPath(const std::string& job_id,
                                        pnn::v1::ModelFormat format);

  // Worker API.
  absl::StatusOr<pnn::v1::RegisterWorkerResponse> RegisterWorker(
      const pnn::v1::WorkerInfo& worker);
  // Never waits for the job table: the registry has its own lock.
  absl::Status Heartbeat(const pnn::v1::HeartbeatRequest& request);
  // A worker that stops gracefully: it is forgotten without counting as
  // lost (a busy one once its task's stream ends; the task is retried).
  absl::Status DeregisterWorker(const std::string& worker_id);
  int registered_workers() const;
  // Counts a call refused for a missing or wrong token.
  void RecordUnauthenticated();
  const std::string& auth_token() const { return options_.auth_token; }
  const std::string& worker_token() const {
    return options_.worker_token.empty() ? options_.auth_token
                                         : options_.worker_token;
  }

 private:
  struct TaskRecord {
    pnn::v1::SegmentTask task;
    // Evaluation points (spec.evaluations_per_epoch), kept in memory until
    // the job is assembled.
    std::vector<CheckpointRecord> checkpoints;
    // The latest resumable state while the task is unfinished: a retry
    // continues from it.
    std::optional<pnn::v1::TrainingState> resume_state;
    pnn::v1::TaskStatus status;
    pnn::v1::SegmentWeights weights;  // once SUCCEEDED
    std::shared_ptr<grpc::ClientContext> context;  // while RUNNING
    std::string loss_reason;  // set when the worker was declared lost
    bool is_baseline = false;
  };
  struct JobRecord {
    int64_t sequence = 0;  // submission order
    pnn::v1::Job job;
    std::vector<TaskRecord> tasks;  // segments by index, then the baseline
    bool assembled = false;
    bool baseline_evaluated = false;
    bool cancel_requested = false;
    std::vector<std::shared_ptr<JobEventQueue>> watchers;
  };
  enum class AssemblyWork { kAssemble, kEvaluateBaseline };

  // The data set's shape, after the coordinator's own copy has been fully
  // loaded and validated (the test pass will need it).
  absl::StatusOr<DatasetShape> CheckDataForSubmit(const pnn::v1::JobSpec& spec);
  // The new job's record: its tasks (and the baseline's), queued.
  static absl::StatusOr<JobRecord> PlanJob(
      const pnn::v1::SubmitJobRequest& request, const pnn::v1::JobSpec& spec,
      const DatasetShape& shape);
  void SchedulerLoop();
  void AssemblyLoop();
  // Scheduler steps, under mu_.
  void DetectLostWorkersLocked(absl::Time now);
  void DispatchLocked();
  // Starts a model-parallel job's stages together when enough workers are
  // idle; false while the job waits for its gang (later jobs wait too).
  bool StartPipelineLocked(JobRecord& record, bool* started);
  // Places the job's queued partitioned tasks on idle workers.
  bool DispatchQueuedLocked(JobRecord& record);
  // Starts task `index` on `worker` (claimed already), on its own thread.
  void DispatchTaskLocked(JobRecord& record, size_t index,
                          const WorkerRegistry::Worker& worker);
  void SayWhyWorkWaitsLocked(const std::vector<JobRecord*>& jobs);
  static int SegmentCount(const JobRecord& record) {
    return record.tasks.front().task.segment_count();
  }
  void ReapDispatchThreadsLocked();
  // Drives one task's TrainSegment stream on its own thread.
  void RunTask(std::string job_id, int task_index, std::string worker_id,
               std::string address, pnn::v1::TrainSegmentRequest request,
               std::shared_ptr<grpc::ClientContext> context, int64_t thread_id);
  void OnTaskUpdate(const std::string& job_id, int task_index,
                    const pnn::v1::TrainSegmentUpdate& update, int64_t bytes);
  // Applies the update to the job table; true when it carries a resumable
  // state to store.
  bool OnTaskUpdateLocked(const std::string& job_id, int task_index,
                          const pnn::v1::TrainSegmentUpdate& update,
                          int64_t bytes);
  // Keeps a checkpoint: the resumable state (true: to be stored) and the
  // evaluation point.
  bool KeepCheckpointLocked(JobRecord& record, TaskRecord& task,
                            const pnn::v1::Checkpoint& checkpoint);
  // Checks a worker's weights against the task and stores them; DATA_LOSS
  // for malformed weights. Called without mu_.
  absl::Status CheckAndStoreWeights(const std::string& job_id, int task_index,
                                    const std::string& worker_id,
                                    const pnn::v1::SegmentTask& task,
                                    const pnn::v1::SegmentWeights& weights);
  // `weights` (the result's, checked and stored already) when `status` is OK.
  void OnTaskFinished(const std::string& job_id, int task_index,
                      const std::string& worker_id, absl::Status status,
                      pnn::v1::SegmentWeights weights);
  // A failed attempt: the task's name and where it ran (for messages), and
  // what the retry policy decided.
  struct FailedAttempt {
    std::string name;
    std::string where;
    RetryDecision decision;
  };
  // Applies the retry policy to a failed attempt: sets the task's error and
  // backs the worker off if the policy says so.
  FailedAttempt JudgeAttemptLocked(JobRecord& record, int task_index,
                                   const std::string& worker_id,
                                   const absl::Status& status);
  // The branches of OnTaskFinished, under mu_.
  void OnTaskSucceededLocked(JobRecord& record, int task_index,
                             const std::string& worker_id);
  void OnStageFailedLocked(JobRecord& record, int task_index,
                           const std::string& worker_id,
                           const absl::Status& status);
  void OnTaskFailedLocked(JobRecord& record, int task_index,
                          const std::string& worker_id,
                          const absl::Status& status);
  // Marks the task that `assignment` names as lost for `reason` and
  // cancels its stream; the stream's end retries it.
  void LoseTaskLocked(const std::string& job_id, int task_index,
                      const std::string& reason);
  void Assemble(const std::string& job_id);
  void EvaluateBaseline(const std::string& job_id);

  // Under mu_: state changes and their events.
  void FailJobLocked(JobRecord& record, const std::string& reason);
  void CancelRunningTasksLocked(JobRecord& record);
  void MaybeSucceedLocked(JobRecord& record);
  // Counts a job that just reached a final state.
  void RecordFinalLocked(const JobRecord& record);
  void UpdateGaugesLocked(absl::Time now);
  // Store and file clean-up of finished jobs, and retention: picks the
  // work under mu_ (the lock is held on entry and on return) and does the
  // deleting with it released.
  void CleanUpFinishedJobs(std::unique_lock<std::mutex>& lock);
  void RefreshJobLocked(JobRecord& record);
  // Writes the job's record to the store. Errors are logged too: callers
  // other than Submit go on (the job would not survive a restart).
  absl::Status PersistLocked(const JobRecord& record);
  absl::Status RestoreJobs();
  // An unfinished job restored from the store: tasks that were running (or
  // finished without stored weights) are queued again, without counting
  // the attempt; assembly is queued if every segment is done.
  void RequeueAfterRestartLocked(JobRecord& record);
  void PublishLocked(JobRecord& record, const std::string& message);
  pnn::v1::Job SnapshotLocked(const JobRecord& record) const;
  bool ShouldStopAssembly(const std::string& job_id);

  const Options options_;
  std::unique_ptr<DatasetCache> datasets_;
  std::unique_ptr<Assembler> assembler_;
  std::unique_ptr<CoordinatorMetrics> metrics_;  // null without a registry
  std::unique_ptr<JobStore> store_;
  std::shared_ptr<TaskDriver> task_driver_;  // set by Start()

  mutable std::mutex mu_;
  std::condition_variable scheduler_wake_;
  std::condition_variable assembly_wake_;
  bool shutting_down_ = false;
  bool started_ = false;
  int64_t next_job_sequence_ = 1;
  int64_t next_event_sequence_ = 1;
  int64_t next_thread_id_ = 1;
  std::map<std::string, JobRecord> jobs_;
  std::unique_ptr<WorkerRegistry> workers_;  // has its own lock
  std::deque<std::pair<std::string, AssemblyWork>> assembly_queue_;
  // Jobs that reached a final state whose stored task data is still to go.
  std::vector<std::string> finished_to_clean_;
  std::map<int64_t, std::thread> dispatch_threads_;
  std::vector<int64_t> finished_dispatch_threads_;
  std::thread scheduler_thread_;
  std::thread assembly_thread_;
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_COORDINATOR_H_
