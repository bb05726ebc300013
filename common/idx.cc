#include "common/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pnn {
namespace {

constexpr uint8_t kUnsignedByteType = 0x08;

uint32_t ReadBigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void AppendBigEndian32(uint32_t value, std::string* out) {
  out->push_back(static_cast<char>((value >> 24) & 0xff));
  out->push_back(static_cast<char>((value >> 16) & 0xff));
  out->push_back(static_cast<char>((value >> 8) & 0xff));
  out->push_back(static_cast<char>(value & 0xff));
}

struct GzFileCloser {
  void operator()(gzFile file) const { gzclose(file); }
};
using GzFilePtr = std::unique_ptr<gzFile_s, GzFileCloser>;

}  // namespace

int64_t IdxArray::item_size() const {
  int64_t size = 1;
  for (size_t i = 1; i < dims.size(); ++i) size *= dims[i];
  return size;
}

absl::StatusOr<IdxArray> ParseIdx(absl::string_view bytes,
                                  absl::string_view name) {
  if (bytes.size() < 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": too short for an IDX header (", bytes.size(), " bytes)"));
  }
  const auto* raw = reinterpret_cast<const unsigned char*>(bytes.data());
  if (raw[0] != 0 || raw[1] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": not an IDX file (magic number must start with two zero "
              "bytes; is it still compressed with something other than "
              "gzip?)"));
  }
  if (raw[2] != kUnsignedByteType) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": IDX element type 0x", absl::Hex(raw[2]),
        " is not supported (only unsigned bytes, 0x08)"));
  }
  const int rank = raw[3];
  if (rank < 1 || rank > 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": IDX rank ", rank, " is not supported (expected 1 to 4)"));
  }
  const size_t header_size = 4 + 4 * static_cast<size_t>(rank);
  if (bytes.size() < header_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": truncated IDX header (", bytes.size(), " bytes, rank ",
        rank, " needs ", header_size, ")"));
  }
  IdxArray array;
  int64_t total = 1;
  for (int d = 0; d < rank; ++d) {
    const uint32_t dim = ReadBigEndian32(raw + 4 + 4 * d);
    if (dim == 0 || dim > static_cast<uint32_t>(INT32_MAX)) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": IDX dimension ", d, " is ", dim,
          " (must be between 1 and 2^31-1)"));
    }
    total *= dim;
    if (total > kMaxIdxBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": IDX header declares more than ", kMaxIdxBytes,
          " bytes of data; refusing to load it"));
    }
    array.dims.push_back(static_cast<int32_t>(dim));
  }
  const size_t payload = bytes.size() - header_size;
  if (payload != static_cast<size_t>(total)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": IDX header declares dimensions [",
        absl::StrJoin(array.dims, ", "), "] = ", total, " bytes of data but ",
        payload < static_cast<size_t>(total) ? "only " : "", payload,
        " follow", payload < static_cast<size_t>(total) ? " (truncated file)"
                                                         : " (trailing data)"));
  }
  array.data.assign(raw + header_size, raw + bytes.size());
  return array;
}

absl::StatusOr<IdxArray> ReadIdxFile(const std::string& path) {
  // gzread also reads uncompressed files transparently.
  GzFilePtr file(gzopen(path.c_str(), "rb"));
  if (file == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open (", std::strerror(errno), ")"));
  }
  gzbuffer(file.get(), 1 << 17);
  std::string content;
  char buffer[1 << 16];
  for (;;) {
    const int n = gzread(file.get(), buffer, sizeof(buffer));
    if (n < 0) {
      int code = 0;
      const char* message = gzerror(file.get(), &code);
      return absl::DataLossError(absl::StrCat(
          path, ": read failed (", message != nullptr ? message : "unknown",
          "); the file is corrupt or truncated"));
    }
    if (n == 0) break;
    content.append(buffer, static_cast<size_t>(n));
    if (static_cast<int64_t>(content.size()) > kMaxIdxBytes + 64) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": larger than ", kMaxIdxBytes, " bytes; refusing to load it"));
    }
  }
  // zlib reports a gzip stream cut short as a clean end of file unless we
  // ask: gzclose_r returns Z_BUF_ERROR for an incomplete last member.
  gzFile raw = file.release();
  const int close_result = gzclose_r(raw);
  if (close_result == Z_BUF_ERROR) {
    return absl::DataLossError(
        absl::StrCat(path, ": truncated gzip stream (the download was cut "
                           "short?)"));
  }
  if (close_result != Z_OK) {
    return absl::DataLossError(absl::StrCat(
        path, ": gzip stream is corrupt (zlib error ", close_result, ")"));
  }
  return ParseIdx(content, path);
}

absl::StatusOr<std::vector<int32_t>> ReadIdxDims(const std::string& path) {
  GzFilePtr file(gzopen(path.c_str(), "rb"));
  if (file == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open (", std::strerror(errno), ")"));
  }
  unsigned char header[4 + 4 * 4];
  const int n = gzread(file.get(), header, 4);
  if (n != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": too short for an IDX header"));
  }
  const int rank = header[3];
  const int dims_bytes = 4 * std::min(rank, 4);
  if (gzread(file.get(), header + 4, dims_bytes) != dims_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": truncated IDX header"));
  }
  // Validate through the full parser with an empty payload: every header
  // rule applies; only the payload-size check is expected to fail.
  std::string bytes(reinterpret_cast<const char*>(header), 4 + dims_bytes);
  auto parsed = ParseIdx(bytes, path);
  if (parsed.ok()) return parsed->dims;
  if (absl::StrContains(parsed.status().message(), "truncated file")) {
    std::vector<int32_t> dims;
    for (int d = 0; d < rank; ++d) {
      dims.push_back(static_cast<int32_t>(ReadBigEndian32(header + 4 + 4 * d)));
    }
    return dims;
  }
  return parsed.status();
}

absl::Status WriteIdxFile(const std::string& path, const IdxArray& array,
                          bool gzip) {
  std::string header;
  header.append({0, 0, static_cast<char>(kUnsignedByteType),
                 static_cast<char>(array.dims.size())});
  int64_t total = 1;
  for (int32_t dim : array.dims) {
    AppendBigEndian32(static_cast<uint32_t>(dim), &header);
    total *= dim;
  }
  if (total != static_cast<int64_t>(array.data.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WriteIdxFile(", path, "): data has ", array.data.size(),
        " bytes, dimensions need ", total));
  }
  GzFilePtr file(gzopen(path.c_str(), gzip ? "wb" : "wbT"));
  if (file == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        path, ": cannot open for writing (", std::strerror(errno), ")"));
  }
  if (gzwrite(file.get(), header.data(), header.size()) !=
          static_cast<int>(header.size()) ||
      (!array.data.empty() &&
       gzwrite(file.get(), array.data.data(), array.data.size()) !=
           static_cast<int>(array.data.size()))) {
    return absl::UnavailableError(absl::StrCat(path, ": write failed"));
  }
  if (gzclose(file.release()) != Z_OK) {
    return absl::UnavailableError(absl::StrCat(path, ": close failed"));
  }
  return absl::OkStatus();
}

}  // namespace pnn
