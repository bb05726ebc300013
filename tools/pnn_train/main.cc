// pnn-train: conventional and partitioned (SIL) training of one job spec,
// side by side, in this process.
//
//   pnn-train                               # the paper's setting, Fashion-MNIST
//   pnn-train --job examples/fashion_mnist.json --epochs 2 --output json
//   pnn-train --data_dir ~/emnist --emnist_split balanced
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/auto_cut.h"
#include "common/comparison.h"
#include "common/cpu_budget.h"
#include "common/dataset.h"
#include "common/job_spec.h"
#include "common/layer_profile.h"
#include "common/trainer.h"
#include "tools/pnn_train/report_table.h"

ABSL_FLAG(std::string, job, "",
          "Job spec as protobuf JSON (pnn.v1.JobSpec); flags below override "
          "its fields.");
ABSL_FLAG(std::string, data_dir, "",
          "Directory of the IDX files (default: the job's dataset.path under "
          "--data_root, i.e. Debian's Fashion-MNIST).");
ABSL_FLAG(std::string, data_root, pnn::kDefaultDataRoot,
          "Directory that relative dataset.path values are resolved against.");
ABSL_FLAG(std::string, emnist_split, "",
          "EMNIST split to read (balanced, byclass, letters, ...).");
ABSL_FLAG(int32_t, epochs, 0, "Epochs per segment and for conventional "
                              "training (0: from the job, default 5).");
ABSL_FLAG(int32_t, batch_size, 0, "Batch size (0: from the job, default 128).");
ABSL_FLAG(double, learning_rate, 0, "Learning rate (0: from the job, 1e-3).");
ABSL_FLAG(int32_t, train_limit, -1,
          "Use only the first N training samples (-1: from the job; 0: all).");
ABSL_FLAG(int32_t, test_limit, -1,
          "Use only the first N test samples (-1: from the job; 0: all).");
ABSL_FLAG(std::string, hidden_widths, "",
          "Comma-separated hidden layer widths (default 256,256,256,256,256).");
ABSL_FLAG(std::string, cut_after, "",
          "Comma-separated linear layers to cut after (default 3).");
ABSL_FLAG(double, kappa, -1, "SIL scale kappa (-1: from the job, default 1).");
ABSL_FLAG(double, noise, -1,
          "Gaussian noise std on SIL inputs (-1: from the job, default 0).");
ABSL_FLAG(std::string, sil, "", "SIL distribution: uniform, normal, orthogonal.");
ABSL_FLAG(std::string, input_mode, "",
          "synthetic_labels (parallel) or previous_outputs (sequential).");
ABSL_FLAG(int32_t, recovery_epochs, -1,
          "End-to-end epochs on the joined network (-1: from the job, 0).");
ABSL_FLAG(int64_t, seed, -1, "Job seed (-1: from the job, default 1).");
ABSL_FLAG(std::string, device, "", "cpu (default), cuda or cuda:N.");
ABSL_FLAG(std::string, precision, "",
          "Training arithmetic: fp32 (default), bf16 (autocast) or tf32 "
          "(CUDA only).");
ABSL_FLAG(int32_t, threads, 0,
          "Intra-op threads (0: the CPUs this process may use: its affinity "
          "mask, capped by its cgroup's CPU quota).");
ABSL_FLAG(std::string, output, "table", "table or json.");
ABSL_FLAG(bool, conventional, true, "Run the conventional baseline.");
ABSL_FLAG(bool, partitioned, true, "Run partitioned training.");

namespace {

int Fail(const std::string& message) {
  std::cerr << "pnn-train: " << message << "\n";
  return 1;
}

bool ParseIntList(const std::string& text, std::vector<int>* out) {
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int value = 0;
    if (!absl::SimpleAtoi(part, &value)) return false;
    out->push_back(value);
  }
  return !out->empty();
}

// ApplyFlags' second half: the SIL settings, recovery, seed, device and
// precision.
absl::Status ApplySilAndRunFlags(pnn::v1::JobSpec* spec) {
  auto* sil = spec->mutable_sil();
  if (absl::GetFlag(FLAGS_kappa) >= 0) {
    sil->set_kappa(static_cast<float>(absl::GetFlag(FLAGS_kappa)));
  }
  if (absl::GetFlag(FLAGS_noise) >= 0) {
    sil->set_input_noise_std(static_cast<float>(absl::GetFlag(FLAGS_noise)));
  }
  const std::string distribution = absl::GetFlag(FLAGS_sil);
  if (distribution == "uniform") {
    sil->set_distribution(pnn::v1::SIL_DISTRIBUTION_UNIFORM);
  } else if (distribution == "normal") {
    sil->set_distribution(pnn::v1::SIL_DISTRIBUTION_NORMAL);
  } else if (distribution == "orthogonal") {
    sil->set_distribution(pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL);
  } else if (!distribution.empty()) {
    return absl::InvalidArgumentError(
        "--sil: expected uniform, normal or orthogonal");
  }
  const std::string mode = absl::GetFlag(FLAGS_input_mode);
  if (mode == "synthetic_labels") {
    sil->set_input_mode(pnn::v1::INPUT_MODE_SYNTHETIC_LABELS);
  } else if (mode == "previous_outputs") {
    sil->set_input_mode(pnn::v1::INPUT_MODE_PREVIOUS_OUTPUTS);
  } else if (!mode.empty()) {
    return absl::InvalidArgumentError(
        "--input_mode: expected synthetic_labels or previous_outputs");
  }
  if (absl::GetFlag(FLAGS_recovery_epochs) >= 0) {
    spec->mutable_recovery()->set_epochs(absl::GetFlag(FLAGS_recovery_epochs));
  }
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    spec->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  }
  if (!absl::GetFlag(FLAGS_device).empty()) {
    spec->set_device(absl::GetFlag(FLAGS_device));
  }
  const std::string precision = absl::GetFlag(FLAGS_precision);
  if (precision == "fp32") {
    spec->mutable_training()->set_precision(pnn::v1::PRECISION_FP32);
  } else if (precision == "bf16") {
    spec->mutable_training()->set_precision(pnn::v1::PRECISION_BF16);
  } else if (precision == "tf32") {
    spec->mutable_training()->set_precision(pnn::v1::PRECISION_TF32);
  } else if (!precision.empty()) {
    return absl::InvalidArgumentError(
        "--precision: expected fp32, bf16 or tf32 (tf32: CUDA only)");
  }
  return absl::OkStatus();
}

absl::Status ApplyFlags(pnn::v1::JobSpec* spec) {
  if (!absl::GetFlag(FLAGS_data_dir).empty()) {
    spec->mutable_dataset()->set_path(absl::GetFlag(FLAGS_data_dir));
  }
  if (!absl::GetFlag(FLAGS_emnist_split).empty()) {
    spec->mutable_dataset()->set_emnist_split(absl::GetFlag(FLAGS_emnist_split));
  }
  auto* training = spec->mutable_training();
  if (absl::GetFlag(FLAGS_epochs) > 0) {
    training->set_epochs(absl::GetFlag(FLAGS_epochs));
    // --epochs is "epochs per segment": it replaces per-segment overrides.
    for (auto& segment : *spec->mutable_segment_training()) segment.set_epochs(0);
  }
  if (absl::GetFlag(FLAGS_batch_size) > 0) {
    training->set_batch_size(absl::GetFlag(FLAGS_batch_size));
  }
  if (absl::GetFlag(FLAGS_learning_rate) > 0) {
    training->set_learning_rate(
        static_cast<float>(absl::GetFlag(FLAGS_learning_rate)));
  }
  if (absl::GetFlag(FLAGS_train_limit) >= 0) {
    spec->mutable_dataset()->set_train_limit(absl::GetFlag(FLAGS_train_limit));
  }
  if (absl::GetFlag(FLAGS_test_limit) >= 0) {
    spec->mutable_dataset()->set_test_limit(absl::GetFlag(FLAGS_test_limit));
  }
  std::vector<int> values;
  if (!absl::GetFlag(FLAGS_hidden_widths).empty()) {
    if (!ParseIntList(absl::GetFlag(FLAGS_hidden_widths), &values)) {
      return absl::InvalidArgumentError(
          "--hidden_widths: expected comma-separated integers");
    }
    spec->mutable_model()->mutable_hidden_widths()->Assign(values.begin(),
                                                           values.end());
  }
  values.clear();
  if (!absl::GetFlag(FLAGS_cut_after).empty()) {
    if (!ParseIntList(absl::GetFlag(FLAGS_cut_after), &values)) {
      return absl::InvalidArgumentError(
          "--cut_after: expected comma-separated integers");
    }
    spec->mutable_model()->mutable_cut_after_layers()->Assign(values.begin(),
                                                              values.end());
  }
  return ApplySilAndRunFlags(spec);
}

// Cuts chosen by pnn (auto_cut) need the data set's shape; balancing
// measured time, a profiling pass in this process first.
absl::Status ChooseCuts(const pnn::Dataset& data, int threads,
                        pnn::v1::JobSpec* resolved) {
  std::optional<pnn::LayerTimes> times;
  if (pnn::NeedsLayerTimes(*resolved)) {
    auto network = pnn::NetworkArchitecture(*resolved, data.image_shape(),
                                            data.num_classes);
    if (!network.ok()) return network.status();
    if (absl::Status set = pnn::SetTrainingThreads(threads); !set.ok()) {
      return set;
    }
    std::cerr << "pnn-train: timing each layer ("
              << resolved->auto_cut().profile_batches() << " batches of "
              << resolved->training().batch_size() << ")\n";
    auto seconds = pnn::ProfileLayers(*network, resolved->training(),
                                      resolved->auto_cut().profile_batches(),
                                      resolved->device());
    if (!seconds.ok()) return seconds.status();
    times = pnn::LayerTimes{*std::move(seconds),
                            absl::StrCat("pnn-train (", resolved->device(),
                                         ", ", threads, " threads)")};
  }
  auto plan = pnn::ApplyAutoCut(resolved, data.image_shape(), data.num_classes,
                                times ? &*times : nullptr);
  if (!plan.ok()) return plan.status();
  if (plan->segments_size() > 0) {
    std::cerr << "pnn-train: cuts chosen: after layer(s) "
              << absl::StrJoin(plan->cut_after_layers(), ",");
    for (const auto& segment : plan->segments()) {
      if (segment.measured_seconds_per_batch() > 0) {
        std::cerr << absl::StrFormat(
            " [layers %d..%d: %.2f ms/batch]", segment.first_layer(),
            segment.last_layer(), 1e3 * segment.measured_seconds_per_batch());
      }
    }
    std::cerr << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Trains one job spec conventionally and partitioned with synthetic "
      "intermediate labels, and prints the results side by side.\n"
      "Usage: pnn-train [--job JOB.json] [--data_dir DIR] [--epochs N] "
      "[--train_limit N] [--threads N] [--output table|json]");
  absl::ParseCommandLine(argc, argv);
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output != "table" && output != "json") {
    return Fail("--output must be table or json");
  }

  pnn::v1::JobSpec spec;
  if (const std::string path = absl::GetFlag(FLAGS_job); !path.empty()) {
    std::ifstream file(path);
    if (!file) return Fail(absl::StrCat("cannot read --job file ", path));
    std::stringstream text;
    text << file.rdbuf();
    auto parsed = pnn::ParseJobSpecJson(text.str());
    if (!parsed.ok()) {
      return Fail(absl::StrCat(path, ": ", parsed.status().message()));
    }
    spec = *parsed;
  }
  if (absl::Status status = ApplyFlags(&spec); !status.ok()) {
    return Fail(std::string(status.message()));
  }
  auto resolved = pnn::ResolveJobSpec(spec);
  if (!resolved.ok()) return Fail(std::string(resolved.status().message()));

  auto directory = pnn::ResolveDatasetDirectory(
      absl::GetFlag(FLAGS_data_root), resolved->dataset(),
      /*allow_absolute=*/true);
  if (!directory.ok()) return Fail(std::string(directory.status().message()));
  std::cerr << "pnn-train: loading " << *directory << "\n";
  auto data = pnn::LoadDataset(*directory, resolved->dataset());
  if (!data.ok()) return Fail(std::string(data.status().message()));
  std::cerr << "pnn-train: " << data->train.size() << " training and "
            << data->test.size() << " test samples, " << data->rows << "x"
            << data->cols << " pixels, " << data->num_classes << " classes\n";
  pnn::ComparisonOptions options;
  options.threads = pnn::ResolveThreadCount(absl::GetFlag(FLAGS_threads));
  if (absl::Status cut = ChooseCuts(*data, options.threads, &*resolved);
      !cut.ok()) {
    return Fail(std::string(cut.message()));
  }
  options.run_conventional = absl::GetFlag(FLAGS_conventional);
  options.run_partitioned = absl::GetFlag(FLAGS_partitioned);
  const bool interactive = isatty(STDERR_FILENO) != 0;
  options.progress = [interactive](const std::string& line, bool transient) {
    if (transient && !interactive) return;  // keep logs to one line an epoch
    std::fprintf(stderr, "%s%s%s", interactive ? "\r\033[K" : "",
                 line.c_str(), transient ? "" : "\n");
    std::fflush(stderr);
  };
  auto report = pnn::RunComparison(*resolved, *data, options);
  if (!report.ok()) return Fail(std::string(report.status().message()));
  if (output == "json") {
    std::cout << pnn::ToJson(*report) << "\n";
  } else {
    std::cout << pnn::FormatComparisonTable(*report);
  }
  return 0;
}
