#include "common/comparison.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/job_spec.h"
#include "common/model.h"
#include "common/partition.h"
#include "common/status_macros.h"
#include "common/trainer.h"

namespace pnn {
namespace {

using pnn::v1::EpochEvaluation;
using pnn::v1::RunReport;

void Report(const ComparisonOptions& options, const std::string& line,
            bool transient) {
  if (options.progress) options.progress(line, transient);
}

TrainOptions MakeTrainOptions(const pnn::v1::JobSpec& spec,
                              const ComparisonOptions& options,
                              const std::string& label, int epochs) {
  TrainOptions train;
  train.device = spec.device();
  train.threads = options.threads;
  train.on_batches = [&options, label, epochs](int epoch, int64_t done,
                                               int64_t total, double loss) {
    Report(options,
           absl::StrFormat("[%s] epoch %d/%d  batch %d/%d  loss %.4f", label,
                           epoch, epochs, done, total, loss),
           /*transient=*/true);
  };
  return train;
}

absl::StatusOr<RunReport> RunConventional(const pnn::v1::JobSpec& spec,
                                          const Dataset& data,
                                          const ComparisonOptions& options) {
  RunReport report;
  report.set_mode("conventional");
  PNN_ASSIGN_OR_RETURN(
      const Architecture architecture,
      NetworkArchitecture(spec, data.image_shape(), data.num_classes));
  SegmentModel network(architecture);
  InitializeWeights(network, spec.seed());
  TrainOptions train =
      MakeTrainOptions(spec, options, "conventional", spec.training().epochs());
  absl::Status evaluation_status;
  train.on_epoch = [&](const pnn::v1::EpochMetrics& metrics,
                       const SegmentModel& model) {
    SegmentModel live = model;
    auto test = Evaluate(live, data.test, data.num_classes, spec.device());
    if (!test.ok()) {
      evaluation_status = test.status();
      return;
    }
    EpochEvaluation* epoch = report.add_epochs();
    epoch->set_epoch(metrics.epoch());
    epoch->set_test_accuracy(test->accuracy());
    epoch->set_test_loss(test->loss());
    epoch->set_train_loss(metrics.train_loss());
    Report(options,
           absl::StrFormat("[conventional] epoch %d/%d  loss %.4f  test "
                           "accuracy %.2f%%  %.1f s",
                           metrics.epoch(), spec.training().epochs(),
                           metrics.train_loss(), 100 * test->accuracy(),
                           metrics.seconds()),
           false);
  };
  PNN_ASSIGN_OR_RETURN(
      NetworkTrainingResult trained,
      TrainNetwork(network, data.train, spec.training(), spec.seed(), train));
  PNN_RETURN_IF_ERROR(evaluation_status);
  PNN_ASSIGN_OR_RETURN(pnn::v1::TestResult test,
                       Evaluate(network, data.test, data.num_classes,
                                spec.device()));
  report.set_test_accuracy(test.accuracy());
  *report.mutable_test() = test;
  report.set_wall_seconds(trained.cost.wall_seconds());
  report.set_parallel_wall_seconds(trained.cost.wall_seconds());
  *report.mutable_cost() = trained.cost;
  return report;
}

// What partitioned training leaves for the evaluation: every segment's
// weights after each of its epochs, and its final weights.
struct TrainedSegments {
  // snapshots[s][e]: weights of segment s after epoch e + 1.
  std::vector<std::vector<pnn::v1::SegmentWeights>> snapshots;
  std::vector<pnn::v1::SegmentWeights> finished;  // by segment index
};

void AddSegmentReport(const pnn::v1::SegmentTask& task,
                      const pnn::v1::SegmentResult& result,
                      RunReport* report) {
  auto* segment = report->add_segments();
  segment->set_segment_index(task.segment_index());
  segment->set_first_layer(task.first_layer());
  segment->set_last_layer(task.last_layer());
  std::vector<std::string> layers;
  for (const auto& layer : task.layers()) layers.push_back(DescribeLayer(layer));
  segment->set_layers(absl::StrJoin(layers, ", "));
  *segment->mutable_epochs() = result.epochs();
  *segment->mutable_cost() = result.cost();
  report->set_wall_seconds(report->wall_seconds() +
                           result.cost().wall_seconds());
  report->set_parallel_wall_seconds(std::max(report->parallel_wall_seconds(),
                                             result.cost().wall_seconds()));
}

// Trains the spec's segments one after another, as partitioned training
// (whatever the job's parallelism: a cluster setting that does not apply
// in one process).
absl::StatusOr<TrainedSegments> TrainSegments(const pnn::v1::JobSpec& spec,
                                              const Dataset& data,
                                              const ComparisonOptions& options,
                                              RunReport* report) {
  pnn::v1::JobSpec partitioned = spec;
  partitioned.set_parallelism(pnn::v1::PARALLELISM_PARTITIONED);
  PNN_ASSIGN_OR_RETURN(std::vector<pnn::v1::SegmentTask> tasks,
                       PlanSegmentTasks(partitioned, data.image_shape(),
                                        data.num_classes, "local"));
  const int segment_count = static_cast<int>(tasks.size());
  TrainedSegments trained;
  trained.snapshots.resize(tasks.size());
  for (pnn::v1::SegmentTask& task : tasks) {
    const int index = task.segment_index();
    if (NeedsUpstream(task)) {
      PNN_RETURN_IF_ERROR(AttachUpstream(trained.finished, &task));
    }
    const std::string label =
        absl::StrCat("segment ", index + 1, "/", segment_count);
    TrainOptions train =
        MakeTrainOptions(spec, options, label, task.training().epochs());
    train.on_epoch = [&, index, label](const pnn::v1::EpochMetrics& metrics,
                                       const SegmentModel& model) {
      trained.snapshots[index].push_back(ExportWeights(model, index));
      Report(options,
             absl::StrFormat("[%s] epoch %d/%d  loss %.4f  %.0f samples/s  "
                             "%.1f s",
                             label, metrics.epoch(), task.training().epochs(),
                             metrics.train_loss(),
                             metrics.samples_per_second(), metrics.seconds()),
             false);
    };
    PNN_ASSIGN_OR_RETURN(pnn::v1::SegmentResult result,
                         TrainSegment(task, data, train));
    AddSegmentReport(task, result, report);
    trained.finished.push_back(result.weights());
  }
  return trained;
}

// Test accuracy of the joined network after every epoch (a segment that
// trains fewer epochs contributes its final weights).
absl::Status EvaluateEpochs(const TrainedSegments& trained,
                            const pnn::v1::JobSpec& spec, const Dataset& data,
                            const Architecture& network, RunReport* report) {
  size_t max_epochs = 0;
  for (const auto& per_segment : trained.snapshots) {
    max_epochs = std::max(max_epochs, per_segment.size());
  }
  for (size_t epoch = 0; epoch < max_epochs; ++epoch) {
    std::vector<pnn::v1::SegmentWeights> joint;
    for (const auto& per_segment : trained.snapshots) {
      joint.push_back(per_segment[std::min(epoch, per_segment.size() - 1)]);
    }
    PNN_ASSIGN_OR_RETURN(SegmentModel joined, AssembleNetwork(joint, network));
    PNN_ASSIGN_OR_RETURN(pnn::v1::TestResult test,
                         Evaluate(joined, data.test, data.num_classes,
                                  spec.device()));
    EpochEvaluation* evaluation = report->add_epochs();
    evaluation->set_epoch(static_cast<int>(epoch + 1));
    evaluation->set_test_accuracy(test.accuracy());
    evaluation->set_test_loss(test.loss());
  }
  return absl::OkStatus();
}

// The recovery epochs of the joined network, in place; returns its test
// result afterwards.
absl::StatusOr<pnn::v1::TestResult> Recover(
    const pnn::v1::JobSpec& spec, const pnn::v1::TrainingConfig& recovery,
    const Dataset& data, const ComparisonOptions& options, SegmentModel& joined,
    RunReport* report) {
  TrainOptions train =
      MakeTrainOptions(spec, options, "recovery", recovery.epochs());
  PNN_ASSIGN_OR_RETURN(
      NetworkTrainingResult recovered,
      TrainNetwork(joined, data.train, recovery, spec.seed(), train));
  report->set_recovery_epochs(recovery.epochs());
  report->set_recovery_seconds(recovered.cost.wall_seconds());
  PNN_ASSIGN_OR_RETURN(pnn::v1::TestResult test,
                       Evaluate(joined, data.test, data.num_classes,
                                spec.device()));
  Report(options,
         absl::StrFormat("[partitioned] after %d recovery epochs: test "
                         "accuracy %.2f%%",
                         recovery.epochs(), 100 * test.accuracy()),
         false);
  return test;
}

absl::StatusOr<RunReport> RunPartitioned(const pnn::v1::JobSpec& spec,
                                         const Dataset& data,
                                         const ComparisonOptions& options) {
  RunReport report;
  report.set_mode("partitioned");
  PNN_ASSIGN_OR_RETURN(const TrainedSegments trained,
                       TrainSegments(spec, data, options, &report));
  PNN_ASSIGN_OR_RETURN(
      const Architecture network,
      NetworkArchitecture(spec, data.image_shape(), data.num_classes));
  PNN_RETURN_IF_ERROR(EvaluateEpochs(trained, spec, data, network, &report));
  PNN_ASSIGN_OR_RETURN(SegmentModel joined,
                       AssembleNetwork(trained.finished, network));
  PNN_ASSIGN_OR_RETURN(pnn::v1::TestResult test,
                       Evaluate(joined, data.test, data.num_classes,
                                spec.device()));
  report.set_joined_test_accuracy(test.accuracy());
  Report(options,
         absl::StrFormat("[partitioned] joined network: test accuracy %.2f%%",
                         100 * test.accuracy()),
         false);
  const pnn::v1::TrainingConfig recovery = RecoveryTrainingConfig(spec);
  if (recovery.epochs() > 0) {
    PNN_ASSIGN_OR_RETURN(test, Recover(spec, recovery, data, options, joined,
                                       &report));
  }
  report.set_test_accuracy(test.accuracy());
  *report.mutable_test() = test;
  return report;
}

}  // namespace

absl::StatusOr<pnn::v1::ComparisonReport> RunComparison(
    const pnn::v1::JobSpec& resolved, const Dataset& data,
    const ComparisonOptions& options) {
  PNN_RETURN_IF_ERROR(
      ValidateAgainstData(resolved, data.image_shape(), data.num_classes));
  pnn::v1::ComparisonReport report;
  *report.mutable_spec() = resolved;
  auto* info = report.mutable_dataset();
  info->set_directory(data.directory);
  info->set_train_samples(data.train.size());
  info->set_test_samples(data.test.size());
  info->set_image_channels(data.channels);
  info->set_image_rows(data.rows);
  info->set_image_cols(data.cols);
  info->set_num_classes(data.num_classes);
  info->set_memory_bytes(data.memory_bytes());
  report.set_device(resolved.device());
  if (options.threads > 0) at::set_num_threads(options.threads);
  report.set_threads(at::get_num_threads());
  if (options.run_conventional) {
    PNN_ASSIGN_OR_RETURN(*report.mutable_conventional(),
                         RunConventional(resolved, data, options));
  }
  if (options.run_partitioned) {
    PNN_ASSIGN_OR_RETURN(*report.mutable_partitioned(),
                         RunPartitioned(resolved, data, options));
  }
  return report;
}

}  // namespace pnn
