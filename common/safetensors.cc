#include "common/safetensors.h"

#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace pnn {
namespace {

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrCat("\\u00", absl::Hex(c, absl::kZeroPad2));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace

absl::StatusOr<std::string> EncodeSafetensors(
    const pnn::v1::SegmentWeights& weights,
    const std::map<std::string, std::string>& metadata) {
  std::vector<std::string> entries;
  if (!metadata.empty()) {
    std::vector<std::string> pairs;
    for (const auto& [key, value] : metadata) {
      pairs.push_back(absl::StrCat(JsonString(key), ":", JsonString(value)));
    }
    entries.push_back(
        absl::StrCat("\"__metadata__\":{", absl::StrJoin(pairs, ","), "}"));
  }
  int64_t offset = 0;
  for (const auto& tensor : weights.tensors()) {
    int64_t elements = 1;
    for (int64_t dim : tensor.shape()) elements *= dim;
    if (elements * 4 != static_cast<int64_t>(tensor.data().size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "safetensors: tensor \"", tensor.name(), "\" has ",
          tensor.data().size(), " bytes for ", elements, " float32 values"));
    }
    entries.push_back(absl::StrCat(
        JsonString(tensor.name()), ":{\"dtype\":\"F32\",\"shape\":[",
        absl::StrJoin(tensor.shape(), ","), "],\"data_offsets\":[", offset,
        ",", offset + elements * 4, "]}"));
    offset += elements * 4;
  }
  std::string header = absl::StrCat("{", absl::StrJoin(entries, ","), "}");
  // Pad with spaces to 8-byte alignment, as the reference writer does.
  while (header.size() % 8 != 0) header += ' ';
  std::string out;
  const uint64_t header_size = header.size();
  for (int i = 0; i < 8; ++i) {
    out.push_back(static_cast<char>((header_size >> (8 * i)) & 0xff));
  }
  out += header;
  for (const auto& tensor : weights.tensors()) out += tensor.data();
  return out;
}

absl::StatusOr<pnn::v1::SegmentWeights> DecodeSafetensors(
    const std::string& bytes) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError("safetensors: shorter than 8 bytes");
  }
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) {
    header_size |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
  }
  if (header_size > bytes.size() - 8) {
    return absl::InvalidArgumentError("safetensors: header exceeds the file");
  }
  google::protobuf::Struct header;
  const auto parsed = google::protobuf::util::JsonStringToMessage(
      bytes.substr(8, header_size), &header);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors: header is not JSON: ", parsed.message().as_string()));
  }
  const size_t data_start = 8 + header_size;
  pnn::v1::SegmentWeights weights;
  // Struct fields are a map: order tensors by their data offset.
  std::map<int64_t, pnn::v1::Tensor> by_offset;
  for (const auto& [name, value] : header.fields()) {
    if (name == "__metadata__") continue;
    const auto& fields = value.struct_value().fields();
    if (!fields.count("dtype") || fields.at("dtype").string_value() != "F32" ||
        !fields.count("shape") || !fields.count("data_offsets")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "safetensors: tensor \"", name, "\" is not a float32 entry"));
    }
    pnn::v1::Tensor tensor;
    tensor.set_name(name);
    for (const auto& dim : fields.at("shape").list_value().values()) {
      tensor.add_shape(static_cast<int64_t>(dim.number_value()));
    }
    const auto& offsets = fields.at("data_offsets").list_value().values();
    if (offsets.size() != 2) {
      return absl::InvalidArgumentError("safetensors: bad data_offsets");
    }
    const auto begin = static_cast<uint64_t>(offsets[0].number_value());
    const auto end = static_cast<uint64_t>(offsets[1].number_value());
    if (begin > end || data_start + end > bytes.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "safetensors: tensor \"", name, "\" lies outside the file"));
    }
    tensor.set_data(bytes.substr(data_start + begin, end - begin));
    by_offset.emplace(static_cast<int64_t>(begin), std::move(tensor));
  }
  for (auto& [offset, tensor] : by_offset) {
    *weights.add_tensors() = std::move(tensor);
  }
  return weights;
}

}  // namespace pnn
