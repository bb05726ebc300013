#include "common/weight_gradient_tape.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <unordered_set>
#include <utility>

namespace pnn {
namespace {

// Adds `gradient` into `parameter`'s .grad as autograd's AccumulateGrad
// does: the first one is taken as it is, later ones are summed into it.
void AddGradient(const at::Tensor& parameter, const at::Tensor& gradient) {
  if (!gradient.defined()) return;
  at::Tensor& grad = parameter.mutable_grad();
  if (grad.defined()) {
    grad.add_(gradient);
  } else {
    grad = gradient;
  }
}

// [rows, features] of a linear layer's input or output gradient; the
// layer may have been applied to more than two dimensions.
at::Tensor Rows(const at::Tensor& tensor) {
  return tensor.reshape({-1, tensor.size(-1)}).to(at::kFloat);
}

}  // namespace

WeightGradientTape::WeightGradientTape(std::vector<at::Tensor> parameters)
    : parameters_(std::move(parameters)) {}

void WeightGradientTape::BeginForward(int micro) {
  recording_ = micro;
  micros_[micro] = Micro();
}

at::Tensor WeightGradientTape::Linear(const at::Tensor& x,
                                      const at::Tensor& weight,
                                      const at::Tensor& bias) {
  at::Tensor y = at::linear(x, weight.detach(),
                            bias.defined() ? bias.detach() : at::Tensor());
  // The first layer of the first stage: nothing before it needs a
  // gradient, so y starts the graph.
  if (!y.requires_grad()) y = y.detach().requires_grad_(true);
  Record record;
  record.weight = weight;
  record.bias = bias;
  record.input = x.detach();
  record.output = y;
  micros_[recording_].records.push_back(std::move(record));
  return y;
}

const std::vector<at::Tensor>& WeightGradientTape::OtherParameters() {
  if (other_parameters_known_) return other_parameters_;
  std::unordered_set<const void*> taped;
  for (const auto& [index, micro] : micros_) {
    for (const Record& record : micro.records) {
      taped.insert(record.weight.unsafeGetTensorImpl());
      if (record.bias.defined()) taped.insert(record.bias.unsafeGetTensorImpl());
    }
  }
  for (const at::Tensor& parameter : parameters_) {
    if (parameter.requires_grad() &&
        taped.count(parameter.unsafeGetTensorImpl()) == 0) {
      other_parameters_.push_back(parameter);
    }
  }
  other_parameters_known_ = true;
  return other_parameters_;
}

at::Tensor WeightGradientTape::Backward(int micro, const at::Tensor& root,
                                        const at::Tensor& root_gradient,
                                        const at::Tensor& input) {
  Micro& recorded = micros_.at(micro);
  const std::vector<at::Tensor>& others = OtherParameters();
  std::vector<at::Tensor> wrt;
  wrt.reserve(recorded.records.size() + others.size() + 1);
  for (const Record& record : recorded.records) wrt.push_back(record.output);
  wrt.insert(wrt.end(), others.begin(), others.end());
  const bool wants_input = input.defined() && input.requires_grad();
  if (wants_input) wrt.push_back(input);
  std::vector<at::Tensor> gradients;
  if (!wrt.empty()) {
    std::vector<at::Tensor> root_gradients;
    if (root_gradient.defined()) root_gradients.push_back(root_gradient);
    gradients = torch::autograd::grad({root}, wrt, root_gradients,
                                      /*retain_graph=*/false,
                                      /*create_graph=*/false,
                                      /*allow_unused=*/true);
  }
  size_t next = 0;
  for (Record& record : recorded.records) {
    at::Tensor& gradient = gradients[next++];
    record.output_gradient =
        gradient.defined() ? gradient : at::zeros_like(record.output);
    record.output = at::Tensor();  // the graph is spent
  }
  for (const at::Tensor& parameter : others) {
    AddGradient(parameter, gradients[next++]);
  }
  recorded.backward_done = true;
  return wants_input ? gradients[next] : at::Tensor();
}

void WeightGradientTape::AccumulateWeightGradients() {
  std::vector<const Micro*> done;
  for (const auto& [index, micro] : micros_) {
    if (micro.backward_done) done.push_back(&micro);
  }
  if (done.empty()) return;
  const size_t layers = done.front()->records.size();
  for (size_t layer = 0; layer < layers; ++layer) {
    std::vector<at::Tensor> inputs;
    std::vector<at::Tensor> output_gradients;
    for (const Micro* micro : done) {
      const Record& record = micro->records.at(layer);
      inputs.push_back(Rows(record.input));
      output_gradients.push_back(Rows(record.output_gradient));
    }
    const at::Tensor x = inputs.size() == 1 ? inputs[0] : at::cat(inputs);
    const at::Tensor dy = output_gradients.size() == 1
                              ? output_gradients[0]
                              : at::cat(output_gradients);
    const Record& first = done.front()->records[layer];
    // The products autograd's linear backward computes, in its order.
    AddGradient(first.weight, at::mm(dy.t(), x));
    if (first.bias.defined()) AddGradient(first.bias, dy.sum(0));
  }
  for (auto it = micros_.begin(); it != micros_.end();) {
    it = it->second.backward_done ? micros_.erase(it) : std::next(it);
  }
}

}  // namespace pnn
