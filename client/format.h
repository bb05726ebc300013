// Text and JSON rendering of coordinator messages for pnnctl: progress bars,
// the live watch display, the result table of a finished job, job lists.
//
// Formatting functions are pure (same message, same text) so tests build
// Job messages by hand. ProgressDisplay writes to a stream it does not own;
// it is not thread-safe.
#ifndef PNN_CLIENT_FORMAT_H_
#define PNN_CLIENT_FORMAT_H_

#include <google/protobuf/message.h>
#include <google/protobuf/timestamp.pb.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "pnn/v1/coordinator.pb.h"

namespace pnn::client {

struct FormatOptions {
  // Zone of absolute times (job lists, event lines). Tests pass UTC.
  absl::TimeZone time_zone = absl::LocalTimeZone();
  // Columns of the terminal: redrawn lines are cut to fit, since a wrapped
  // line would break the cursor arithmetic. 0: no limit.
  int width = 0;
};

// "RUNNING", "SUCCEEDED", ... (the enum name without its prefix).
std::string JobStateName(pnn::v1::JobState state);
std::string TaskStateName(pnn::v1::TaskState state);

// 1536 -> "1.5 KiB"; binary units, as in pnn-train's report.
std::string FormatBytes(int64_t bytes);

// 0.8794 -> "87.94%".
std::string FormatPercent(double fraction);

// A bar of `width` cells between brackets: "[#####.....]". Fractions are
// clamped to [0, 1]; NaN shows as empty.
std::string ProgressBar(double fraction, int width);

// "segment 1" (1-based, as pnn-train prints them), "recovery 1" (a stage
// of the recovery epochs) or "baseline".
std::string TaskLabel(const pnn::v1::TaskStatus& task);

// The job's segments in order, then its recovery stages, then the
// baseline if the job has one.
std::vector<const pnn::v1::TaskStatus*> JobTasks(const pnn::v1::Job& job);

// One line of live progress for a task: label, layers, bar, percent, epoch,
// loss, state, worker.
std::string FormatTaskProgress(const pnn::v1::TaskStatus& task);

// The block the live display redraws: a header line for the job, one line
// per task, and the event's message.
std::vector<std::string> FormatProgressBlock(const pnn::v1::JobEvent& event);

// One line summing an event up, for output that is not a terminal (logs,
// pipes): time, job state, each task's percent, the event's message.
std::string FormatEventLine(const pnn::v1::JobEvent& event,
                            const FormatOptions& options);

// What a person wants to know about a job: id, name, state and why, times,
// the network and its budget.
std::string FormatJobHeader(const pnn::v1::Job& job,
                            const FormatOptions& options);

// The outcome of an ended job: final and joined test accuracy, baseline
// accuracy, a row per task (worker, start/end relative to the job's start,
// wall time, samples/s, bytes sent/received, training memory), task errors,
// and the job's bytes on the wire.
std::string FormatResultTable(const pnn::v1::Job& job);

// `pnnctl get` in table form: the header, then live progress for a running
// job or the result table for an ended one.
std::string FormatJobDetails(const pnn::v1::Job& job,
                             const FormatOptions& options);

// `pnnctl list` in table form: one row per job, with a header row.
std::string FormatJobList(const std::vector<pnn::v1::Job>& jobs,
                          const FormatOptions& options);

// Protobuf JSON with the .proto field names and every primitive field
// (zeros and enums too), so scripts can rely on keys being present.
std::string ToJson(const google::protobuf::Message& message, bool multiline);

absl::Time ToTime(const google::protobuf::Timestamp& timestamp);

// The live watch display. With `redraw` (stdout is a terminal) each update
// replaces the previous block in place with ANSI cursor movement; without,
// an update appends one FormatEventLine only when it says something new: a
// state change (job or task), a finished epoch, or a message other than the
// last one printed. Progress-only updates (hundreds per epoch) print nothing.
class ProgressDisplay {
 public:
  ProgressDisplay(std::ostream* out, bool redraw, FormatOptions options);

  void Update(const pnn::v1::JobEvent& event);

 private:
  // True when `event` differs from the last line printed in more than
  // progress; remembers it.
  bool IsNews(const pnn::v1::JobEvent& event);

  std::ostream* out_;
  bool redraw_;
  FormatOptions options_;
  int lines_drawn_ = 0;
  std::string last_states_;   // job and task states, epochs done
  std::string last_message_;  // of the last line printed
};

}  // namespace pnn::client

#endif  // PNN_CLIENT_FORMAT_H_
