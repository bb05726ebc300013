#include "coordinator/coordinator.h"

#include <grpcpp/grpcpp.h>
#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/auto_cut.h"
#include "common/dataset.h"
#include "common/dataset_cache.h"
#include "common/job_spec.h"
#include "common/status_macros.h"
#include "coordinator/job_store.h"
#include "coordinator/layer_profiler.h"
#include "coordinator/metrics.h"
#include "coordinator/placement.h"
#include "coordinator/store_writer.h"
#include "coordinator/task_driver.h"
#include "rpc/rpc_util.h"

namespace pnn {
namespace {

namespace fs = std::filesystem;
using pnn::v1::Job;

// Job ids are "job-" and 12 hex digits; anything much longer is not one
// (and is not echoed back at length).
constexpr size_t kMaxJobIdBytes = 64;

absl::Status CheckJobId(const std::string& job_id) {
  if (job_id.size() > kMaxJobIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("job_id: at most ", kMaxJobIdBytes, " bytes, got ",
                     job_id.size(), " (job ids look like job-0123456789ab)"));
  }
  return absl::OkStatus();
}

absl::Status NoSuchJob(const std::string& job_id) {
  return absl::NotFoundError(absl::StrCat("no job \"", job_id, "\""));
}

void LogError(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "pnn-coordinator: %s\n",
                 std::string(status.message()).c_str());
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Lifecycle

Coordinator::Coordinator(Options options)
    : options_(std::move(options)),
      datasets_(std::make_unique<DatasetCache>(2)),
      assembler_(std::make_unique<Assembler>(
          Assembler::Options{options_.state_dir, options_.data_dir,
                             options_.threads, options_.device},
          datasets_.get())),
      workers_(std::make_unique<WorkerRegistry>(WorkerRegistry::Options{
          options_.heartbeat_interval, options_.worker_timeout})),
      scheduler_(&table_, workers_.get(), options_.heartbeat_interval) {
  if (options_.metrics_registry != nullptr) {
    metrics_ = std::make_unique<CoordinatorMetrics>(*options_.metrics_registry);
  }
}

Coordinator::~Coordinator() { Shutdown(); }

absl::Status Coordinator::Start() {
  std::error_code error;
  fs::create_directories(fs::path(options_.state_dir) / "models", error);
  if (error) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create state directory ", options_.state_dir,
                     "/models: ", error.message()));
  }
  PNN_RETURN_IF_ERROR(assembler_->CheckDevice());
  std::lock_guard<std::mutex> lock(mu_);
  if (started_) return absl::OkStatus();
  task_driver_ = options_.task_driver;
  if (task_driver_ == nullptr) {
    auto credentials = MakeChannelCredentials(options_.tls);
    if (!credentials.ok()) return credentials.status();
    task_driver_ = MakeGrpcTaskDriver(*credentials, worker_token());
  }
  PNN_ASSIGN_OR_RETURN(
      store_, JobStore::Open((fs::path(options_.state_dir) / "jobs.db").string()));
  PNN_RETURN_IF_ERROR(RestoreJobs());
  writer_ = std::make_unique<StoreWriter>(store_.get());
  started_ = true;
  scheduler_thread_ = std::thread([this] { SchedulerLoop(); });
  assembly_thread_ = std::thread([this] { AssemblyLoop(); });
  return absl::OkStatus();
}

void Coordinator::Shutdown() {
  std::map<int64_t, std::thread> dispatch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
    table_.CancelStreams();
    for (grpc::ClientContext* context : profile_contexts_) context->TryCancel();
  }
  scheduler_wake_.notify_all();
  assembly_wake_.notify_all();
  if (scheduler_thread_.joinable()) scheduler_thread_.join();
  if (assembly_thread_.joinable()) assembly_thread_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    dispatch.swap(dispatch_threads_);
  }
  for (auto& [id, thread] : dispatch) thread.join();
  // Last: what the threads above changed is written before the store closes.
  if (writer_ != nullptr) writer_->Stop();
}

absl::Status Coordinator::RestoreJobs() {
  PNN_ASSIGN_OR_RETURN(std::vector<JobStore::Loaded> loaded, store_->LoadAll());
  const size_t count = loaded.size();
  JobTable::Restored restored = table_.Restore(std::move(loaded));
  for (DueWork& due : restored.due) assembly_queue_.push_back(std::move(due));
  finished_to_clean_ = std::move(restored.finished);
  if (count > 0) {
    std::fprintf(stderr,
                 "pnn-coordinator: restored %zu jobs from %s/jobs.db (%d "
                 "resumed, %d corrupt)\n",
                 count, options_.state_dir.c_str(), restored.resumed,
                 restored.corrupt);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Job API

absl::StatusOr<LayerTimes> Coordinator::MeasureLayers(
    const pnn::v1::JobSpec& spec, const DatasetShape& shape) {
  PNN_ASSIGN_OR_RETURN(
      const Architecture network,
      NetworkArchitecture(spec, shape.image_shape(), shape.num_classes));
  const pnn::v1::SegmentTask task = ProfileTask(spec, network, "profiling");
  // The worker is claimed like a task's, so the scheduler sends it nothing
  // while it measures; the lock is not held during the pass.
  const WorkerRegistry::Assignment assignment{"(profiling a new job)", -1};
  std::shared_ptr<TaskDriver> driver;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_ || shutting_down_) {
      return absl::UnavailableError(
          "the coordinator is not running; submit again");
    }
    driver = task_driver_;
  }
  std::optional<WorkerRegistry::Worker> worker;
  const std::vector<WorkerRegistry::Worker> available =
      workers_->Available(absl::Now());
  const std::optional<size_t> chosen = ChooseProfiler(spec.device(), available);
  if (chosen && workers_->Claim(available[*chosen].id, assignment)) {
    worker = available[*chosen];
  }
  if (!worker) {
    return absl::FailedPreconditionError(absl::StrCat(
        "auto_cut.objective BALANCE_OBJECTIVE_MEASURED_TIME times the layers "
        "on an idle worker of device \"",
        spec.device(), "\" before the job is accepted, and none is idle now (",
        WaitMessage(spec.device(), 0, workers_->All(), available),
        "); submit again when one is, or balance BALANCE_OBJECTIVE_FLOPS"));
  }
  // Shutdown cancels the pass through its context.
  grpc::ClientContext context;
  bool stopping = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping = shutting_down_;
    if (!stopping) profile_contexts_.insert(&context);
  }
  if (stopping) {
    workers_->Release(worker->id, assignment);
    return absl::UnavailableError("the coordinator is shutting down");
  }
  absl::StatusOr<LayerTimes> times = ProfileOnWorker(
      *driver, *worker, task, options_.profile_timeout, &context);
  {
    std::lock_guard<std::mutex> lock(mu_);
    profile_contexts_.erase(&context);
  }
  workers_->Release(worker->id, assignment);
  return times;
}

void Coordinator::SubmitAsync(pnn::v1::SubmitJobRequest request,
                              SubmitDone done) {
  if (request.spec().auto_cut().objective() !=
      pnn::v1::BALANCE_OBJECTIVE_MEASURED_TIME) {
    done(Submit(request));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_ && !shutting_down_) {
      const int64_t thread_id = next_thread_id_++;
      dispatch_threads_.emplace(
          thread_id, std::thread([this, thread_id, request = std::move(request),
                                  done = std::move(done)] {
            done(Submit(request));
            std::lock_guard<std::mutex> lock(mu_);
            finished_dispatch_threads_.push_back(thread_id);
          }));
      return;
    }
  }
  done(absl::UnavailableError(
      "the coordinator is not running (starting or shutting down); submit "
      "again"));
}

absl::StatusOr<Job> Coordinator::Submit(
    const pnn::v1::SubmitJobRequest& request) {
  PNN_ASSIGN_OR_RETURN(pnn::v1::JobSpec spec, ResolveJobSpec(request.spec()));
  if (request.conventional_baseline() &&
      spec.parallelism() == pnn::v1::PARALLELISM_CONVENTIONAL) {
    return absl::InvalidArgumentError(
        "conventional_baseline: the job trains the network conventionally "
        "already; leave the baseline off");
  }
  PNN_ASSIGN_OR_RETURN(const DatasetShape shape, assembler_->CheckData(spec));
  // Cuts chosen by pnn need the data set's input width and classes (and,
  // balancing measured time, a profiling pass on a worker).
  std::optional<LayerTimes> times;
  if (NeedsLayerTimes(spec)) {
    PNN_ASSIGN_OR_RETURN(times, MeasureLayers(spec, shape));
  }
  PNN_ASSIGN_OR_RETURN(
      pnn::v1::CutPlan cut_plan,
      ApplyAutoCut(&spec, shape.image_shape(), shape.num_classes,
                   times ? &*times : nullptr));
  PNN_ASSIGN_OR_RETURN(
      JobRecord record,
      JobTable::Plan(request, spec, shape.image_shape(), shape.num_classes));
  if (cut_plan.segments_size() > 0) {
    *record.job.mutable_cut_plan() = std::move(cut_plan);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutting_down_ || !started_) {
      return absl::UnavailableError(
          shutting_down_ ? "the coordinator is shutting down"
                         : "the coordinator has not started");
    }
    const int active = table_.CountUnfinished() + submits_being_stored_;
    if (active >= options_.max_active_jobs) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the coordinator already has ", active, " unfinished jobs (limit ",
          options_.max_active_jobs,
          "); wait for some to finish or cancel them"));
    }
    record.sequence = table_.TakeSequence();
    ++submits_being_stored_;
    // Said at once, in the scheduler's words (SayWhyWorkWaits).
    record.job.set_message(WaitMessage(JobDevice(record),
                                       CountPipelineStages(record),
                                       workers_->All(),
                                       workers_->Available(absl::Now())));
  }
  // OK means durable: a job that could not be stored would vanish at the
  // next restart, so it is not accepted. Written before the job enters the
  // table, so no later write of it can be overtaken.
  const absl::Status stored = store_->SaveJob(JobTable::ToStored(record));
  std::lock_guard<std::mutex> lock(mu_);
  --submits_being_stored_;
  if (!stored.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the job was not accepted because it could not be stored (",
        stored.message(),
        "); check the coordinator's --state_dir (free space, permissions)"));
  }
  JobRecord& inserted = table_.Insert(std::move(record));
  if (metrics_ != nullptr) metrics_->jobs_submitted.Increment();
  scheduler_wake_.notify_all();
  return JobTable::Snapshot(inserted);
}

absl::StatusOr<Job> Coordinator::GetJob(const std::string& job_id) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  const JobRecord* record = table_.Find(job_id);
  if (record == nullptr) return NoSuchJob(job_id);
  return JobTable::Snapshot(*record);
}

absl::StatusOr<pnn::v1::ListJobsResponse> Coordinator::ListJobs(
    const pnn::v1::ListJobsRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.List(request);
}

absl::StatusOr<Job> Coordinator::CancelJob(const std::string& job_id) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  Job snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    JobRecord* record = table_.Find(job_id);
    if (record == nullptr) return NoSuchJob(job_id);
    if (IsFinal(record->job.state())) {
      // Written again, so that the answer says whether the final state is
      // stored (an earlier write of it may have failed).
      writer_->Save(JobTable::ToStored(*record));
    } else {
      table_.Cancel(*record);
    }
    snapshot = JobTable::Snapshot(*record);
  }
  scheduler_wake_.notify_all();
  // OK means durable here too: the cancellation is written before it is
  // confirmed (else a restart would resume the job). `writer_` is set once
  // Start() has succeeded; without it no job exists.
  if (absl::Status stored = writer_->Wait(job_id); !stored.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "the job is cancelled, but that could not be stored (",
        stored.message(),
        "); after a coordinator restart it would run again: check the "
        "coordinator's --state_dir and cancel it again"));
  }
  return snapshot;
}

absl::Status Coordinator::Watch(const std::string& job_id,
                                std::shared_ptr<JobEventQueue> queue) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  const JobRecord* record = table_.Find(job_id);
  if (record == nullptr) return NoSuchJob(job_id);
  // Under mu_, so no event of the job can come between this snapshot and
  // the watcher's registration.
  watchers_.Add(job_id, std::move(queue), JobTable::Snapshot(*record));
  return absl::OkStatus();
}

void Coordinator::Unwatch(const std::shared_ptr<JobEventQueue>& queue) {
  watchers_.Remove(queue);
}

absl::StatusOr<pnn::v1::GetJobLogResponse> Coordinator::GetJobLog(
    const std::string& job_id) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  const JobRecord* record = table_.Find(job_id);
  if (record == nullptr) return NoSuchJob(job_id);
  return JobTable::Log(*record);
}

absl::StatusOr<std::string> Coordinator::ModelPath(
    const std::string& job_id, pnn::v1::ModelFormat format) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  const JobRecord* record = table_.Find(job_id);
  if (record == nullptr) return NoSuchJob(job_id);
  if (record->job.model_bytes() == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " has no model (state ",
        pnn::v1::JobState_Name(record->job.state()),
        "); models exist once a job has SUCCEEDED"));
  }
  return assembler_->ModelPath(job_id, format);
}

void Coordinator::OnJobChanged(const JobRecord& record,
                               const std::string& message, bool store) {
  if (store && writer_ != nullptr) writer_->Save(JobTable::ToStored(record));
  if (watchers_.Watched(record.id())) {
    watchers_.Publish(JobTable::Snapshot(record), message);
  }
}

void Coordinator::OnJobFinished(const JobRecord& record) {
  finished_to_clean_.push_back(record.id());
  if (metrics_ != nullptr) metrics_->RecordFinished(record.job);
}

// ---------------------------------------------------------------------------
// Worker API

absl::StatusOr<pnn::v1::RegisterWorkerResponse> Coordinator::RegisterWorker(
    const pnn::v1::WorkerInfo& worker) {
  PNN_ASSIGN_OR_RETURN(WorkerRegistry::Registered registered,
                       workers_->Register(worker, absl::Now()));
  if (registered.replaced.has_value() &&
      registered.replaced->assignment.has_value()) {
    // The worker restarted: whatever its old registration ran is lost.
    std::lock_guard<std::mutex> lock(mu_);
    LoseTaskLocked(registered.replaced->assignment->job_id,
                   registered.replaced->assignment->task_index,
                   registered.replaced->reason);
  }
  scheduler_wake_.notify_all();
  return registered.response;
}

absl::Status Coordinator::Heartbeat(const pnn::v1::HeartbeatRequest& request) {
  return workers_->Heartbeat(request.worker_id(), absl::Now());
}

absl::Status Coordinator::DeregisterWorker(const std::string& worker_id) {
  PNN_ASSIGN_OR_RETURN(std::optional<WorkerRegistry::Assignment> assignment,
                       workers_->Deregister(worker_id));
  // A busy worker ends its task's stream itself as it stops (UNAVAILABLE,
  // so the task is retried elsewhere); cancelling it from here would only
  // make the worker wait out its shutdown grace period.
  std::fprintf(stderr, "pnn-coordinator: worker %s deregistered (stopping%s)\n",
               worker_id.c_str(),
               assignment.has_value() ? "; its task will be retried" : "");
  return absl::OkStatus();
}

void Coordinator::LoseTaskLocked(const std::string& job_id, int task_index,
                                 const std::string& reason) {
  if (table_.FindTask(job_id, task_index) != nullptr) {
    table_.Lose(*table_.Find(job_id), task_index, reason);
  }
}

void Coordinator::RecordUnauthenticated() {
  if (metrics_ != nullptr) metrics_->unauthenticated_requests.Increment();
}

int Coordinator::registered_workers() const { return workers_->size(); }

pnn::v1::ListWorkersResponse Coordinator::ListWorkers() const {
  return workers_->Snapshot(absl::Now());
}

// ---------------------------------------------------------------------------
// Scheduling

void Coordinator::SchedulerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!shutting_down_) {
    DetectLostWorkersLocked(absl::Now());
    DispatchLocked();
    ReapDispatchThreadsLocked();
    UpdateGaugesLocked(absl::Now());
    CleanUpFinishedJobs(lock);
    scheduler_wake_.wait_for(lock, std::chrono::milliseconds(200));
  }
}

void Coordinator::CleanUpFinishedJobs(std::unique_lock<std::mutex>& lock) {
  // A job's task data goes once its streams have closed: a stream still
  // open may yet write its weights or resume state.
  std::vector<std::string> clean;
  std::vector<std::string> later;
  for (std::string& id : finished_to_clean_) {
    const JobRecord* record = table_.Find(id);
    if (record != nullptr && record->streams_open()) {
      later.push_back(std::move(id));
    } else {
      clean.push_back(std::move(id));
    }
  }
  finished_to_clean_ = std::move(later);
  std::vector<std::string> expired;
  if (options_.keep_finished_jobs > 0) {
    expired = table_.ExpireFinished(options_.keep_finished_jobs);
  }
  if (clean.empty() && expired.empty()) return;
  lock.unlock();
  for (const std::string& id : clean) LogError(store_->DeleteTaskData(id));
  for (const std::string& id : expired) {
    watchers_.Forget(id);
    writer_->Delete(id);
    assembler_->RemoveModel(id);
    std::fprintf(stderr,
                 "pnn-coordinator: job %s deleted (older than the newest %d "
                 "finished jobs)\n",
                 id.c_str(), options_.keep_finished_jobs);
  }
  lock.lock();
}

void Coordinator::DetectLostWorkersLocked(absl::Time now) {
  for (const WorkerRegistry::Ended& lost : workers_->ExpireSilent(now)) {
    if (lost.assignment.has_value()) {
      LoseTaskLocked(lost.assignment->job_id, lost.assignment->task_index,
                     lost.reason);
    }
    std::fprintf(stderr, "pnn-coordinator: %s; declared lost\n",
                 lost.reason.c_str());
    if (metrics_ != nullptr) metrics_->workers_lost.Increment();
  }
}

void Coordinator::DispatchLocked() {
  const absl::Time now = absl::Now();
  for (const Scheduler::Start& start : scheduler_.Pass(now)) {
    DispatchTaskLocked(*start.record, start.task_index, start.worker);
  }
  const std::vector<WorkerRegistry::Worker> registered = workers_->All();
  const std::vector<WorkerRegistry::Worker> available =
      workers_->Available(now);
  table_.SayWhyWorkWaits([&](const std::string& device, size_t stages) {
    return WaitMessage(device, stages, registered, available);
  });
}

void Coordinator::DispatchTaskLocked(JobRecord& record, size_t index,
                                     const WorkerRegistry::Worker& worker) {
  pnn::v1::TrainSegmentRequest request =
      table_.Dispatch(record, index, worker.id, worker.info.address());
  if (metrics_ != nullptr) metrics_->task_dispatches.Increment();
  const int64_t thread_id = next_thread_id_++;
  dispatch_threads_.emplace(
      thread_id,
      std::thread(&Coordinator::RunTask, this, record.id(),
                  static_cast<int>(index), worker.id, worker.info.address(),
                  std::move(request), record.tasks[index].stream, thread_id));
}

void Coordinator::ReapDispatchThreadsLocked() {
  for (int64_t id : finished_dispatch_threads_) {
    auto it = dispatch_threads_.find(id);
    if (it != dispatch_threads_.end()) {
      it->second.join();  // has returned already or is about to
      dispatch_threads_.erase(it);
    }
  }
  finished_dispatch_threads_.clear();
}

void Coordinator::UpdateGaugesLocked(absl::Time now) {
  if (metrics_ == nullptr) return;
  const JobTable::TaskCounts counts = table_.Count();
  metrics_->SetJobGauges(counts.jobs, counts.queued_tasks, counts.running_tasks);
  const WorkerRegistry::Counts workers = workers_->Count(now);
  metrics_->workers_registered.Set(workers.registered);
  metrics_->workers_healthy.Set(workers.healthy);
  metrics_->workers_busy.Set(workers.busy);
}

// ---------------------------------------------------------------------------
// A task's stream

void Coordinator::RunTask(std::string job_id, int task_index,
                          std::string worker_id, std::string address,
                          pnn::v1::TrainSegmentRequest request,
                          std::shared_ptr<grpc::ClientContext> context,
                          int64_t thread_id) {
  {
    const int64_t bytes = static_cast<int64_t>(request.ByteSizeLong());
    std::lock_guard<std::mutex> lock(mu_);
    if (JobRecord* record = table_.Find(job_id); record != nullptr) {
      table_.CountSent(*record, task_index, bytes);
    }
    if (metrics_ != nullptr) {
      metrics_->network_sent_bytes.Increment(static_cast<double>(bytes));
    }
  }
  TaskRun run = task_driver_->Run(
      address, request, context.get(),
      [&](const pnn::v1::TrainSegmentUpdate& update, int64_t bytes) {
        OnTaskUpdate(job_id, task_index, update, bytes);
      });
  absl::Status status = std::move(run.status);
  std::optional<pnn::v1::SegmentWeights>& weights = run.weights;
  if (status.ok() && !weights.has_value()) {
    status = absl::DataLossError(
        "the worker ended the stream without sending the trained weights");
  }
  // Checked and written before the job table's lock is taken: building a
  // model and writing megabytes must not hold up GetJob or Watch.
  if (status.ok()) {
    status = CheckAndStoreWeights(job_id, task_index, worker_id,
                                  request.task(), *weights);
  }
  OnTaskFinished(job_id, task_index, worker_id, status,
                 status.ok() ? std::move(*weights)
                             : pnn::v1::SegmentWeights());
  std::lock_guard<std::mutex> lock(mu_);
  finished_dispatch_threads_.push_back(thread_id);
  scheduler_wake_.notify_all();
}

void Coordinator::OnTaskUpdate(const std::string& job_id, int task_index,
                               const pnn::v1::TrainSegmentUpdate& update,
                               int64_t bytes) {
  bool keep_state = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (metrics_ != nullptr) {
      metrics_->network_received_bytes.Increment(static_cast<double>(bytes));
    }
    if (JobRecord* record = table_.Find(job_id); record != nullptr) {
      keep_state = table_.ApplyUpdate(*record, task_index, update, bytes);
    }
  }
  if (keep_state) {
    // Megabytes per epoch: written after the lock is released. Only this
    // task's stream thread writes its state, so writes stay in order.
    LogError(store_->SaveResumeState(job_id, task_index,
                                     update.checkpoint().state()));
  }
}

absl::Status Coordinator::CheckAndStoreWeights(
    const std::string& job_id, int task_index, const std::string& worker_id,
    const pnn::v1::SegmentTask& task, const pnn::v1::SegmentWeights& weights) {
  // Weights from a worker are checked before anything uses them.
  if (absl::Status valid = Assembler::CheckWeights(task, weights);
      !valid.ok()) {
    return absl::DataLossError(absl::StrCat(
        "worker ", worker_id, " returned malformed weights: ", valid.message()));
  }
  absl::Status saved = store_->SaveWeights(job_id, task_index, weights);
  if (saved.ok()) saved = store_->DeleteResumeState(job_id, task_index);
  // On failure the job goes on, but this segment would train again after
  // a restart.
  LogError(saved);
  return absl::OkStatus();
}

void Coordinator::OnTaskFinished(const std::string& job_id, int task_index,
                                 const std::string& worker_id,
                                 absl::Status status,
                                 pnn::v1::SegmentWeights weights) {
  std::lock_guard<std::mutex> lock(mu_);
  workers_->Release(worker_id, {job_id, task_index});
  scheduler_wake_.notify_all();
  JobRecord* record = table_.Find(job_id);
  if (record == nullptr) return;
  table_.EndStream(*record, task_index);
  if (shutting_down_ && !status.ok()) {
    // This process cancelled the call to stop: no fault of the task. The
    // stored record keeps the task RUNNING, so the next start re-queues it
    // without counting the attempt, as after a crash (RestoreJobs).
    return;
  }
  if (IsFinal(record->job.state()) || record->cancel_requested) {
    table_.SettleAfterJobEnded(*record, task_index, status.ok());
    return;
  }
  const TaskRecord& task = record->tasks[task_index];
  if (task.is_stage() &&
      task.status.state() == pnn::v1::TASK_STATE_CANCELLED) {
    // Stopped for a restart of its pipeline: however it ended, it trains
    // again with the others, and the attempt is not its failure.
    table_.RequeueStoppedStage(*record, task_index);
    return;
  }
  if (status.ok()) {
    workers_->MarkReachable(worker_id);
    std::optional<DueWork> due =
        table_.Succeed(*record, task_index, std::move(weights), worker_id);
    if (due.has_value()) QueueAssemblyLocked(*std::move(due));
    return;
  }
  const FailedAttempt attempt = JudgeAttemptLocked(task, worker_id, status);
  const bool retried = task.is_stage()
                           ? table_.FailStage(*record, task_index, attempt)
                           : table_.FailAttempt(*record, task_index, attempt);
  if (retried && metrics_ != nullptr) metrics_->task_retries.Increment();
}

FailedAttempt Coordinator::JudgeAttemptLocked(const TaskRecord& task,
                                              const std::string& worker_id,
                                              const absl::Status& status) {
  AttemptFacts facts;
  facts.code = status.code();
  facts.worker_lost = !task.loss_reason.empty();
  facts.pipeline_stage = task.is_stage();
  facts.attempts = task.status.attempts();
  facts.max_attempts = options_.max_attempts;
  FailedAttempt attempt;
  attempt.decision = DecideRetry(facts);
  attempt.error = AttemptError(task.loss_reason, status);
  attempt.where = absl::StrCat(worker_id, " (", task.status.worker_address(), ")");
  if (attempt.decision.back_off_worker) {
    // It must not get the retry at once; it stays registered (no lost
    // worker), and a task that runs there later resets the back-off.
    workers_->MarkUnreachable(worker_id, absl::Now());
    std::fprintf(stderr,
                 "pnn-coordinator: worker %s unreachable or stopping (%s); "
                 "backing off\n",
                 worker_id.c_str(), std::string(status.message()).c_str());
  }
  return attempt;
}

// ---------------------------------------------------------------------------
// Assembly and the test pass

void Coordinator::QueueAssemblyLocked(DueWork work) {
  assembly_queue_.push_back(std::move(work));
  assembly_wake_.notify_all();
}

void Coordinator::AssemblyLoop() {
  for (;;) {
    DueWork work;
    {
      std::unique_lock<std::mutex> lock(mu_);
      assembly_wake_.wait(lock, [this] {
        return shutting_down_ || !assembly_queue_.empty();
      });
      if (shutting_down_) return;
      work = assembly_queue_.front();
      assembly_queue_.pop_front();
    }
    if (work.work == AssemblyWork::kAssemble) {
      Assemble(work.job_id);
    } else {
      EvaluateBaseline(work.job_id);
    }
    // A finished job's weights and test activations (megabytes, freed on
    // several threads) go back to the system rather than stay in glibc's
    // per-thread heaps: a long-running coordinator's memory follows its
    // live jobs, not the jobs it has seen. A few milliseconds per job.
    malloc_trim(0);
  }
}

bool Coordinator::ShouldStopAssembly(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  const JobRecord* record = table_.Find(job_id);
  return shutting_down_ || record == nullptr || record->cancel_requested;
}

void Coordinator::Assemble(const std::string& job_id) {
  AssemblyInput input;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const JobRecord* record = table_.Find(job_id);
    if (record == nullptr || IsFinal(record->job.state())) return;
    input.job_id = job_id;
    input.spec = record->job.spec();
    for (const TaskRecord& task : record->tasks) {
      if (task.is_recovery()) {
        input.recovered.push_back(task.weights);
        input.recovery_seconds = std::max(input.recovery_seconds,
                                          task.status.cost().wall_seconds());
      }
      if (!task.is_segment()) continue;
      input.weights.push_back(task.weights);
      input.checkpoints.push_back(task.checkpoints);
      input.pipeline = task.is_stage();
    }
  }
  absl::StatusOr<AssemblyResult> result = assembler_->Assemble(
      input, [this, &job_id] { return ShouldStopAssembly(job_id); });
  std::lock_guard<std::mutex> lock(mu_);
  JobRecord* record = table_.Find(job_id);
  if (record == nullptr || IsFinal(record->job.state())) {
    // Cancelled (or failed) while it was assembled: no model to serve.
    assembler_->RemoveModel(job_id);
    return;
  }
  if (!result.ok()) {
    table_.Fail(*record,
                absl::StrCat("assembly failed: ", result.status().message()));
    return;
  }
  table_.Assembled(*record, *result);
}

void Coordinator::EvaluateBaseline(const std::string& job_id) {
  pnn::v1::JobSpec spec;
  pnn::v1::SegmentWeights weights;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const JobRecord* record = table_.Find(job_id);
    if (record == nullptr || IsFinal(record->job.state())) return;
    spec = record->job.spec();
    weights = record->tasks.back().weights;
  }
  absl::StatusOr<pnn::v1::TestResult> test =
      assembler_->TestBaseline(spec, weights);
  std::lock_guard<std::mutex> lock(mu_);
  JobRecord* record = table_.Find(job_id);
  if (record == nullptr || IsFinal(record->job.state())) return;
  if (!test.ok()) {
    table_.Fail(*record, absl::StrCat("testing the conventional baseline: ",
                                      test.status().message()));
    return;
  }
  table_.BaselineTested(*record, *test);
}

}  // namespace pnn
