#include "client/format.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/exit_codes.h"

namespace pnn::client {
namespace {

using pnn::v1::Job;
using pnn::v1::JobEvent;
using pnn::v1::TaskStatus;
using pnn::v1::TrainingCost;

constexpr int kBarWidth = 24;

// A text table; columns marked in `right` are right-aligned (numbers).
class Table {
 public:
  explicit Table(std::vector<bool> right) : right_(std::move(right)) {}
  void Row(std::vector<std::string> cells) {
    rows_.push_back(std::move(cells));
  }
  std::string Render(absl::string_view indent) const {
    std::vector<size_t> widths;
    for (const auto& row : rows_) {
      widths.resize(std::max(widths.size(), row.size()), 0);
      for (size_t c = 0; c < row.size(); ++c) {
        widths[c] = std::max(widths[c], row[c].size());
      }
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line(indent);
      for (size_t c = 0; c < row.size(); ++c) {
        const std::string pad(widths[c] - row[c].size(), ' ');
        const bool right = c < right_.size() && right_[c];
        if (c > 0) line += "  ";
        line += right ? pad + row[c] : row[c] + pad;
      }
      // Left-aligned last cells would leave trailing blanks.
      while (!line.empty() && line.back() == ' ') line.pop_back();
      absl::StrAppend(&out, line, "\n");
    }
    return out;
  }

 private:
  std::vector<bool> right_;
  std::vector<std::vector<std::string>> rows_;
};

std::string StripEnumPrefix(const std::string& name, absl::string_view prefix,
                            int value) {
  if (name.empty()) return absl::StrCat("UNKNOWN(", value, ")");
  return std::string(absl::StripPrefix(name, prefix));
}

std::string Seconds(double seconds) {
  return absl::StrFormat("%.1f s", seconds);
}

// A task's progress as shown: a task that succeeded is done even if the
// coordinator never sent a last progress update.
double TaskFraction(const TaskStatus& task) {
  if (task.state() == pnn::v1::TASK_STATE_SUCCEEDED) return 1.0;
  return task.progress();
}

std::string PercentCell(double fraction) {
  if (std::isnan(fraction)) fraction = 0;
  fraction = std::clamp(fraction, 0.0, 1.0);
  return absl::StrFormat("%3.0f%%", 100 * fraction);
}

std::string WorkerName(const TaskStatus& task) {
  if (task.worker_id().empty()) return task.worker_address();
  if (task.worker_address().empty()) return task.worker_id();
  return absl::StrCat(task.worker_id(), " (", task.worker_address(), ")");
}

std::string Layers(const TaskStatus& task) {
  if (task.last_layer() <= 0) return "";
  return absl::StrCat(task.first_layer(), "-", task.last_layer());
}

double LastEpochLoss(const TaskStatus& task) {
  return task.epochs_size() > 0
             ? task.epochs(task.epochs_size() - 1).train_loss()
             : 0.0;
}

double SamplesPerSecond(const TaskStatus& task) {
  if (task.cost().samples_per_second() > 0) {
    return task.cost().samples_per_second();
  }
  return task.epochs_size() > 0
             ? task.epochs(task.epochs_size() - 1).samples_per_second()
             : 0.0;
}

int64_t PeakRssGrowth(const TaskStatus& task) {
  int64_t peak = task.cost().peak_rss_growth_bytes();
  for (const auto& epoch : task.epochs()) {
    peak = std::max(peak, epoch.peak_rss_growth_bytes());
  }
  return peak;
}

// The CUDA allocator's peak (allocated) of a task: the finished cost's, or
// the last epoch's while it trains; "-" off CUDA.
std::string DevicePeak(const TaskStatus& task) {
  int64_t peak = task.cost().device_peak_allocated_bytes();
  for (const auto& epoch : task.epochs()) {
    peak = std::max(peak, epoch.device_peak_allocated_bytes());
  }
  return peak > 0 ? FormatBytes(peak) : "-";
}

int64_t AnalyticTrainingBytes(const TrainingCost& cost) {
  return cost.parameter_bytes() + cost.gradient_bytes() +
         cost.optimizer_state_bytes() + cost.activation_bytes();
}

std::string JobTitle(const Job& job) {
  if (job.spec().name().empty()) return absl::StrCat("job ", job.job_id());
  return absl::StrCat("job ", job.job_id(), " (", job.spec().name(), ")");
}

// The instant start/end columns are relative to: when the job started
// running, else when it was created. Relative times show at a glance which
// segments trained at the same time.
std::optional<absl::Time> JobOrigin(const Job& job) {
  if (job.has_start_time()) return ToTime(job.start_time());
  if (job.has_create_time()) return ToTime(job.create_time());
  return std::nullopt;
}

std::string RelativeTime(const google::protobuf::Timestamp* timestamp,
                         const std::optional<absl::Time>& origin) {
  if (timestamp == nullptr || !origin) return "-";
  return absl::StrFormat("+%.1f s",
                         absl::ToDoubleSeconds(ToTime(*timestamp) - *origin));
}

// A layer list, compactly: "1x28x28 > conv 32k5 > max_pool 2 > flatten >
// linear 10".
std::string LayerList(const Job& job) {
  std::vector<std::string> parts;
  parts.push_back(job.image_shape().empty()
                      ? "in"
                      : absl::StrJoin(job.image_shape(), "x"));
  for (const pnn::v1::LayerSpec& layer : job.spec().model().layers()) {
    if (layer.has_conv2d()) {
      parts.push_back(absl::StrCat("conv ", layer.conv2d().out_channels(), "k",
                                   layer.conv2d().kernel()));
    } else if (layer.has_max_pool() || layer.has_avg_pool()) {
      parts.push_back(absl::StrCat(
          layer.has_max_pool() ? "max_pool " : "avg_pool ",
          layer.has_max_pool() ? layer.max_pool().kernel()
                               : layer.avg_pool().kernel()));
    } else if (layer.has_flatten()) {
      parts.push_back("flatten");
    } else if (layer.has_linear()) {
      const int out = layer.linear().out_features();
      parts.push_back(absl::StrCat(
          "linear ", out > 0 ? absl::StrCat(out)
                             : absl::StrCat(job.num_classes())));
    } else if (layer.has_dropout()) {
      parts.push_back(absl::StrCat("dropout ", layer.dropout().p()));
    }
  }
  return absl::StrJoin(parts, " > ");
}

std::string Network(const Job& job) {
  std::string out;
  if (!job.spec().model().layers().empty()) {
    out = LayerList(job);
  } else {
    std::vector<std::string> widths;
    widths.push_back(job.input_width() > 0 ? absl::StrCat(job.input_width())
                                           : "in");
    for (int width : job.spec().model().hidden_widths()) {
      widths.push_back(absl::StrCat(width));
    }
    widths.push_back(job.num_classes() > 0 ? absl::StrCat(job.num_classes())
                                           : "classes");
    out = absl::StrJoin(widths, "-");
  }
  if (job.spec().model().cut_after_layers_size() > 0) {
    absl::StrAppend(&out, ", cut after layer(s) ",
                    absl::StrJoin(job.spec().model().cut_after_layers(), ","),
                    " -> ", job.spec().model().cut_after_layers_size() + 1,
                    " segments");
  }
  return out;
}

std::string TestDetail(const pnn::v1::TestResult& test) {
  if (test.samples() <= 0) return "";
  return absl::StrFormat("%d samples, loss %.4f", test.samples(), test.loss());
}

std::string FitWidth(std::string line, int width) {
  if (width > 0 && static_cast<int>(line.size()) >= width) {
    line.resize(std::max(width - 1, 0));
  }
  return line;
}

// The result table fits a 100-column terminal.
constexpr int kResultWidth = 100;
constexpr size_t kWorkerCellWidth = 20;

// `text` cut into lines of at most `width` columns at spaces; the first
// line starts with `first`, the others with `next`. A word longer than a
// line is cut.
std::string Wrap(absl::string_view text, int width, absl::string_view first,
                 absl::string_view next) {
  std::string out;
  std::string line(first);
  bool empty = true;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    while (true) {
      const size_t room = static_cast<size_t>(width) - line.size() -
                          (empty ? 0 : 1);
      if (word.size() <= room) {
        absl::StrAppend(&line, empty ? "" : " ", word);
        empty = false;
        break;
      }
      if (!empty) {
        absl::StrAppend(&out, line, "\n");
        line = std::string(next);
        empty = true;
        continue;
      }
      absl::StrAppend(&out, line, word.substr(0, room), "\n");
      word.remove_prefix(room);
      line = std::string(next);
    }
  }
  if (!empty) absl::StrAppend(&out, line, "\n");
  return out;
}

// The worker column of the result table: id and address, else the id
// alone, cut to kWorkerCellWidth.
std::string WorkerCell(const TaskStatus& task) {
  std::string name = WorkerName(task);
  if (name.empty()) return "-";
  if (name.size() > kWorkerCellWidth && !task.worker_id().empty()) {
    name = task.worker_id();
  }
  if (name.size() > kWorkerCellWidth) {
    name = absl::StrCat(name.substr(0, kWorkerCellWidth - 3), "...");
  }
  return name;
}

std::string AccuracyTable(const Job& job) {
  Table accuracy({false, true, false});
  if (job.has_test()) {
    accuracy.Row({"test accuracy (final)", FormatPercent(job.test().accuracy()),
                  TestDetail(job.test())});
    accuracy.Row({"joined, before recovery",
                  FormatPercent(job.joined_test_accuracy()), ""});
  } else {
    accuracy.Row({"test accuracy (final)", "-", "no test pass"});
  }
  if (job.spec().recovery().epochs() > 0) {
    accuracy.Row({"recovery",
                  absl::StrCat(job.spec().recovery().epochs(), " epoch(s)"),
                  Seconds(job.recovery_seconds())});
  }
  if (job.conventional_baseline() || job.has_baseline()) {
    if (job.has_baseline_test()) {
      accuracy.Row({"baseline (conventional)",
                    FormatPercent(job.baseline_test().accuracy()),
                    TestDetail(job.baseline_test())});
    } else {
      accuracy.Row({"baseline (conventional)", "-", "no test pass"});
    }
  }
  return accuracy.Render("  ");
}

// A task's error for the "errors:" block; "" if it has none.
std::string TaskError(const TaskStatus& task) {
  if (task.error().empty()) return "";
  // The coordinator keeps a task's last error after a retry succeeds:
  // worth showing (a flaky worker), but not as the task's failure.
  std::string text;
  if (task.state() == pnn::v1::TASK_STATE_SUCCEEDED) {
    text = absl::StrCat(TaskLabel(task), ": succeeded after ",
                        task.attempts(), " attempts; earlier error: ",
                        task.error());
  } else {
    text = absl::StrCat(
        TaskLabel(task), ": ", task.error(),
        task.attempts() > 1
            ? absl::StrCat(" (after ", task.attempts(), " attempts)")
            : "");
  }
  return Wrap(text, kResultWidth, "  ", "    ");
}

// Two tables with a row per task: where and when it ran, then what it
// cost. One table would be ~135 columns wide.
std::string TaskTables(const Job& job, std::vector<std::string>* errors) {
  const std::optional<absl::Time> origin = JobOrigin(job);
  Table timing({false, false, false, false, true, true, true, true});
  timing.Row({"task", "layers", "state", "worker", "start", "end", "wall",
              "samples/s"});
  Table cost({false, true, true, true, true, true});
  cost.Row(
      {"task", "sent", "received", "train mem", "analytic", "device peak"});
  for (const TaskStatus* task : JobTasks(job)) {
    double wall = task->cost().wall_seconds();
    if (wall <= 0 && task->has_start_time() && task->has_end_time()) {
      wall = absl::ToDoubleSeconds(ToTime(task->end_time()) -
                                   ToTime(task->start_time()));
    }
    const double rate = SamplesPerSecond(*task);
    const int64_t rss = PeakRssGrowth(*task);
    const int64_t analytic = AnalyticTrainingBytes(task->cost());
    timing.Row(
        {TaskLabel(*task), Layers(*task), TaskStateName(task->state()),
         WorkerCell(*task),
         RelativeTime(task->has_start_time() ? &task->start_time() : nullptr,
                      origin),
         RelativeTime(task->has_end_time() ? &task->end_time() : nullptr,
                      origin),
         wall > 0 ? Seconds(wall) : "-",
         rate > 0 ? absl::StrFormat("%.0f", rate) : "-"});
    cost.Row({TaskLabel(*task), FormatBytes(task->bytes_sent()),
              FormatBytes(task->bytes_received()),
              rss > 0 ? FormatBytes(rss) : "-",
              analytic > 0 ? FormatBytes(analytic) : "-", DevicePeak(*task)});
    if (std::string error = TaskError(*task); !error.empty()) {
      errors->push_back(std::move(error));
    }
  }
  return absl::StrCat(timing.Render("  "), "\n", cost.Render("  "));
}

// A model-parallel job's schedule, its measured bubble beside the ideal
// one, and the activations the schedule keeps; empty for other jobs.
std::string PipelineLines(const Job& job) {
  if (!job.has_pipeline()) return "";
  const pnn::v1::PipelineReport& pipeline = job.pipeline();
  std::vector<std::string> idle;
  for (double fraction : pipeline.stage_idle_fractions()) {
    idle.push_back(absl::StrFormat("%.1f%%", 100 * fraction));
  }
  return absl::StrCat(
      "  pipeline: ",
      StripEnumPrefix(pnn::v1::PipelineSchedule_Name(pipeline.schedule()),
                      "PIPELINE_SCHEDULE_", pipeline.schedule()),
      ", ", pipeline.micro_batches(), " micro-batches per batch; bubble ",
      absl::StrFormat("%.1f%%", 100 * pipeline.bubble_fraction()),
      " measured (least idle stage) vs ",
      absl::StrFormat("%.1f%%", 100 * pipeline.bubble_formula()),
      " = (K-1)/(M+K-1)\n  idle per stage: ", absl::StrJoin(idle, ", "),
      "; activations kept: ", FormatBytes(pipeline.activation_bytes()),
      " (all stages)\n");
}

const char* ObjectiveName(pnn::v1::BalanceObjective objective) {
  switch (objective) {
    case pnn::v1::BALANCE_OBJECTIVE_TRAINING_MEMORY:
      return "training memory";
    case pnn::v1::BALANCE_OBJECTIVE_MEASURED_TIME:
      return "measured time";
    default:
      return "FLOPs";
  }
}

// The cuts pnn chose (JobSpec.auto_cut) and its prediction per segment;
// empty when the spec gave the cuts.
std::string CutPlanLines(const Job& job) {
  if (!job.has_cut_plan()) return "";
  const pnn::v1::CutPlan& plan = job.cut_plan();
  const pnn::v1::AutoCutSpec& request = plan.request();
  std::string out = absl::StrCat(
      "  cuts chosen by pnn: after layer(s) ",
      absl::StrJoin(plan.cut_after_layers(), ","), " (",
      request.device_memory_bytes() > 0
          ? absl::StrCat("fewest segments within ",
                         FormatBytes(request.device_memory_bytes()),
                         " per device")
          : absl::StrCat(request.segments(), " segments balancing ",
                         ObjectiveName(request.objective())),
      ")\n");
  if (!plan.profiled_on().empty()) {
    absl::StrAppend(&out, "  layers timed on ", plan.profiled_on(), "\n");
  }
  for (int i = 0; i < plan.segments_size(); ++i) {
    const pnn::v1::CutPlan::Segment& segment = plan.segments(i);
    absl::StrAppend(
        &out, "    segment ", i + 1, " (layers ", segment.first_layer(), "..",
        segment.last_layer(), "): ",
        absl::StrFormat("%.2f", segment.training_flops_per_sample() / 1e6),
        " MFLOPs/sample to train, ",
        FormatBytes(segment.training_memory_bytes()), " predicted memory",
        segment.measured_seconds_per_batch() > 0
            ? absl::StrFormat(", %.2f ms/batch measured",
                              1e3 * segment.measured_seconds_per_batch())
            : "",
        "\n");
  }
  return out;
}

// What the columns of the cost table mean, and the job's totals.
std::string CostFooter(const Job& job) {
  std::string out =
      "\n  train mem: peak RSS growth measured on the worker; analytic: "
      "parameters, gradients,\n  optimizer state and activations at the "
      "batch size; device peak: the CUDA allocator's\n  peak on the "
      "worker's GPU (torch.cuda.max_memory_allocated)\n";
  absl::StrAppend(
      &out, "  bytes on the wire (job total): ", FormatBytes(job.bytes_sent()),
      " sent, ", FormatBytes(job.bytes_received()), " received");
  if (job.peer_bytes() > 0) {
    absl::StrAppend(&out, ", ", FormatBytes(job.peer_bytes()),
                    " between workers");
  }
  absl::StrAppend(&out, "\n");
  if (job.checkpoint_bytes() > 0) {
    absl::StrAppend(&out, "  checkpoints: ", FormatBytes(job.checkpoint_bytes()),
                    "\n");
  }
  if (job.training_seconds() > 0) {
    absl::StrAppend(&out, "  training wall time: ",
                    Seconds(job.training_seconds()), "\n");
  }
  absl::StrAppend(&out, PipelineLines(job), CutPlanLines(job));
  return out;
}

}  // namespace

std::string JobStateName(pnn::v1::JobState state) {
  return StripEnumPrefix(pnn::v1::JobState_Name(state), "JOB_STATE_", state);
}

std::string TaskStateName(pnn::v1::TaskState state) {
  return StripEnumPrefix(pnn::v1::TaskState_Name(state), "TASK_STATE_", state);
}

std::string FormatBytes(int64_t bytes) {
  const double value = static_cast<double>(bytes);
  if (bytes >= (int64_t{1} << 30)) {
    return absl::StrFormat("%.2f GiB", value / (int64_t{1} << 30));
  }
  if (bytes >= (1 << 20)) return absl::StrFormat("%.1f MiB", value / (1 << 20));
  if (bytes >= (1 << 10)) return absl::StrFormat("%.1f KiB", value / 1024);
  return absl::StrCat(bytes, " B");
}

std::string FormatPercent(double fraction) {
  return absl::StrFormat("%.2f%%", 100 * fraction);
}

std::string ProgressBar(double fraction, int width) {
  if (std::isnan(fraction)) fraction = 0;
  fraction = std::clamp(fraction, 0.0, 1.0);
  const int filled = static_cast<int>(std::floor(fraction * width + 1e-9));
  return absl::StrCat("[", std::string(filled, '#'),
                      std::string(width - filled, '.'), "]");
}

std::string TaskLabel(const TaskStatus& task) {
  if (task.segment_index() < 0) return "baseline";
  if (task.recovery()) return absl::StrCat("recovery ", task.segment_index() + 1);
  return absl::StrCat("segment ", task.segment_index() + 1);
}

std::vector<const TaskStatus*> JobTasks(const Job& job) {
  std::vector<const TaskStatus*> tasks;
  for (const auto& segment : job.segments()) tasks.push_back(&segment);
  for (const auto& stage : job.recovery()) tasks.push_back(&stage);
  if (job.conventional_baseline() || job.has_baseline()) {
    tasks.push_back(&job.baseline());
  }
  return tasks;
}

std::string FormatTaskProgress(const TaskStatus& task) {
  std::string line = absl::StrFormat(
      "%-10s %-6s %s %s", TaskLabel(task),
      task.last_layer() > 0 ? absl::StrCat("L", Layers(task)) : "",
      ProgressBar(TaskFraction(task), kBarWidth),
      PercentCell(TaskFraction(task)));
  if (task.epochs_total() > 0) {
    const int done = task.epochs_size();
    const int current = task.state() == pnn::v1::TASK_STATE_RUNNING
                            ? std::min(done + 1, task.epochs_total())
                            : done;
    absl::StrAppend(
        &line, absl::StrFormat("  epoch %d/%d", current, task.epochs_total()));
  }
  const double loss =
      task.current_loss() > 0 ? task.current_loss() : LastEpochLoss(task);
  if (loss > 0) absl::StrAppend(&line, absl::StrFormat("  loss %.4f", loss));
  absl::StrAppend(&line, "  ", TaskStateName(task.state()));
  const std::string worker = WorkerName(task);
  if (!worker.empty()) absl::StrAppend(&line, " on ", worker);
  if (task.attempts() > 1)
    absl::StrAppend(&line, ", attempt ", task.attempts());
  return line;
}

std::vector<std::string> FormatProgressBlock(const JobEvent& event) {
  const Job& job = event.job();
  std::vector<std::string> lines;
  std::string header =
      absl::StrCat(JobTitle(job), ": ", JobStateName(job.state()));
  if (!job.message().empty()) absl::StrAppend(&header, " - ", job.message());
  lines.push_back(std::move(header));
  for (const TaskStatus* task : JobTasks(job)) {
    lines.push_back(absl::StrCat("  ", FormatTaskProgress(*task)));
  }
  if (!event.message().empty() && event.message() != job.message()) {
    lines.push_back(absl::StrCat("  last event: ", event.message()));
  }
  return lines;
}

std::string FormatEventLine(const JobEvent& event,
                            const FormatOptions& options) {
  const Job& job = event.job();
  std::string line;
  if (event.has_time()) {
    absl::StrAppend(
        &line,
        absl::FormatTime("%H:%M:%S", ToTime(event.time()), options.time_zone),
        " ");
  }
  absl::StrAppend(&line, JobStateName(job.state()));
  std::vector<std::string> tasks;
  for (const TaskStatus* task : JobTasks(job)) {
    tasks.push_back(
        absl::StrFormat("%s %.0f%%", TaskLabel(*task),
                        100 * std::clamp(TaskFraction(*task), 0.0, 1.0)));
  }
  if (!tasks.empty()) absl::StrAppend(&line, " ", absl::StrJoin(tasks, ", "));
  const std::string& message =
      event.message().empty() ? job.message() : event.message();
  if (!message.empty()) absl::StrAppend(&line, ": ", message);
  return line;
}

std::string FormatJobHeader(const Job& job, const FormatOptions& options) {
  Table table({false, false});
  table.Row({"job", job.job_id()});
  if (!job.spec().name().empty()) table.Row({"name", job.spec().name()});
  std::string state = JobStateName(job.state());
  if (!job.message().empty()) absl::StrAppend(&state, ": ", job.message());
  table.Row({"state", state});
  auto time_row = [&](const char* label,
                      const google::protobuf::Timestamp& time, bool has) {
    if (has) {
      table.Row({label, absl::FormatTime("%Y-%m-%d %H:%M:%S %Z", ToTime(time),
                                         options.time_zone)});
    }
  };
  time_row("created", job.create_time(), job.has_create_time());
  time_row("started", job.start_time(), job.has_start_time());
  time_row("ended", job.end_time(), job.has_end_time());
  table.Row({"network", Network(job)});
  const auto& training = job.spec().training();
  if (training.epochs() > 0) {
    std::string budget = absl::StrFormat(
        "%d epochs per segment, batch %d, learning rate %g", training.epochs(),
        training.batch_size(), training.learning_rate());
    if (job.spec().recovery().epochs() > 0) {
      absl::StrAppend(&budget, ", ", job.spec().recovery().epochs(),
                      " recovery epoch(s)");
    }
    table.Row({"training", budget});
  }
  const auto& dataset = job.spec().dataset();
  if (!dataset.path().empty()) {
    std::string data = dataset.path();
    if (!dataset.emnist_split().empty()) {
      absl::StrAppend(&data, " (", dataset.emnist_split(), ")");
    }
    if (dataset.train_limit() > 0) {
      absl::StrAppend(&data, ", first ", dataset.train_limit(), " train");
    }
    if (dataset.test_limit() > 0) {
      absl::StrAppend(&data, ", first ", dataset.test_limit(), " test");
    }
    table.Row({"data", data});
  }
  std::string run = absl::StrCat("seed ", job.spec().seed());
  if (!job.spec().device().empty()) {
    absl::StrAppend(&run, ", device ", job.spec().device());
  }
  if (job.conventional_baseline()) {
    absl::StrAppend(&run, ", with conventional baseline");
  }
  table.Row({"run", run});
  switch (job.spec().parallelism()) {
    case pnn::v1::PARALLELISM_MODEL_PARALLEL:
      table.Row({"parallelism",
                 "model-parallel pipeline (activations and gradients "
                 "between workers every batch)"});
      break;
    case pnn::v1::PARALLELISM_CONVENTIONAL:
      table.Row({"parallelism", "conventional (whole network, one worker)"});
      break;
    default:
      break;  // partitioned: the default, said by the network row
  }
  return table.Render("");
}

std::string FormatResultTable(const Job& job) {
  std::string out = absl::StrCat(JobTitle(job), " ", JobStateName(job.state()));
  if (job.has_start_time() && job.has_end_time()) {
    absl::StrAppend(&out, " in ",
                    Seconds(absl::ToDoubleSeconds(ToTime(job.end_time()) -
                                                  ToTime(job.start_time()))));
  }
  absl::StrAppend(&out, "\n");
  if (!job.message().empty()) {
    out += Wrap(job.message(), kResultWidth, "  ", "    ");
  }
  absl::StrAppend(&out, "\n", AccuracyTable(job), "\n");
  std::vector<std::string> errors;
  out += TaskTables(job, &errors);
  if (!errors.empty()) {
    absl::StrAppend(&out, "\nerrors:\n", absl::StrJoin(errors, ""));
  }
  out += CostFooter(job);
  if (job.evaluations_size() > 0) {
    Table curve({true, true, true, true});
    curve.Row({"at", "epochs", "test accuracy", "CPU"});
    for (const auto& point : job.evaluations()) {
      curve.Row({Seconds(point.wall_seconds()),
                 absl::StrFormat("%.2f", point.epochs_done()),
                 FormatPercent(point.test_accuracy()),
                 Seconds(point.cpu_seconds())});
    }
    absl::StrAppend(&out, "\n  accuracy over training time:\n");
    out += curve.Render("  ");
  }
  if (job.model_bytes() > 0) {
    absl::StrAppend(&out, "  model: ", FormatBytes(job.model_bytes()),
                    "; pnnctl download ", job.job_id(), "\n");
  }
  return out;
}

std::string FormatJobDetails(const Job& job, const FormatOptions& options) {
  std::string out = FormatJobHeader(job, options);
  out += "\n";
  if (IsFinalState(job.state())) {
    out += FormatResultTable(job);
  } else {
    for (const TaskStatus* task : JobTasks(job)) {
      absl::StrAppend(&out, "  ", FormatTaskProgress(*task), "\n");
    }
  }
  return out;
}

std::string FormatJobList(const std::vector<Job>& jobs,
                          const FormatOptions& options) {
  Table table({false, false, false, true, true, true, false});
  table.Row({"JOB ID", "NAME", "STATE", "SEGMENTS", "PROGRESS", "ACCURACY",
             "CREATED"});
  for (const Job& job : jobs) {
    int done = 0;
    double progress = 0;
    const std::vector<const TaskStatus*> tasks = JobTasks(job);
    for (const auto& segment : job.segments()) {
      if (segment.state() == pnn::v1::TASK_STATE_SUCCEEDED) ++done;
    }
    for (const TaskStatus* task : tasks) {
      progress += std::clamp(TaskFraction(*task), 0.0, 1.0);
    }
    if (!tasks.empty()) progress /= tasks.size();
    table.Row(
        {job.job_id(), job.spec().name().empty() ? "-" : job.spec().name(),
         JobStateName(job.state()),
         absl::StrCat(done, "/", job.segments_size()),
         job.state() == pnn::v1::JOB_STATE_SUCCEEDED
             ? "100%"
             : absl::StrFormat("%.0f%%", 100 * progress),
         job.has_test() ? FormatPercent(job.test().accuracy()) : "-",
         job.has_create_time()
             ? absl::FormatTime("%Y-%m-%d %H:%M:%S", ToTime(job.create_time()),
                                options.time_zone)
             : "-"});
  }
  return table.Render("");
}

std::string ToJson(const google::protobuf::Message& message, bool multiline) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = multiline;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  // Printing a well-formed message cannot fail (only Any with an unknown
  // type could, and pnn's messages hold none).
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!multiline || out.empty() || out.back() != '\n') out += "\n";
  return out;
}

absl::Time ToTime(const google::protobuf::Timestamp& timestamp) {
  return absl::FromUnixSeconds(timestamp.seconds()) +
         absl::Nanoseconds(timestamp.nanos());
}

ProgressDisplay::ProgressDisplay(std::ostream* out, bool redraw,
                                 FormatOptions options)
    : out_(out), redraw_(redraw), options_(std::move(options)) {}

bool ProgressDisplay::IsNews(const JobEvent& event) {
  std::string states = absl::StrCat(event.job().state());
  for (const TaskStatus* task : JobTasks(event.job())) {
    absl::StrAppend(&states, ",", task->state(), ":", task->epochs_size());
  }
  const std::string& message =
      event.message().empty() ? event.job().message() : event.message();
  const bool news =
      states != last_states_ || (!message.empty() && message != last_message_);
  last_states_ = std::move(states);
  if (news) last_message_ = message;
  return news;
}

void ProgressDisplay::Update(const JobEvent& event) {
  if (!redraw_) {
    if (!IsNews(event)) return;
    *out_ << FormatEventLine(event, options_) << "\n";
    out_->flush();
    return;
  }
  std::string text;
  // Back to the first line of the previous block ("ESC[nF": cursor up n
  // lines, to column 1), then erase to the end of the screen ("ESC[J") so a
  // shorter block leaves nothing behind.
  if (lines_drawn_ > 0) absl::StrAppend(&text, "\x1b[", lines_drawn_, "F");
  absl::StrAppend(&text, "\x1b[J");
  const std::vector<std::string> lines = FormatProgressBlock(event);
  for (const std::string& line : lines) {
    absl::StrAppend(&text, FitWidth(line, options_.width), "\n");
  }
  lines_drawn_ = static_cast<int>(lines.size());
  *out_ << text;
  out_->flush();
}

}  // namespace pnn::client
