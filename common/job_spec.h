// Defaults, validation and the cutting plan of a JobSpec (proto/pnn/v1).
//
// Pure functions over protobuf messages, free of libtorch, so the
// coordinator can validate a job before it loads anything. Errors are
// INVALID_ARGUMENT and name the offending field and the rule it breaks.
#ifndef PNN_COMMON_JOB_SPEC_H_
#define PNN_COMMON_JOB_SPEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/layers.h"
#include "pnn/v1/job.pb.h"

namespace pnn {

// Defaults: the paper's setting on Fashion-MNIST.
inline constexpr int kDefaultHiddenWidth = 256;
inline constexpr int kDefaultHiddenLayers = 5;
inline constexpr int kDefaultCutAfterLayer = 3;
inline constexpr int kDefaultEpochs = 5;
inline constexpr int kDefaultBatchSize = 128;
inline constexpr float kDefaultLearningRate = 1e-3f;
inline constexpr float kDefaultKappa = 1.0f;
inline constexpr uint64_t kDefaultSeed = 1;
inline constexpr char kDefaultDatasetPath[] = "fashion-mnist";
// Each evaluation point costs a test pass after training and a weights
// message during it.
inline constexpr int kMaxEvaluationsPerEpoch = 20;

// Upper bounds that keep a single request from exhausting a process.
struct SpecLimits {
  int max_layers = 64;
  int max_width = 1 << 16;
  int64_t max_parameters = int64_t{1} << 30;
  int max_epochs = 10000;
  int max_batch_size = 1 << 16;
  float max_learning_rate = 10.0f;
  float max_kappa = 1e4f;
  int max_name_bytes = 256;
};

// Fills every defaulted field of `spec` and validates the result against
// the rules that need no data set (shapes, ranges, cut points, device
// syntax). The returned spec has no zero field that means "default".
absl::StatusOr<pnn::v1::JobSpec> ResolveJobSpec(
    const pnn::v1::JobSpec& spec, const SpecLimits& limits = SpecLimits());

// Checks a resolved spec against the data set's shape: every layer fits
// the shape before it (a layer list), the class count vs the SIL settings
// (orthogonal rows need a cut of at least as many elements as classes) and
// the parameter budget of the whole network.
absl::Status ValidateAgainstData(const pnn::v1::JobSpec& resolved,
                                 const ImageShape& image, int num_classes,
                                 const SpecLimits& limits = SpecLimits());

// The resolved hyperparameters of segment `index` (overrides merged with the
// job's defaults) and of the recovery epochs.
pnn::v1::TrainingConfig SegmentTrainingConfig(
    const pnn::v1::JobSpec& resolved, int index);
pnn::v1::TrainingConfig RecoveryTrainingConfig(
    const pnn::v1::JobSpec& resolved);

// True for "cpu", "cuda" and "cuda:N" with N in plain decimal (the exact
// spelling matters: tasks go to workers whose device string is equal).
// Sets *cuda_index (-1 for "cpu" and "cuda") when given.
bool IsValidDeviceName(absl::string_view device, int* cuda_index = nullptr);

// Whether training arithmetic `precision` exists on `device` ("cpu",
// "cuda", "cuda:N"): TF32 is a mode of CUDA's matrix units only. The one
// rule behind the spec's check and the trainer's.
bool PrecisionFitsDevice(pnn::v1::Precision precision,
                         absl::string_view device);

// Parses protobuf JSON of a JobSpec (unknown fields are an error, so a typo
// is reported instead of silently ignored).
absl::StatusOr<pnn::v1::JobSpec> ParseJobSpecJson(absl::string_view json);

// Protobuf JSON with the .proto field names.
std::string ToJson(const google::protobuf::Message& message,
                   bool multiline = true);

}  // namespace pnn

#endif  // PNN_COMMON_JOB_SPEC_H_
