// SafetensorsFile: reading well-formed files, and each way a file can be broken.
#include "engine/model/safetensors.h"

#include <cstring>
#include <optional>

#include "gtest/gtest.h"
#include "tests/model/test_helpers.h"
#include "tests/util/safetensors_writer.h"

namespace kvr {
namespace {

using testutil::HasError;
using testutil::HostTensor;
using testutil::TempDir;
using testutil::TensorMap;

TEST(SafetensorsTest, ReadsEveryDtype) {
  TempDir tmp;
  const std::string path = tmp.file("a.safetensors");
  testutil::TensorMap tensors;
  tensors["w32"] = HostTensor{DType::kF32, {2, 3}, {1, -2, 3.5f, 0, 1e-3f, -7}};
  tensors["w16"] = HostTensor{DType::kF16, {3}, {1, -0.5f, 65504}};
  tensors["wbf"] = HostTensor{DType::kBF16, {1, 2}, {-3, 0.15625f}};
  tensors["empty"] = HostTensor{DType::kF32, {0, 4}, {}};
  tensors["scalar"] = HostTensor{DType::kF32, {}, {42}};
  ASSERT_TRUE(testutil::WriteSafetensors(path, tensors).ok());

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 5u);  // __metadata__ is not a tensor
  const TensorView& w32 = (*file)->tensors().at("w32");
  EXPECT_EQ(w32.dtype, DType::kF32);
  EXPECT_EQ(w32.ShapeString(), "[2, 3]");
  EXPECT_EQ(w32.NumElements(), 6);
  EXPECT_EQ(w32.num_bytes, 24u);
  EXPECT_EQ(w32.file, path);
  float f[6];
  std::memcpy(f, w32.data, sizeof(f));
  EXPECT_EQ(f[2], 3.5f);
  EXPECT_EQ(f[5], -7.0f);
  const TensorView& w16 = (*file)->tensors().at("w16");
  uint16_t h[3];
  std::memcpy(h, w16.data, sizeof(h));
  EXPECT_EQ(F16ToFloat(h[1]), -0.5f);
  EXPECT_EQ(F16ToFloat(h[2]), 65504.0f);
  const TensorView& wbf = (*file)->tensors().at("wbf");
  std::memcpy(h, wbf.data, 4);
  EXPECT_EQ(Bf16ToFloat(h[0]), -3.0f);
  EXPECT_EQ(Bf16ToFloat(h[1]), 0.15625f);
  EXPECT_EQ((*file)->tensors().at("empty").num_bytes, 0u);
  EXPECT_EQ((*file)->tensors().at("scalar").ShapeString(), "[]");
  EXPECT_EQ((*file)->tensors().at("scalar").NumElements(), 1);
}

// A one-tensor header for the malformed-file cases.
std::string Header(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return "{\"t\": {\"dtype\": \"" + dtype + "\", \"shape\": " + shape + ", \"data_offsets\": " + offsets + "}}";
}

class BadSafetensorsTest : public ::testing::Test {
 protected:
  absl::Status OpenRaw(const std::string& header, const std::string& data,
                       std::optional<uint64_t> header_len = std::nullopt) {
    EXPECT_TRUE(testutil::WriteRawSafetensors(path_, header, data, header_len).ok());
    return SafetensorsFile::Open(path_).status();
  }
  TempDir tmp_;
  const std::string path_ = tmp_.file("bad.safetensors");
};

TEST_F(BadSafetensorsTest, MissingFile) {
  EXPECT_TRUE(HasError(SafetensorsFile::Open(tmp_.file("nope.safetensors")).status(), absl::StatusCode::kNotFound,
                       {"nope.safetensors", "cannot open"}));
}

TEST_F(BadSafetensorsTest, ShorterThanLengthField) {
  ASSERT_TRUE(testutil::WriteTextFile(path_, "abc").ok());
  EXPECT_TRUE(HasError(SafetensorsFile::Open(path_).status(), absl::StatusCode::kDataLoss,
                       {"bad.safetensors", "truncated", "8-byte header length"}));
}

TEST_F(BadSafetensorsTest, HeaderLengthLargerThanFile) {
  EXPECT_TRUE(HasError(OpenRaw(Header("F32", "[2]", "[0, 8]"), std::string(8, '\0'), 1000),
                       absl::StatusCode::kDataLoss, {"bad.safetensors", "header length 1000 exceeds"}));
  EXPECT_TRUE(HasError(OpenRaw("{}", "", 0xffffffffffffffffull), absl::StatusCode::kDataLoss,
                       {"bad.safetensors", "exceeds"}));
}

TEST_F(BadSafetensorsTest, TruncatedData) {
  TensorMap t;
  t["model.norm.weight"] = HostTensor{DType::kF32, {64}, std::vector<float>(64, 1.0f)};
  std::string bytes = testutil::EncodeSafetensors(t);
  ASSERT_TRUE(testutil::WriteTextFile(path_, bytes.substr(0, bytes.size() - 10)).ok());
  EXPECT_TRUE(HasError(SafetensorsFile::Open(path_).status(), absl::StatusCode::kDataLoss,
                       {"bad.safetensors", "\"model.norm.weight\"", "extend past the end", "truncated"}));
}

TEST_F(BadSafetensorsTest, BadJsonHeader) {
  EXPECT_TRUE(HasError(OpenRaw("{\"t\": {\"dtype\": ", ""), absl::StatusCode::kInvalidArgument,
                       {"bad.safetensors", "invalid JSON header", "parse error"}));
  EXPECT_TRUE(HasError(OpenRaw("[1, 2]", ""), absl::StatusCode::kInvalidArgument,
                       {"bad.safetensors", "not an object"}));
}

TEST_F(BadSafetensorsTest, UnsupportedDtype) {
  EXPECT_TRUE(HasError(OpenRaw(Header("I8", "[4]", "[0, 4]"), std::string(4, '\0')),
                       absl::StatusCode::kInvalidArgument, {"bad.safetensors", "\"t\"", "unsupported dtype \"I8\""}));
  EXPECT_TRUE(HasError(OpenRaw(Header("F64", "[1]", "[0, 8]"), std::string(8, '\0')),
                       absl::StatusCode::kInvalidArgument, {"bad.safetensors", "\"t\"", "F64", "supported: F32"}));
}

TEST_F(BadSafetensorsTest, ByteSizeDoesNotMatchShape) {
  EXPECT_TRUE(HasError(OpenRaw(Header("BF16", "[3]", "[0, 8]"), std::string(8, '\0')),
                       absl::StatusCode::kInvalidArgument, {"bad.safetensors", "\"t\"", "hold 8 bytes", "needs 6"}));
}

TEST_F(BadSafetensorsTest, BadShapeOrOffsets) {
  EXPECT_TRUE(HasError(OpenRaw(Header("F32", "[-1]", "[0, 4]"), std::string(4, '\0')),
                       absl::StatusCode::kInvalidArgument, {"bad.safetensors", "\"t\"", "\"shape\""}));
  EXPECT_TRUE(HasError(OpenRaw(Header("F32", "[1.5]", "[0, 4]"), std::string(4, '\0')),
                       absl::StatusCode::kInvalidArgument, {"\"t\"", "\"shape\""}));
  EXPECT_TRUE(HasError(OpenRaw(Header("F32", "[1]", "[4]"), std::string(4, '\0')),
                       absl::StatusCode::kInvalidArgument, {"\"t\"", "data_offsets"}));
  EXPECT_TRUE(HasError(OpenRaw(Header("F32", "[1]", "[4, 0]"), std::string(4, '\0')),
                       absl::StatusCode::kInvalidArgument, {"\"t\"", "end before they begin"}));
  EXPECT_TRUE(HasError(OpenRaw(Header("F32", "[4294967296, 4294967296, 4294967296]", "[0, 4]"), std::string(4, '\0')),
                       absl::StatusCode::kInvalidArgument, {"\"t\"", "overflows"}));
  EXPECT_TRUE(HasError(OpenRaw("{\"t\": 3}", ""), absl::StatusCode::kInvalidArgument, {"\"t\"", "not an object"}));
}

TEST_F(BadSafetensorsTest, OverlappingOffsets) {
  const std::string header =
      "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
      " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}";
  EXPECT_TRUE(HasError(OpenRaw(header, std::string(12, '\0')), absl::StatusCode::kInvalidArgument,
                       {"bad.safetensors", "\"b\"", "overlap tensor \"a\""}));
}

TEST_F(BadSafetensorsTest, MetadataIsIgnored) {
  const std::string header =
      "{\"__metadata__\": {\"format\": \"pt\", \"anything\": \"x\"},"
      " \"t\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}   ";
  EXPECT_TRUE(OpenRaw(header, std::string(4, '\0')).ok());
}

}  // namespace
}  // namespace kvr
