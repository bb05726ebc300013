// libFuzzer target for the IDX reader (common/idx.h), which parses data-set
// files a worker or the coordinator finds in its data directory.
//
// Every input goes to ParseIdx; a successful parse must satisfy the array's
// invariants. A fraction of the inputs (chosen by a hash of the input, so a
// crash reproduces) also goes through the file readers via an in-memory file
// (memfd; a temporary file where memfd is missing):
//   - the bytes gzip-compressed with zlib (gzopen "wb") -> ReadIdxFile must
//     agree with ParseIdx, and ReadIdxDims with the parsed dimensions;
//   - the raw bytes -> ReadIdxFile must agree with ParseIdx;
//   - a parsed array -> WriteIdxFile -> ReadIdxFile must give it back.
// One in four inputs that start with the gzip magic (1f 8b) goes to
// ReadIdxFile and ReadIdxDims as it is, which drives zlib's decoder with
// forged streams (seed: the corpus's .gz files).
//
// A violated invariant calls __builtin_trap(), which libFuzzer reports as a
// crash and saves as crash-<sha1>. See docs/FUZZING.md.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/string_view.h"
#include "common/idx.h"

namespace {

#define FUZZ_CHECK(condition)                                              \
  do {                                                                     \
    if (!(condition)) {                                                    \
      std::fprintf(stderr, "idx_fuzzer: check failed: %s (%s:%d)\n",       \
                   #condition, __FILE__, __LINE__);                        \
      __builtin_trap();                                                    \
    }                                                                      \
  } while (0)

// One scratch file for the whole process, reopened by name for every use.
class ScratchFile {
 public:
  ScratchFile() {
#ifdef MFD_CLOEXEC
    fd_ = memfd_create("pnn-idx-fuzz", MFD_CLOEXEC);
    if (fd_ >= 0) {
      path_ = "/proc/self/fd/" + std::to_string(fd_);
      if (access(path_.c_str(), F_OK) == 0) return;
      close(fd_);
      fd_ = -1;
    }
#endif
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != 0 ? tmp : "/tmp") +
        "/pnn-idx-fuzz-XXXXXX";
    fd_ = mkstemp(pattern.data());
    FUZZ_CHECK(fd_ >= 0);
    path_ = pattern;
    unlink_on_exit_ = true;
  }
  ~ScratchFile() {
    if (fd_ >= 0) close(fd_);
    if (unlink_on_exit_) unlink(path_.c_str());
  }

  const std::string& path() const { return path_; }

  void WriteRaw(const uint8_t* data, size_t size) {
    FUZZ_CHECK(ftruncate(fd_, 0) == 0);
    size_t done = 0;
    while (done < size) {
      const ssize_t n = pwrite(fd_, data + done, size - done,
                               static_cast<off_t>(done));
      FUZZ_CHECK(n > 0);
      done += static_cast<size_t>(n);
    }
  }

  // The bytes as one gzip member. Compressed in memory with a small window
  // and hash table: gzopen("wb") allocates ~400 KiB per file, which under
  // ASan costs about a millisecond; the stream reads back the same.
  void WriteGzip(const uint8_t* data, size_t size) {
    z_stream stream{};
    FUZZ_CHECK(deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                            /*windowBits=*/9 + 16, /*memLevel=*/1,
                            Z_DEFAULT_STRATEGY) == Z_OK);
    std::string out(deflateBound(&stream, size), '\0');
    stream.next_in = const_cast<Bytef*>(data);
    stream.avail_in = static_cast<uInt>(size);
    stream.next_out = reinterpret_cast<Bytef*>(out.data());
    stream.avail_out = static_cast<uInt>(out.size());
    FUZZ_CHECK(deflate(&stream, Z_FINISH) == Z_STREAM_END);
    out.resize(stream.total_out);
    FUZZ_CHECK(deflateEnd(&stream) == Z_OK);
    WriteRaw(reinterpret_cast<const uint8_t*>(out.data()), out.size());
  }

 private:
  int fd_ = -1;
  std::string path_;
  bool unlink_on_exit_ = false;
};

ScratchFile& Scratch() {
  static ScratchFile* file = new ScratchFile();  // never destroyed
  return *file;
}

uint64_t Hash(const uint8_t* data, size_t size) {
  uint64_t h = 1469598103934665603ull ^ size;  // FNV-1a
  for (size_t i = 0; i < size && i < 64; ++i) {
    h = (h ^ data[i]) * 1099511628211ull;
  }
  return h;
}

void CheckArray(const pnn::IdxArray& array, const uint8_t* data,
                size_t size) {
  FUZZ_CHECK(array.dims.size() >= 1 && array.dims.size() <= 4);
  int64_t product = 1;
  for (int32_t dim : array.dims) {
    FUZZ_CHECK(dim >= 1);
    product *= dim;
    FUZZ_CHECK(product <= pnn::kMaxIdxBytes);
  }
  FUZZ_CHECK(product == static_cast<int64_t>(array.data.size()));
  FUZZ_CHECK(array.items() * array.item_size() ==
             static_cast<int64_t>(array.data.size()));
  FUZZ_CHECK(array.items() == array.dims[0]);
  const size_t header = 4 + 4 * array.dims.size();
  FUZZ_CHECK(header + array.data.size() == size);
  FUZZ_CHECK(array.data.empty() ||
             std::memcmp(array.data.data(), data + header,
                         array.data.size()) == 0);
  for (size_t d = 0; d < array.dims.size(); ++d) {
    const uint8_t* p = data + 4 + 4 * d;
    const uint32_t dim = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
                         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
    FUZZ_CHECK(static_cast<uint32_t>(array.dims[d]) == dim);
  }
}

// A file reader's result must match ParseIdx's on the same content.
void CheckSame(const absl::StatusOr<pnn::IdxArray>& from_file,
               const absl::StatusOr<pnn::IdxArray>& parsed) {
  FUZZ_CHECK(from_file.ok() == parsed.ok());
  if (!parsed.ok()) return;
  FUZZ_CHECK(from_file->dims == parsed->dims);
  FUZZ_CHECK(from_file->data == parsed->data);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<pnn::IdxArray> parsed = pnn::ParseIdx(bytes, "fuzz");
  if (parsed.ok()) {
    CheckArray(*parsed, data, size);
  } else {
    FUZZ_CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!parsed.status().message().empty());
  }

  // The file readers cost ~0.5 ms an input under ASan (zlib's buffers are
  // large allocations), ParseIdx ~10 us: only a fraction of the inputs,
  // chosen by their hash, take the file paths.
  const uint64_t h = Hash(data, size);
  const bool gzip_magic = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  if (gzip_magic) {
    // A forged gzip stream: any outcome but a crash is fine; a success must
    // be a valid array, and the header reader must agree with it.
    if (h % 4 != 0) return 0;
    ScratchFile& file = Scratch();
    file.WriteRaw(data, size);
    const auto read = pnn::ReadIdxFile(file.path());
    if (read.ok()) {
      FUZZ_CHECK(read->dims.size() >= 1 && read->dims.size() <= 4);
      FUZZ_CHECK(read->items() * read->item_size() ==
                 static_cast<int64_t>(read->data.size()));
    }
    const auto dims = pnn::ReadIdxDims(file.path());
    if (read.ok()) {
      FUZZ_CHECK(dims.ok());
      FUZZ_CHECK(*dims == read->dims);
    }
    return 0;
  }
  if (h % 32 != 0) return 0;
  ScratchFile& file = Scratch();

  // gzip-compressed by zlib: ReadIdxFile decompresses to exactly `bytes`.
  file.WriteGzip(data, size);
  CheckSame(pnn::ReadIdxFile(file.path()), parsed);
  const auto dims = pnn::ReadIdxDims(file.path());
  if (parsed.ok()) {
    FUZZ_CHECK(dims.ok());
    FUZZ_CHECK(*dims == parsed->dims);
  }

  // Raw: zlib reads non-gzip files transparently.
  file.WriteRaw(data, size);
  CheckSame(pnn::ReadIdxFile(file.path()), parsed);

  // The writer's output reads back as the same array.
  if (parsed.ok()) {
    const bool gzip = (h >> 8) & 1;
    FUZZ_CHECK(pnn::WriteIdxFile(file.path(), *parsed, gzip).ok());
    CheckSame(pnn::ReadIdxFile(file.path()), parsed);
  }
  return 0;
}
