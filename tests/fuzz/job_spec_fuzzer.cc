// libFuzzer target for job specs (common/job_spec.h), which arrive from
// clients as protobuf over gRPC (SubmitJob) or as JSON (pnn-train, pnnctl).
//
// Input layout, chosen by the first byte:
//   0x00 W W C C <bytes>  binary mode: <bytes> is a serialized
//                         pnn.v1.JobSpec (ParseFromArray); the image shape
//                         comes from WW (ImageFrom) and the class count
//                         is 1 + (CC % 300) (big-endian 16-bit values);
//   anything else         JSON mode: the whole input is JobSpec JSON
//                         (ParseJobSpecJson); image shape and class count
//                         come from a hash of the input, so examples/*.json
//                         are valid seeds as they are.
// Then, as the coordinator does: ResolveJobSpec (and, with auto_cut,
// ApplyAutoCut for the input's shape); ValidateAgainstData against
// that shape and three fixed ones (1x28x28 with 10 classes, 3x32x32 with
// 100, and the widest image with 256 classes); when valid,
// NetworkArchitecture + CutNetwork and the per-segment training configs.
// Layer lists (model.layers) are fuzzed like the rest of the spec.
// Checked invariants (a violation calls __builtin_trap):
//   - errors are INVALID_ARGUMENT with a message;
//   - a resolved spec has no "default" field left, its device is spelled
//     as workers spell theirs ("cuda:N", N plain decimal), resolving it
//     again gives the same spec, and its JSON (ToJson, as reported to
//     clients) parses back to the same spec;
//   - a valid network stays under the parameter limit, ends in the class
//     scores, and its segments cover layers 1..L contiguously, each
//     taking the shape the layer before it gives.
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/auto_cut.h"
#include "common/job_spec.h"
#include "common/layers.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/util/message_differencer.h"
#include "pnn/v1/job.pb.h"

namespace {

#define FUZZ_CHECK(condition)                                              \
  do {                                                                     \
    if (!(condition)) {                                                    \
      std::fprintf(stderr, "job_spec_fuzzer: check failed: %s (%s:%d)\n",  \
                   #condition, __FILE__, __LINE__);                        \
      __builtin_trap();                                                    \
    }                                                                      \
  } while (0)

using google::protobuf::util::MessageDifferencer;
using pnn::v1::JobSpec;
using pnn::v1::TrainingConfig;

void CheckError(const absl::Status& status) {
  FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  FUZZ_CHECK(!status.message().empty());
}

void CheckTraining(const TrainingConfig& config, bool allow_zero_epochs) {
  FUZZ_CHECK(config.epochs() >= (allow_zero_epochs ? 0 : 1));
  FUZZ_CHECK(config.batch_size() >= 1);
  FUZZ_CHECK(config.learning_rate() > 0);
  FUZZ_CHECK(config.optimizer() != pnn::v1::OPTIMIZER_UNSPECIFIED);
}

// The coordinator hands a task only to a worker whose device string equals
// the task's ("cuda:1" == "cuda:1"), so an accepted spelling must be the
// one workers use: "cpu", "cuda" or "cuda:N" with N in plain decimal.
bool IsCanonicalDevice(const std::string& device) {
  if (device == "cpu" || device == "cuda") return true;
  if (device.rfind("cuda:", 0) != 0) return false;
  const std::string index = device.substr(5);
  if (index.empty() || (index.size() > 1 && index[0] == '0')) return false;
  for (char c : index) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

void CheckResolved(const JobSpec& resolved) {
  const auto& model = resolved.model();
  // One kind of network: hidden widths or a layer list.
  FUZZ_CHECK((model.hidden_widths_size() >= 1) != (model.layers_size() >= 1));
  FUZZ_CHECK(model.cut_after_layers_size() >= 1 ||
             (model.layers_size() >= 1 &&
              resolved.parallelism() == pnn::v1::PARALLELISM_CONVENTIONAL));
  FUZZ_CHECK(model.activation() != pnn::v1::ACTIVATION_UNSPECIFIED);
  for (const auto& layer : model.layers()) {
    FUZZ_CHECK(layer.kind_case() != pnn::v1::LayerSpec::KIND_NOT_SET);
    if (layer.has_conv2d()) FUZZ_CHECK(layer.conv2d().stride() >= 1);
    if (layer.has_max_pool()) FUZZ_CHECK(layer.max_pool().stride() >= 1);
    if (layer.has_avg_pool()) FUZZ_CHECK(layer.avg_pool().stride() >= 1);
  }
  if (model.layers_size() > 0) {
    FUZZ_CHECK(model.layers(model.layers_size() - 1).has_linear());
  }
  const int layers = pnn::CuttableLayers(model);
  int previous = 0;
  for (int cut : model.cut_after_layers()) {
    FUZZ_CHECK(cut > previous && cut < layers);
    previous = cut;
  }
  for (int width : model.hidden_widths()) FUZZ_CHECK(width >= 1);
  FUZZ_CHECK(resolved.sil().distribution() !=
             pnn::v1::SIL_DISTRIBUTION_UNSPECIFIED);
  FUZZ_CHECK(resolved.sil().has_kappa() && resolved.sil().kappa() > 0);
  FUZZ_CHECK(resolved.sil().has_input_noise_std());
  FUZZ_CHECK(resolved.sil().input_mode() != pnn::v1::INPUT_MODE_UNSPECIFIED);
  CheckTraining(resolved.training(), false);
  FUZZ_CHECK(resolved.segment_training_size() <=
             model.cut_after_layers_size() + 1);
  for (const auto& config : resolved.segment_training()) {
    CheckTraining(config, false);
  }
  CheckTraining(resolved.recovery(), true);
  FUZZ_CHECK(!resolved.dataset().path().empty());
  FUZZ_CHECK(resolved.has_seed());
  FUZZ_CHECK(IsCanonicalDevice(resolved.device()));

  // Resolving is idempotent.
  const auto again = pnn::ResolveJobSpec(resolved);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(MessageDifferencer::Equals(*again, resolved));

  // The JSON clients see parses back to the same spec (unknown fields from
  // the binary form have no JSON form).
  JobSpec known = resolved;
  known.DiscardUnknownFields();
  const std::string json = pnn::ToJson(known, /*multiline=*/false);
  const auto reparsed = pnn::ParseJobSpecJson(json);
  if (!reparsed.ok()) {
    std::fprintf(stderr,
                 "job_spec_fuzzer: ToJson output does not parse: %s\n%s\n",
                 std::string(reparsed.status().message()).c_str(),
                 json.c_str());
  }
  FUZZ_CHECK(reparsed.ok());
  FUZZ_CHECK(MessageDifferencer::Equals(*reparsed, known));
}

// The segments of a valid network: contiguous, chained shapes, SIL-able
// cuts.
void CheckSegments(const JobSpec& resolved, const pnn::Architecture& network,
                   int num_classes) {
  const auto segments = pnn::CutNetwork(resolved, network);
  FUZZ_CHECK(segments.ok());
  FUZZ_CHECK(static_cast<int>(segments->size()) ==
             resolved.model().cut_after_layers_size() + 1);
  const auto shapes = pnn::InferShapes(network);
  FUZZ_CHECK(shapes.ok());
  int next_layer = 1;
  for (size_t s = 0; s < segments->size(); ++s) {
    const pnn::SegmentLayout& segment = (*segments)[s];
    FUZZ_CHECK(segment.index == static_cast<int>(s));
    FUZZ_CHECK(segment.first_layer() == next_layer);
    FUZZ_CHECK(segment.last_layer() >= segment.first_layer());
    FUZZ_CHECK(segment.architecture.input_shape ==
               (*shapes)[segment.first_layer() - 1].input);
    FUZZ_CHECK(pnn::InferShapes(segment.architecture).ok());
    if (s + 1 < segments->size() &&
        resolved.sil().distribution() ==
            pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL) {
      FUZZ_CHECK(pnn::Elements((*shapes)[segment.last_layer() - 1].output) >=
                 num_classes);
    }
    CheckTraining(pnn::SegmentTrainingConfig(resolved, static_cast<int>(s)),
                  false);
    next_layer = segment.last_layer() + 1;
  }
  FUZZ_CHECK(next_layer == network.last_layer() + 1);
}

void CheckAgainstData(const JobSpec& resolved, const pnn::ImageShape& image,
                      int num_classes) {
  const absl::Status valid =
      pnn::ValidateAgainstData(resolved, image, num_classes);
  if (!valid.ok()) {
    CheckError(valid);
    return;
  }
  FUZZ_CHECK(num_classes >= 2);
  const auto network = pnn::NetworkArchitecture(resolved, image, num_classes);
  FUZZ_CHECK(network.ok());
  FUZZ_CHECK(static_cast<int>(network->layers.size()) ==
             pnn::CuttableLayers(resolved.model()));
  FUZZ_CHECK(pnn::Elements(network->input_shape) == image.size());
  const auto shapes = pnn::InferShapes(*network);
  FUZZ_CHECK(shapes.ok());
  int64_t parameters = 0;
  for (const pnn::LayerShape& shape : *shapes) {
    FUZZ_CHECK(pnn::Elements(shape.output) >= 1);
    parameters += shape.parameters;
  }
  FUZZ_CHECK(parameters <= pnn::SpecLimits().max_parameters);
  FUZZ_CHECK(shapes->back().output == pnn::SampleShape{num_classes});
  CheckSegments(resolved, *network, num_classes);
  CheckTraining(pnn::RecoveryTrainingConfig(resolved), true);
}

// An image shape from 16 bits: 1-3 channels, 1-40 rows and columns.
pnn::ImageShape ImageFrom(uint32_t bits) {
  return {1 + static_cast<int>(bits % 3), 1 + static_cast<int>(bits / 3 % 40),
          1 + static_cast<int>(bits / 120 % 40)};
}

uint64_t Hash(const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull ^ size;  // FNV-1a
  for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // The binary parser logs every string field with invalid UTF-8; at
  // thousands of inputs a second that is only noise.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  JobSpec spec;
  pnn::ImageShape image;
  int num_classes = 0;
  if (data[0] == 0x00) {
    if (size < 5) return 0;
    image = ImageFrom((data[1] << 8) | data[2]);
    num_classes = 1 + ((data[3] << 8) | data[4]) % 300;
    if (!spec.ParseFromArray(data + 5, static_cast<int>(size - 5))) return 0;
  } else {
    const uint64_t h = Hash(data, size);
    image = ImageFrom(static_cast<uint32_t>(h % 65536));
    num_classes = 1 + static_cast<int>((h >> 16) % 300);
    auto parsed = pnn::ParseJobSpecJson(
        absl::string_view(reinterpret_cast<const char*>(data), size));
    if (!parsed.ok()) {
      CheckError(parsed.status());
      return 0;
    }
    spec = std::move(*parsed);
  }

  auto resolved = pnn::ResolveJobSpec(spec);
  if (!resolved.ok()) {
    CheckError(resolved.status());
    return 0;
  }
  if (resolved->has_auto_cut()) {
    // As the coordinator: pnn chooses the cuts once the data set's shape is
    // known and has passed ValidateAgainstData.
    const absl::Status valid =
        pnn::ValidateAgainstData(*resolved, image, num_classes);
    if (!valid.ok()) {
      CheckError(valid);
      return 0;
    }
    const auto plan = pnn::ApplyAutoCut(&*resolved, image, num_classes);
    if (!plan.ok()) {
      CheckError(plan.status());
      return 0;
    }
    FUZZ_CHECK(!resolved->has_auto_cut());
    FUZZ_CHECK(plan->segments_size() ==
               resolved->model().cut_after_layers_size() + 1);
  }
  CheckResolved(*resolved);
  CheckAgainstData(*resolved, image, num_classes);
  CheckAgainstData(*resolved, {1, 28, 28}, 10);
  CheckAgainstData(*resolved, {3, 32, 32}, 100);
  CheckAgainstData(*resolved, {1, 1, std::numeric_limits<int32_t>::max()},
                   256);
  return 0;
}
