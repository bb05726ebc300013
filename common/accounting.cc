#include "common/accounting.h"

#include <time.h>

#include <algorithm>
#include <fstream>
#include <string>

namespace pnn {
namespace {

// Reads a "Key:   N kB" line of /proc/self/status, in bytes (0 if absent).
int64_t ReadStatusKilobytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.compare(0, key.size(), key) == 0 && line.size() > key.size() &&
        line[key.size()] == ':') {
      return std::stoll(line.substr(key.size() + 1)) * 1024;
    }
  }
  return 0;
}

}  // namespace

pnn::v1::TrainingCost AnalyticTrainingCost(
    const Architecture& architecture, const pnn::v1::TrainingConfig& config) {
  pnn::v1::TrainingCost cost;
  const auto shapes = InferShapes(architecture);
  if (!shapes.ok()) return cost;
  int64_t parameters = 0;
  int64_t flops = 0;
  const int64_t input = Elements(architecture.input_shape);
  int64_t activation_elements = input;
  if (architecture.leading_activation) activation_elements += input;
  for (size_t i = 0; i < shapes->size(); ++i) {
    const LayerShape& shape = (*shapes)[i];
    const pnn::v1::LayerSpec& layer = architecture.layers[i];
    parameters += shape.parameters;
    flops += shape.forward_flops;
    const int64_t out = Elements(shape.output);
    if (!layer.has_flatten()) activation_elements += out;
    if (IsWeighted(layer) && i + 1 < shapes->size()) activation_elements += out;
  }
  constexpr int64_t kFloatBytes = 4;
  cost.set_parameter_count(parameters);
  cost.set_parameter_bytes(parameters * kFloatBytes);
  cost.set_gradient_bytes(parameters * kFloatBytes);
  int64_t state_copies = 0;
  if (config.optimizer() == pnn::v1::OPTIMIZER_SGD) {
    state_copies = config.momentum() > 0 ? 1 : 0;
  } else {
    state_copies = 2;  // Adam: first and second moments
  }
  cost.set_optimizer_state_bytes(state_copies * parameters * kFloatBytes);
  cost.set_activation_bytes(activation_elements * config.batch_size() *
                            kFloatBytes);
  cost.set_forward_flops_per_sample(flops);
  cost.set_training_flops_per_sample(3 * flops);
  return cost;
}

int64_t CurrentRssBytes() { return ReadStatusKilobytes("VmRSS"); }
int64_t PeakRssBytes() { return ReadStatusKilobytes("VmHWM"); }

double ProcessCpuSeconds() {
  timespec now{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now) != 0) return 0;
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

void PeakRssMeter::Start() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
  clear_refs.flush();
  reset_worked_ = clear_refs.good();
  baseline_ = CurrentRssBytes();
}

int64_t PeakRssMeter::PeakGrowthBytes() const {
  // Without the reset the high-water mark may predate Start(); then the
  // current RSS is the best lower bound we have.
  const int64_t peak = reset_worked_ ? PeakRssBytes() : CurrentRssBytes();
  return std::max<int64_t>(0, peak - baseline_);
}

}  // namespace pnn
