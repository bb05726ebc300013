#include "common/weight_gradient_tape.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <vector>

#include "common/model.h"
#include "tests/architectures.h"

namespace pnn {
namespace {

// Two modules with the same weights: one trained by autograd, one by the
// tape, so that their gradients can be compared.
struct Twins {
  explicit Twins(const Architecture& architecture)
      : autograd(architecture), taped(architecture) {
    InitializeWeights(autograd, 7);
    InitializeWeights(taped, 7);
  }
  SegmentModel autograd;
  SegmentModel taped;
};

at::Tensor Rows(int64_t rows, std::vector<int64_t> shape, int seed) {
  shape.insert(shape.begin(), rows);
  return at::randn(shape, at::detail::createCPUGenerator(seed));
}

at::Tensor Classes(int64_t rows, int classes) {
  return at::arange(rows, at::kLong).remainder(classes);
}

// Every parameter's gradient of `a` equals `b`'s (bit for bit, or close).
void ExpectSameGradients(const SegmentModel& a, const SegmentModel& b,
                         bool exact) {
  const auto left = a->named_parameters();
  const auto right = b->named_parameters();
  ASSERT_EQ(left.size(), right.size());
  for (size_t i = 0; i < left.size(); ++i) {
    const at::Tensor& x = left[i].value().grad();
    const at::Tensor& y = right[i].value().grad();
    ASSERT_TRUE(x.defined()) << left[i].key();
    ASSERT_TRUE(y.defined()) << right[i].key();
    if (exact) {
      EXPECT_TRUE(at::equal(x, y)) << left[i].key();
    } else {
      EXPECT_TRUE(at::allclose(x, y, 1e-5, 1e-6)) << left[i].key();
    }
  }
}

TEST(WeightGradientTapeTest, OneMicroBatchIsAutogradsBackwardBitForBit) {
  Twins twins(Mlp({20, 16, 12, 5}));
  const at::Tensor x = Rows(32, {20}, 1);
  const at::Tensor classes = Classes(32, 5);
  for (auto& p : twins.autograd->parameters()) p.mutable_grad() = at::zeros_like(p);
  for (auto& p : twins.taped->parameters()) p.mutable_grad() = at::zeros_like(p);

  at::cross_entropy_loss(twins.autograd->forward(x), classes).backward();

  WeightGradientTape tape(twins.taped->parameters());
  tape.BeginForward(0);
  const at::Tensor loss =
      at::cross_entropy_loss(twins.taped->forward(x, &tape), classes);
  EXPECT_FALSE(tape.Backward(0, loss, at::Tensor(), x).defined())
      << "the input needs no gradient";
  // B alone leaves the linear layers' weights without gradients.
  for (const auto& p : twins.taped->parameters()) {
    EXPECT_EQ(at::count_nonzero(p.grad()).item<int64_t>(), 0);
  }
  tape.AccumulateWeightGradients();
  ExpectSameGradients(twins.autograd, twins.taped, /*exact=*/true);
}

TEST(WeightGradientTapeTest, MicroBatchesAddUpToTheBatchsGradients) {
  // A stage after a cut: starts with the activation, its input needs a
  // gradient (it goes upstream), its output is a linear layer's.
  Twins twins(Mlp({16, 12, 8}, /*first_layer=*/3));
  const at::Tensor x = Rows(24, {16}, 2);
  const at::Tensor output_gradient = Rows(24, {8}, 3);

  const at::Tensor whole = x.detach().requires_grad_(true);
  twins.autograd->forward(whole).backward(output_gradient);

  WeightGradientTape tape(twins.taped->parameters());
  const std::vector<at::Tensor> parts = x.split(6);  // 4 micro-batches
  const std::vector<at::Tensor> gradients = output_gradient.split(6);
  std::vector<at::Tensor> inputs;
  std::vector<at::Tensor> outputs;
  for (int m = 0; m < 4; ++m) {
    tape.BeginForward(m);
    inputs.push_back(parts[m].detach().requires_grad_(true));
    outputs.push_back(twins.taped->forward(inputs.back(), &tape));
  }
  std::vector<at::Tensor> input_gradients;
  for (int m = 3; m >= 0; --m) {  // any order
    input_gradients.insert(input_gradients.begin(),
                           tape.Backward(m, outputs[m], gradients[m],
                                         inputs[m]));
  }
  tape.AccumulateWeightGradients();
  ExpectSameGradients(twins.autograd, twins.taped, /*exact=*/false);
  EXPECT_TRUE(at::allclose(at::cat(input_gradients), whole.grad(), 1e-5,
                           1e-6));
  // W forgets what it used: a second call adds nothing.
  const at::Tensor before = twins.taped->parameters()[0].grad().clone();
  tape.AccumulateWeightGradients();
  EXPECT_TRUE(at::equal(before, twins.taped->parameters()[0].grad()));
}

TEST(WeightGradientTapeTest, PerMicroBatchWeightPassesAccumulate) {
  // 1F1B's order: W after each micro-batch's B, summed into .grad.
  Twins twins(Mlp({10, 6, 4}));
  const at::Tensor x = Rows(8, {10}, 4);
  const at::Tensor classes = Classes(8, 4);
  at::cross_entropy_loss(twins.autograd->forward(x), classes).backward();

  WeightGradientTape tape(twins.taped->parameters());
  const std::vector<at::Tensor> parts = x.split(4);
  const std::vector<at::Tensor> labels = classes.split(4);
  for (int m = 0; m < 2; ++m) {
    tape.BeginForward(m);
    const at::Tensor loss =
        at::cross_entropy_loss(twins.taped->forward(parts[m], &tape),
                               labels[m]) *
        0.5;  // each micro-batch is half the batch's mean
    tape.Backward(m, loss, at::Tensor(), parts[m]);
    tape.AccumulateWeightGradients();
  }
  ExpectSameGradients(twins.autograd, twins.taped, /*exact=*/false);
}

TEST(WeightGradientTapeTest, ConvolutionsAndDropoutKeepAutogradsGradients) {
  Twins twins(SmallCnn());
  const at::Tensor x = Rows(6, {2, 8, 8}, 5);
  const at::Tensor classes = Classes(6, 3);
  twins.autograd->SeedDropout(11);
  const at::Tensor whole = x.detach().requires_grad_(true);
  at::cross_entropy_loss(twins.autograd->forward(whole), classes).backward();

  twins.taped->SeedDropout(11);  // the same masks
  WeightGradientTape tape(twins.taped->parameters());
  tape.BeginForward(0);
  const at::Tensor input = x.detach().requires_grad_(true);
  const at::Tensor loss =
      at::cross_entropy_loss(twins.taped->forward(input, &tape), classes);
  const at::Tensor input_gradient =
      tape.Backward(0, loss, at::Tensor(), input);
  tape.AccumulateWeightGradients();
  ExpectSameGradients(twins.autograd, twins.taped, /*exact=*/true);
  EXPECT_TRUE(at::equal(input_gradient, whole.grad()));
}

}  // namespace
}  // namespace pnn
