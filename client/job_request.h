// Building the requests pnnctl sends from files and flags: the job spec of
// `submit`, the state filter of `list`, the model format of `download`.
//
// Pure functions (plus one file read); errors are INVALID_ARGUMENT (bad
// content) or NOT_FOUND / PERMISSION_DENIED (unreadable file) with a message
// that names the file or flag and says what is expected.
#ifndef PNN_CLIENT_JOB_REQUEST_H_
#define PNN_CLIENT_JOB_REQUEST_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "pnn/v1/coordinator.pb.h"

namespace pnn::client {

// The `submit` flags that override fields of the spec; unset ones leave the
// file's value (or the coordinator's default) alone.
struct SpecOverrides {
  std::optional<int32_t> epochs;  // training.epochs; clears per-segment ones
  std::optional<int32_t> train_limit;
  std::optional<int32_t> test_limit;
  std::optional<std::string> hidden_widths;  // "512,256,256"
  std::optional<std::string> cut_after;      // "2,4"
  std::optional<double> kappa;
  std::optional<uint64_t> seed;
  std::optional<std::string> dataset;  // dataset.path
  std::optional<int32_t> recovery_epochs;
  std::optional<std::string> device;
  std::optional<std::string> name;
  std::optional<bool> baseline;  // conventional_baseline
  std::optional<std::string> parallelism;  // see ParseParallelism
  std::optional<int32_t> evaluations_per_epoch;
  std::optional<int32_t> micro_batches;  // pipeline.micro_batches
  std::optional<std::string> schedule;   // see ParseSchedule
  std::optional<std::string> precision;  // training.precision; ParsePrecision

  // True when any override is set.
  bool any() const;
};

// Parses protobuf JSON of either a pnn.v1.SubmitJobRequest (the top-level
// object has a "spec" key) or a pnn.v1.JobSpec. Unknown fields are errors
// so a typo is reported instead of silently ignored. `source` names the
// input in messages (a file name).
absl::StatusOr<pnn::v1::SubmitJobRequest> ParseSubmitRequestJson(
    absl::string_view json, absl::string_view source);

// Reads `path` and parses it as above.
absl::StatusOr<pnn::v1::SubmitJobRequest> LoadSubmitRequestFile(
    const std::string& path);

// Applies the overrides to `request` in place. Fails on a malformed list
// flag; range checks are the coordinator's (it names the field).
absl::Status ApplyOverrides(const SpecOverrides& overrides,
                            pnn::v1::SubmitJobRequest* request);

// The request `submit` sends: the file's content (if `path` is non-empty)
// with the overrides applied.
absl::StatusOr<pnn::v1::SubmitJobRequest> BuildSubmitRequest(
    const std::string& path, const SpecOverrides& overrides);

// "512,256" -> {512, 256}. Every element must be a positive integer.
absl::StatusOr<std::vector<int32_t>> ParseIntList(absl::string_view text,
                                                  absl::string_view flag);

// "running,succeeded" -> {JOB_STATE_RUNNING, JOB_STATE_SUCCEEDED}. Names
// are case-insensitive, with or without the JOB_STATE_ prefix.
absl::StatusOr<std::vector<pnn::v1::JobState>> ParseStateList(
    absl::string_view text);

// "partitioned", "model_parallel" or "conventional" (case-insensitive,
// also the enum names).
absl::StatusOr<pnn::v1::Parallelism> ParseParallelism(absl::string_view text);

// "gpipe" or "1f1b" (or the enum's name): a model-parallel job's schedule.
absl::StatusOr<pnn::v1::PipelineSchedule> ParseSchedule(absl::string_view text);

// "fp32", "bf16" or "tf32" (any case, with or without the PRECISION_ prefix).
absl::StatusOr<pnn::v1::Precision> ParsePrecision(absl::string_view text);

// "safetensors" or "pnn" (also the enum names).
absl::StatusOr<pnn::v1::ModelFormat> ParseModelFormat(absl::string_view text);

}  // namespace pnn::client

#endif  // PNN_CLIENT_JOB_REQUEST_H_
