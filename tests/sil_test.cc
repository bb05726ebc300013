#include "common/sil.h"

#include <ATen/ATen.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pnn {
namespace {

pnn::v1::SilSpec Spec(pnn::v1::SilDistribution distribution, float kappa) {
  pnn::v1::SilSpec spec;
  spec.set_distribution(distribution);
  spec.set_kappa(kappa);
  return spec;
}

TEST(SilTest, OneTablePerCutWithClassRowsOfTheCutWidth) {
  auto tables = DrawSilTables(Spec(pnn::v1::SIL_DISTRIBUTION_UNIFORM, 2.5f),
                              /*seed=*/3, /*num_classes=*/10, {{256}, {64}});
  ASSERT_TRUE(tables.ok()) << tables.status();
  ASSERT_EQ(tables->size(), 2u);
  EXPECT_EQ((*tables)[0].sizes(), (at::IntArrayRef{10, 256}));
  EXPECT_EQ((*tables)[1].sizes(), (at::IntArrayRef{10, 64}));
  EXPECT_EQ((*tables)[0].scalar_type(), at::kFloat);
  // kappa * U(0, 1): inside [0, kappa) and spread over it.
  EXPECT_GE((*tables)[0].min().item<float>(), 0.0f);
  EXPECT_LT((*tables)[0].max().item<float>(), 2.5f);
  EXPECT_NEAR((*tables)[0].mean().item<float>(), 1.25f, 0.1f);
  // Different cuts get different tables.
  EXPECT_FALSE(at::equal((*tables)[0].slice(1, 0, 64), (*tables)[1]));
}

TEST(SilTest, DeterministicInTheSeed) {
  for (auto distribution :
       {pnn::v1::SIL_DISTRIBUTION_UNIFORM, pnn::v1::SIL_DISTRIBUTION_NORMAL,
        pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL}) {
    const auto spec = Spec(distribution, 1.0f);
    auto a = DrawSilTables(spec, 9, 10, {{32}});
    auto b = DrawSilTables(spec, 9, 10, {{32}});
    auto c = DrawSilTables(spec, 10, 10, {{32}});
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    EXPECT_TRUE(at::equal((*a)[0], (*b)[0])) << distribution;
    EXPECT_FALSE(at::equal((*a)[0], (*c)[0])) << distribution;
  }
}

TEST(SilTest, OrthogonalRowsAreOrthogonalWithRmsKappa) {
  auto tables = DrawSilTables(Spec(pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL, 2.0f),
                              1, 10, {{64}});
  ASSERT_TRUE(tables.ok());
  const at::Tensor& t = (*tables)[0];
  const at::Tensor gram = at::matmul(t, t.t());
  const double norm_sq = 4.0 * 64;  // (kappa * sqrt(width))^2
  EXPECT_TRUE(at::allclose(gram, at::eye(10) * norm_sq, 1e-4, 1e-2));
  EXPECT_NEAR(t.pow(2).mean().sqrt().item<double>(), 2.0, 1e-3);
}

TEST(SilTest, NormalHasScaleKappa) {
  auto tables = DrawSilTables(Spec(pnn::v1::SIL_DISTRIBUTION_NORMAL, 3.0f), 1,
                              50, {{400}});
  ASSERT_TRUE(tables.ok());
  EXPECT_NEAR((*tables)[0].std().item<double>(), 3.0, 0.1);
  EXPECT_NEAR((*tables)[0].mean().item<double>(), 0.0, 0.1);
}

// A convolutional cut's table has the cut's activation shape per class,
// drawn element-wise: the same values as a flat cut of as many elements.
TEST(SilTest, ConvolutionalCutsGetTablesOfTheirShape) {
  const auto spec = Spec(pnn::v1::SIL_DISTRIBUTION_UNIFORM, 1.5f);
  auto image = DrawSilTables(spec, 4, 10, {{8, 7, 7}});
  auto flat = DrawSilTables(spec, 4, 10, {{8 * 7 * 7}});
  ASSERT_TRUE(image.ok() && flat.ok());
  EXPECT_EQ((*image)[0].sizes(), (at::IntArrayRef{10, 8, 7, 7}));
  EXPECT_TRUE(at::equal((*image)[0].reshape({10, -1}), (*flat)[0]));
  auto orthogonal = DrawSilTables(
      Spec(pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL, 1.0f), 4, 10, {{2, 3, 3}});
  ASSERT_TRUE(orthogonal.ok());
  const at::Tensor rows = (*orthogonal)[0].reshape({10, 18});
  EXPECT_TRUE(at::allclose(at::matmul(rows, rows.t()), at::eye(10) * 18.0,
                           1e-4, 1e-2));
}

TEST(SilTest, OrthogonalNeedsWidthAtLeastClasses) {
  auto tables = DrawSilTables(Spec(pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL, 1.0f),
                              1, 10, {{8}});
  ASSERT_FALSE(tables.ok());
  EXPECT_THAT(std::string(tables.status().message()),
              ::testing::HasSubstr("width >= classes"));
}

}  // namespace
}  // namespace pnn
