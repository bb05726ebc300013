#include "tools/pnn_train/report_table.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/layers.h"

namespace pnn {
namespace {

using pnn::v1::ComparisonReport;
using pnn::v1::RunReport;
using pnn::v1::TrainingCost;

std::string Bytes(int64_t bytes) {
  if (bytes >= (int64_t{1} << 30)) {
    return absl::StrFormat("%.2f GiB", bytes / double(int64_t{1} << 30));
  }
  if (bytes >= (1 << 20)) return absl::StrFormat("%.1f MiB", bytes / double(1 << 20));
  if (bytes >= (1 << 10)) return absl::StrFormat("%.1f KiB", bytes / 1024.0);
  return absl::StrCat(bytes, " B");
}

std::string Flops(int64_t flops) {
  if (flops >= 1000000) return absl::StrFormat("%.2f M", flops / 1e6);
  if (flops >= 1000) return absl::StrFormat("%.1f k", flops / 1e3);
  return absl::StrCat(flops);
}

std::string Percent(double fraction) {
  return absl::StrFormat("%.2f%%", 100 * fraction);
}

int64_t TrainingBytes(const TrainingCost& cost) {
  return cost.parameter_bytes() + cost.gradient_bytes() +
         cost.optimizer_state_bytes() + cost.activation_bytes();
}

std::string SilName(const pnn::v1::JobSpec& spec) {
  switch (spec.sil().distribution()) {
    case pnn::v1::SIL_DISTRIBUTION_NORMAL:
      return "normal";
    case pnn::v1::SIL_DISTRIBUTION_ORTHOGONAL:
      return "orthogonal";
    default:
      return "uniform";
  }
}

// A simple right-aligned table: first column left-aligned.
class Table {
 public:
  void Row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
  std::string Render() const {
    std::vector<size_t> widths;
    for (const auto& row : rows_) {
      widths.resize(std::max(widths.size(), row.size()), 0);
      for (size_t c = 0; c < row.size(); ++c) {
        widths[c] = std::max(widths[c], row[c].size());
      }
    }
    std::string out;
    for (const auto& row : rows_) {
      std::string line;
      for (size_t c = 0; c < row.size(); ++c) {
        const std::string pad(widths[c] - row[c].size(), ' ');
        line += c == 0 ? row[c] + pad : "  " + pad + row[c];
      }
      absl::StrAppend(&out, "  ", line, "\n");
    }
    return out;
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

// "784-256-...-10" for a fully connected network; the layers, described,
// for a layer list.
std::string NetworkDescription(const pnn::v1::JobSpec& spec,
                               const pnn::v1::DatasetInfo& data) {
  if (!spec.model().layers().empty()) {
    std::vector<std::string> layers = {
        absl::StrCat(std::max(1, data.image_channels()), "x", data.image_rows(),
                     "x", data.image_cols())};
    for (const auto& layer : spec.model().layers()) {
      layers.push_back(pnn::DescribeLayer(layer));
    }
    return absl::StrJoin(layers, " > ");
  }
  std::vector<std::string> widths = {absl::StrCat(
      std::max(1, data.image_channels()) * data.image_rows() *
      data.image_cols())};
  for (int width : spec.model().hidden_widths()) {
    widths.push_back(absl::StrCat(width));
  }
  widths.push_back(absl::StrCat(data.num_classes()));
  return absl::StrJoin(widths, "-");
}

}  // namespace

std::string FormatComparisonTable(const ComparisonReport& report) {
  const auto& spec = report.spec();
  const auto& data = report.dataset();
  const bool has_conventional = !report.conventional().mode().empty();
  const bool has_partitioned = !report.partitioned().mode().empty();
  std::string out;

  absl::StrAppend(
      &out, "\nData     ", data.directory(), ": ", data.train_samples(),
      " train / ", data.test_samples(), " test, ", data.image_rows(), "x",
      data.image_cols(), ", ", data.num_classes(), " classes (",
      Bytes(data.memory_bytes()), " in memory)\n");
  absl::StrAppend(
      &out, "Network  ", NetworkDescription(spec, data), ", cut after layer(s) ",
      absl::StrJoin(spec.model().cut_after_layers(), ","), " -> ",
      spec.model().cut_after_layers_size() + 1, " segments\n");
  absl::StrAppend(
      &out,
      absl::StrFormat("SIL      %s, kappa %g, input noise %g, %s\n",
                      SilName(spec), spec.sil().kappa(),
                      spec.sil().input_noise_std(),
                      spec.sil().input_mode() ==
                              pnn::v1::INPUT_MODE_PREVIOUS_OUTPUTS
                          ? "previous-outputs inputs (sequential)"
                          : "synthetic-label inputs (independent segments)"));
  absl::StrAppend(
      &out, absl::StrFormat(
                "Training %s lr %g, batch %d, %d epochs per segment; seed %d; "
                "%s, %d threads\n\n",
                spec.training().optimizer() == pnn::v1::OPTIMIZER_SGD ? "SGD"
                                                                       : "Adam",
                spec.training().learning_rate(), spec.training().batch_size(),
                spec.training().epochs(), spec.seed(), report.device(),
                report.threads()));

  // Accuracy per epoch.
  Table accuracy;
  accuracy.Row({"test accuracy", has_conventional ? "conventional" : "",
                has_partitioned ? "partitioned (joined)" : ""});
  const int epochs = std::max(report.conventional().epochs_size(),
                              report.partitioned().epochs_size());
  for (int e = 0; e < epochs; ++e) {
    auto cell = [e](const RunReport& run) {
      return e < run.epochs_size() ? Percent(run.epochs(e).test_accuracy())
                                   : std::string();
    };
    accuracy.Row({absl::StrCat("epoch ", e + 1), cell(report.conventional()),
                  cell(report.partitioned())});
  }
  if (has_partitioned && report.partitioned().recovery_epochs() > 0) {
    accuracy.Row({absl::StrCat("+", report.partitioned().recovery_epochs(),
                               " recovery epochs"),
                  "", Percent(report.partitioned().test_accuracy())});
  }
  accuracy.Row({"final",
                has_conventional ? Percent(report.conventional().test_accuracy())
                                 : "",
                has_partitioned ? Percent(report.partitioned().test_accuracy())
                                : ""});
  if (has_conventional && has_partitioned) {
    accuracy.Row({"difference", "",
                  absl::StrFormat("%+.2f pp",
                                  100 * (report.partitioned().test_accuracy() -
                                         report.conventional().test_accuracy()))});
  }
  out += accuracy.Render();
  out += "\n";

  // Cost per model.
  std::vector<std::string> names = {"cost"};
  std::vector<std::pair<std::string, TrainingCost>> columns;
  std::vector<std::string> layers = {
      spec.model().layers().empty() ? "linear layers" : "layers"};
  if (has_conventional) {
    columns.emplace_back("conventional", report.conventional().cost());
    layers.push_back(absl::StrCat("1..", pnn::CuttableLayers(spec.model())));
  }
  for (const auto& segment : report.partitioned().segments()) {
    columns.emplace_back(absl::StrCat("segment ", segment.segment_index() + 1),
                         segment.cost());
    layers.push_back(
        absl::StrCat(segment.first_layer(), "..", segment.last_layer()));
  }
  for (const auto& column : columns) names.push_back(column.first);
  Table cost;
  cost.Row(names);
  cost.Row(layers);
  auto row = [&](const std::string& label, auto&& value) {
    std::vector<std::string> cells = {label};
    for (const auto& column : columns) cells.push_back(value(column.second));
    cost.Row(cells);
  };
  row("parameters", [](const TrainingCost& c) { return absl::StrCat(c.parameter_count()); });
  row("params+grads+optimizer", [](const TrainingCost& c) {
    return Bytes(c.parameter_bytes() + c.gradient_bytes() +
                 c.optimizer_state_bytes());
  });
  row("activations (batch)", [](const TrainingCost& c) { return Bytes(c.activation_bytes()); });
  row("training memory (analytic)", [](const TrainingCost& c) { return Bytes(TrainingBytes(c)); });
  row("peak RSS growth", [](const TrainingCost& c) { return Bytes(c.peak_rss_growth_bytes()); });
  // CUDA runs: the allocator's peaks (what torch.cuda.max_memory_* report),
  // beside the analytic figure above.
  if (std::any_of(columns.begin(), columns.end(), [](const auto& column) {
        return column.second.device_peak_allocated_bytes() > 0;
      })) {
    row("device peak allocated", [](const TrainingCost& c) {
      return Bytes(c.device_peak_allocated_bytes());
    });
    row("device peak reserved", [](const TrainingCost& c) {
      return Bytes(c.device_peak_reserved_bytes());
    });
  }
  row("data held", [](const TrainingCost& c) { return Bytes(c.dataset_bytes()); });
  row("forward FLOPs/sample", [](const TrainingCost& c) { return Flops(c.forward_flops_per_sample()); });
  row("training FLOPs/sample", [](const TrainingCost& c) { return Flops(c.training_flops_per_sample()); });
  row("wall time", [](const TrainingCost& c) { return absl::StrFormat("%.1f s", c.wall_seconds()); });
  row("samples/s", [](const TrainingCost& c) { return absl::StrFormat("%.0f", c.samples_per_second()); });
  out += cost.Render();

  if (has_partitioned) {
    const auto& partitioned = report.partitioned();
    absl::StrAppend(
        &out,
        absl::StrFormat(
            "\nPartitioned wall time: %.1f s with the segments one after "
            "another here, %.1f s with one worker per segment (longest "
            "segment)",
            partitioned.wall_seconds(), partitioned.parallel_wall_seconds()));
    if (partitioned.recovery_epochs() > 0) {
      absl::StrAppend(&out, absl::StrFormat(", plus %.1f s of recovery",
                                            partitioned.recovery_seconds()));
    }
    if (has_conventional) {
      absl::StrAppend(&out,
                      absl::StrFormat("; conventional: %.1f s",
                                      report.conventional().wall_seconds()));
    }
    out += ".\n";
  }
  return out;
}

}  // namespace pnn
