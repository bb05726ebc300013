#include "common/idx.h"

#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace pnn {
namespace {

using ::testing::HasSubstr;

IdxArray SmallImages() {
  IdxArray array;
  array.dims = {3, 2, 2};
  for (int i = 0; i < 12; ++i) array.data.push_back(static_cast<uint8_t>(i * 20));
  return array;
}

std::string Header(std::initializer_list<uint32_t> dims, uint8_t type = 8) {
  std::string bytes = {0, 0, static_cast<char>(type),
                       static_cast<char>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      bytes.push_back(static_cast<char>((d >> shift) & 0xff));
    }
  }
  return bytes;
}

TEST(IdxTest, RoundTripsRawAndGzip) {
  TempDir dir;
  for (bool gzip : {false, true}) {
    const std::string path = dir.path() + (gzip ? "/a.gz" : "/a");
    ASSERT_TRUE(WriteIdxFile(path, SmallImages(), gzip).ok());
    auto read = ReadIdxFile(path);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->dims, SmallImages().dims);
    EXPECT_EQ(read->data, SmallImages().data);
    EXPECT_EQ(read->items(), 3);
    EXPECT_EQ(read->item_size(), 4);
  }
}

TEST(IdxTest, ParsesLabels) {
  const std::string bytes = Header({4}) + std::string("\x01\x02\x03\x09", 4);
  auto parsed = ParseIdx(bytes, "labels");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->data, (std::vector<uint8_t>{1, 2, 3, 9}));
}

struct BadIdxCase {
  std::string name;
  std::string bytes;
  std::string expected_message;
};

TEST(IdxTest, RejectsMalformedInputWithReason) {
  const std::vector<BadIdxCase> cases = {
      {"empty", "", "too short"},
      {"bad magic", std::string("\x01\x00\x08\x01", 4) + "xxxx",
       "not an IDX file"},
      {"float type", Header({1}, 0x0d) + "abcd", "element type"},
      {"rank zero", std::string("\x00\x00\x08\x00", 4), "rank 0"},
      {"rank five", std::string("\x00\x00\x08\x05", 4), "rank 5"},
      {"header cut", Header({2, 2}).substr(0, 9), "truncated IDX header"},
      {"zero dimension", Header({0}), "dimension 0 is 0"},
      {"payload cut", Header({2, 3}) + "abc", "truncated file"},
      {"trailing data", Header({2}) + "abc", "trailing data"},
      {"huge", Header({0x7fffffff, 0x7fffffff}), "refusing"},
  };
  for (const auto& c : cases) {
    auto parsed = ParseIdx(c.bytes, "f.idx");
    ASSERT_FALSE(parsed.ok()) << c.name;
    EXPECT_THAT(std::string(parsed.status().message()),
                HasSubstr(c.expected_message))
        << c.name;
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("f.idx"))
        << c.name;
  }
}

TEST(IdxTest, MissingFileNamesThePath) {
  auto read = ReadIdxFile("/nonexistent/pnn/train-images-idx3-ubyte");
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(read.status().message()),
              HasSubstr("/nonexistent/pnn/train-images-idx3-ubyte"));
}

TEST(IdxTest, TruncatedGzipIsAnErrorNotACrash) {
  TempDir dir;
  const std::string path = dir.path() + "/images.gz";
  IdxArray big;
  big.dims = {64, 28, 28};
  for (int i = 0; i < 64 * 28 * 28; ++i) big.data.push_back((i * 7919) % 251);
  ASSERT_TRUE(WriteIdxFile(path, big, /*gzip=*/true).ok());
  std::string content = ReadFileBytes(path);
  for (size_t keep : {content.size() / 2, content.size() - 4, size_t{12}}) {
    WriteFileBytes(path, content.substr(0, keep));
    auto read = ReadIdxFile(path);
    ASSERT_FALSE(read.ok()) << "kept " << keep;
    EXPECT_THAT(std::string(read.status().message()), HasSubstr(path));
  }
}

TEST(IdxTest, CorruptGzipIsAnError) {
  TempDir dir;
  const std::string path = dir.path() + "/images.gz";
  ASSERT_TRUE(WriteIdxFile(path, SmallImages(), /*gzip=*/true).ok());
  std::string content = ReadFileBytes(path);
  for (size_t i = 12; i < content.size() - 8; ++i) content[i] ^= 0x5a;
  WriteFileBytes(path, content);
  auto read = ReadIdxFile(path);
  ASSERT_FALSE(read.ok());
  EXPECT_THAT(std::string(read.status().message()), HasSubstr(path));
}

}  // namespace
}  // namespace pnn
