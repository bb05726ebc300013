#include "common/sil.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "absl/strings/str_cat.h"

namespace pnn {
namespace {

// Keeps SIL draws independent of the weight-initialisation stream.
constexpr uint64_t kSilStream = 0x51c0ffee5eedULL;

}  // namespace

absl::StatusOr<std::vector<at::Tensor>> DrawSilTables(
    const pnn::v1::SilSpec& spec, uint64_t seed, int num_classes,
    const std::vector<std::vector<int64_t>>& cut_shapes) {
  std::vector<at::Tensor> tables;
  const double kappa = spec.has_kappa() ? spec.kappa() : 1.0;
  for (size_t cut = 0; cut < cut_shapes.size(); ++cut) {
    // Drawn flat, then shaped: a [width] cut draws what it always drew.
    int64_t width = 1;
    for (int64_t d : cut_shapes[cut]) width *= d;
    auto generator = at::detail::createCPUGenerator(
        seed ^ (kSilStream * (cut + 1)));
    const auto options = at::TensorOptions().dtype(at::kFloat);
    at::Tensor table;
    switch (spec.distribution()) {
      case pnn::v1::SIL_DISTRIBUTION_NORMAL:
        table = at::empty({num_classes, width}, options)
                    .normal_(0.0, kappa, generator);
        break;
      case pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL: {
        if (width < num_classes) {
          return absl::InvalidArgumentError(absl::StrCat(
              "orthogonal SIL rows need width >= classes; cut ", cut + 1,
              " has width ", width, " for ", num_classes, " classes"));
        }
        // Q of a Gaussian [width, classes] matrix has orthonormal columns.
        at::Tensor gaussian =
            at::empty({width, num_classes}, options).normal_(0.0, 1.0, generator);
        at::Tensor q = std::get<0>(at::linalg_qr(gaussian, "reduced"));
        table = q.t().contiguous() *
                (kappa * std::sqrt(static_cast<double>(width)));
        break;
      }
      default:
        table = at::empty({num_classes, width}, options)
                    .uniform_(0.0, kappa, generator);
        break;
    }
    std::vector<int64_t> shape = {num_classes};
    shape.insert(shape.end(), cut_shapes[cut].begin(), cut_shapes[cut].end());
    tables.push_back(table.reshape(shape).contiguous());
  }
  return tables;
}

}  // namespace pnn
