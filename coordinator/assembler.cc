#include "coordinator/assembler.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/dataset.h"
#include "common/dataset_cache.h"
#include "common/job_spec.h"
#include "common/model.h"
#include "common/model_export.h"
#include "common/partition.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "common/trainer.h"

namespace pnn {
namespace {

namespace fs = std::filesystem;

absl::Status WriteFileAtomically(const fs::path& path,
                                 const std::string& bytes) {
  const fs::path temporary = path.string() + ".tmp";
  {
    errno = 0;
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    file.flush();
    if (!file) {
      const int error = errno;
      return absl::UnavailableError(
          absl::StrCat("cannot write ", temporary.string(), ": ",
                       error != 0 ? std::strerror(error) : "unknown error"));
    }
  }
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error) {
    return absl::UnavailableError(absl::StrCat(
        "cannot rename ", temporary.string(), ": ", error.message()));
  }
  return absl::OkStatus();
}

// Writes <state_dir>/models/<job>.{safetensors,pnnw} (each atomically);
// returns the safetensors file's size. The .pnnw file keeps pnn's layer
// names; the safetensors file has nn.Sequential's keys and the metadata
// needed to run it (common/model_export.h).
absl::StatusOr<int64_t> WriteModel(const std::string& state_dir,
                                   const pnn::v1::SegmentWeights& model,
                                   const ModelExportInfo& info) {
  PNN_ASSIGN_OR_RETURN(std::string safetensors,
                       EncodeModelSafetensors(model, info));
  const fs::path models = fs::path(state_dir) / "models";
  PNN_RETURN_IF_ERROR(WriteFileAtomically(
      models / (info.job_id + ".safetensors"), safetensors));
  PNN_RETURN_IF_ERROR(WriteFileAtomically(models / (info.job_id + ".pnnw"),
                                          model.SerializeAsString()));
  return static_cast<int64_t>(safetensors.size());
}

// An evaluation point: one checkpoint per task, at a moment.
struct Point {
  double seconds = 0;
  std::vector<const CheckpointRecord*> parts;
};

// The moments to evaluate, in time order (points of which some task has
// no checkpoint yet included; the caller skips them).
std::vector<Point> ChoosePoints(
    const std::vector<std::vector<CheckpointRecord>>& checkpoints,
    bool pipeline) {
  std::vector<Point> points;
  const size_t tasks = checkpoints.size();
  if (pipeline) {
    // The stages of a pipeline checkpoint the same batch: join those.
    std::map<std::pair<int, int64_t>, Point> by_batch;
    for (size_t t = 0; t < tasks; ++t) {
      for (const CheckpointRecord& checkpoint : checkpoints[t]) {
        Point& point = by_batch[{checkpoint.epoch, checkpoint.batches_done}];
        point.parts.resize(tasks, nullptr);
        point.parts[t] = &checkpoint;  // a retry's later one wins
        point.seconds = std::max(point.seconds, checkpoint.job_seconds);
      }
    }
    for (auto& [position, point] : by_batch) points.push_back(point);
  } else {
    // Segments train independently: at every checkpoint's arrival, join
    // the latest checkpoint of every segment (once all have one).
    struct Arrival {
      double seconds;
      size_t task;
      const CheckpointRecord* checkpoint;
    };
    std::vector<Arrival> arrivals;
    for (size_t t = 0; t < tasks; ++t) {
      for (const CheckpointRecord& checkpoint : checkpoints[t]) {
        arrivals.push_back({checkpoint.job_seconds, t, &checkpoint});
      }
    }
    std::stable_sort(arrivals.begin(), arrivals.end(),
                     [](const Arrival& a, const Arrival& b) {
                       return a.seconds < b.seconds;
                     });
    std::vector<const CheckpointRecord*> latest(tasks, nullptr);
    for (const Arrival& arrival : arrivals) {
      latest[arrival.task] = arrival.checkpoint;
      points.push_back({arrival.seconds, latest});
    }
  }
  std::sort(points.begin(), points.end(), [](const Point& a, const Point& b) {
    return a.seconds < b.seconds;
  });
  return points;
}

// Test accuracy of the joined checkpoints over the job's training time.
absl::StatusOr<std::vector<pnn::v1::EvaluationPoint>> EvaluateCheckpoints(
    const std::vector<std::vector<CheckpointRecord>>& checkpoints,
    bool pipeline, const Architecture& architecture, const Dataset& data,
    const std::string& device, const std::function<bool()>& should_stop) {
  std::vector<pnn::v1::EvaluationPoint> curve;
  if (checkpoints.empty()) return curve;
  for (const Point& point : ChoosePoints(checkpoints, pipeline)) {
    if (std::find(point.parts.begin(), point.parts.end(), nullptr) !=
        point.parts.end()) {
      continue;  // some segment has no checkpoint yet
    }
    if (should_stop()) {
      return absl::CancelledError("assembly stopped");
    }
    std::vector<pnn::v1::SegmentWeights> parts;
    pnn::v1::EvaluationPoint evaluation;
    evaluation.set_wall_seconds(point.seconds);
    evaluation.set_epochs_done(point.parts.front()->epochs_done);
    for (const CheckpointRecord* part : point.parts) {
      parts.push_back(part->weights);
      evaluation.set_epochs_done(
          std::min(evaluation.epochs_done(), part->epochs_done));
      evaluation.set_cpu_seconds(evaluation.cpu_seconds() + part->cpu_seconds);
    }
    auto network = AssembleNetwork(parts, architecture);
    if (!network.ok()) {
      return absl::DataLossError(
          absl::StrCat("a checkpoint at ", point.seconds,
                       " s does not join: ", network.status().message()));
    }
    PNN_ASSIGN_OR_RETURN(
        pnn::v1::TestResult test,
        Evaluate(*network, data.test, data.num_classes, device));
    evaluation.set_test_accuracy(test.accuracy());
    evaluation.set_test_loss(test.loss());
    curve.push_back(evaluation);
  }
  return curve;
}

}  // namespace

Assembler::Assembler(Options options, DatasetCache* datasets)
    : options_(std::move(options)), datasets_(datasets) {}

absl::Status Assembler::CheckDevice() const {
  absl::StatusOr<c10::Device> device = ResolveDevice(options_.device);
  if (!device.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device ", options_.device, ": ", device.status().message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<AssemblyResult> Assembler::Assemble(
    const AssemblyInput& input, const std::function<bool()>& should_stop) {
  const pnn::v1::JobSpec& spec = input.spec;
  // Joining and testing run on the coordinator's own device, not the one
  // the workers trained on: a CPU coordinator assembles CUDA jobs.
  const std::string& device = options_.device;
  PNN_RETURN_IF_ERROR(SetTrainingThreads(options_.threads));
  PNN_ASSIGN_OR_RETURN(
      std::string directory,
      ResolveDatasetDirectory(options_.data_dir, spec.dataset(), false));
  PNN_ASSIGN_OR_RETURN(std::shared_ptr<const Dataset> data,
                       datasets_->Get(directory, spec.dataset()));
  PNN_ASSIGN_OR_RETURN(
      const Architecture network,
      NetworkArchitecture(spec, data->image_shape(), data->num_classes));
  PNN_ASSIGN_OR_RETURN(SegmentModel joined,
                       AssembleNetwork(input.weights, network));
  AssemblyResult result;
  PNN_ASSIGN_OR_RETURN(result.joined_test,
                       Evaluate(joined, data->test, data->num_classes, device));
  PNN_ASSIGN_OR_RETURN(result.curve,
                       EvaluateCheckpoints(input.checkpoints, input.pipeline,
                                           network, *data, device,
                                           should_stop));
  result.final_test = result.joined_test;
  if (!input.recovered.empty()) {
    // The recovery epochs ran on the workers, as a pipeline over the
    // segments: the model is what they left.
    PNN_ASSIGN_OR_RETURN(joined, AssembleNetwork(input.recovered, network));
    result.recovery_seconds = input.recovery_seconds;
    PNN_ASSIGN_OR_RETURN(
        result.final_test,
        Evaluate(joined, data->test, data->num_classes, device));
  }
  ModelExportInfo info;
  info.job_id = input.job_id;
  info.spec = spec;
  info.network = network;
  info.num_classes = data->num_classes;
  info.image_channels = data->channels;
  info.image_rows = data->rows;
  info.image_cols = data->cols;
  PNN_ASSIGN_OR_RETURN(const DatasetFiles files,
                       LocateDataset(directory, spec.dataset()));
  info.transpose = files.transpose;
  PNN_ASSIGN_OR_RETURN(
      result.model_bytes,
      WriteModel(options_.state_dir, ExportWeights(joined, 0), info));
  return result;
}

absl::StatusOr<DatasetShape> Assembler::CheckData(
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
      ValidateAgainstData(spec, shape->image_shape(), shape->num_classes));
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

absl::Status Assembler::CheckWeights(const pnn::v1::SegmentTask& task,
                                     const pnn::v1::SegmentWeights& weights) {
  // The task's own architecture: the weights must fill exactly its layers.
  return ModelFromWeights(weights, TaskArchitecture(task)).status();
}

absl::StatusOr<pnn::v1::TestResult> Assembler::TestBaseline(
    const pnn::v1::JobSpec& spec, const pnn::v1::SegmentWeights& weights) {
  PNN_ASSIGN_OR_RETURN(
      std::string directory,
      ResolveDatasetDirectory(options_.data_dir, spec.dataset(), false));
  PNN_ASSIGN_OR_RETURN(std::shared_ptr<const Dataset> data,
                       datasets_->Get(directory, spec.dataset()));
  PNN_ASSIGN_OR_RETURN(
      const Architecture architecture,
      NetworkArchitecture(spec, data->image_shape(), data->num_classes));
  PNN_ASSIGN_OR_RETURN(SegmentModel network,
                       ModelFromWeights(weights, architecture));
  return Evaluate(network, data->test, data->num_classes, options_.device);
}

std::string Assembler::ModelPath(const std::string& job_id,
                                 pnn::v1::ModelFormat format) const {
  const char* extension =
      format == pnn::v1::MODEL_FORMAT_PNN_WEIGHTS ? ".pnnw" : ".safetensors";
  return (fs::path(options_.state_dir) / "models" / (job_id + extension))
      .string();
}

void Assembler::RemoveModel(const std::string& job_id) const {
  for (auto format :
       {pnn::v1::MODEL_FORMAT_SAFETENSORS, pnn::v1::MODEL_FORMAT_PNN_WEIGHTS}) {
    std::error_code ignored;
    fs::remove(ModelPath(job_id, format), ignored);
  }
}

}  // namespace pnn
