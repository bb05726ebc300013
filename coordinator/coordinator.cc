#include "coordinator/coordinator.h"

#include <grpcpp/grpcpp.h>
#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/dataset.h"
#include "common/dataset_cache.h"
#include "common/job_spec.h"
#include "common/partition.h"
#include "common/status_macros.h"
#include "coordinator/assembler.h"
#include "coordinator/job_store.h"
#include "coordinator/metrics.h"
#include "coordinator/placement.h"
#include "coordinator/retry_policy.h"
#include "coordinator/task_driver.h"
#include "rpc/rpc_util.h"

namespace pnn {
namespace {

namespace fs = std::filesystem;
using pnn::v1::Job;
using pnn::v1::JobState;
using pnn::v1::TaskState;

constexpr int kBaselineIndex = -1;
constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;

// TimeUtil::GetCurrentTime() has only whole seconds in protobuf 3.21.
google::protobuf::Timestamp Now() {
  const absl::Time now = absl::Now();
  google::protobuf::Timestamp timestamp;
  const int64_t nanos = absl::ToUnixNanos(now);
  timestamp.set_seconds(nanos / 1000000000);
  timestamp.set_nanos(static_cast<int32_t>(nanos % 1000000000));
  return timestamp;
}

double SecondsBetween(const google::protobuf::Timestamp& from,
                      const google::protobuf::Timestamp& to) {
  return static_cast<double>(to.seconds() - from.seconds()) +
         (to.nanos() - from.nanos()) / 1e9;
}

// Tasks (TaskRecords) that are stages of a model-parallel pipeline.
template <typename Tasks>
int CountPipelineStages(const Tasks& tasks) {
  return static_cast<int>(
      std::count_if(tasks.begin(), tasks.end(), [](const auto& task) {
        return task.task.has_pipeline();
      }));
}

// Why a job's queued work waits, for people. `stages` > 0 for a
// model-parallel job, whose stages start together.
std::string WaitMessage(size_t registered, size_t idle, int stages) {
  if (registered == 0) {
    return "waiting for a worker to register (none is registered)";
  }
  if (stages > 0) {
    return absl::StrCat("waiting for ", stages,
                        " idle workers at once (model-parallel: one per "
                        "stage); ",
                        idle, " of ", registered, " registered are idle");
  }
  if (idle == 0) {
    return absl::StrCat("waiting for an idle worker (", registered,
                        " registered, all busy)");
  }
  return absl::StrCat("waiting for an idle worker (", registered,
                      " registered, ", idle, " idle)");
}

bool IsFinal(JobState state) {
  return state == pnn::v1::JOB_STATE_SUCCEEDED ||
         state == pnn::v1::JOB_STATE_FAILED ||
         state == pnn::v1::JOB_STATE_CANCELLED;
}

bool IsFinal(TaskState state) {
  return state == pnn::v1::TASK_STATE_SUCCEEDED ||
         state == pnn::v1::TASK_STATE_FAILED ||
         state == pnn::v1::TASK_STATE_CANCELLED;
}

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

std::string NewJobId() {
  static std::mt19937_64 generator{std::random_device{}()};
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("job-%012x", generator() & 0xffffffffffffULL);
}

std::string TaskName(const pnn::v1::TaskStatus& status, int segments) {
  if (status.segment_index() == kBaselineIndex) return "the conventional baseline";
  return absl::StrFormat("segment %d/%d (layers %d..%d)",
                         status.segment_index() + 1, segments,
                         status.first_layer(), status.last_layer());
}


}  // namespace

// ---------------------------------------------------------------------------
// Coordinator: lifecycle

Coordinator::Coordinator(Options options)
    : options_(std::move(options)),
      datasets_(std::make_unique<DatasetCache>(2)) {
  assembler_ = std::make_unique<Assembler>(
      Assembler::Options{options_.state_dir, options_.data_dir,
                         options_.threads, options_.device},
      datasets_.get());
  WorkerRegistry::Options registry;
  registry.heartbeat_interval = options_.heartbeat_interval;
  registry.worker_timeout = options_.worker_timeout;
  workers_ = std::make_unique<WorkerRegistry>(registry);
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
  auto store = JobStore::Open(
      (fs::path(options_.state_dir) / "jobs.db").string());
  if (!store.ok()) return store.status();
  store_ = *std::move(store);
  PNN_RETURN_IF_ERROR(RestoreJobs());
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
    for (auto& [id, record] : jobs_) {
      for (auto& task : record.tasks) {
        if (task.context != nullptr) task.context->TryCancel();
      }
    }
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
}

absl::Status Coordinator::RestoreJobs() {
  PNN_ASSIGN_OR_RETURN(std::vector<JobStore::Loaded> loaded, store_->LoadAll());
  int resumed = 0;
  int corrupt = 0;
  for (JobStore::Loaded& stored : loaded) {
    if (!stored.corrupt.empty()) {
      // Kept in the store as it is (for whoever investigates), listed as
      // FAILED here; the other jobs start as usual.
      ++corrupt;
      JobRecord record;
      record.sequence = stored.job.sequence();
      record.job = stored.job.job();
      record.job.set_state(pnn::v1::JOB_STATE_FAILED);
      record.job.set_message(absl::StrCat(
          "record corrupt: ", stored.corrupt,
          "; the job cannot be resumed, submit it again"));
      next_job_sequence_ = std::max(next_job_sequence_, record.sequence + 1);
      std::fprintf(stderr, "pnn-coordinator: job %s: %s\n",
                   record.job.job_id().c_str(), stored.corrupt.c_str());
      jobs_.emplace(record.job.job_id(), std::move(record));
      continue;
    }
    JobRecord record;
    record.sequence = stored.job.sequence();
    record.job = stored.job.job();
    record.assembled = stored.job.assembled();
    record.baseline_evaluated = stored.job.baseline_evaluated();
    record.cancel_requested = stored.job.cancel_requested();
    const int segments = record.job.segments_size();
    for (int i = 0; i < stored.job.tasks_size(); ++i) {
      TaskRecord task;
      task.task = stored.job.tasks(i);
      task.is_baseline = i >= segments;
      task.status = task.is_baseline ? record.job.baseline()
                                     : record.job.segments(i);
      auto weights = stored.weights.find(i);
      if (weights != stored.weights.end()) task.weights = weights->second;
      auto state = stored.resume_states.find(i);
      if (state != stored.resume_states.end()) {
        task.resume_state = state->second;
      }
      record.tasks.push_back(std::move(task));
    }
    record.job.clear_segments();
    record.job.clear_baseline();
    next_job_sequence_ = std::max(next_job_sequence_, record.sequence + 1);
    const std::string job_id = record.job.job_id();
    if (!IsFinal(record.job.state())) {
      ++resumed;
      RequeueAfterRestartLocked(record);
    } else {
      finished_to_clean_.push_back(job_id);
    }
    jobs_.emplace(job_id, std::move(record));
  }
  if (!loaded.empty()) {
    std::fprintf(stderr,
                 "pnn-coordinator: restored %zu jobs from %s/jobs.db (%d "
                 "resumed, %d corrupt)\n",
                 loaded.size(), options_.state_dir.c_str(), resumed, corrupt);
  }
  return absl::OkStatus();
}

void Coordinator::RequeueAfterRestartLocked(JobRecord& record) {
  const std::string& job_id = record.job.job_id();
  bool all_segments_done = true;
  for (TaskRecord& task : record.tasks) {
    const bool done = task.status.state() == pnn::v1::TASK_STATE_SUCCEEDED &&
                      task.weights.tensors_size() > 0;
    if (!done && (task.status.state() == pnn::v1::TASK_STATE_RUNNING ||
                  task.status.state() == pnn::v1::TASK_STATE_SUCCEEDED)) {
      // Its stream died with the old process: train it again. The
      // crash was not the task's fault, so the attempt does not count.
      if (task.status.state() == pnn::v1::TASK_STATE_RUNNING) {
        task.status.set_attempts(std::max(0, task.status.attempts() - 1));
      }
      task.status.set_state(pnn::v1::TASK_STATE_QUEUED);
      task.status.set_progress(0);
      task.status.set_error("the coordinator restarted while it ran");
    }
    if (!task.is_baseline && !done) all_segments_done = false;
  }
  if (all_segments_done && !record.assembled) {
    record.job.set_state(pnn::v1::JOB_STATE_ASSEMBLING);
    assembly_queue_.emplace_back(job_id, AssemblyWork::kAssemble);
  }
  if (!record.tasks.empty() && record.tasks.back().is_baseline &&
      record.tasks.back().status.state() ==
          pnn::v1::TASK_STATE_SUCCEEDED &&
      !record.baseline_evaluated) {
    assembly_queue_.emplace_back(job_id, AssemblyWork::kEvaluateBaseline);
  }
  record.job.set_message("resumed after a coordinator restart");
}

// ---------------------------------------------------------------------------
// Job API

absl::StatusOr<DatasetShape> Coordinator::CheckDataForSubmit(
    const pnn::v1::JobSpec& spec) {
  auto directory = ResolveDatasetDirectory(options_.data_dir, spec.dataset(),
                                           /*allow_absolute=*/false);
  if (!directory.ok()) return directory.status();
  auto shape = ReadDatasetShape(*directory, spec.dataset());
  if (!shape.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset: ", shape.status().message(),
        " (dataset.path is relative to the coordinator's --data_dir)"));
  }
  PNN_RETURN_IF_ERROR(
      ValidateAgainstData(spec, shape->input_width(), shape->num_classes));
  // The coordinator tests the joined model on its own copy of the data:
  // load (and fully validate) it now, before any worker trains, rather
  // than find a truncated file after training. Cached for the assembly.
  if (auto data = datasets_->Get(*directory, spec.dataset()); !data.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dataset: the coordinator cannot load its copy of the data set (",
        data.status().message(),
        "); fix the files under its --data_dir before submitting"));
  }
  return shape;
}

absl::StatusOr<Coordinator::JobRecord> Coordinator::PlanJob(
    const pnn::v1::SubmitJobRequest& request, const pnn::v1::JobSpec& spec,
    const DatasetShape& shape) {
  const std::string job_id = NewJobId();
  PNN_ASSIGN_OR_RETURN(std::vector<pnn::v1::SegmentTask> tasks,
                       PlanSegmentTasks(spec, shape.input_width(),
                                        shape.num_classes, job_id));

  JobRecord record;
  Job& job = record.job;
  job.set_job_id(job_id);
  *job.mutable_spec() = spec;
  job.set_state(pnn::v1::JOB_STATE_QUEUED);
  *job.mutable_create_time() = Now();
  job.set_conventional_baseline(request.conventional_baseline());
  job.set_input_width(shape.input_width());
  job.set_num_classes(shape.num_classes);
  for (auto& task : tasks) {
    TaskRecord task_record;
    task_record.status.set_segment_index(task.segment_index());
    task_record.status.set_first_layer(task.first_layer());
    task_record.status.set_last_layer(task.last_layer());
    task_record.status.set_epochs_total(task.training().epochs());
    task_record.status.set_state(NeedsUpstream(task)
                                     ? pnn::v1::TASK_STATE_WAITING
                                     : pnn::v1::TASK_STATE_QUEUED);
    task_record.task = std::move(task);
    record.tasks.push_back(std::move(task_record));
  }
  if (request.conventional_baseline()) {
    TaskRecord baseline;
    baseline.is_baseline = true;
    pnn::v1::JobSpec whole = spec;
    whole.set_parallelism(pnn::v1::PARALLELISM_CONVENTIONAL);
    whole.set_evaluations_per_epoch(0);
    PNN_ASSIGN_OR_RETURN(std::vector<pnn::v1::SegmentTask> whole_tasks,
                         PlanSegmentTasks(whole, shape.input_width(),
                                          shape.num_classes, job_id));
    pnn::v1::SegmentTask& task = baseline.task;
    task = std::move(whole_tasks.front());
    baseline.status.set_segment_index(kBaselineIndex);
    baseline.status.set_first_layer(1);
    baseline.status.set_last_layer(task.last_layer());
    baseline.status.set_epochs_total(spec.training().epochs());
    baseline.status.set_state(pnn::v1::TASK_STATE_QUEUED);
    record.tasks.push_back(std::move(baseline));
  }

  return record;
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
  PNN_ASSIGN_OR_RETURN(const DatasetShape shape, CheckDataForSubmit(spec));
  PNN_ASSIGN_OR_RETURN(JobRecord record, PlanJob(request, spec, shape));
  const std::string job_id = record.job.job_id();

  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) {
    return absl::UnavailableError("the coordinator is shutting down");
  }
  int active = 0;
  for (const auto& [id, other] : jobs_) {
    if (!IsFinal(other.job.state())) ++active;
  }
  if (active >= options_.max_active_jobs) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the coordinator already has ", active,
        " unfinished jobs (limit ", options_.max_active_jobs,
        "); wait for some to finish or cancel them"));
  }
  record.sequence = next_job_sequence_++;
  // Said at once, in the scheduler's words (DispatchLocked).
  const WorkerRegistry::Counts counts = workers_->Count(absl::Now());
  record.job.set_message(WaitMessage(counts.registered, counts.idle,
                                     CountPipelineStages(record.tasks)));
  auto [it, inserted] = jobs_.emplace(job_id, std::move(record));
  RefreshJobLocked(it->second);
  // OK means durable: a job that could not be stored would vanish at the
  // next restart, so it is not accepted. No watcher can exist yet.
  if (absl::Status stored = PersistLocked(it->second); !stored.ok()) {
    jobs_.erase(it);
    return absl::UnavailableError(absl::StrCat(
        "the job was not accepted because it could not be stored (",
        stored.message(),
        "); check the coordinator's --state_dir (free space, permissions)"));
  }
  if (metrics_ != nullptr) metrics_->jobs_submitted.Increment();
  scheduler_wake_.notify_all();
  return SnapshotLocked(it->second);
}

absl::StatusOr<Job> Coordinator::GetJob(const std::string& job_id) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("no job \"", job_id, "\""));
  }
  return SnapshotLocked(it->second);
}

absl::StatusOr<pnn::v1::ListJobsResponse> Coordinator::ListJobs(
    const pnn::v1::ListJobsRequest& request) {
  if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page_size: must be between 0 and ", kMaxPageSize, ", got ",
        request.page_size()));
  }
  int64_t before = INT64_MAX;
  if (!request.page_token().empty() &&
      !absl::SimpleAtoi(request.page_token(), &before)) {
    return absl::InvalidArgumentError(
        "page_token: not a token returned by ListJobs");
  }
  const int page_size =
      request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<const JobRecord*> matching;
  for (const auto& [id, record] : jobs_) {
    if (record.sequence >= before) continue;
    if (!request.states().empty() &&
        std::find(request.states().begin(), request.states().end(),
                  record.job.state()) == request.states().end()) {
      continue;
    }
    matching.push_back(&record);
  }
  std::sort(matching.begin(), matching.end(),
            [](const JobRecord* a, const JobRecord* b) {
              return a->sequence > b->sequence;
            });
  pnn::v1::ListJobsResponse response;
  for (size_t i = 0; i < matching.size() && i < static_cast<size_t>(page_size);
       ++i) {
    *response.add_jobs() = SnapshotLocked(*matching[i]);
  }
  if (matching.size() > static_cast<size_t>(page_size)) {
    response.set_next_page_token(
        absl::StrCat(matching[page_size - 1]->sequence));
  }
  return response;
}

absl::StatusOr<Job> Coordinator::CancelJob(const std::string& job_id) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("no job \"", job_id, "\""));
  }
  JobRecord& record = it->second;
  if (IsFinal(record.job.state())) return SnapshotLocked(record);
  record.cancel_requested = true;
  CancelRunningTasksLocked(record);
  record.job.set_state(pnn::v1::JOB_STATE_CANCELLED);
  record.job.set_message("cancelled by request");
  *record.job.mutable_end_time() = Now();
  RecordFinalLocked(record);
  PublishLocked(record, "job cancelled");
  scheduler_wake_.notify_all();
  return SnapshotLocked(record);
}

absl::Status Coordinator::Watch(const std::string& job_id,
                                std::shared_ptr<JobEventQueue> queue) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  pnn::v1::JobEvent event;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrCat("no job \"", job_id, "\""));
    }
    it->second.watchers.push_back(queue);
    *event.mutable_time() = Now();
    event.set_message("current state");
    *event.mutable_job() = SnapshotLocked(it->second);
    event.set_sequence(next_event_sequence_++);
  }
  queue->Push(event);
  return absl::OkStatus();
}

void Coordinator::Unwatch(const std::shared_ptr<JobEventQueue>& queue) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, record] : jobs_) {
    auto& watchers = record.watchers;
    watchers.erase(std::remove(watchers.begin(), watchers.end(), queue),
                   watchers.end());
  }
}

absl::StatusOr<std::string> Coordinator::ModelPath(
    const std::string& job_id, pnn::v1::ModelFormat format) {
  PNN_RETURN_IF_ERROR(CheckJobId(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrCat("no job \"", job_id, "\""));
  }
  if (it->second.job.model_bytes() == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " has no model (state ",
        pnn::v1::JobState_Name(it->second.job.state()),
        "); models exist once a job has SUCCEEDED"));
  }
  return assembler_->ModelPath(job_id, format);
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
  auto job = jobs_.find(job_id);
  if (job == jobs_.end() || task_index < 0 ||
      task_index >= static_cast<int>(job->second.tasks.size())) {
    return;
  }
  TaskRecord& task = job->second.tasks[task_index];
  if (task.context == nullptr) return;  // its stream has ended already
  task.loss_reason = reason;
  task.context->TryCancel();
}

void Coordinator::RecordUnauthenticated() {
  if (metrics_ != nullptr) metrics_->unauthenticated_requests.Increment();
}

int Coordinator::registered_workers() const { return workers_->size(); }

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
  std::vector<std::string> clean;
  clean.swap(finished_to_clean_);
  std::vector<std::string> expired;
  if (options_.keep_finished_jobs > 0) {
    std::vector<std::pair<int64_t, std::string>> finished;
    for (const auto& [id, record] : jobs_) {
      const bool streams_open = std::any_of(
          record.tasks.begin(), record.tasks.end(),
          [](const TaskRecord& task) { return task.context != nullptr; });
      if (IsFinal(record.job.state()) && !streams_open) {
        finished.emplace_back(record.sequence, id);
      }
    }
    std::sort(finished.begin(), finished.end());
    const size_t keep = static_cast<size_t>(options_.keep_finished_jobs);
    for (size_t i = 0; i + keep < finished.size(); ++i) {
      expired.push_back(finished[i].second);
      jobs_.erase(finished[i].second);
    }
  }
  if (clean.empty() && expired.empty()) return;
  lock.unlock();
  for (const std::string& id : clean) {
    if (absl::Status deleted = store_->DeleteTaskData(id); !deleted.ok()) {
      std::fprintf(stderr, "pnn-coordinator: %s\n",
                   std::string(deleted.message()).c_str());
    }
  }
  for (const std::string& id : expired) {
    absl::Status deleted = store_->DeleteJob(id);
    assembler_->RemoveModel(id);
    std::fprintf(stderr,
                 "pnn-coordinator: job %s deleted (older than the newest %d "
                 "finished jobs)%s\n",
                 id.c_str(), options_.keep_finished_jobs,
                 deleted.ok() ? ""
                              : absl::StrCat(": ", deleted.message()).c_str());
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

namespace {

// The stages of a model-parallel job when its pipeline is ready to
// (re)start as a whole: no stage's stream is open any more, some stage is
// queued, not all have finished. A restart also waits a moment after the
// last stage ended: a cancelled stream ends at once on this side, but its
// worker needs a little while to stop the old run, and would refuse the
// new one as busy.
template <typename Tasks>
std::vector<size_t> PipelineStagesToStart(
    const Tasks& tasks, const google::protobuf::Timestamp& now) {
  constexpr double kSettleSeconds = 0.5;
  std::vector<size_t> stages;
  bool queued = false;
  bool all_succeeded = true;
  for (size_t index = 0; index < tasks.size(); ++index) {
    const auto& task = tasks[index];
    if (!task.task.has_pipeline()) continue;
    if (task.context != nullptr ||
        (task.status.has_end_time() &&
         SecondsBetween(task.status.end_time(), now) < kSettleSeconds)) {
      return {};
    }
    queued |= task.status.state() == pnn::v1::TASK_STATE_QUEUED;
    all_succeeded &= task.status.state() == pnn::v1::TASK_STATE_SUCCEEDED;
    stages.push_back(index);
  }
  if (!queued || all_succeeded) stages.clear();
  return stages;
}

}  // namespace

void Coordinator::DispatchLocked() {
  // Jobs in submission order; within a job, segments before the baseline.
  std::vector<JobRecord*> order;
  for (auto& [id, record] : jobs_) {
    if (!IsFinal(record.job.state())) order.push_back(&record);
  }
  std::sort(order.begin(), order.end(), [](JobRecord* a, JobRecord* b) {
    return a->sequence < b->sequence;
  });
  for (JobRecord* record : order) {
    bool changed = false;
    // A model-parallel job that waits for its gang keeps later jobs off
    // the idle workers (else small jobs could starve it).
    const bool gang_waits = !StartPipelineLocked(*record, &changed);
    if (!gang_waits) changed |= DispatchQueuedLocked(*record);
    if (changed) RefreshJobLocked(*record);
    if (gang_waits) break;
  }
  SayWhyWorkWaitsLocked(order);
}

bool Coordinator::StartPipelineLocked(JobRecord& record, bool* started) {
  const std::vector<size_t> stages = PipelineStagesToStart(record.tasks, Now());
  if (stages.empty()) return true;
  // Every batch crosses every stage, so the stages start together on as
  // many workers or not at all.
  const std::string& device = record.tasks[stages[0]].task.device();
  const absl::Time now = absl::Now();
  const std::vector<WorkerRegistry::Worker> available =
      workers_->Available(now);
  size_t matching = 0;
  for (const WorkerRegistry::Worker& worker : workers_->All()) {
    matching += DeviceMatches(device, worker.info.device());
  }
  const PipelinePlacement placement =
      PlacePipeline(device, stages.size(), available, matching,
                    now - 2 * options_.heartbeat_interval);
  if (placement.workers.empty()) return !placement.gang_waits;
  std::vector<WorkerRegistry::Worker> idle;
  for (size_t w : placement.workers) idle.push_back(available[w]);
  for (size_t i = 0; i < stages.size(); ++i) {
    if (!workers_->Claim(idle[i].id, {record.job.job_id(),
                                      static_cast<int>(stages[i])})) {
      // Gone in the meantime: give back what was claimed, try next pass.
      for (size_t j = 0; j < i; ++j) {
        workers_->Release(idle[j].id, {record.job.job_id(),
                                       static_cast<int>(stages[j])});
      }
      return true;
    }
  }
  // A fresh session per run (unique even when a busy worker's refusal did
  // not count as an attempt): calls from an earlier run's stages are
  // refused by this run's workers.
  int attempt = 0;
  for (size_t index : stages) {
    attempt = std::max(attempt, record.tasks[index].status.attempts());
  }
  const std::string session = absl::StrCat(
      record.job.job_id(), "-run", attempt + 1, "-", next_thread_id_);
  for (size_t i = 0; i < stages.size(); ++i) {
    pnn::v1::PipelineStage* pipeline =
        record.tasks[stages[i]].task.mutable_pipeline();
    pipeline->set_session_id(session);
    pipeline->set_downstream_address(
        i + 1 < stages.size() ? idle[i + 1].info.address() : "");
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    DispatchTaskLocked(record, stages[i], idle[i]);
  }
  *started = true;
  return true;
}

bool Coordinator::DispatchQueuedLocked(JobRecord& record) {
  std::vector<QueuedTask> queued;
  for (size_t index = 0; index < record.tasks.size(); ++index) {
    const TaskRecord& task = record.tasks[index];
    if (task.status.state() == pnn::v1::TASK_STATE_QUEUED &&
        !task.task.has_pipeline()) {
      queued.push_back({index, task.task.device()});
    }
  }
  if (queued.empty()) return false;
  const std::vector<WorkerRegistry::Worker> available =
      workers_->Available(absl::Now());
  bool changed = false;
  for (const auto& [index, w] : PlaceTasks(queued, available)) {
    if (workers_->Claim(available[w].id,
                        {record.job.job_id(), static_cast<int>(index)})) {
      DispatchTaskLocked(record, index, available[w]);
      changed = true;
    }
  }
  return changed;
}

void Coordinator::DispatchTaskLocked(JobRecord& record, size_t index,
                                     const WorkerRegistry::Worker& worker) {
  TaskRecord& task = record.tasks[index];
  task.status.set_state(pnn::v1::TASK_STATE_RUNNING);
  task.status.set_worker_id(worker.id);
  task.status.set_worker_address(worker.info.address());
  task.status.set_attempts(task.status.attempts() + 1);
  task.status.set_progress(0);
  task.status.clear_epochs();
  const google::protobuf::Timestamp now = Now();
  *task.status.mutable_start_time() = now;
  task.status.clear_end_time();
  task.loss_reason.clear();
  task.context = std::make_shared<grpc::ClientContext>();
  if (metrics_ != nullptr) metrics_->task_dispatches.Increment();
  if (record.job.state() == pnn::v1::JOB_STATE_QUEUED) {
    record.job.set_state(pnn::v1::JOB_STATE_RUNNING);
    *record.job.mutable_start_time() = now;
  }
  pnn::v1::TrainSegmentRequest request;
  *request.mutable_task() = task.task;
  task.status.set_resumed_from_epoch(0);
  if (task.resume_state.has_value() && !task.task.has_pipeline()) {
    // Continue from the last finished epoch of an earlier attempt.
    *request.mutable_task()->mutable_resume() = *task.resume_state;
    task.status.set_resumed_from_epoch(task.resume_state->epochs_done());
    for (const auto& epoch : task.resume_state->epochs()) {
      *task.status.add_epochs() = epoch;
    }
    task.status.set_progress(
        static_cast<double>(task.resume_state->epochs_done()) /
        std::max(1, task.status.epochs_total()));
  }
  const int64_t thread_id = next_thread_id_++;
  dispatch_threads_.emplace(
      thread_id,
      std::thread(&Coordinator::RunTask, this, record.job.job_id(),
                  static_cast<int>(index), worker.id, worker.info.address(),
                  std::move(request), task.context, thread_id));
  PublishLocked(record,
                absl::StrCat(TaskName(task.status, SegmentCount(record)),
                             " dispatched to ", worker.id, " (",
                             worker.info.address(), ")"));
}

void Coordinator::SayWhyWorkWaitsLocked(const std::vector<JobRecord*>& jobs) {
  const WorkerRegistry::Counts counts = workers_->Count(absl::Now());
  for (JobRecord* record : jobs) {
    const bool queued = std::any_of(
        record->tasks.begin(), record->tasks.end(), [](const TaskRecord& t) {
          return t.status.state() == pnn::v1::TASK_STATE_QUEUED;
        });
    std::string message;
    if (queued) {
      message = WaitMessage(counts.registered, counts.idle,
                            CountPipelineStages(record->tasks));
    } else if (record->job.state() == pnn::v1::JOB_STATE_RUNNING) {
      message = "training";
    } else {
      continue;
    }
    if (record->job.message() != message &&
        record->job.state() != pnn::v1::JOB_STATE_ASSEMBLING) {
      record->job.set_message(message);
      PublishLocked(*record, message);
    }
  }
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

void Coordinator::RunTask(std::string job_id, int task_index,
                          std::string worker_id, std::string address,
                          pnn::v1::TrainSegmentRequest request,
                          std::shared_ptr<grpc::ClientContext> context,
                          int64_t thread_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto job = jobs_.find(job_id);
    if (job != jobs_.end()) {
      const int64_t bytes = static_cast<int64_t>(request.ByteSizeLong());
      auto& status = job->second.tasks[task_index].status;
      status.set_bytes_sent(status.bytes_sent() + bytes);
      if (metrics_ != nullptr) {
        metrics_->network_sent_bytes.Increment(static_cast<double>(bytes));
      }
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

bool Coordinator::KeepCheckpointLocked(JobRecord& record, TaskRecord& task,
                                       const pnn::v1::Checkpoint& checkpoint) {
  const pnn::v1::TaskStatus& status = task.status;
  bool kept = false;
  if (checkpoint.has_state()) {
    // Kept only if it fits the task: a bad state must not break the
    // retry it is meant for.
    const auto& state = checkpoint.state();
    if (state.epochs_done() >= 1 &&
        state.epochs_done() <= status.epochs_total() &&
        state.weights().segment_index() == task.task.segment_index()) {
      task.resume_state = state;
      kept = true;
    }
  }
  if (record.job.spec().evaluations_per_epoch() > 0 && !task.is_baseline &&
      record.job.has_start_time()) {
    CheckpointRecord point;
    point.job_seconds = SecondsBetween(record.job.start_time(), Now());
    point.epoch = checkpoint.epoch();
    point.batches_done = checkpoint.batches_done();
    point.epochs_done = checkpoint.epochs_done();
    point.cpu_seconds = checkpoint.cpu_seconds();
    point.weights = checkpoint.has_state() ? checkpoint.state().weights()
                                           : checkpoint.weights();
    task.checkpoints.push_back(std::move(point));
  }
  return kept;
}

absl::Status Coordinator::CheckAndStoreWeights(
    const std::string& job_id, int task_index, const std::string& worker_id,
    const pnn::v1::SegmentTask& task, const pnn::v1::SegmentWeights& weights) {
  // Weights from a worker are checked before anything uses them.
  auto model = ModelFromWeights(weights, task.activation());
  if (!model.ok() || (*model)->first_layer() != task.first_layer() ||
      (*model)->last_layer() != task.last_layer() ||
      (*model)->widths() !=
          std::vector<int>(task.widths().begin(), task.widths().end())) {
    return absl::DataLossError(absl::StrCat(
        "worker ", worker_id, " returned malformed weights: ",
        model.ok() ? "wrong layers or shapes" : model.status().message()));
  }
  if (store_ == nullptr) return absl::OkStatus();
  absl::Status saved = store_->SaveWeights(job_id, task_index, weights);
  if (saved.ok()) saved = store_->DeleteResumeState(job_id, task_index);
  if (!saved.ok()) {
    // The job goes on, but this segment would train again after a restart.
    std::fprintf(stderr, "pnn-coordinator: %s\n",
                 std::string(saved.message()).c_str());
  }
  return absl::OkStatus();
}

void Coordinator::OnTaskUpdate(const std::string& job_id, int task_index,
                               const pnn::v1::TrainSegmentUpdate& update,
                               int64_t bytes) {
  if (OnTaskUpdateLocked(job_id, task_index, update, bytes) &&
      store_ != nullptr) {
    // Megabytes per epoch: written after the lock is released. Only this
    // task's stream thread writes its state, so writes stay in order.
    if (absl::Status saved = store_->SaveResumeState(
            job_id, task_index, update.checkpoint().state());
        !saved.ok()) {
      std::fprintf(stderr, "pnn-coordinator: %s\n",
                   std::string(saved.message()).c_str());
    }
  }
}

bool Coordinator::OnTaskUpdateLocked(const std::string& job_id,
                                     int task_index,
                                     const pnn::v1::TrainSegmentUpdate& update,
                                     int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  bool keep_state = false;
  if (metrics_ != nullptr) {
    metrics_->network_received_bytes.Increment(static_cast<double>(bytes));
  }
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return false;
  JobRecord& record = it->second;
  TaskRecord& task = record.tasks[task_index];
  auto& status = task.status;
  if (update.has_checkpoint()) {
    status.set_checkpoint_bytes(status.checkpoint_bytes() + bytes);
  } else {
    status.set_bytes_received(status.bytes_received() + bytes);
  }
  if (IsFinal(record.job.state())) return false;
  const std::string name = TaskName(status, SegmentCount(record));
  switch (update.update_case()) {
    case pnn::v1::TrainSegmentUpdate::kStarted:
      PublishLocked(record, absl::StrCat(name, " started on ", status.worker_id(),
                                         " (", update.started().device(), ", ",
                                         update.started().threads(),
                                         " threads)"));
      break;
    case pnn::v1::TrainSegmentUpdate::kProgress: {
      const auto& progress = update.progress();
      const double per_epoch =
          static_cast<double>(std::max<int64_t>(1, progress.batches_per_epoch()));
      status.set_progress(std::min(
          1.0, ((progress.epoch() - 1) + progress.batches_done() / per_epoch) /
                   std::max(1, status.epochs_total())));
      status.set_current_loss(progress.loss());
      PublishLocked(record, "");
      break;
    }
    case pnn::v1::TrainSegmentUpdate::kEpoch: {
      *status.add_epochs() = update.epoch();
      status.set_progress(static_cast<double>(update.epoch().epoch()) /
                          std::max(1, status.epochs_total()));
      status.set_current_loss(update.epoch().train_loss());
      PublishLocked(record,
                    absl::StrFormat("%s epoch %d/%d: loss %.4f, %.0f samples/s",
                                    name, update.epoch().epoch(),
                                    status.epochs_total(),
                                    update.epoch().train_loss(),
                                    update.epoch().samples_per_second()));
      break;
    }
    case pnn::v1::TrainSegmentUpdate::kCheckpoint:
      keep_state = KeepCheckpointLocked(record, task, update.checkpoint());
      break;
    case pnn::v1::TrainSegmentUpdate::kResult:
      *status.mutable_cost() = update.result().cost();
      break;
    default:
      break;
  }
  return keep_state;
}

void Coordinator::OnTaskFinished(const std::string& job_id, int task_index,
                                 const std::string& worker_id,
                                 absl::Status status,
                                 pnn::v1::SegmentWeights weights) {
  std::lock_guard<std::mutex> lock(mu_);
  workers_->Release(worker_id, {job_id, task_index});
  scheduler_wake_.notify_all();
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  JobRecord& record = it->second;
  TaskRecord& task = record.tasks[task_index];
  task.context.reset();
  *task.status.mutable_end_time() = Now();
  if (shutting_down_ && !status.ok()) {
    // This process cancelled the call to stop: no fault of the task. The
    // stored record keeps the task RUNNING, so the next start re-queues it
    // without counting the attempt, as after a crash (RestoreJobs).
    return;
  }
  if (IsFinal(record.job.state()) || record.cancel_requested) {
    if (!IsFinal(task.status.state())) {
      task.status.set_state(status.ok() ? pnn::v1::TASK_STATE_SUCCEEDED
                                        : pnn::v1::TASK_STATE_CANCELLED);
    }
    PersistLocked(record).IgnoreError();  // logged
    PublishLocked(record, "");
    return;
  }
  if (task.task.has_pipeline() &&
      task.status.state() == pnn::v1::TASK_STATE_CANCELLED) {
    // A stage stopped for a restart of its pipeline (OnStageFailedLocked):
    // however it ended, it trains again with the others, and the attempt
    // is not its failure.
    task.status.set_state(pnn::v1::TASK_STATE_QUEUED);
    task.status.set_progress(0);
    PublishLocked(record, "");
    return;
  }
  if (status.ok()) {
    task.weights = std::move(weights);
    workers_->MarkReachable(worker_id);
    OnTaskSucceededLocked(record, task_index, worker_id);
  } else if (task.task.has_pipeline()) {
    OnStageFailedLocked(record, task_index, worker_id, status);
  } else {
    OnTaskFailedLocked(record, task_index, worker_id, status);
  }
}

void Coordinator::OnTaskSucceededLocked(JobRecord& record, int task_index,
                                        const std::string& worker_id) {
  TaskRecord& task = record.tasks[task_index];
  const std::string& job_id = record.job.job_id();
  task.status.set_state(pnn::v1::TASK_STATE_SUCCEEDED);
  task.status.set_progress(1.0);
  task.resume_state.reset();
  PublishLocked(record, absl::StrCat(TaskName(task.status, SegmentCount(record)),
                                     " finished on ", worker_id));
  if (task.is_baseline) {
    assembly_queue_.emplace_back(job_id, AssemblyWork::kEvaluateBaseline);
    assembly_wake_.notify_all();
    return;
  }
  // Previous-outputs mode: the next segment can start now.
  std::vector<pnn::v1::SegmentWeights> finished;
  bool all_done = true;
  for (TaskRecord& other : record.tasks) {
    if (other.is_baseline) continue;
    if (other.status.state() == pnn::v1::TASK_STATE_SUCCEEDED) {
      if (all_done) finished.push_back(other.weights);
      continue;
    }
    all_done = false;
    if (other.status.state() == pnn::v1::TASK_STATE_WAITING &&
        static_cast<int>(finished.size()) == other.task.segment_index() &&
        AttachUpstream(finished, &other.task).ok()) {
      other.status.set_state(pnn::v1::TASK_STATE_QUEUED);
    }
  }
  if (!all_done) return;
  if (record.job.has_start_time()) {
    record.job.set_training_seconds(
        SecondsBetween(record.job.start_time(), Now()));
  }
  record.job.set_state(pnn::v1::JOB_STATE_ASSEMBLING);
  record.job.set_message("joining the segments and testing");
  PublishLocked(record, "all segments trained; assembling");
  assembly_queue_.emplace_back(job_id, AssemblyWork::kAssemble);
  assembly_wake_.notify_all();
}

namespace {

// What a failed attempt says, for people: the loss reason when the
// coordinator ended it, else the worker's status.
std::string AttemptError(const std::string& loss_reason,
                         const absl::Status& status) {
  if (!loss_reason.empty()) return loss_reason;
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ",
                      status.message());
}

}  // namespace

Coordinator::FailedAttempt Coordinator::JudgeAttemptLocked(
    JobRecord& record, int task_index, const std::string& worker_id,
    const absl::Status& status) {
  TaskRecord& task = record.tasks[task_index];
  AttemptFacts facts;
  facts.code = status.code();
  facts.worker_lost = !task.loss_reason.empty();
  facts.pipeline_stage = task.task.has_pipeline();
  facts.attempts = task.status.attempts();
  facts.max_attempts = options_.max_attempts;
  const RetryDecision decision = DecideRetry(facts);
  if (decision.back_off_worker) {
    // It must not get the retry at once; it stays registered (no lost
    // worker), and a task that runs there later resets the back-off.
    workers_->MarkUnreachable(worker_id, absl::Now());
    std::fprintf(stderr,
                 "pnn-coordinator: worker %s unreachable or stopping (%s); "
                 "backing off\n",
                 worker_id.c_str(), std::string(status.message()).c_str());
  }
  task.status.set_error(AttemptError(task.loss_reason, status));
  return {TaskName(task.status, SegmentCount(record)),
          absl::StrCat(worker_id, " (", task.status.worker_address(), ")"),
          decision};
}

void Coordinator::OnStageFailedLocked(JobRecord& record, int task_index,
                                      const std::string& worker_id,
                                      const absl::Status& status) {
  // Model-parallel: the stages depend on each other every batch, so one
  // stage's failure ends the pipeline's run. While a retry can help and
  // attempts remain, every stage restarts from scratch together (a new
  // session, on whichever workers are idle); the others are marked
  // CANCELLED until their streams close, which does not count against
  // them (OnTaskFinished).
  TaskRecord& task = record.tasks[task_index];
  const FailedAttempt attempt =
      JudgeAttemptLocked(record, task_index, worker_id, status);
  const std::string& name = attempt.name;
  const std::string& where = attempt.where;
  const RetryDecision& decision = attempt.decision;
  const std::string& error = task.status.error();
  if (decision.action == RetryDecision::Action::kFail) {
    task.status.set_state(pnn::v1::TASK_STATE_FAILED);
    FailJobLocked(record,
                  absl::StrCat(name, " failed on ", where, ": ", error,
                               " (model-parallel stages depend on each "
                               "other every batch: the whole pipeline "
                               "stops)"));
    return;
  }
  for (TaskRecord& stage : record.tasks) {
    if (!decision.attempt_counts && stage.task.has_pipeline()) {
      stage.status.set_attempts(std::max(0, stage.status.attempts() - 1));
    }
  }
  if (decision.action == RetryDecision::Action::kAttemptsUsedUp) {
    task.status.set_state(pnn::v1::TASK_STATE_FAILED);
    FailJobLocked(record,
                  absl::StrCat(name, " failed ", task.status.attempts(),
                               " times (each time the whole model-parallel "
                               "pipeline restarted); last error on ",
                               where, ": ", error));
    return;
  }
  task.status.set_state(pnn::v1::TASK_STATE_QUEUED);
  task.status.set_progress(0);
  for (TaskRecord& stage : record.tasks) {
    if (&stage == &task || !stage.task.has_pipeline()) continue;
    stage.status.set_progress(0);
    if (stage.context != nullptr) {
      stage.context->TryCancel();
      stage.status.set_state(pnn::v1::TASK_STATE_CANCELLED);
      *stage.status.mutable_end_time() = Now();
    } else {
      stage.status.set_state(pnn::v1::TASK_STATE_QUEUED);
    }
  }
  if (metrics_ != nullptr) metrics_->task_retries.Increment();
  PublishLocked(record,
                absl::StrCat(name, " failed on ", where, ": ", error,
                             "; restarting every model-parallel stage"));
}

void Coordinator::OnTaskFailedLocked(JobRecord& record, int task_index,
                                     const std::string& worker_id,
                                     const absl::Status& status) {
  TaskRecord& task = record.tasks[task_index];
  const FailedAttempt attempt =
      JudgeAttemptLocked(record, task_index, worker_id, status);
  const std::string& name = attempt.name;
  const std::string& where = attempt.where;
  const RetryDecision& decision = attempt.decision;
  const std::string& error = task.status.error();
  if (!decision.attempt_counts) {
    task.status.set_attempts(task.status.attempts() - 1);
  }
  switch (decision.action) {
    case RetryDecision::Action::kRetry:
      task.status.set_state(pnn::v1::TASK_STATE_QUEUED);
      task.status.set_progress(0);
      if (metrics_ != nullptr) metrics_->task_retries.Increment();
      PublishLocked(record, absl::StrCat(name, " will be retried: ", error));
      return;
    case RetryDecision::Action::kAttemptsUsedUp:
      task.status.set_state(pnn::v1::TASK_STATE_FAILED);
      FailJobLocked(record,
                    absl::StrCat(name, " failed ", task.status.attempts(),
                                 " times; last error on ", where, ": ", error));
      return;
    case RetryDecision::Action::kFail:
      task.status.set_state(pnn::v1::TASK_STATE_FAILED);
      FailJobLocked(record,
                    absl::StrCat(name, " failed on ", where, ": ", error));
      return;
  }
}

// ---------------------------------------------------------------------------
// Assembly and the test pass

void Coordinator::AssemblyLoop() {
  for (;;) {
    std::pair<std::string, AssemblyWork> work;
    {
      std::unique_lock<std::mutex> lock(mu_);
      assembly_wake_.wait(lock, [this] {
        return shutting_down_ || !assembly_queue_.empty();
      });
      if (shutting_down_) return;
      work = assembly_queue_.front();
      assembly_queue_.pop_front();
    }
    if (work.second == AssemblyWork::kAssemble) {
      Assemble(work.first);
    } else {
      EvaluateBaseline(work.first);
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
  auto it = jobs_.find(job_id);
  return shutting_down_ || it == jobs_.end() || it->second.cancel_requested;
}

void Coordinator::Assemble(const std::string& job_id) {
  AssemblyInput input;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end() || IsFinal(it->second.job.state())) return;
    input.job_id = job_id;
    input.spec = it->second.job.spec();
    for (const TaskRecord& task : it->second.tasks) {
      if (task.is_baseline) continue;
      input.weights.push_back(task.weights);
      input.checkpoints.push_back(task.checkpoints);
      input.pipeline = task.task.has_pipeline();
    }
  }
  absl::StatusOr<AssemblyResult> result = assembler_->Assemble(
      input, [this, &job_id] { return ShouldStopAssembly(job_id); });
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || IsFinal(it->second.job.state())) {
    // Cancelled (or failed) while it was assembled: no model to serve.
    assembler_->RemoveModel(job_id);
    return;
  }
  JobRecord& record = it->second;
  if (!result.ok()) {
    FailJobLocked(record,
                  absl::StrCat("assembly failed: ", result.status().message()));
    return;
  }
  *record.job.mutable_test() = result->final_test;
  record.job.set_joined_test_accuracy(result->joined_test.accuracy());
  record.job.set_recovery_seconds(result->recovery_seconds);
  record.job.set_model_bytes(result->model_bytes);
  record.job.clear_evaluations();
  for (auto& point : result->curve) {
    *record.job.add_evaluations() = std::move(point);
  }
  for (TaskRecord& task : record.tasks) {
    // The model file holds what the segments' weights were for; they stay
    // in the store, not in memory.
    task.checkpoints = {};
    if (!task.is_baseline) task.weights = {};
    // Previous-outputs mode: the earlier segments' weights in the task.
    if (task.task.has_upstream()) task.task.mutable_upstream()->Clear();
  }
  record.assembled = true;
  PublishLocked(record,
                absl::StrFormat("joined network: test accuracy %.2f%%",
                                100 * result->final_test.accuracy()));
  MaybeSucceedLocked(record);
}

void Coordinator::EvaluateBaseline(const std::string& job_id) {
  pnn::v1::JobSpec spec;
  pnn::v1::SegmentWeights weights;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end() || IsFinal(it->second.job.state())) return;
    spec = it->second.job.spec();
    weights = it->second.tasks.back().weights;
  }
  absl::StatusOr<pnn::v1::TestResult> test =
      assembler_->TestBaseline(spec, weights);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || IsFinal(it->second.job.state())) return;
  JobRecord& record = it->second;
  if (!test.ok()) {
    FailJobLocked(record, absl::StrCat("testing the conventional baseline: ",
                                       test.status().message()));
    return;
  }
  *record.job.mutable_baseline_test() = *test;
  record.baseline_evaluated = true;
  record.tasks.back().weights = {};  // in the store; not served
  PublishLocked(record,
                absl::StrFormat("conventional baseline: test accuracy %.2f%%",
                                100 * test->accuracy()));
  MaybeSucceedLocked(record);
}

// ---------------------------------------------------------------------------
// State helpers (under mu_)

void Coordinator::FailJobLocked(JobRecord& record, const std::string& reason) {
  CancelRunningTasksLocked(record);
  record.job.set_state(pnn::v1::JOB_STATE_FAILED);
  record.job.set_message(reason);
  *record.job.mutable_end_time() = Now();
  RecordFinalLocked(record);
  std::fprintf(stderr, "pnn-coordinator: job %s failed: %s\n",
               record.job.job_id().c_str(), reason.c_str());
  PublishLocked(record, absl::StrCat("job failed: ", reason));
}

void Coordinator::CancelRunningTasksLocked(JobRecord& record) {
  // Tasks end now in the job's record; their workers are released when
  // the cancelled streams close (OnTaskFinished).
  for (TaskRecord& task : record.tasks) {
    if (task.context != nullptr) task.context->TryCancel();
    if (!IsFinal(task.status.state())) {
      if (task.status.state() == pnn::v1::TASK_STATE_RUNNING) {
        *task.status.mutable_end_time() = Now();
      }
      task.status.set_state(pnn::v1::TASK_STATE_CANCELLED);
    }
  }
}

void Coordinator::MaybeSucceedLocked(JobRecord& record) {
  if (!record.assembled) return;
  if (record.job.conventional_baseline() && !record.baseline_evaluated) {
    const std::string message = "waiting for the conventional baseline";
    if (record.job.message() != message) {
      record.job.set_message(message);
      PublishLocked(record, message);
    }
    return;
  }
  record.job.set_state(pnn::v1::JOB_STATE_SUCCEEDED);
  record.job.set_message("");
  *record.job.mutable_end_time() = Now();
  RecordFinalLocked(record);
  if (metrics_ != nullptr) {
    metrics_->last_test_accuracy.Set(record.job.test().accuracy());
  }
  PublishLocked(record, "job succeeded");
}

void Coordinator::RecordFinalLocked(const JobRecord& record) {
  finished_to_clean_.push_back(record.job.job_id());
  if (metrics_ == nullptr) return;
  const pnn::v1::JobState state = record.job.state();
  auto finished = metrics_->jobs_finished.find(state);
  if (finished != metrics_->jobs_finished.end()) finished->second->Increment();
  auto duration = metrics_->job_duration.find(state);
  if (duration != metrics_->job_duration.end()) {
    const auto& created = record.job.create_time();
    const auto& ended = record.job.end_time();
    duration->second->Observe(
        static_cast<double>(ended.seconds() - created.seconds()) +
        (ended.nanos() - created.nanos()) / 1e9);
  }
}

void Coordinator::UpdateGaugesLocked(absl::Time now) {
  if (metrics_ == nullptr) return;
  std::map<pnn::v1::JobState, int> jobs_by_state;
  int queued = 0;
  int running = 0;
  for (const auto& [id, record] : jobs_) {
    ++jobs_by_state[record.job.state()];
    for (const TaskRecord& task : record.tasks) {
      queued += task.status.state() == pnn::v1::TASK_STATE_QUEUED;
      running += task.status.state() == pnn::v1::TASK_STATE_RUNNING;
    }
  }
  for (auto& [state, gauge] : metrics_->jobs) gauge->Set(jobs_by_state[state]);
  metrics_->queued_tasks.Set(queued);
  metrics_->running_tasks.Set(running);
  const WorkerRegistry::Counts workers = workers_->Count(now);
  metrics_->workers_registered.Set(workers.registered);
  metrics_->workers_healthy.Set(workers.healthy);
  metrics_->workers_busy.Set(workers.busy);
}

void Coordinator::RefreshJobLocked(JobRecord& record) {
  int64_t sent = 0;
  int64_t received = 0;
  int64_t checkpoints = 0;
  int64_t peer = 0;
  for (const TaskRecord& task : record.tasks) {
    sent += task.status.bytes_sent();
    received += task.status.bytes_received();
    checkpoints += task.status.checkpoint_bytes();
    // Counted by the sending stage only, so each byte once.
    peer += task.status.cost().peer_bytes_sent() +
            task.status.cost().peer_bytes_received();
  }
  record.job.set_bytes_sent(sent);
  record.job.set_bytes_received(received);
  record.job.set_checkpoint_bytes(checkpoints);
  record.job.set_peer_bytes(peer);
}

absl::Status Coordinator::PersistLocked(const JobRecord& record) {
  if (store_ == nullptr) return absl::OkStatus();
  pnn::v1::StoredJob stored;
  stored.set_sequence(record.sequence);
  *stored.mutable_job() = SnapshotLocked(record);
  for (const TaskRecord& task : record.tasks) *stored.add_tasks() = task.task;
  stored.set_assembled(record.assembled);
  stored.set_baseline_evaluated(record.baseline_evaluated);
  stored.set_cancel_requested(record.cancel_requested);
  absl::Status status = store_->SaveJob(stored);
  if (!status.ok()) {
    std::fprintf(stderr, "pnn-coordinator: %s\n",
                 std::string(status.message()).c_str());
  }
  return status;
}

void Coordinator::PublishLocked(JobRecord& record, const std::string& message) {
  RefreshJobLocked(record);
  // Every event with a message is a change worth keeping; bare progress
  // updates are not written.
  if (!message.empty()) PersistLocked(record).IgnoreError();  // logged
  if (record.watchers.empty()) return;
  pnn::v1::JobEvent event;
  *event.mutable_time() = Now();
  event.set_message(message);
  *event.mutable_job() = SnapshotLocked(record);
  event.set_sequence(next_event_sequence_++);
  // Watchers' callbacks only queue the event and start a write; they never
  // call back into the coordinator, so pushing under mu_ cannot deadlock.
  for (const auto& watcher : record.watchers) watcher->Push(event);
}

Job Coordinator::SnapshotLocked(const JobRecord& record) const {
  Job job = record.job;
  job.clear_segments();
  for (const TaskRecord& task : record.tasks) {
    if (task.is_baseline) {
      *job.mutable_baseline() = task.status;
    } else {
      *job.add_segments() = task.status;
    }
  }
  return job;
}

}  // namespace pnn
