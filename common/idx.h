// Reader and writer for IDX files, the format of MNIST, Fashion-MNIST and
// EMNIST (unsigned-byte arrays with a big-endian header), gzip or raw.
//
// Every malformed input yields an absl::Status naming the file and the
// problem; nothing here throws or aborts. Free of libtorch on purpose: the
// fuzz target and the dataset loader both sit on top of it.
#ifndef PNN_COMMON_IDX_H_
#define PNN_COMMON_IDX_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace pnn {

// An IDX array of unsigned bytes: dims[0] items of dims[1] x dims[2] ...
struct IdxArray {
  std::vector<int32_t> dims;
  std::vector<uint8_t> data;  // row-major, size = product of dims

  int64_t items() const { return dims.empty() ? 0 : dims[0]; }
  int64_t item_size() const;  // product of dims[1..]
};

// Largest array the reader accepts, so a forged header cannot make it
// allocate without bound (EMNIST byclass, the largest of the family, has
// 697932 x 28 x 28 = 547 MB).
inline constexpr int64_t kMaxIdxBytes = int64_t{2} << 30;

// Parses the bytes of an (uncompressed) IDX file. `name` is used in error
// messages only. Accepts only element type 0x08 (unsigned byte) and 1-4
// dimensions; the payload must match the header exactly.
absl::StatusOr<IdxArray> ParseIdx(absl::string_view bytes,
                                  absl::string_view name);

// Reads and parses `path`; gzip files are detected by content, not by name.
// A missing, truncated or corrupt file is an error naming `path`.
absl::StatusOr<IdxArray> ReadIdxFile(const std::string& path);

// Reads only the header of `path` (gzip or raw): the dimensions.
absl::StatusOr<std::vector<int32_t>> ReadIdxDims(const std::string& path);

// Writes `array` to `path`, gzip-compressed when `gzip` is true.
absl::Status WriteIdxFile(const std::string& path, const IdxArray& array,
                          bool gzip);

}  // namespace pnn

#endif  // PNN_COMMON_IDX_H_
