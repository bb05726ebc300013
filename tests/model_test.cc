#include "common/model.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "common/partition.h"
#include "gmock/gmock.h"
#include "tests/architectures.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

std::vector<SegmentModel> MakeSegments(pnn::v1::Activation activation) {
  // Network 12-9-7-5-4 cut after layers 1 and 3.
  std::vector<SegmentModel> parts = {SegmentModel(Mlp({12, 9}, 1, activation)),
                                     SegmentModel(Mlp({9, 7, 5}, 2, activation)),
                                     SegmentModel(Mlp({5, 4}, 4, activation))};
  for (size_t i = 0; i < parts.size(); ++i) InitializeWeights(parts[i], 11 + i);
  return parts;
}

TEST(ModelTest, JoinedForwardIsBitForBitTheComposition) {
  for (auto activation : {pnn::v1::ACTIVATION_RELU, pnn::v1::ACTIVATION_TANH,
                          pnn::v1::ACTIVATION_GELU,
                          pnn::v1::ACTIVATION_SIGMOID}) {
    auto parts = MakeSegments(activation);
    auto joined = JoinSegments(parts);
    ASSERT_TRUE(joined.ok()) << joined.status();
    EXPECT_EQ((*joined)->first_layer(), 1);
    EXPECT_EQ((*joined)->last_layer(), 4);
    const at::Tensor x = at::randn({33, 12});
    at::NoGradGuard no_grad;
    const at::Tensor composed =
        parts[2]->forward(parts[1]->forward(parts[0]->forward(x)));
    const at::Tensor whole = (*joined)->forward(x);
    ASSERT_EQ(whole.sizes(), composed.sizes());
    EXPECT_TRUE(at::equal(whole, composed)) << "activation " << activation;
  }
}

TEST(ModelTest, JoinRejectsSegmentsThatDoNotContinue) {
  auto parts = MakeSegments(pnn::v1::ACTIVATION_RELU);
  std::swap(parts[1], parts[2]);
  auto joined = JoinSegments(parts);
  ASSERT_FALSE(joined.ok());
  EXPECT_THAT(std::string(joined.status().message()),
              HasSubstr("does not continue"));
}

TEST(ModelTest, InitialisationDependsOnSeedAndLayerOnly) {
  SegmentModel whole(Mlp({12, 9, 7, 5}));
  SegmentModel tail(Mlp({7, 5}, 3));
  InitializeWeights(whole, 5);
  InitializeWeights(tail, 5);
  const auto whole_layers = whole->weighted_layers();
  const auto tail_layers = tail->weighted_layers();
  EXPECT_TRUE(at::equal(whole_layers[2].weight, tail_layers[0].weight));
  EXPECT_TRUE(at::equal(whole_layers[2].bias, tail_layers[0].bias));
  SegmentModel other(Mlp({7, 5}, 3));
  InitializeWeights(other, 6);
  EXPECT_FALSE(
      at::equal(other->weighted_layers()[0].weight, tail_layers[0].weight));
  const double bound = 1.0 / std::sqrt(7.0);
  EXPECT_LE(tail_layers[0].weight.abs().max().item<double>(), bound);
}

TEST(ModelTest, WeightsRoundTripThroughTheWireFormat) {
  auto parts = MakeSegments(pnn::v1::ACTIVATION_RELU);
  const pnn::v1::SegmentWeights weights = ExportWeights(parts[1], 1);
  EXPECT_EQ(weights.first_layer(), 2);
  EXPECT_EQ(weights.last_layer(), 3);
  ASSERT_EQ(weights.tensors_size(), 4);
  EXPECT_EQ(weights.tensors(0).name(), "linear2.weight");
  auto rebuilt = ModelFromWeights(weights, Mlp({9, 7, 5}, 2));
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
  const at::Tensor x = at::randn({4, 9});
  at::NoGradGuard no_grad;
  EXPECT_TRUE(at::equal((*rebuilt)->forward(x), parts[1]->forward(x)));
}

TEST(ModelTest, ImportRejectsMalformedWeights) {
  auto parts = MakeSegments(pnn::v1::ACTIVATION_RELU);
  const pnn::v1::SegmentWeights good = ExportWeights(parts[1], 1);

  auto missing = good;
  missing.mutable_tensors()->RemoveLast();
  EXPECT_THAT(std::string(ImportWeights(missing, parts[1]).message()),
              HasSubstr("expected 4 tensors"));

  auto renamed = good;
  renamed.mutable_tensors(3)->set_name("linear9.bias");
  EXPECT_THAT(std::string(ImportWeights(renamed, parts[1]).message()),
              HasSubstr("linear3.bias\" is missing"));

  auto short_data = good;
  short_data.mutable_tensors(0)->mutable_data()->resize(8);
  EXPECT_THAT(std::string(ImportWeights(short_data, parts[1]).message()),
              HasSubstr("bytes of float32 data"));

  auto wrong_shape = ExportWeights(SegmentModel(Mlp({9, 6, 5}, 2)), 1);
  EXPECT_THAT(std::string(ImportWeights(wrong_shape, parts[1]).message()),
              HasSubstr("has shape"));

  auto not_finite = good;
  float nan = std::nanf("");
  not_finite.mutable_tensors(1)->mutable_data()->replace(0, 4,
      reinterpret_cast<const char*>(&nan), 4);
  EXPECT_THAT(std::string(ImportWeights(not_finite, parts[1]).message()),
              HasSubstr("NaN or Inf"));

  auto bad_range = good;
  bad_range.set_first_layer(1);
  EXPECT_THAT(
      std::string(ModelFromWeights(bad_range, Mlp({9, 7, 5}, 2)).status().message()),
      HasSubstr("layers 1..3 where layers 2..3"));
}

// Weights come from workers: their declared shapes must be the model's
// before anything is decoded (2^62 parameters would abort the process).
TEST(ModelTest, ModelFromWeightsRefusesShapesTheModelDoesNotHave) {
  auto parts = MakeSegments(pnn::v1::ACTIVATION_RELU);
  const pnn::v1::SegmentWeights good = ExportWeights(parts[1], 1);
  ASSERT_TRUE(ModelFromWeights(good, Mlp({9, 7, 5}, 2)).ok());
  for (const auto& [rows, cols] :
       std::vector<std::pair<int64_t, int64_t>>{{INT32_MAX, INT32_MAX},
                                                {65536, 65536},
                                                {7, 10}}) {
    auto huge = good;
    huge.mutable_tensors(0)->set_shape(0, rows);
    huge.mutable_tensors(0)->set_shape(1, cols);
    const auto model = ModelFromWeights(huge, Mlp({9, 7, 5}, 2));
    ASSERT_FALSE(model.ok()) << rows << "x" << cols;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(model.status().message()), HasSubstr("has shape"));
  }
}

TEST(ModelTest, AssembleNetworkChecksOrder) {
  auto parts = MakeSegments(pnn::v1::ACTIVATION_RELU);
  std::vector<pnn::v1::SegmentWeights> weights;
  for (size_t i = 0; i < parts.size(); ++i) {
    weights.push_back(ExportWeights(parts[i], static_cast<int>(i)));
  }
  auto joined = AssembleNetwork(weights, Mlp({12, 9, 7, 5, 4}));
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_FALSE(AssembleNetwork(weights, Mlp({12, 9, 7, 5, 4, 3})).ok())
      << "segments that stop before the network's end";
  std::swap(weights[0], weights[1]);
  EXPECT_FALSE(AssembleNetwork(weights, Mlp({12, 9, 7, 5, 4})).ok());
}

// Every cut position of a network with every kind of layer: the segments'
// composition is the whole network, bit for bit, and the segments' shapes
// chain (a SIL table at a convolutional cut is [classes, C, H, W]).
TEST(ModelTest, ConvolutionalSegmentsJoinBitForBitAtEveryCut) {
  const Architecture network = SmallCnn();
  SegmentModel whole(network);
  InitializeWeights(whole, 3);
  whole->eval();  // dropout: the identity
  const at::Tensor x = at::rand({5, 2 * 8 * 8});
  at::NoGradGuard no_grad;
  const at::Tensor expected = whole->forward(x);
  ASSERT_EQ(expected.sizes(), (std::vector<int64_t>{5, 3}));
  for (int cut = 1; cut < network.last_layer(); ++cut) {
    auto head = SliceNetwork(network, 1, cut);
    auto tail = SliceNetwork(network, cut + 1, network.last_layer());
    ASSERT_TRUE(head.ok() && tail.ok()) << cut;
    EXPECT_EQ(tail->leading_activation,
              cut == 1 || cut == 3 || cut == 7) << "cut after layer " << cut;
    SegmentModel first(*head);
    SegmentModel second(*tail);
    InitializeWeights(first, 3);
    InitializeWeights(second, 3);
    first->eval();
    second->eval();
    const at::Tensor middle = first->forward(x);
    std::vector<int64_t> batch_shape = {5};
    batch_shape.insert(batch_shape.end(), tail->input_shape.begin(),
                       tail->input_shape.end());
    EXPECT_EQ(middle.sizes(), batch_shape) << "cut after layer " << cut;
    EXPECT_TRUE(at::equal(second->forward(middle), expected))
        << "cut after layer " << cut;
    auto joined = AssembleNetwork(
        {ExportWeights(first, 0), ExportWeights(second, 1)}, network);
    ASSERT_TRUE(joined.ok()) << joined.status();
    (*joined)->eval();
    EXPECT_TRUE(at::equal((*joined)->forward(x), expected)) << cut;
  }
}

TEST(ModelTest, ConvolutionWeightsAreNamedByLayerAndSeededLikePyTorch) {
  SegmentModel model(SmallCnn());
  InitializeWeights(model, 9);
  const pnn::v1::SegmentWeights weights = ExportWeights(model, 0);
  std::vector<std::string> names;
  for (const auto& tensor : weights.tensors()) names.push_back(tensor.name());
  EXPECT_THAT(names, ::testing::ElementsAre(
                         "conv1.weight", "conv1.bias", "conv3.weight",
                         "conv3.bias", "linear7.weight", "linear7.bias",
                         "linear8.weight", "linear8.bias"));
  // conv1: [4, 2, 3, 3], fan_in 2 * 3 * 3.
  EXPECT_THAT(weights.tensors(0).shape(), ::testing::ElementsAre(4, 2, 3, 3));
  const double bound = 1.0 / std::sqrt(18.0);
  const at::Tensor conv1 = model->weighted_layers()[0].weight;
  EXPECT_LE(conv1.abs().max().item<double>(), bound);
  EXPECT_GT(conv1.abs().max().item<double>(), 0.5 * bound);
}

TEST(ModelTest, DropoutIsSeededAndOffWhenTesting) {
  SegmentModel a(SmallCnn());
  SegmentModel b(SmallCnn());
  InitializeWeights(a, 4);
  InitializeWeights(b, 4);
  const at::Tensor x = at::rand({6, 128});
  at::NoGradGuard no_grad;
  const at::Tensor train_a = a->forward(x);
  EXPECT_TRUE(at::equal(train_a, b->forward(x))) << "same seed, same masks";
  a->eval();
  EXPECT_FALSE(at::equal(train_a, a->forward(x))) << "eval() drops no units";
  EXPECT_TRUE(at::equal(a->forward(x), a->forward(x)));
}



}  // namespace
}  // namespace pnn
