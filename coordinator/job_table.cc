#include "coordinator/job_table.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/job_spec.h"
#include "common/partition.h"
#include "common/pipeline_schedule.h"
#include "common/status_macros.h"
#include "coordinator/proto_time.h"

namespace pnn {
namespace {

using pnn::v1::Job;
using pnn::v1::JobState;
using pnn::v1::TaskState;

// A model-parallel job's pipeline figures, once every stage has succeeded
// (each stage's cost arrives with its result); cleared until then.
void SummarizePipeline(const std::vector<TaskRecord>& tasks, Job* job) {
  job->clear_pipeline();
  if (job->spec().parallelism() != pnn::v1::PARALLELISM_MODEL_PARALLEL) {
    return;
  }
  pnn::v1::PipelineReport report;
  double least_idle = 1;
  int stages = 0;
  for (const TaskRecord& task : tasks) {
    if (!task.is_stage()) continue;
    if (task.status.state() != pnn::v1::TASK_STATE_SUCCEEDED) return;
    const double idle = task.status.cost().idle_fraction();
    report.add_stage_idle_fractions(idle);
    least_idle = std::min(least_idle, idle);
    report.set_activation_bytes(report.activation_bytes() +
                                task.status.cost().activation_bytes());
    ++stages;
  }
  if (stages == 0) return;
  const int micro_batches = std::max(1, job->spec().pipeline().micro_batches());
  report.set_micro_batches(micro_batches);
  report.set_schedule(job->spec().pipeline().schedule());
  report.set_bubble_formula(BubbleFormula(stages, micro_batches));
  report.set_bubble_fraction(least_idle);
  *job->mutable_pipeline() = std::move(report);
}

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;

std::string NewJobId() {
  static std::mt19937_64 generator{std::random_device{}()};
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("job-%012x", generator() & 0xffffffffffffULL);
}

TaskRecord PlannedTask(pnn::v1::SegmentTask task) {
  TaskRecord record;
  record.status.set_segment_index(task.segment_index());
  record.status.set_first_layer(task.first_layer());
  record.status.set_last_layer(task.last_layer());
  record.status.set_epochs_total(task.training().epochs());
  record.status.set_state(NeedsUpstream(task) ? pnn::v1::TASK_STATE_WAITING
                                              : pnn::v1::TASK_STATE_QUEUED);
  record.task = std::move(task);
  return record;
}

// A partitioned job's recovery epochs: the segments as the stages of one
// pipeline (micro-batched, GPipe) that trains the joined network end to end
// on the workers, WAITING until every segment has trained.
absl::StatusOr<std::vector<TaskRecord>> PlannedRecovery(
    const pnn::v1::JobSpec& spec, const ImageShape& image, int num_classes,
    const std::string& job_id) {
  pnn::v1::JobSpec pipeline = spec;
  pipeline.set_parallelism(pnn::v1::PARALLELISM_MODEL_PARALLEL);
  *pipeline.mutable_training() = RecoveryTrainingConfig(spec);
  pipeline.clear_recovery();
  pipeline.clear_segment_training();
  pipeline.set_evaluations_per_epoch(0);
  const int stages = spec.model().cut_after_layers_size() + 1;
  pipeline.mutable_pipeline()->set_micro_batches(
      std::min(4 * stages, pipeline.training().batch_size()));
  pipeline.mutable_pipeline()->set_schedule(pnn::v1::PIPELINE_SCHEDULE_GPIPE);
  PNN_ASSIGN_OR_RETURN(std::vector<pnn::v1::SegmentTask> tasks,
                       PlanSegmentTasks(pipeline, image, num_classes, job_id));
  std::vector<TaskRecord> records;
  for (pnn::v1::SegmentTask& task : tasks) {
    task.set_recovery(true);
    TaskRecord record = PlannedTask(std::move(task));
    record.status.set_recovery(true);
    record.status.set_state(pnn::v1::TASK_STATE_WAITING);
    records.push_back(std::move(record));
  }
  return records;
}

// The conventional baseline: the whole network as one task on one worker.
absl::StatusOr<TaskRecord> PlannedBaseline(const pnn::v1::JobSpec& spec,
                                           const ImageShape& image,
                                           int num_classes,
                                           const std::string& job_id) {
  pnn::v1::JobSpec whole = spec;
  whole.set_parallelism(pnn::v1::PARALLELISM_CONVENTIONAL);
  whole.set_evaluations_per_epoch(0);
  PNN_ASSIGN_OR_RETURN(
      std::vector<pnn::v1::SegmentTask> tasks,
      PlanSegmentTasks(whole, image, num_classes, job_id));
  TaskRecord baseline = PlannedTask(std::move(tasks.front()));
  baseline.status.set_segment_index(kBaselineIndex);
  baseline.status.set_first_layer(1);
  baseline.status.set_state(pnn::v1::TASK_STATE_QUEUED);
  return baseline;
}

// A job whose stored rows cannot be read: listed as FAILED, kept in the
// store as it is (for whoever investigates).
JobRecord CorruptRecord(const JobStore::Loaded& stored) {
  JobRecord record;
  record.sequence = stored.job.sequence();
  record.job = stored.job.job();
  record.job.set_state(pnn::v1::JOB_STATE_FAILED);
  record.job.set_message(
      absl::StrCat("record corrupt: ", stored.corrupt,
                   "; the job cannot be resumed, submit it again"));
  return record;
}

// A task stored before tasks carried their layers (it had the widths of a
// fully connected segment, field 6): its layers again, from the job's
// spec and input width, so that a job in flight across an upgrade still
// runs. Tasks that have their layers are left alone.
void AddLayersOfAnOlderTask(const pnn::v1::Job& job,
                            pnn::v1::SegmentTask* task) {
  if (task->layers_size() > 0 || !job.spec().model().layers().empty() ||
      job.input_width() < 1) {
    return;
  }
  const auto network = NetworkArchitecture(
      job.spec(), ImageShape{1, 1, job.input_width()}, job.num_classes());
  if (!network.ok()) return;
  const auto segment =
      SliceNetwork(*network, task->first_layer(), task->last_layer());
  if (!segment.ok()) return;
  SetTaskArchitecture(*segment, task);
  if (task->input_case() == pnn::v1::SegmentTask::kUpstream ||
      NeedsUpstream(*task)) {
    auto* upstream = task->mutable_upstream();
    upstream->mutable_layers()->Assign(
        network->layers.begin(),
        network->layers.begin() + (task->first_layer() - 1));
    upstream->mutable_input_shape()->Assign(network->input_shape.begin(),
                                            network->input_shape.end());
  }
}

JobRecord RestoredRecord(const JobStore::Loaded& stored) {
  JobRecord record;
  record.sequence = stored.job.sequence();
  record.job = stored.job.job();
  record.assembled = stored.job.assembled();
  record.baseline_evaluated = stored.job.baseline_evaluated();
  record.cancel_requested = stored.job.cancel_requested();
  const int segments = record.job.segments_size();
  const int recovery = record.job.recovery_size();
  for (int i = 0; i < stored.job.tasks_size(); ++i) {
    TaskRecord task;
    task.task = stored.job.tasks(i);
    AddLayersOfAnOlderTask(record.job, &task.task);
    task.status = i < segments ? record.job.segments(i)
                  : i < segments + recovery
                      ? record.job.recovery(i - segments)
                      : record.job.baseline();
    if (auto it = stored.weights.find(i); it != stored.weights.end()) {
      task.weights = it->second;
    }
    if (auto it = stored.resume_states.find(i);
        it != stored.resume_states.end()) {
      task.resume_state = it->second;
    }
    record.tasks.push_back(std::move(task));
  }
  record.job.clear_segments();
  record.job.clear_recovery();
  record.job.clear_baseline();
  record.log.assign(stored.job.log().begin(), stored.job.log().end());
  record.dropped_log_entries = stored.job.dropped_log_entries();
  return record;
}

}  // namespace

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

bool JobRecord::streams_open() const {
  return std::any_of(tasks.begin(), tasks.end(), [](const TaskRecord& task) {
    return task.stream != nullptr;
  });
}

const std::string& JobDevice(const JobRecord& record) {
  return record.tasks.front().task.device();
}

int CountPipelineStages(const JobRecord& record) {
  return static_cast<int>(std::count_if(
      record.tasks.begin(), record.tasks.end(),
      [](const TaskRecord& task) { return task.is_stage(); }));
}

// ---------------------------------------------------------------------------
// Records in and out

absl::StatusOr<JobRecord> JobTable::Plan(
    const pnn::v1::SubmitJobRequest& request, const pnn::v1::JobSpec& spec,
    const ImageShape& image, int num_classes) {
  const std::string job_id = NewJobId();
  PNN_ASSIGN_OR_RETURN(std::vector<pnn::v1::SegmentTask> tasks,
                       PlanSegmentTasks(spec, image, num_classes, job_id));
  JobRecord record;
  Job& job = record.job;
  job.set_job_id(job_id);
  *job.mutable_spec() = spec;
  job.set_state(pnn::v1::JOB_STATE_QUEUED);
  *job.mutable_create_time() = ProtoNow();
  job.set_conventional_baseline(request.conventional_baseline());
  job.set_input_width(static_cast<int32_t>(image.size()));
  for (int d : {image.channels, image.rows, image.cols}) job.add_image_shape(d);
  job.set_num_classes(num_classes);
  for (auto& task : tasks) record.tasks.push_back(PlannedTask(std::move(task)));
  if (spec.parallelism() == pnn::v1::PARALLELISM_PARTITIONED &&
      spec.recovery().epochs() > 0) {
    PNN_ASSIGN_OR_RETURN(std::vector<TaskRecord> recovery,
                         PlannedRecovery(spec, image, num_classes, job_id));
    for (TaskRecord& stage : recovery) record.tasks.push_back(std::move(stage));
  }
  if (request.conventional_baseline()) {
    PNN_ASSIGN_OR_RETURN(
        TaskRecord baseline,
        PlannedBaseline(spec, image, num_classes, job_id));
    record.tasks.push_back(std::move(baseline));
  }
  Refresh(record);
  return record;
}

JobTable::Restored JobTable::Restore(std::vector<JobStore::Loaded> loaded) {
  Restored restored;
  for (JobStore::Loaded& stored : loaded) {
    const bool corrupt = !stored.corrupt.empty();
    JobRecord record = corrupt ? CorruptRecord(stored) : RestoredRecord(stored);
    if (corrupt) {
      ++restored.corrupt;
      std::fprintf(stderr, "pnn-coordinator: job %s: %s\n",
                   record.id().c_str(), stored.corrupt.c_str());
    } else if (!IsFinal(record.job.state())) {
      ++restored.resumed;
      for (DueWork& due : RequeueAfterRestart(record)) {
        restored.due.push_back(std::move(due));
      }
    } else {
      restored.finished.push_back(record.id());
    }
    next_sequence_ = std::max(next_sequence_, record.sequence + 1);
    jobs_.emplace(record.id(), std::move(record));
  }
  return restored;
}

std::vector<DueWork> JobTable::RequeueAfterRestart(JobRecord& record) {
  bool segments_done = true;
  bool recovery_done = true;
  for (TaskRecord& task : record.tasks) {
    const TaskState state = task.status.state();
    const bool done = state == pnn::v1::TASK_STATE_SUCCEEDED &&
                      task.weights.tensors_size() > 0;
    if (!done && (state == pnn::v1::TASK_STATE_RUNNING ||
                  state == pnn::v1::TASK_STATE_SUCCEEDED)) {
      // Its stream died with the old process: train it again. The crash
      // was not the task's fault, so the attempt does not count.
      if (state == pnn::v1::TASK_STATE_RUNNING) {
        task.status.set_attempts(std::max(0, task.status.attempts() - 1));
      }
      task.status.set_state(pnn::v1::TASK_STATE_QUEUED);
      task.status.set_progress(0);
      task.status.set_error("the coordinator restarted while it ran");
    }
    if (task.is_segment() && !done) segments_done = false;
    if (task.is_recovery() && !done) recovery_done = false;
  }
  // Recovery stages run once every segment is done, from their weights.
  for (TaskRecord& task : record.tasks) {
    if (!task.is_recovery() || recovery_done) continue;
    task.status.set_state(segments_done ? pnn::v1::TASK_STATE_QUEUED
                                        : pnn::v1::TASK_STATE_WAITING);
  }
  std::vector<DueWork> due;
  if (segments_done && recovery_done && !record.assembled) {
    record.job.set_state(pnn::v1::JOB_STATE_ASSEMBLING);
    due.push_back({record.id(), AssemblyWork::kAssemble});
  }
  const TaskRecord& last = record.tasks.back();
  if (last.is_baseline() &&
      last.status.state() == pnn::v1::TASK_STATE_SUCCEEDED &&
      !record.baseline_evaluated) {
    due.push_back({record.id(), AssemblyWork::kEvaluateBaseline});
  }
  record.job.set_message("resumed after a coordinator restart");
  return due;
}

JobRecord& JobTable::Insert(JobRecord record) {
  const std::string job_id = record.id();
  return jobs_.insert_or_assign(job_id, std::move(record)).first->second;
}

void JobTable::Erase(const std::string& job_id) { jobs_.erase(job_id); }

JobRecord* JobTable::Find(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : &it->second;
}

TaskRecord* JobTable::FindTask(const std::string& job_id, int task_index) {
  JobRecord* record = Find(job_id);
  if (record == nullptr || task_index < 0 ||
      task_index >= static_cast<int>(record->tasks.size())) {
    return nullptr;
  }
  return &record->tasks[task_index];
}

int JobTable::CountUnfinished() const {
  return static_cast<int>(
      std::count_if(jobs_.begin(), jobs_.end(), [](const auto& entry) {
        return !IsFinal(entry.second.job.state());
      }));
}

std::vector<JobRecord*> JobTable::Unfinished() {
  std::vector<JobRecord*> order;
  for (auto& [id, record] : jobs_) {
    if (!IsFinal(record.job.state())) order.push_back(&record);
  }
  std::sort(order.begin(), order.end(), [](JobRecord* a, JobRecord* b) {
    return a->sequence < b->sequence;
  });
  return order;
}

std::vector<std::string> JobTable::ExpireFinished(size_t keep) {
  std::vector<std::pair<int64_t, std::string>> finished;
  for (const auto& [id, record] : jobs_) {
    if (IsFinal(record.job.state()) && !record.streams_open()) {
      finished.emplace_back(record.sequence, id);
    }
  }
  std::sort(finished.begin(), finished.end());
  std::vector<std::string> expired;
  for (size_t i = 0; i + keep < finished.size(); ++i) {
    expired.push_back(finished[i].second);
    jobs_.erase(finished[i].second);
  }
  return expired;
}

absl::StatusOr<pnn::v1::ListJobsResponse> JobTable::List(
    const pnn::v1::ListJobsRequest& request) const {
  if (request.page_size() < 0 || request.page_size() > kMaxPageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("page_size: must be between 0 and ", kMaxPageSize,
                     ", got ", request.page_size()));
  }
  int64_t before = INT64_MAX;
  if (!request.page_token().empty() &&
      !absl::SimpleAtoi(request.page_token(), &before)) {
    return absl::InvalidArgumentError(
        "page_token: not a token returned by ListJobs");
  }
  const size_t page_size =
      request.page_size() == 0 ? kDefaultPageSize : request.page_size();
  const auto& states = request.states();
  std::vector<const JobRecord*> matching;
  for (const auto& [id, record] : jobs_) {
    if (record.sequence >= before) continue;
    if (!states.empty() && std::find(states.begin(), states.end(),
                                     record.job.state()) == states.end()) {
      continue;
    }
    matching.push_back(&record);
  }
  std::sort(matching.begin(), matching.end(),
            [](const JobRecord* a, const JobRecord* b) {
              return a->sequence > b->sequence;
            });
  pnn::v1::ListJobsResponse response;
  for (size_t i = 0; i < matching.size() && i < page_size; ++i) {
    *response.add_jobs() = Snapshot(*matching[i]);
  }
  if (matching.size() > page_size) {
    response.set_next_page_token(absl::StrCat(matching[page_size - 1]->sequence));
  }
  return response;
}

JobTable::TaskCounts JobTable::Count() const {
  TaskCounts counts;
  for (const auto& [id, record] : jobs_) {
    ++counts.jobs[record.job.state()];
    for (const TaskRecord& task : record.tasks) {
      counts.queued_tasks += task.status.state() == pnn::v1::TASK_STATE_QUEUED;
      counts.running_tasks +=
          task.status.state() == pnn::v1::TASK_STATE_RUNNING;
    }
  }
  return counts;
}

void JobTable::CancelStreams() {
  for (auto& [id, record] : jobs_) {
    for (TaskRecord& task : record.tasks) {
      if (task.stream != nullptr) task.stream->TryCancel();
    }
  }
}

Job JobTable::Snapshot(const JobRecord& record) {
  Job job = record.job;
  job.clear_segments();
  job.clear_recovery();
  for (const TaskRecord& task : record.tasks) {
    if (task.is_baseline()) {
      *job.mutable_baseline() = task.status;
    } else if (task.is_recovery()) {
      *job.add_recovery() = task.status;
    } else {
      *job.add_segments() = task.status;
    }
  }
  return job;
}

pnn::v1::StoredJob JobTable::ToStored(const JobRecord& record) {
  pnn::v1::StoredJob stored;
  stored.set_sequence(record.sequence);
  *stored.mutable_job() = Snapshot(record);
  for (const TaskRecord& task : record.tasks) *stored.add_tasks() = task.task;
  stored.set_assembled(record.assembled);
  stored.set_baseline_evaluated(record.baseline_evaluated);
  stored.set_cancel_requested(record.cancel_requested);
  for (const pnn::v1::JobLogEntry& entry : record.log) {
    *stored.add_log() = entry;
  }
  stored.set_dropped_log_entries(record.dropped_log_entries);
  return stored;
}

pnn::v1::GetJobLogResponse JobTable::Log(const JobRecord& record) {
  pnn::v1::GetJobLogResponse response;
  for (const pnn::v1::JobLogEntry& entry : record.log) {
    *response.add_entries() = entry;
  }
  response.set_dropped_entries(record.dropped_log_entries);
  return response;
}

std::string JobTable::TaskName(const JobRecord& record, int task_index) {
  const pnn::v1::TaskStatus& status = record.tasks[task_index].status;
  if (status.segment_index() == kBaselineIndex) {
    return "the conventional baseline";
  }
  if (record.tasks[task_index].is_recovery()) {
    return absl::StrFormat("recovery stage %d/%d (layers %d..%d)",
                           status.segment_index() + 1, record.segment_count(),
                           status.first_layer(), status.last_layer());
  }
  return absl::StrFormat("segment %d/%d (layers %d..%d)",
                         status.segment_index() + 1, record.segment_count(),
                         status.first_layer(), status.last_layer());
}

// ---------------------------------------------------------------------------
// Events

void JobTable::Refresh(JobRecord& record) {
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
  SummarizePipeline(record.tasks, &record.job);
}

void JobTable::Publish(JobRecord& record, const std::string& message) {
  Refresh(record);
  if (!message.empty()) {
    pnn::v1::JobLogEntry& entry = record.log.emplace_back();
    *entry.mutable_time() = ProtoNow();
    entry.set_message(message);
    if (record.log.size() > kMaxLogEntries) {
      record.log.pop_front();
      ++record.dropped_log_entries;
    }
  }
  // Every event with a message is a change worth keeping; bare progress
  // updates are not written.
  listener_->OnJobChanged(record, message, !message.empty());
}

void JobTable::SayWhyWorkWaits(
    const std::function<std::string(const std::string&, size_t)>&
        wait_message) {
  for (JobRecord* record : Unfinished()) {
    const auto queued = [](const TaskRecord& t) {
      return t.status.state() == pnn::v1::TASK_STATE_QUEUED;
    };
    std::string message;
    if (std::any_of(record->tasks.begin(), record->tasks.end(), queued)) {
      // A pipeline's stages wait for their gang; segments (of a job that
      // also has recovery stages, still WAITING) for one worker each.
      const bool stage_queued = std::any_of(
          record->tasks.begin(), record->tasks.end(),
          [&](const TaskRecord& t) { return t.is_stage() && queued(t); });
      message = wait_message(JobDevice(*record),
                             stage_queued ? CountPipelineStages(*record) : 0);
    } else if (record->job.state() == pnn::v1::JOB_STATE_RUNNING) {
      message = "training";
    } else {
      continue;
    }
    if (record->job.message() != message &&
        record->job.state() != pnn::v1::JOB_STATE_ASSEMBLING) {
      record->job.set_message(message);
      Publish(*record, message);
    }
  }
}

}  // namespace pnn
