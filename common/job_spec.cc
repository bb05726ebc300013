#include "common/job_spec.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/layer_profile.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace pnn {
namespace {

using pnn::v1::JobSpec;
using pnn::v1::TrainingConfig;

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

// Fills zero fields of `config` from `defaults`.
void Inherit(const TrainingConfig& defaults, TrainingConfig* config) {
  if (config->epochs() == 0) config->set_epochs(defaults.epochs());
  if (config->batch_size() == 0) config->set_batch_size(defaults.batch_size());
  if (config->learning_rate() == 0) {
    config->set_learning_rate(defaults.learning_rate());
  }
  if (config->optimizer() == pnn::v1::OPTIMIZER_UNSPECIFIED) {
    config->set_optimizer(defaults.optimizer());
  }
  if (config->momentum() == 0) config->set_momentum(defaults.momentum());
  if (config->weight_decay() == 0) {
    config->set_weight_decay(defaults.weight_decay());
  }
  if (config->precision() == pnn::v1::PRECISION_UNSPECIFIED) {
    config->set_precision(defaults.precision());
  }
}

absl::Status ValidateTraining(const TrainingConfig& config,
                              absl::string_view field, bool allow_zero_epochs,
                              const SpecLimits& limits) {
  const int min_epochs = allow_zero_epochs ? 0 : 1;
  if (config.epochs() < min_epochs || config.epochs() > limits.max_epochs) {
    return Invalid(absl::StrCat(field, ".epochs"),
                   absl::StrCat("must be between ", min_epochs, " and ",
                                limits.max_epochs, ", got ", config.epochs()));
  }
  if (config.batch_size() < 1 || config.batch_size() > limits.max_batch_size) {
    return Invalid(absl::StrCat(field, ".batch_size"),
                   absl::StrCat("must be between 1 and ", limits.max_batch_size,
                                ", got ", config.batch_size()));
  }
  if (!std::isfinite(config.learning_rate()) || config.learning_rate() <= 0 ||
      config.learning_rate() > limits.max_learning_rate) {
    return Invalid(absl::StrCat(field, ".learning_rate"),
                   absl::StrCat("must be in (0, ", limits.max_learning_rate,
                                "], got ", config.learning_rate()));
  }
  if (!pnn::v1::Optimizer_IsValid(config.optimizer()) ||
      config.optimizer() == pnn::v1::OPTIMIZER_UNSPECIFIED) {
    return Invalid(absl::StrCat(field, ".optimizer"), "unknown optimizer");
  }
  if (!std::isfinite(config.momentum()) || config.momentum() < 0 ||
      config.momentum() >= 1) {
    return Invalid(absl::StrCat(field, ".momentum"),
                   absl::StrCat("must be in [0, 1), got ", config.momentum()));
  }
  if (config.momentum() != 0 && config.optimizer() != pnn::v1::OPTIMIZER_SGD) {
    return Invalid(absl::StrCat(field, ".momentum"),
                   "applies to OPTIMIZER_SGD only");
  }
  if (!std::isfinite(config.weight_decay()) || config.weight_decay() < 0 ||
      config.weight_decay() > 1) {
    return Invalid(absl::StrCat(field, ".weight_decay"),
                   absl::StrCat("must be in [0, 1], got ",
                                config.weight_decay()));
  }
  if (!pnn::v1::Precision_IsValid(config.precision())) {
    return Invalid(absl::StrCat(field, ".precision"),
                   "unknown precision (PRECISION_FP32, PRECISION_BF16 or "
                   "PRECISION_TF32)");
  }
  return absl::OkStatus();
}

// TF32 is a mode of CUDA's matrix units: a CPU job that asks for it would
// silently train in fp32, so it is refused with what to use instead.
absl::Status CheckPrecisionFitsDevice(const TrainingConfig& config,
                                      absl::string_view field,
                                      absl::string_view device) {
  if (!PrecisionFitsDevice(config.precision(), device)) {
    return Invalid(
        absl::StrCat(field, ".precision"),
        absl::StrCat("PRECISION_TF32 applies to CUDA devices only; "
                     "this job's device is \"",
                     device, "\" (use PRECISION_FP32 or PRECISION_BF16)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateDevice(absl::string_view device) {
  if (IsValidDeviceName(device)) return absl::OkStatus();
  return Invalid("device", absl::StrCat("must be \"cpu\", \"cuda\" or "
                                        "\"cuda:N\", got \"",
                                        device, "\""));
}

// ResolveJobSpec, by section: the documented defaults first, then one
// validator per part of the spec, in the order the spec reads.
void ApplyDefaults(JobSpec* spec) {
  auto* model = spec->mutable_model();
  if (model->hidden_widths().empty() && model->layers().empty()) {
    for (int i = 0; i < kDefaultHiddenLayers; ++i) {
      model->add_hidden_widths(kDefaultHiddenWidth);
    }
  }
  if (model->activation() == pnn::v1::ACTIVATION_UNSPECIFIED) {
    model->set_activation(pnn::v1::ACTIVATION_RELU);
  }
  // With auto_cut the cuts are chosen once the data set's shape is known
  // (common/auto_cut.h).
  if (spec->has_auto_cut() &&
      spec->auto_cut().objective() ==
          pnn::v1::BALANCE_OBJECTIVE_MEASURED_TIME &&
      spec->auto_cut().profile_batches() == 0) {
    spec->mutable_auto_cut()->set_profile_batches(kDefaultProfileBatches);
  }
  if (model->cut_after_layers().empty() && !spec->has_auto_cut() &&
      model->layers().empty()) {
    model->add_cut_after_layers(
        std::min(kDefaultCutAfterLayer, model->hidden_widths_size()));
  }
  auto* sil = spec->mutable_sil();
  if (sil->distribution() == pnn::v1::SIL_DISTRIBUTION_UNSPECIFIED) {
    sil->set_distribution(pnn::v1::SIL_DISTRIBUTION_UNIFORM);
  }
  if (!sil->has_kappa()) sil->set_kappa(kDefaultKappa);
  if (!sil->has_input_noise_std()) sil->set_input_noise_std(0.0f);
  if (sil->input_mode() == pnn::v1::INPUT_MODE_UNSPECIFIED) {
    sil->set_input_mode(pnn::v1::INPUT_MODE_SYNTHETIC_LABELS);
  }
  TrainingConfig defaults;
  defaults.set_epochs(kDefaultEpochs);
  defaults.set_batch_size(kDefaultBatchSize);
  defaults.set_learning_rate(kDefaultLearningRate);
  defaults.set_optimizer(pnn::v1::OPTIMIZER_ADAM);
  defaults.set_precision(pnn::v1::PRECISION_FP32);
  Inherit(defaults, spec->mutable_training());
  auto* dataset = spec->mutable_dataset();
  if (dataset->path().empty()) dataset->set_path(kDefaultDatasetPath);
  if (!spec->has_seed()) spec->set_seed(kDefaultSeed);
  if (spec->device().empty()) spec->set_device("cpu");
  if (spec->parallelism() == pnn::v1::PARALLELISM_UNSPECIFIED) {
    spec->set_parallelism(pnn::v1::PARALLELISM_PARTITIONED);
  }
  if (!spec->has_resume_checkpoints()) spec->set_resume_checkpoints(true);
}

// The cut points: strictly increasing, within the network. A layer list
// has no default cut (where a convolutional network can be cut is the
// user's call, or auto_cut's).
absl::Status ValidateCuts(const JobSpec& spec) {
  const pnn::v1::ModelSpec& model = spec.model();
  const int layers = CuttableLayers(model);
  const char* what = model.layers().empty() ? "linear layers" : "layers";
  if (model.cut_after_layers().empty() && !spec.has_auto_cut() &&
      spec.parallelism() != pnn::v1::PARALLELISM_CONVENTIONAL) {
    return Invalid("model.cut_after_layers",
                   absl::StrCat("a layer list has no default cut; give the "
                                "cut points (1-based, in [1, ",
                                layers - 1, "]) or auto_cut"));
  }
  int previous_cut = 0;
  for (int i = 0; i < model.cut_after_layers_size(); ++i) {
    const int cut = model.cut_after_layers(i);
    if (cut <= previous_cut || cut >= layers) {
      return Invalid(
          absl::StrCat("model.cut_after_layers[", i, "]"),
          absl::StrCat("cut points must be strictly increasing and between 1 "
                       "and ",
                       layers - 1, " (the network has ", layers, " ", what,
                       "), got ", cut));
    }
    previous_cut = cut;
  }
  // A segment of pooling, flatten or dropout alone has nothing to train.
  if (!model.layers().empty() &&
      spec.parallelism() != pnn::v1::PARALLELISM_CONVENTIONAL) {
    std::vector<int> bounds = {0};
    bounds.insert(bounds.end(), model.cut_after_layers().begin(),
                  model.cut_after_layers().end());
    bounds.push_back(layers);
    for (size_t s = 0; s + 1 < bounds.size(); ++s) {
      bool weighted = false;
      for (int layer = bounds[s]; layer < bounds[s + 1]; ++layer) {
        weighted |= IsWeighted(model.layers(layer));
      }
      if (!weighted) {
        return Invalid("model.cut_after_layers",
                       absl::StrCat("segment ", s + 1, " (layers ",
                                    bounds[s] + 1, "..", bounds[s + 1],
                                    ") has no conv2d or linear layer to "
                                    "train; move or remove a cut"));
      }
    }
  }
  return absl::OkStatus();
}

// The network's shape: hidden widths or a layer list, the activation, the
// cut points.
absl::Status ValidateModel(JobSpec* spec, const SpecLimits& limits) {
  pnn::v1::ModelSpec& model = *spec->mutable_model();
  if (!pnn::v1::Activation_IsValid(model.activation())) {
    return Invalid("model.activation", "unknown activation");
  }
  if (!model.layers().empty()) {
    if (!model.hidden_widths().empty()) {
      return Invalid("model",
                     "give hidden_widths (a fully connected network) or "
                     "layers (a layer list), not both");
    }
    if (model.layers_size() > limits.max_layers) {
      return Invalid("model.layers",
                     absl::StrCat("at most ", limits.max_layers,
                                  " layers, got ", model.layers_size()));
    }
    PNN_RETURN_IF_ERROR(ResolveLayerList(&model, limits.max_width));
    return ValidateCuts(*spec);
  }
  const int layers = model.hidden_widths_size() + 1;
  if (layers > limits.max_layers) {
    return Invalid("model.hidden_widths",
                   absl::StrCat("at most ", limits.max_layers - 1,
                                " hidden layers, got ",
                                model.hidden_widths_size()));
  }
  for (int i = 0; i < model.hidden_widths_size(); ++i) {
    const int width = model.hidden_widths(i);
    if (width < 1 || width > limits.max_width) {
      return Invalid(absl::StrCat("model.hidden_widths[", i, "]"),
                     absl::StrCat("must be between 1 and ", limits.max_width,
                                  ", got ", width));
    }
  }
  if (layers < 2) {
    return Invalid("model.hidden_widths",
                   "a network to cut needs at least one hidden layer "
                   "(two linear layers)");
  }
  return ValidateCuts(*spec);
}

absl::Status ValidateSil(const pnn::v1::SilSpec& sil, const SpecLimits& limits) {
  if (!pnn::v1::SilDistribution_IsValid(sil.distribution())) {
    return Invalid("sil.distribution", "unknown distribution");
  }
  if (!std::isfinite(sil.kappa()) || sil.kappa() <= 0 ||
      sil.kappa() > limits.max_kappa) {
    return Invalid("sil.kappa", absl::StrCat("must be in (0, ", limits.max_kappa,
                                             "], got ", sil.kappa()));
  }
  if (!std::isfinite(sil.input_noise_std()) || sil.input_noise_std() < 0) {
    return Invalid("sil.input_noise_std",
                   absl::StrCat("must be >= 0, got ", sil.input_noise_std()));
  }
  if (!pnn::v1::InputMode_IsValid(sil.input_mode())) {
    return Invalid("sil.input_mode", "unknown input mode");
  }
  return absl::OkStatus();
}

// Cut points chosen by pnn: what the request may and may not combine.
absl::Status ValidateAutoCut(const JobSpec& spec) {
  if (!spec.has_auto_cut()) return absl::OkStatus();
  const pnn::v1::AutoCutSpec& cut = spec.auto_cut();
  const int layers = CuttableLayers(spec.model());
  if (!spec.model().cut_after_layers().empty()) {
    return Invalid("auto_cut",
                   "give model.cut_after_layers or auto_cut, "
                   "not both");
  }
  if (spec.segment_training_size() > 0) {
    return Invalid("auto_cut",
                   "segment_training needs known segments; "
                   "leave it empty when pnn chooses the cuts");
  }
  if (spec.parallelism() == pnn::v1::PARALLELISM_CONVENTIONAL) {
    return Invalid("auto_cut",
                   "a conventional job trains the whole network "
                   "on one worker; there is nothing to cut");
  }
  if (!pnn::v1::BalanceObjective_IsValid(cut.objective())) {
    return Invalid("auto_cut.objective", "unknown objective");
  }
  if ((cut.segments() != 0) == (cut.device_memory_bytes() != 0)) {
    return Invalid("auto_cut",
                   "set exactly one of segments (how many) and "
                   "device_memory_bytes (a budget per device)");
  }
  if (cut.segments() != 0 && (cut.segments() < 2 || cut.segments() > layers)) {
    return Invalid(
        "auto_cut.segments",
        absl::StrCat("must be between 2 and ", layers, " (the network has ",
                     layers, " layers), got ", cut.segments()));
  }
  if (cut.device_memory_bytes() < 0) {
    return Invalid(
        "auto_cut.device_memory_bytes",
        absl::StrCat("must be > 0, got ", cut.device_memory_bytes()));
  }
  if (cut.device_memory_bytes() > 0 &&
      (cut.objective() == pnn::v1::BALANCE_OBJECTIVE_FLOPS ||
       cut.objective() == pnn::v1::BALANCE_OBJECTIVE_MEASURED_TIME)) {
    return Invalid("auto_cut.objective",
                   "a memory budget balances training memory; leave the "
                   "objective unset or BALANCE_OBJECTIVE_TRAINING_MEMORY");
  }
  const bool measured =
      cut.objective() == pnn::v1::BALANCE_OBJECTIVE_MEASURED_TIME;
  if (cut.profile_batches() != 0 && !measured) {
    return Invalid("auto_cut.profile_batches",
                   "applies to BALANCE_OBJECTIVE_MEASURED_TIME only");
  }
  if (cut.profile_batches() < 0 || cut.profile_batches() > kMaxProfileBatches) {
    return Invalid("auto_cut.profile_batches",
                   absl::StrCat("must be between 1 and ", kMaxProfileBatches,
                                " (0: ", kDefaultProfileBatches, "), got ",
                                cut.profile_batches()));
  }
  return absl::OkStatus();
}

// The job's training, the per-segment overrides and the recovery epochs;
// the overrides and the recovery inherit what they leave unset.
absl::Status ResolveTrainingSections(JobSpec* spec, const SpecLimits& limits) {
  PNN_RETURN_IF_ERROR(
      ValidateTraining(spec->training(), "training", false, limits));
  const int segments = spec->model().cut_after_layers_size() + 1;
  if (spec->segment_training_size() > segments) {
    return Invalid("segment_training",
                   absl::StrCat("has ", spec->segment_training_size(),
                                " entries but the cut points make ", segments,
                                " segments"));
  }
  for (int i = 0; i < spec->segment_training_size(); ++i) {
    Inherit(spec->training(), spec->mutable_segment_training(i));
    PNN_RETURN_IF_ERROR(ValidateTraining(
        spec->segment_training(i), absl::StrCat("segment_training[", i, "]"),
        false, limits));
  }
  const int recovery_epochs = spec->recovery().epochs();
  Inherit(spec->training(), spec->mutable_recovery());
  spec->mutable_recovery()->set_epochs(recovery_epochs);
  return ValidateTraining(spec->recovery(), "recovery", true, limits);
}

absl::Status ValidateDataset(const pnn::v1::DatasetSpec& dataset) {
  if (!pnn::v1::ImageOrientation_IsValid(dataset.orientation())) {
    return Invalid("dataset.orientation", "unknown orientation");
  }
  for (char c : dataset.emnist_split()) {
    // The split becomes part of file names: no separators, no "..".
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' &&
        c != '-') {
      return Invalid("dataset.emnist_split",
                     absl::StrCat("must be a split name such as \"balanced\" "
                                  "(letters, digits, '_', '-'), got \"",
                                  dataset.emnist_split(), "\""));
    }
  }
  if (dataset.train_limit() < 0) {
    return Invalid("dataset.train_limit",
                   absl::StrCat("must be >= 0 (0: all), got ",
                                dataset.train_limit()));
  }
  if (dataset.test_limit() < 0) {
    return Invalid("dataset.test_limit",
                   absl::StrCat("must be >= 0 (0: all), got ",
                                dataset.test_limit()));
  }
  return absl::OkStatus();
}

// How the job runs: device, parallelism (and what it rules out) and
// evaluation points.
absl::Status ValidateExecution(const JobSpec& spec) {
  PNN_RETURN_IF_ERROR(ValidateDevice(spec.device()));
  PNN_RETURN_IF_ERROR(
      CheckPrecisionFitsDevice(spec.training(), "training", spec.device()));
  for (int i = 0; i < spec.segment_training_size(); ++i) {
    PNN_RETURN_IF_ERROR(CheckPrecisionFitsDevice(
        spec.segment_training(i), absl::StrCat("segment_training[", i, "]"),
        spec.device()));
  }
  PNN_RETURN_IF_ERROR(
      CheckPrecisionFitsDevice(spec.recovery(), "recovery", spec.device()));
  if (!pnn::v1::Parallelism_IsValid(spec.parallelism())) {
    return Invalid("parallelism", "unknown parallelism");
  }
  if (spec.parallelism() != pnn::v1::PARALLELISM_PARTITIONED &&
      spec.recovery().epochs() > 0) {
    return Invalid("recovery.epochs",
                   "recovery epochs fine-tune a network joined from "
                   "independently trained segments; a model-parallel or "
                   "conventional job trains end to end already (set 0)");
  }
  if (spec.evaluations_per_epoch() < 0 ||
      spec.evaluations_per_epoch() > kMaxEvaluationsPerEpoch) {
    return Invalid("evaluations_per_epoch",
                   absl::StrCat("must be in [0, ", kMaxEvaluationsPerEpoch,
                                "], got ", spec.evaluations_per_epoch()));
  }
  return absl::OkStatus();
}

// A model-parallel job's micro-batches and schedule (defaults: 4 x stages
// micro-batches, at most the batch size; GPipe). Other jobs have no
// pipeline: a set field there is a mistake worth reporting.
absl::Status ResolvePipeline(JobSpec* spec) {
  auto* pipeline = spec->mutable_pipeline();
  if (!pnn::v1::PipelineSchedule_IsValid(pipeline->schedule())) {
    return Invalid("pipeline.schedule", "unknown schedule");
  }
  if (spec->parallelism() != pnn::v1::PARALLELISM_MODEL_PARALLEL) {
    if (pipeline->micro_batches() != 0 ||
        pipeline->schedule() != pnn::v1::PIPELINE_SCHEDULE_UNSPECIFIED) {
      return Invalid("pipeline",
                     "micro-batches and schedules apply to model_parallel "
                     "jobs only; remove the pipeline section or set "
                     "parallelism to PARALLELISM_MODEL_PARALLEL");
    }
    spec->clear_pipeline();
    return absl::OkStatus();
  }
  const int batch = spec->training().batch_size();
  // With auto_cut the stage count is known once the cuts are chosen
  // (ApplyAutoCut fills the default in then).
  if (pipeline->micro_batches() == 0 && spec->has_auto_cut()) {
    if (pipeline->schedule() == pnn::v1::PIPELINE_SCHEDULE_UNSPECIFIED) {
      pipeline->set_schedule(pnn::v1::PIPELINE_SCHEDULE_GPIPE);
    }
    return absl::OkStatus();
  }
  if (pipeline->micro_batches() == 0) {
    const int stages = spec->model().cut_after_layers_size() + 1;
    pipeline->set_micro_batches(std::min(4 * stages, batch));
  }
  if (pipeline->micro_batches() < 1 || pipeline->micro_batches() > batch) {
    return Invalid("pipeline.micro_batches",
                   absl::StrCat("must be in [1, training.batch_size = ", batch,
                                "] (a micro-batch has at least one row), got ",
                                pipeline->micro_batches()));
  }
  if (pipeline->schedule() == pnn::v1::PIPELINE_SCHEDULE_UNSPECIFIED) {
    pipeline->set_schedule(pnn::v1::PIPELINE_SCHEDULE_GPIPE);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<JobSpec> ResolveJobSpec(const JobSpec& spec,
                                       const SpecLimits& limits) {
  if (spec.name().size() > static_cast<size_t>(limits.max_name_bytes)) {
    // Names are kept with the job and sent in every listing.
    return Invalid("name", absl::StrCat("at most ", limits.max_name_bytes,
                                        " bytes, got ", spec.name().size()));
  }
  JobSpec out = spec;
  ApplyDefaults(&out);
  PNN_RETURN_IF_ERROR(ValidateModel(&out, limits));
  PNN_RETURN_IF_ERROR(ValidateSil(out.sil(), limits));
  PNN_RETURN_IF_ERROR(ValidateAutoCut(out));
  PNN_RETURN_IF_ERROR(ResolveTrainingSections(&out, limits));
  PNN_RETURN_IF_ERROR(ValidateDataset(out.dataset()));
  PNN_RETURN_IF_ERROR(ValidateExecution(out));
  PNN_RETURN_IF_ERROR(ResolvePipeline(&out));
  return out;
}

absl::Status ValidateAgainstData(const JobSpec& resolved,
                                 const ImageShape& image, int num_classes,
                                 const SpecLimits& limits) {
  if (num_classes < 2) {
    return Invalid("dataset", absl::StrCat("needs at least 2 classes, the "
                                           "labels show ",
                                           num_classes));
  }
  PNN_ASSIGN_OR_RETURN(const Architecture network,
                       NetworkArchitecture(resolved, image, num_classes));
  PNN_ASSIGN_OR_RETURN(const std::vector<LayerShape> shapes,
                       InferShapes(network));
  int64_t parameters = 0;
  for (const LayerShape& shape : shapes) parameters += shape.parameters;
  if (parameters > limits.max_parameters) {
    return Invalid(resolved.model().layers().empty() ? "model.hidden_widths"
                                                     : "model.layers",
                   absl::StrCat("the network would have ", parameters,
                                " parameters; the limit is ",
                                limits.max_parameters));
  }
  if (resolved.sil().distribution() == pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL) {
    for (int i = 0; i < resolved.model().cut_after_layers_size(); ++i) {
      const int cut = resolved.model().cut_after_layers(i);
      const int64_t elements = Elements(shapes[cut - 1].output);
      if (elements < num_classes) {
        return Invalid(
            absl::StrCat("model.cut_after_layers[", i, "]"),
            absl::StrCat("SIL_DISTRIBUTION_ORTHOGONAL needs the cut's width "
                         "(",
                         elements, ") to be at least the class count (",
                         num_classes, ")"));
      }
    }
  }
  return absl::OkStatus();
}

TrainingConfig SegmentTrainingConfig(const JobSpec& resolved, int index) {
  TrainingConfig config;
  if (index < resolved.segment_training_size()) {
    config = resolved.segment_training(index);
  }
  Inherit(resolved.training(), &config);
  return config;
}

TrainingConfig RecoveryTrainingConfig(const JobSpec& resolved) {
  TrainingConfig config = resolved.recovery();
  const int epochs = config.epochs();
  Inherit(resolved.training(), &config);
  config.set_epochs(epochs);
  return config;
}

bool PrecisionFitsDevice(pnn::v1::Precision precision,
                         absl::string_view device) {
  return precision != pnn::v1::PRECISION_TF32 ||
         absl::StartsWith(device, "cuda");
}

bool IsValidDeviceName(absl::string_view device, int* cuda_index) {
  int index = -1;
  bool valid = device == "cpu" || device == "cuda";
  // N in plain decimal only: SimpleAtoi also takes "01", "+1" and " 1",
  // which would name the same GPU with a string no worker uses.
  if (!valid && absl::StartsWith(device, "cuda:") &&
      absl::SimpleAtoi(device.substr(5), &index) && index >= 0 &&
      device.substr(5) == absl::StrCat(index)) {
    valid = true;
  }
  if (cuda_index != nullptr) *cuda_index = valid ? index : -1;
  return valid;
}

absl::StatusOr<JobSpec> ParseJobSpecJson(absl::string_view json) {
  JobSpec spec;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), &spec, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job spec JSON: ", status.message().as_string()));
  }
  return spec;
}

std::string ToJson(const google::protobuf::Message& message, bool multiline) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = multiline;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

}  // namespace pnn
