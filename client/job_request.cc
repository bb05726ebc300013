#include "client/job_request.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace pnn::client {
namespace {

using pnn::v1::JobState;
using pnn::v1::SubmitJobRequest;

absl::Status ParseJson(absl::string_view json, google::protobuf::Message* out) {
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), out, options);
  if (!status.ok()) {
    // The parser appends the offending line and a caret on further lines;
    // the first line says what is wrong and stays readable in one line.
    const std::string message = status.message().as_string();
    return absl::InvalidArgumentError(message.substr(0, message.find('\n')));
  }
  return absl::OkStatus();
}

std::string EnumNames(const google::protobuf::EnumDescriptor& type) {
  std::vector<std::string> names;
  for (int i = 0; i < type.value_count(); ++i) {
    const std::string& name = type.value(i)->name();
    if (!absl::EndsWith(name, "_UNSPECIFIED")) names.push_back(name);
  }
  return absl::StrJoin(names, ", ");
}

std::string FindBadEnum(const google::protobuf::Struct& object,
                        const google::protobuf::Descriptor& type,
                        const std::string& path);

// The first enum value in `value` (the JSON of `field`) that names no value
// of the field's enum, as "path: unknown value ...; expected one of ...";
// "" if there is none.
std::string FindBadEnumValue(const google::protobuf::Value& value,
                             const google::protobuf::FieldDescriptor& field,
                             const std::string& path) {
  if (value.has_list_value() && field.is_repeated()) {
    for (const auto& element : value.list_value().values()) {
      std::string found = FindBadEnumValue(element, field, path);
      if (!found.empty()) return found;
    }
    return "";
  }
  if (const auto* type = field.enum_type();
      type != nullptr && value.has_string_value() &&
      type->FindValueByName(value.string_value()) == nullptr) {
    return absl::StrCat(path, ": unknown value \"", value.string_value(),
                        "\"; expected one of ", EnumNames(*type));
  }
  if (const auto* type = field.message_type();
      type != nullptr && value.has_struct_value()) {
    return FindBadEnum(value.struct_value(), *type, path);
  }
  return "";
}

std::string FindBadEnum(const google::protobuf::Struct& object,
                        const google::protobuf::Descriptor& type,
                        const std::string& path) {
  for (const auto& [key, value] : object.fields()) {
    const google::protobuf::FieldDescriptor* field = type.FindFieldByName(key);
    if (field == nullptr) field = type.FindFieldByCamelcaseName(key);
    if (field == nullptr) continue;
    std::string found = FindBadEnumValue(
        value, *field, path.empty() ? key : absl::StrCat(path, ".", key));
    if (!found.empty()) return found;
  }
  return "";
}

}  // namespace

bool SpecOverrides::any() const {
  return epochs || train_limit || test_limit || hidden_widths || cut_after ||
         kappa || seed || dataset || recovery_epochs || device || name ||
         baseline || parallelism || evaluations_per_epoch || micro_batches ||
         schedule || precision;
}

absl::StatusOr<SubmitJobRequest> ParseSubmitRequestJson(
    absl::string_view json, absl::string_view source) {
  // Look at the top-level keys first: a generic Struct accepts any JSON
  // object, so this also tells plain JSON syntax errors apart from fields
  // the messages do not have.
  google::protobuf::Struct object;
  if (absl::Status status = ParseJson(json, &object); !status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a JSON object (", status.message(),
                     "); expected protobuf JSON of pnn.v1.JobSpec or "
                     "pnn.v1.SubmitJobRequest"));
  }
  SubmitJobRequest request;
  const bool is_request = object.fields().count("spec") > 0;
  // The JSON parser's own message for a misspelt enum value does not say
  // which values exist.
  const google::protobuf::Descriptor& type =
      is_request ? *SubmitJobRequest::descriptor()
                 : *pnn::v1::JobSpec::descriptor();
  if (std::string bad = FindBadEnum(object, type, ""); !bad.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", bad));
  }
  if (is_request) {
    if (absl::Status status = ParseJson(json, &request); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          source,
          ": not a valid pnn.v1.SubmitJobRequest (chosen because of "
          "its top-level \"spec\" key): ",
          status.message()));
    }
    return request;
  }
  if (absl::Status status = ParseJson(json, request.mutable_spec());
      !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": not a valid pnn.v1.JobSpec: ", status.message(),
        " (field names are those of proto/pnn/v1/job.proto; see examples/)"));
  }
  return request;
}

absl::StatusOr<SubmitJobRequest> LoadSubmitRequestFile(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    const std::string message =
        absl::StrCat("cannot read job file ", path, ": ", std::strerror(error));
    return error == EACCES ? absl::PermissionDeniedError(message)
                           : absl::NotFoundError(message);
  }
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("error reading job file ", path));
  }
  return ParseSubmitRequestJson(content.str(), path);
}

absl::StatusOr<std::vector<int32_t>> ParseIntList(absl::string_view text,
                                                  absl::string_view flag) {
  std::vector<int32_t> values;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t value = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &value) ||
        value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " ", text,
                       ": expected comma-separated positive integers, e.g. "
                       "--",
                       flag, " 256,256"));
    }
    values.push_back(value);
  }
  return values;
}

absl::Status ApplyOverrides(const SpecOverrides& overrides,
                            SubmitJobRequest* request) {
  pnn::v1::JobSpec* spec = request->mutable_spec();
  if (overrides.epochs) {
    spec->mutable_training()->set_epochs(*overrides.epochs);
    // --epochs means "epochs per segment", as in pnn-train: per-segment
    // overrides would otherwise silently win over it.
    for (auto& segment : *spec->mutable_segment_training()) {
      segment.set_epochs(0);
    }
  }
  if (overrides.train_limit) {
    spec->mutable_dataset()->set_train_limit(*overrides.train_limit);
  }
  if (overrides.test_limit) {
    spec->mutable_dataset()->set_test_limit(*overrides.test_limit);
  }
  if (overrides.hidden_widths) {
    absl::StatusOr<std::vector<int32_t>> widths =
        ParseIntList(*overrides.hidden_widths, "hidden-widths");
    if (!widths.ok()) return widths.status();
    spec->mutable_model()->mutable_hidden_widths()->Assign(widths->begin(),
                                                           widths->end());
  }
  if (overrides.cut_after) {
    absl::StatusOr<std::vector<int32_t>> cuts =
        ParseIntList(*overrides.cut_after, "cut-after");
    if (!cuts.ok()) return cuts.status();
    spec->mutable_model()->mutable_cut_after_layers()->Assign(cuts->begin(),
                                                              cuts->end());
  }
  if (overrides.kappa) {
    spec->mutable_sil()->set_kappa(static_cast<float>(*overrides.kappa));
  }
  if (overrides.seed) spec->set_seed(*overrides.seed);
  if (overrides.dataset) spec->mutable_dataset()->set_path(*overrides.dataset);
  if (overrides.recovery_epochs) {
    spec->mutable_recovery()->set_epochs(*overrides.recovery_epochs);
  }
  if (overrides.device) spec->set_device(*overrides.device);
  if (overrides.name) spec->set_name(*overrides.name);
  if (overrides.baseline) {
    request->set_conventional_baseline(*overrides.baseline);
  }
  if (overrides.parallelism) {
    auto parallelism = ParseParallelism(*overrides.parallelism);
    if (!parallelism.ok()) return parallelism.status();
    spec->set_parallelism(*parallelism);
  }
  if (overrides.evaluations_per_epoch) {
    spec->set_evaluations_per_epoch(*overrides.evaluations_per_epoch);
  }
  if (overrides.micro_batches) {
    spec->mutable_pipeline()->set_micro_batches(*overrides.micro_batches);
  }
  if (overrides.schedule) {
    auto schedule = ParseSchedule(*overrides.schedule);
    if (!schedule.ok()) return schedule.status();
    spec->mutable_pipeline()->set_schedule(*schedule);
  }
  if (overrides.precision) {
    auto precision = ParsePrecision(*overrides.precision);
    if (!precision.ok()) return precision.status();
    spec->mutable_training()->set_precision(*precision);
  }
  return absl::OkStatus();
}

absl::StatusOr<SubmitJobRequest> BuildSubmitRequest(
    const std::string& path, const SpecOverrides& overrides) {
  SubmitJobRequest request;
  if (!path.empty()) {
    absl::StatusOr<SubmitJobRequest> loaded = LoadSubmitRequestFile(path);
    if (!loaded.ok()) return loaded.status();
    request = *std::move(loaded);
  }
  if (absl::Status status = ApplyOverrides(overrides, &request); !status.ok()) {
    return status;
  }
  return request;
}

absl::StatusOr<std::vector<JobState>> ParseStateList(absl::string_view text) {
  std::vector<JobState> states;
  for (absl::string_view part :
       absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::string name = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(part));
    if (!absl::StartsWith(name, "JOB_STATE_")) {
      name = absl::StrCat("JOB_STATE_", name);
    }
    JobState state;
    if (!pnn::v1::JobState_Parse(name, &state) ||
        state == pnn::v1::JOB_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--state: unknown job state '", part,
          "'; expected a comma list of queued, running, assembling, "
          "succeeded, failed, cancelled"));
    }
    states.push_back(state);
  }
  return states;
}

absl::StatusOr<pnn::v1::Parallelism> ParseParallelism(absl::string_view text) {
  std::string name = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(name, "PARALLELISM_")) name = "PARALLELISM_" + name;
  pnn::v1::Parallelism parallelism;
  if (name != "PARALLELISM_UNSPECIFIED" &&
      pnn::v1::Parallelism_Parse(name, &parallelism)) {
    return parallelism;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--parallelism=", text,
                   ": expected partitioned, model_parallel or conventional"));
}

absl::StatusOr<pnn::v1::PipelineSchedule> ParseSchedule(
    absl::string_view text) {
  std::string name = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(name, "PIPELINE_SCHEDULE_")) {
    name = "PIPELINE_SCHEDULE_" + name;
  }
  pnn::v1::PipelineSchedule schedule;
  if (name != "PIPELINE_SCHEDULE_UNSPECIFIED" &&
      pnn::v1::PipelineSchedule_Parse(name, &schedule)) {
    return schedule;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--schedule=", text, ": expected gpipe or 1f1b (model_parallel jobs)"));
}

absl::StatusOr<pnn::v1::Precision> ParsePrecision(absl::string_view text) {
  std::string name = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(name, "PRECISION_")) name = "PRECISION_" + name;
  pnn::v1::Precision precision;
  if (name != "PRECISION_UNSPECIFIED" &&
      pnn::v1::Precision_Parse(name, &precision)) {
    return precision;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--precision=", text, ": expected fp32, bf16 or tf32 (tf32: CUDA only)"));
}

absl::StatusOr<pnn::v1::ModelFormat> ParseModelFormat(absl::string_view text) {
  const std::string name = absl::AsciiStrToLower(text);
  if (name == "safetensors" || name == "model_format_safetensors") {
    return pnn::v1::MODEL_FORMAT_SAFETENSORS;
  }
  if (name == "pnn" || name == "model_format_pnn_weights") {
    return pnn::v1::MODEL_FORMAT_PNN_WEIGHTS;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--format=", text, ": expected safetensors or pnn"));
}

}  // namespace pnn::client
