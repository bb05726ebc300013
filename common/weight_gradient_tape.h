// A training step's backward pass in two parts, as zero-bubble pipeline
// schedules split it (Qi et al., "Zero Bubble Pipeline Parallelism", 2023):
//
//  - per micro-batch, the gradients that travel backward through the
//    model: to its input (which a pipeline stage sends upstream) and to the
//    output of each of its linear layers ("B");
//  - later, the linear layers' weight and bias gradients ("W"), computed
//    for all the micro-batches recorded so far in one product per layer.
//
// Every training loop uses it (TrainSegment, pipeline stages, the layer
// profiler). Why: on the CPU, autograd's backward made a step cost 2-3x
// this one's for 1024-wide layers (libtorch 1.13, OpenBLAS), for the same
// products (the extra time is outside them; its cause was not pinned
// down); and with M
// micro-batches per batch autograd computes and adds a full-size weight
// gradient M times from M thin products. A GPipe stage defers W to the end
// of the batch: one product over the batch's rows, as a one-micro-batch
// step computes. 1F1B runs W after each micro-batch's B, so that, as the
// schedule intends, only the micro-batches in flight are kept.
//
// Usage, per batch: SegmentModel::forward(x, &tape) records micro-batch m's
// linear layers after BeginForward(m); Backward(m, ...) runs its B part;
// AccumulateWeightGradients() runs W for every micro-batch whose B has run
// and adds the results into the parameters' .grad. Other parameters
// (convolutions) get their gradients in Backward, accumulated as autograd
// would. With one micro-batch the result is bit-identical to
// loss.backward() into zeroed gradients.
//
// Not thread-safe: one tape per training loop, driven from its thread.
#ifndef PNN_COMMON_WEIGHT_GRADIENT_TAPE_H_
#define PNN_COMMON_WEIGHT_GRADIENT_TAPE_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <vector>

namespace pnn {

class WeightGradientTape {
 public:
  // `parameters`: every trainable parameter of the stage's model (its
  // linear layers' and the rest).
  explicit WeightGradientTape(std::vector<at::Tensor> parameters);

  // The next linear layers recorded belong to micro-batch `micro`.
  void BeginForward(int micro);

  // A linear layer's forward, y = x W^T + b, for the micro-batch being
  // recorded: the weights take no part in autograd's graph (W computes
  // their gradients); x and y are kept for it.
  at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight,
                    const at::Tensor& bias);

  // B for micro-batch `micro`: backpropagates `root` (the loss, with an
  // undefined `root_gradient`, or the stage's output with the gradient the
  // next stage returned) to its linear layers' outputs and, when `input`
  // requires a gradient, to `input`, which is returned (else undefined).
  // The micro-batch's graph is freed. Throws like autograd (c10::Error).
  at::Tensor Backward(int micro, const at::Tensor& root,
                      const at::Tensor& root_gradient,
                      const at::Tensor& input);

  // W for every micro-batch whose Backward has run since the last call, in
  // micro-batch order: adds each linear layer's weight and bias gradient
  // (in fp32) into their .grad, and forgets those micro-batches.
  void AccumulateWeightGradients();

 private:
  struct Record {
    at::Tensor weight;  // the parameter, to receive the gradient
    at::Tensor bias;    // undefined for a layer without bias
    at::Tensor input;   // x, detached
    at::Tensor output;  // y, in the graph until Backward
    at::Tensor output_gradient;  // dL/dy, set by Backward
  };
  struct Micro {
    std::vector<Record> records;
    bool backward_done = false;
  };

  // The parameters Backward hands to autograd: those no Linear call took.
  const std::vector<at::Tensor>& OtherParameters();

  const std::vector<at::Tensor> parameters_;
  std::vector<at::Tensor> other_parameters_;
  bool other_parameters_known_ = false;
  std::map<int, Micro> micros_;  // by micro-batch index, in order
  int recording_ = -1;
};

}  // namespace pnn

#endif  // PNN_COMMON_WEIGHT_GRADIENT_TAPE_H_
