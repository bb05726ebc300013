// The coordinator's logic, independent of the gRPC server that exposes it.
// It wires together the components beside it: the job table and its state
// machine (job_table.h), the worker registry and liveness
// (worker_registry.h), the scheduler and placement (scheduler.h,
// placement.h), the retry policy (retry_policy.h), the TrainSegment driver
// (task_driver.h), the assembler (assembler.h), the store and its writer
// thread (job_store.h, store_writer.h) and the watch fan-out
// (job_events.h); docs/DESIGN.md, "The coordinator's components". What
// remains here is the scheduler loop, the streams' threads and the
// assembly thread.
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
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auto_cut.h"
#include "coordinator/assembler.h"
#include "coordinator/job_events.h"
#include "coordinator/job_table.h"
#include "coordinator/scheduler.h"
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
class JobStore;
class StoreWriter;
class TaskDriver;
struct DatasetShape;
struct CoordinatorMetrics;

class Coordinator : private JobTable::Listener {
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
    // The longest a job's profiling pass (BALANCE_OBJECTIVE_MEASURED_TIME)
    // may take; Submit waits for it.
    absl::Duration profile_timeout = absl::Minutes(2);
    // Where the coordinator's metrics are registered; null: no metrics.
    std::shared_ptr<prometheus::Registry> metrics_registry;
  };

  explicit Coordinator(Options options);
  ~Coordinator() override;  // calls Shutdown()
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
  // Submit for the RPC edge, whose callback threads must not block: a job
  // whose cuts balance measured time waits for a profiling pass on a
  // worker, so it is submitted on a thread of the coordinator's own (joined
  // by Shutdown, which also cancels the pass) and `done` runs there; any
  // other job is submitted on the calling thread. `done` runs exactly once.
  using SubmitDone = std::function<void(absl::StatusOr<pnn::v1::Job>)>;
  void SubmitAsync(pnn::v1::SubmitJobRequest request, SubmitDone done);
  absl::StatusOr<pnn::v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<pnn::v1::ListJobsResponse> ListJobs(
      const pnn::v1::ListJobsRequest& request);
  absl::StatusOr<pnn::v1::Job> CancelJob(const std::string& job_id);
  // Registers `queue` for the job's events and pushes the current snapshot
  // into it. Unwatch() before destroying the queue's consumer.
  absl::Status Watch(const std::string& job_id,
                     std::shared_ptr<JobEventQueue> queue);
  void Unwatch(const std::shared_ptr<JobEventQueue>& queue);
  // The job's history, oldest first.
  absl::StatusOr<pnn::v1::GetJobLogResponse> GetJobLog(
      const std::string& job_id);
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
  // Never waits for the job table.
  pnn::v1::ListWorkersResponse ListWorkers() const;
  // Counts a call refused for a missing or wrong token.
  void RecordUnauthenticated();
  const std::string& auth_token() const { return options_.auth_token; }
  const std::string& worker_token() const {
    return options_.worker_token.empty() ? options_.auth_token
                                         : options_.worker_token;
  }

 private:
  absl::Status RestoreJobs();
  // A profiling pass for `spec`'s auto_cut on the fastest idle worker of
  // its device, which stays claimed meanwhile. Blocks; called without mu_.
  absl::StatusOr<LayerTimes> MeasureLayers(const pnn::v1::JobSpec& spec,
                                           const DatasetShape& shape);
  void SchedulerLoop();
  void AssemblyLoop();

  // JobTable::Listener: queues the store write and the watchers' event;
  // counts finished jobs. Under mu_.
  void OnJobChanged(const JobRecord& record, const std::string& message,
                    bool store) override;
  void OnJobFinished(const JobRecord& record) override;

  // Scheduler steps, under mu_.
  void DetectLostWorkersLocked(absl::Time now);
  // Starts what the scheduler chose, and says why the rest waits.
  void DispatchLocked();
  // Starts task `index` on `worker` (claimed already), on its own thread.
  void DispatchTaskLocked(JobRecord& record, size_t index,
                          const WorkerRegistry::Worker& worker);
  void ReapDispatchThreadsLocked();
  void UpdateGaugesLocked(absl::Time now);
  // Store and file clean-up of finished jobs, and retention: picks the
  // work under mu_ (the lock is held on entry and on return) and does the
  // deleting with it released.
  void CleanUpFinishedJobs(std::unique_lock<std::mutex>& lock);

  // Drives one task's TrainSegment stream on its own thread.
  void RunTask(std::string job_id, int task_index, std::string worker_id,
               std::string address, pnn::v1::TrainSegmentRequest request,
               std::shared_ptr<grpc::ClientContext> context, int64_t thread_id);
  void OnTaskUpdate(const std::string& job_id, int task_index,
                    const pnn::v1::TrainSegmentUpdate& update, int64_t bytes);
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
  // Applies the retry policy to a failed attempt, and backs the worker off
  // if the policy says so.
  FailedAttempt JudgeAttemptLocked(const TaskRecord& task,
                                   const std::string& worker_id,
                                   const absl::Status& status);
  // Marks the task as lost for `reason` and cancels its stream; the
  // stream's end retries it.
  void LoseTaskLocked(const std::string& job_id, int task_index,
                      const std::string& reason);
  void QueueAssemblyLocked(DueWork work);
  void Assemble(const std::string& job_id);
  void EvaluateBaseline(const std::string& job_id);
  bool ShouldStopAssembly(const std::string& job_id);

  const Options options_;
  std::unique_ptr<DatasetCache> datasets_;
  std::unique_ptr<Assembler> assembler_;
  std::unique_ptr<CoordinatorMetrics> metrics_;  // null without a registry
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<StoreWriter> writer_;  // writes job records to store_
  std::shared_ptr<TaskDriver> task_driver_;  // set by Start()
  std::unique_ptr<WorkerRegistry> workers_;  // has its own lock
  JobWatchers watchers_;                     // has its own lock

  // Guards the job table and everything below. Held only for in-memory
  // work: the store, libtorch and RPCs are used with it released.
  mutable std::mutex mu_;
  JobTable table_{this};
  Scheduler scheduler_;
  std::condition_variable scheduler_wake_;
  std::condition_variable assembly_wake_;
  bool shutting_down_ = false;
  bool started_ = false;
  int submits_being_stored_ = 0;  // count against max_active_jobs
  int64_t next_thread_id_ = 1;
  std::deque<DueWork> assembly_queue_;
  // Jobs that reached a final state whose stored task data is still to go.
  std::vector<std::string> finished_to_clean_;
  // Threads of task streams and of submits that profile (SubmitAsync),
  // reaped by the scheduler and joined by Shutdown.
  std::map<int64_t, std::thread> dispatch_threads_;
  std::vector<int64_t> finished_dispatch_threads_;
  // Profiling passes in flight (MeasureLayers); Shutdown cancels them.
  std::set<grpc::ClientContext*> profile_contexts_;
  std::thread scheduler_thread_;
  std::thread assembly_thread_;
};

}  // namespace pnn

#endif  // PNN_COORDINATOR_COORDINATOR_H_
