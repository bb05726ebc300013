// One-line log messages to stderr for the worker's operators. Each line is
// written with a single call so lines from different threads never mix.
#ifndef PNN_WORKER_LOG_H_
#define PNN_WORKER_LOG_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace pnn {
namespace worker {

inline void LogLine(absl::string_view message) {
  const std::string line = absl::StrCat("pnn-worker: ", message, "\n");
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace worker
}  // namespace pnn

#endif  // PNN_WORKER_LOG_H_
