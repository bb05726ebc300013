// Human-readable rendering of pnn-train's ComparisonReport.
#ifndef PNN_TOOLS_PNN_TRAIN_REPORT_TABLE_H_
#define PNN_TOOLS_PNN_TRAIN_REPORT_TABLE_H_

#include <string>

#include "pnn/v1/report.pb.h"

namespace pnn {

// Per-epoch test accuracy of both runs, then a cost table with one column
// for the whole network and one per segment. Either run may be absent.
std::string FormatComparisonTable(const pnn::v1::ComparisonReport& report);

}  // namespace pnn

#endif  // PNN_TOOLS_PNN_TRAIN_REPORT_TABLE_H_
