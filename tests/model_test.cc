#include "common/model.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "common/partition.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

std::vector<MlpSegment> MakeSegments(pnn::v1::Activation activation) {
  // Network 12-9-7-5-4 cut after layers 1 and 3.
  std::vector<MlpSegment> parts = {
      MlpSegment(1, std::vector<int>{12, 9}, activation),
      MlpSegment(2, std::vector<int>{9, 7, 5}, activation),
      MlpSegment(4, std::vector<int>{5, 4}, activation)};
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
  MlpSegment whole(1, std::vector<int>{12, 9, 7, 5}, pnn::v1::ACTIVATION_RELU);
  MlpSegment tail(3, std::vector<int>{7, 5}, pnn::v1::ACTIVATION_RELU);
  InitializeWeights(whole, 5);
  InitializeWeights(tail, 5);
  EXPECT_TRUE(at::equal(whole->linears()[2]->weight, tail->linears()[0]->weight));
  EXPECT_TRUE(at::equal(whole->linears()[2]->bias, tail->linears()[0]->bias));
  MlpSegment other(3, std::vector<int>{7, 5}, pnn::v1::ACTIVATION_RELU);
  InitializeWeights(other, 6);
  EXPECT_FALSE(at::equal(other->linears()[0]->weight, tail->linears()[0]->weight));
  const double bound = 1.0 / std::sqrt(7.0);
  EXPECT_LE(tail->linears()[0]->weight.abs().max().item<double>(), bound);
}

TEST(ModelTest, WeightsRoundTripThroughTheWireFormat) {
  auto parts = MakeSegments(pnn::v1::ACTIVATION_RELU);
  const pnn::v1::SegmentWeights weights = ExportWeights(parts[1], 1);
  EXPECT_EQ(weights.first_layer(), 2);
  EXPECT_EQ(weights.last_layer(), 3);
  ASSERT_EQ(weights.tensors_size(), 4);
  EXPECT_EQ(weights.tensors(0).name(), "linear2.weight");
  auto rebuilt = ModelFromWeights(weights, pnn::v1::ACTIVATION_RELU);
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

  auto wrong_shape = ExportWeights(MlpSegment(2, std::vector<int>{9, 6, 5},
                                              pnn::v1::ACTIVATION_RELU),
                                   1);
  EXPECT_THAT(std::string(ImportWeights(wrong_shape, parts[1]).message()),
              HasSubstr("has shape"));

  auto not_finite = good;
  float nan = std::nanf("");
  not_finite.mutable_tensors(1)->mutable_data()->replace(0, 4,
      reinterpret_cast<const char*>(&nan), 4);
  EXPECT_THAT(std::string(ImportWeights(not_finite, parts[1]).message()),
              HasSubstr("NaN or Inf"));

  auto bad_range = good;
  bad_range.set_first_layer(0);
  EXPECT_FALSE(ModelFromWeights(bad_range, pnn::v1::ACTIVATION_RELU).ok());
}

// Weights come from workers: their declared shapes must be backed by their
// bytes before anything of that size is allocated (2^62 parameters here
// would abort the process; 2^32 would take 16 GiB).
TEST(ModelTest, ModelFromWeightsRefusesShapesTheDataDoesNotBack) {
  auto parts = MakeSegments(pnn::v1::ACTIVATION_RELU);
  const pnn::v1::SegmentWeights good = ExportWeights(parts[1], 1);
  ASSERT_TRUE(ModelFromWeights(good, pnn::v1::ACTIVATION_RELU).ok());
  for (const auto& [rows, cols] :
       std::vector<std::pair<int64_t, int64_t>>{{INT32_MAX, INT32_MAX},
                                                {65536, 65536},
                                                {7, 10}}) {
    auto huge = good;
    huge.mutable_tensors(0)->set_shape(0, rows);
    huge.mutable_tensors(0)->set_shape(1, cols);
    const auto model = ModelFromWeights(huge, pnn::v1::ACTIVATION_RELU);
    ASSERT_FALSE(model.ok()) << rows << "x" << cols;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(model.status().message()),
                HasSubstr("bytes of float32 data"));
  }
}

TEST(ModelTest, AssembleNetworkChecksOrder) {
  auto parts = MakeSegments(pnn::v1::ACTIVATION_RELU);
  std::vector<pnn::v1::SegmentWeights> weights;
  for (size_t i = 0; i < parts.size(); ++i) {
    weights.push_back(ExportWeights(parts[i], static_cast<int>(i)));
  }
  auto joined = AssembleNetwork(weights, pnn::v1::ACTIVATION_RELU);
  ASSERT_TRUE(joined.ok()) << joined.status();
  std::swap(weights[0], weights[1]);
  EXPECT_FALSE(AssembleNetwork(weights, pnn::v1::ACTIVATION_RELU).ok());
}

}  // namespace
}  // namespace pnn
