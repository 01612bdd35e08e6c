#include "cdr/safetensors.h"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/cdr/python_runner.h"

namespace zoogate::cdr {
namespace {

using namespace std::string_literals;

std::string little_endian_u64(uint64_t value) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

// A safetensors file with `header` as its JSON text, byte for byte.
std::string make_file(const std::string& header, const std::string& data = "") {
  return little_endian_u64(header.size()) + header + data;
}

Result<SafetensorsHeader> parse(const std::string& file, const SafetensorsLimits& limits = {}) {
  MemorySource source(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(file.data()), file.size()));
  return parse_safetensors_header(source, limits);
}

// Parses `file`, expecting a refusal with `code` at `offset` whose message contains `needle`.
void expect_refusal(const std::string& file, ErrorCode code, uint64_t offset, std::string_view needle,
                    const SafetensorsLimits& limits = {}) {
  auto result = parse(file, limits);
  ASSERT_FALSE(result) << "accepted: " << file.substr(8);
  EXPECT_EQ(result.error().code, code) << result.error().describe();
  EXPECT_EQ(result.error().offset, offset) << result.error().describe();
  EXPECT_NE(result.error().message.find(needle), std::string::npos) << result.error().describe();
}

// Offset in the file of the end of the first occurrence of `token` in the header.
uint64_t offset_after(const std::string& header, std::string_view token) {
  const size_t at = header.find(token);
  EXPECT_NE(at, std::string::npos) << token;
  return 8 + at + token.size();
}

const std::string kOneTensor = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
const std::string kEightBytes(8, '\x01');

TEST(SafetensorsParse, AcceptsAValidFileAndReturnsTensorsInDataOrder) {
  const std::string header =
      R"({"b":{"dtype":"I64","shape":[1],"data_offsets":[4,12]},"__metadata__":{"format":"pt","z":""},)"
      R"("a":{"data_offsets":[0,4],"shape":[2,2],"dtype":"U8"},"s":{"dtype":"F16","shape":[],"data_offsets":[12,14]},)"
      R"("e":{"dtype":"BF16","shape":[0,3],"data_offsets":[14,14]}}      )";
  auto result = parse(make_file(header, std::string(14, '\0')));
  ASSERT_TRUE(result) << result.error().describe();
  ASSERT_EQ(result->tensors.size(), 4u);
  EXPECT_EQ(result->tensors[0], (SafetensorsTensorInfo{"a", SafetensorsDtype::kU8, {2, 2}, 0, 4}));
  EXPECT_EQ(result->tensors[1], (SafetensorsTensorInfo{"b", SafetensorsDtype::kI64, {1}, 4, 12}));
  EXPECT_EQ(result->tensors[2], (SafetensorsTensorInfo{"s", SafetensorsDtype::kF16, {}, 12, 14}));
  EXPECT_EQ(result->tensors[3], (SafetensorsTensorInfo{"e", SafetensorsDtype::kBF16, {0, 3}, 14, 14}));
  EXPECT_EQ(result->metadata, (SafetensorsMetadata{{"format", "pt"}, {"z", ""}}));
  EXPECT_EQ(result->header_size, header.size());
  EXPECT_EQ(result->data_offset(), 8 + header.size());
  EXPECT_EQ(result->data_size(), 14u);
}

TEST(SafetensorsParse, AcceptsEmptyHeaderNullMetadataAndSubByteTypes) {
  auto empty = parse(make_file("{}"));
  ASSERT_TRUE(empty) << empty.error().describe();
  EXPECT_TRUE(empty->tensors.empty());

  auto null_metadata = parse(make_file(R"({"__metadata__":null})"));
  ASSERT_TRUE(null_metadata) << null_metadata.error().describe();
  EXPECT_TRUE(null_metadata->metadata.empty());

  auto fp4 = parse(make_file(R"({"q":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})", "abc"));
  ASSERT_TRUE(fp4) << fp4.error().describe();
  EXPECT_EQ(fp4->tensors[0].dtype, SafetensorsDtype::kF4);

  auto escaped = parse(make_file(R"({"na\u00efve\n":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})", "\x01"));
  ASSERT_TRUE(escaped) << escaped.error().describe();
  EXPECT_EQ(escaped->tensors[0].name, "na\xc3\xafve\n");
}

TEST(SafetensorsParse, RefusesBadLengthFields) {
  expect_refusal("\x02\x00\x00"s, ErrorCode::kParse, 0, "too short");
  expect_refusal(little_endian_u64(1000) + "{}", ErrorCode::kParse, 0, "runs past the end");
  expect_refusal(little_endian_u64(UINT64_MAX) + "{}", ErrorCode::kLimitExceeded, 0, "max_safetensors_header_size");
  SafetensorsLimits small;
  small.max_header_size = 16;
  expect_refusal(make_file(kOneTensor, kEightBytes), ErrorCode::kLimitExceeded, 0, "limit of 16", small);
}

TEST(SafetensorsParse, RefusesHeadersThatAreNotOneJsonObject) {
  expect_refusal(make_file(" " + kOneTensor, kEightBytes), ErrorCode::kParse, 8, "begin with '{'");
  expect_refusal(make_file(""), ErrorCode::kParse, 8, "begin with '{'");
  expect_refusal(make_file(R"({"w":})"), ErrorCode::kParse, 8 + 5, "not valid JSON");
  expect_refusal(make_file("{} {}"), ErrorCode::kParse, 8 + 3, "not valid JSON");
  expect_refusal(make_file("{/*c*/}"), ErrorCode::kParse, 8 + 1, "not valid JSON");
  expect_refusal(make_file("{\"w\xff\":1}"), ErrorCode::kParse, 8 + 3, "not valid JSON");
  expect_refusal(make_file("{\"\\ud800\":1}"), ErrorCode::kParse, 8 + 8, "not valid JSON");
}

TEST(SafetensorsParse, RefusesDuplicateKeysAtEveryLevel) {
  const std::string twice = R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  expect_refusal(make_file(twice, "ab"), ErrorCode::kParse, 8 + twice.rfind("\"w\"") + 3, "duplicate key 'w'");

  const std::string field_twice = R"({"w":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})";
  expect_refusal(make_file(field_twice, "a"), ErrorCode::kParse, offset_after(field_twice, R"("U8","dtype")"),
                 "tensor 'w': duplicate key 'dtype'");

  const std::string metadata_twice = R"({"__metadata__":{"k":"1","k":"2"}})";
  expect_refusal(make_file(metadata_twice), ErrorCode::kParse, offset_after(metadata_twice, R"("1","k")"),
                 "duplicate key 'k' in \"__metadata__\"");

  const std::string metadata_block_twice = R"({"__metadata__":{},"__metadata__":{}})";
  expect_refusal(make_file(metadata_block_twice), ErrorCode::kParse, offset_after(metadata_block_twice, R"({},"__metadata__")"),
                 "duplicate key '__metadata__'");
}

TEST(SafetensorsParse, RefusesMalformedMetadata) {
  const std::string number = R"({"__metadata__":{"k":1}})";
  expect_refusal(make_file(number), ErrorCode::kParse, offset_after(number, ":1") + 1, "values are strings");
  const std::string list = R"({"__metadata__":["k"]})";
  expect_refusal(make_file(list), ErrorCode::kParse, offset_after(list, "["), "values are strings");
}

TEST(SafetensorsParse, RefusesMalformedTensorEntries) {
  struct Case {
    std::string header;
    std::string token;  // the error offset is just after this token
    ErrorCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {R"({"w":[1]})", R"("w":[)", ErrorCode::kParse, "tensor 'w': must be an object"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", R"("extra")", ErrorCode::kParse,
       "unknown field 'extra'"},
      {R"({"w":{"dtype":"F32","shape":[2]}})", "[2]}", ErrorCode::kParse, "tensor 'w': missing data_offsets"},
      {R"({"w":{"shape":[2],"data_offsets":[0,8]}})", "[0,8]}", ErrorCode::kParse, "missing dtype"},
      {R"({"w":{"dtype":"F128","shape":[2],"data_offsets":[0,8]}})", R"("F128")", ErrorCode::kUnsupported,
       "unknown dtype 'F128'"},
      {R"({"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", R"("f32")", ErrorCode::kUnsupported, "unknown dtype"},
      {R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", R"("dtype":4,)", ErrorCode::kParse, "dtype must be a string"},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "[-2]", ErrorCode::kParse, "non-negative integers"},
      {R"({"w":{"dtype":"F32","shape":[-0],"data_offsets":[0,8]}})", "[-0]", ErrorCode::kParse, "non-negative integers"},
      {R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", "[2.0]", ErrorCode::kParse, "non-negative integers"},
      {R"({"w":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})", "[18446744073709551616]",
       ErrorCode::kParse, "non-negative integers"},
      {R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", R"("shape":2,)", ErrorCode::kParse, "shape must be an array"},
      {R"({"w":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", "[[", ErrorCode::kParse, "shape must be an array"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", "[0,8,8", ErrorCode::kParse, "more than two"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}})", "[8]", ErrorCode::kParse, "needs two entries"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":{"0":8}}})", R"("data_offsets":{)", ErrorCode::kParse,
       "data_offsets must be [begin, end]"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "[8,0]}", ErrorCode::kParse,
       "end 0 is before begin 8"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "[0,4]}", ErrorCode::kParse,
       "span 4 bytes but F32 with this shape needs 8"},
      {R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", "[0,8]}", ErrorCode::kParse,
       "more elements than fit in 64 bits"},
      {R"({"w":{"dtype":"U64","shape":[4611686018427387904],"data_offsets":[0,8]}})", "[0,8]}", ErrorCode::kParse,
       "more bytes than fit in 64 bits"},
      {R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", "[0,1]}", ErrorCode::kParse,
       "3 elements of F4 do not fill whole bytes"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    uint64_t offset = offset_after(c.header, c.token);
    // Numbers are only known to end once the next character is read.
    if (c.token.back() >= '0' && c.token.back() <= '9') ++offset;
    expect_refusal(make_file(c.header, kEightBytes), c.code, offset, c.message);
  }
}

TEST(SafetensorsParse, RefusesGapsOverlapsAndWrongFileLength) {
  const std::string gap = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})";
  expect_refusal(make_file(gap, "abcde"), ErrorCode::kParse, offset_after(gap, R"("b")"),
                 "tensor 'b' starts at data offset 3 but the tensors before it end at 2 (a gap");

  const std::string overlap = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})";
  expect_refusal(make_file(overlap, "abc"), ErrorCode::kParse, offset_after(overlap, R"("b")"), "an overlap");

  const std::string late_start = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})";
  expect_refusal(make_file(late_start, "abcd"), ErrorCode::kParse, offset_after(late_start, R"("a")"), "a gap");

  const std::string shared = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  expect_refusal(make_file(shared, "ab"), ErrorCode::kParse, offset_after(shared, R"("b")"), "an overlap");

  const uint64_t data_start = 8 + kOneTensor.size();
  expect_refusal(make_file(kOneTensor, kEightBytes + "PK\x03\x04"), ErrorCode::kParse, data_start + 8,
                 "4 bytes follow the last tensor");
  expect_refusal(make_file(kOneTensor, "abc"), ErrorCode::kParse, data_start + 3, "the input ends 5 bytes early");
}

TEST(SafetensorsParse, TensorCountIsLimited) {
  std::string header = "{";
  std::string data;
  for (int i = 0; i < 5; ++i) {
    if (i != 0) header += ",";
    header += "\"t" + std::to_string(i) + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[" + std::to_string(i) +
              "," + std::to_string(i + 1) + "]}";
    data += 'x';
  }
  header += "}";
  SafetensorsLimits limits;
  limits.max_tensor_count = 5;
  EXPECT_TRUE(parse(make_file(header, data), limits));
  limits.max_tensor_count = 4;
  expect_refusal(make_file(header, data), ErrorCode::kLimitExceeded, offset_after(header, R"("t4")"),
                 "more than 4 tensors (max_tensor_count)", limits);
}

TEST(SafetensorsParse, EscapesHostileNamesInMessages) {
  const std::string header = R"({"evil\r\nX-Injected: 1":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})";
  auto result = parse(make_file(header, kEightBytes));
  ASSERT_FALSE(result);
  EXPECT_NE(result.error().message.find(R"('evil\x0d\x0aX-Injected: 1')"), std::string::npos) << result.error().message;
  EXPECT_EQ(result.error().message.find('\n'), std::string::npos);
}

TEST(SafetensorsDtypes, NamesSizesAndOrder) {
  EXPECT_EQ(safetensors_dtype_name(SafetensorsDtype::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(safetensors_dtype_from_name("BF16"), SafetensorsDtype::kBF16);
  EXPECT_FALSE(safetensors_dtype_from_name("bf16"));
  EXPECT_EQ(safetensors_dtype_bits(SafetensorsDtype::kF6E2M3), 6u);
  EXPECT_EQ(safetensors_dtype_bits(SafetensorsDtype::kC64), 64u);
  EXPECT_EQ(safetensors_byte_size(SafetensorsDtype::kF6E3M2, {4, 1}).value(), 3u);
  EXPECT_FALSE(safetensors_byte_size(SafetensorsDtype::kF6E3M2, {3}));
  EXPECT_EQ(safetensors_byte_size(SafetensorsDtype::kF32, {}).value(), 4u) << "a 0-d tensor holds one element";
}

// ---- Writer ------------------------------------------------------------------------------------

// Owns the bytes behind the specs it hands out.
class TensorSet {
 public:
  void add(std::string name, SafetensorsDtype dtype, std::vector<uint64_t> shape, std::string bytes) {
    buffers_.push_back(std::make_unique<std::string>(std::move(bytes)));
    const std::string& owned = *buffers_.back();
    sources_.push_back(std::make_unique<MemorySource>(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(owned.data()), owned.size())));
    specs_.push_back({std::move(name), dtype, std::move(shape), sources_.back().get(), 0});
  }
  std::vector<SafetensorsTensorSpec>& specs() { return specs_; }

 private:
  std::vector<std::unique_ptr<std::string>> buffers_;
  std::vector<std::unique_ptr<MemorySource>> sources_;
  std::vector<SafetensorsTensorSpec> specs_;
};

std::string write(const std::vector<SafetensorsTensorSpec>& specs, const SafetensorsMetadata& metadata = {}) {
  MemorySink sink;
  auto written = write_safetensors(specs, metadata, sink);
  EXPECT_TRUE(written) << written.error().describe();
  return std::string(sink.bytes().begin(), sink.bytes().end());
}

std::string floats(std::initializer_list<float> values) {
  std::string out(values.size() * sizeof(float), '\0');
  std::memcpy(out.data(), std::data(values), out.size());
  return out;
}

TEST(SafetensorsWrite, MatchesTheReferenceSerializerByteForByte) {
  // The reference implementation's own test vectors (safetensors/src/tensor.rs).
  EXPECT_EQ(write({}), little_endian_u64(8) + "{}      ");
  EXPECT_EQ(write({}, {{"framework", "pt"}}), little_endian_u64(40) + R"({"__metadata__":{"framework":"pt"}})" + "     ");
  TensorSet set;
  set.add("attn.0", SafetensorsDtype::kF32, {1, 2, 3}, floats({0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(write(set.specs()),
            little_endian_u64(64) + R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})" +
                floats({0, 1, 2, 3, 4, 5}));
}

TEST(SafetensorsWrite, OrdersByDtypeThenNameAndRoundTrips) {
  TensorSet set;
  set.add("z.bias", SafetensorsDtype::kU8, {3}, "abc");
  set.add("b.weight", SafetensorsDtype::kF32, {2}, floats({1.5f, -2}));
  set.add("a.weight", SafetensorsDtype::kF32, {1}, floats({7}));
  set.add("steps", SafetensorsDtype::kI64, {}, std::string("\x2a\0\0\0\0\0\0\0", 8));
  set.add("empty", SafetensorsDtype::kF16, {0, 4}, "");
  set.add("tab\tname\"\\", SafetensorsDtype::kBool, {1}, "\x01");
  const SafetensorsMetadata metadata = {{"format", "pt"}, {"note", "line\nbreak \xc3\xa9"}};
  const std::string file = write(set.specs(), metadata);

  auto parsed = parse(file);
  ASSERT_TRUE(parsed) << parsed.error().describe();
  EXPECT_EQ(parsed->header_size % 8, 0u);
  EXPECT_EQ(parsed->metadata, metadata);
  std::vector<std::string> names;
  for (const auto& tensor : parsed->tensors) names.push_back(tensor.name);
  EXPECT_EQ(names, (std::vector<std::string>{"steps", "a.weight", "b.weight", "empty", "z.bias", "tab\tname\"\\"}));
  for (const SafetensorsTensorSpec& spec : set.specs()) {
    const auto it = std::find_if(parsed->tensors.begin(), parsed->tensors.end(),
                                 [&](const SafetensorsTensorInfo& t) { return t.name == spec.name; });
    ASSERT_NE(it, parsed->tensors.end()) << spec.name;
    EXPECT_EQ(it->dtype, spec.dtype);
    EXPECT_EQ(it->shape, spec.shape);
    const auto original = spec.source->read_vector(0, static_cast<size_t>(spec.source->size()));
    ASSERT_TRUE(original);
    EXPECT_EQ(file.substr(parsed->data_offset() + it->begin, it->end - it->begin),
              std::string(original->begin(), original->end()))
        << spec.name;
    EXPECT_EQ(it->begin % std::max<uint64_t>(1, safetensors_dtype_bits(it->dtype) / 8), 0u) << "aligned: " << spec.name;
  }

  // Writing what was parsed gives the same bytes again.
  MemorySource written(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(file.data()), file.size()));
  std::vector<SafetensorsTensorSpec> again;
  for (const auto& tensor : parsed->tensors) {
    again.push_back({tensor.name, tensor.dtype, tensor.shape, &written, parsed->data_offset() + tensor.begin});
  }
  EXPECT_EQ(write(again, parsed->metadata), file);
}

TEST(SafetensorsWrite, StreamsLargeTensorsInChunks) {
  std::string big(3 * (1 << 20) + 5, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 % 251);
  TensorSet set;
  set.add("big", SafetensorsDtype::kU8, {big.size()}, big);
  const std::string file = write(set.specs());
  auto parsed = parse(file);
  ASSERT_TRUE(parsed) << parsed.error().describe();
  EXPECT_EQ(file.substr(parsed->data_offset()), big);
}

TEST(SafetensorsWrite, RefusesWhatCouldNotBeReadBack) {
  auto refused = [](const std::vector<SafetensorsTensorSpec>& specs, std::string_view needle,
                    const SafetensorsMetadata& metadata = {}) {
    MemorySink sink;
    auto result = write_safetensors(specs, metadata, sink);
    ASSERT_FALSE(result);
    EXPECT_EQ(result.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(result.error().message.find(needle), std::string::npos) << result.error().message;
    EXPECT_EQ(sink.position(), 0u) << "nothing is written before the checks pass";
  };
  TensorSet set;
  set.add("w", SafetensorsDtype::kF32, {1}, floats({1}));
  set.add("w", SafetensorsDtype::kF32, {1}, floats({2}));
  refused(set.specs(), "two tensors are named 'w'");
  set.specs()[1].name = "__metadata__";
  refused(set.specs(), "cannot be named");
  set.specs()[1].name = "bad\xff";
  refused(set.specs(), "not valid UTF-8");
  set.specs()[1].name = "\xed\xa0\x80";  // a surrogate, as Python's surrogatepass would encode it
  refused(set.specs(), "not valid UTF-8");
  set.specs()[1].name = "v";
  set.specs()[1].shape = {2};
  refused(set.specs(), "lie outside its source");
  set.specs()[1].source = nullptr;
  refused(set.specs(), "has no source");
  set.specs()[1] = {"v", SafetensorsDtype::kF4, {3}, set.specs()[0].source, 0};
  refused(set.specs(), "do not fill whole bytes");
  refused({}, "metadata entry 'k' is not valid UTF-8", {{"k", "\xc0\x80"}});
}

// An independent reader: Python's json and numpy, not zoogate's parser.
TEST(SafetensorsWrite, OutputReadsBackWithPythonJsonAndNumpy) {
  TensorSet set;
  set.add("layer.weight", SafetensorsDtype::kF32, {2, 2}, floats({1, -2.5f, 3, 4}));
  set.add("layer.bias", SafetensorsDtype::kF64, {2}, std::string("\0\0\0\0\0\0\xf0\x3f\0\0\0\0\0\0\x00\xc0", 16));
  set.add("ids", SafetensorsDtype::kI64, {3}, std::string("\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff", 24));
  set.add("half", SafetensorsDtype::kF16, {2}, "\x00\x3c\x00\xc0"s);
  set.add("mask", SafetensorsDtype::kBool, {3}, "\x01\x00\x01"s);
  set.add("bytes", SafetensorsDtype::kU8, {2}, "\x07\xfe");
  const std::string file = write(set.specs(), {{"format", "pt"}});

  const testing::PythonRun run = testing::run_python(R"(
import json, struct, sys
import numpy as np
data = open("model.safetensors", "rb").read()
(n,) = struct.unpack("<Q", data[:8])
assert n % 8 == 0, n
header = json.loads(data[8:8 + n].decode("utf-8"))
assert header.pop("__metadata__") == {"format": "pt"}
body = data[8 + n:]
types = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "F16": "<f2", "BOOL": "?", "U8": "u1"}
expected = {
    "layer.weight": [[1, -2.5], [3, 4]], "layer.bias": [1, -2], "ids": [1, 2, -1],
    "half": [1, -2], "mask": [True, False, True], "bytes": [7, 254],
}
assert set(header) == set(expected), header.keys()
covered = 0
for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
    begin, end = info["data_offsets"]
    assert begin == covered, (name, begin, covered)
    covered = end
    array = np.frombuffer(body[begin:end], dtype=types[info["dtype"]]).reshape(info["shape"])
    assert array.tolist() == expected[name], (name, array.tolist())
assert covered == len(body)
print("ok")
)",
                                                     {{"model.safetensors", file}});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("ok"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace zoogate::cdr
