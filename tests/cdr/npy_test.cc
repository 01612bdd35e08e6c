#include "cdr/npy.h"

#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "tests/cdr/python_samples.h"

namespace zoogate::cdr {
namespace {

using namespace std::string_literals;

// Real files from numpy 1.24. For each, the script also prints what numpy itself reads back.
constexpr std::string_view kSampleScript = R"(
import io
import numpy as np
import numpy.lib.format as fmt

def save(name, array, version=None):
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=True)
    else:
        fmt.write_array(buffer, array, version=version)
    emit(name, buffer.getvalue())
    print("EXPECT", name, array.dtype.str, int(np.isfortran(array)), ",".join(map(str, array.shape)) or "-")

save("f4_2x3", np.arange(6, dtype="<f4").reshape(2, 3))
save("f8_scalar", np.array(2.5))
save("bool_3", np.array([True, False, True]))
save("i1_4", np.arange(4, dtype="i1"))
save("big_endian_fortran", np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)))
save("u2_empty", np.zeros((12345678901, 0), dtype="<u2"))
save("c16_2", np.array([1 + 2j, 3j]))
save("f2_3", np.ones(3, dtype="<f2"))
save("datetime_ns", np.array(["2024-01-01T00:00"], dtype="M8[ns]"))
save("timedelta_5s", np.array([3], dtype="m8[5s]"))
save("version_2", np.arange(3, dtype="<i8"), version=(2, 0))
save("version_3", np.arange(3, dtype="<u4"), version=(3, 0))

objects = np.empty(2, dtype=object); objects[:] = [{"a": 1}, None]
save("object", objects)
save("structured", np.zeros(2, dtype=[("x", "<f4"), ("y", "<i8")]))
save("unicode", np.array(["abc"]))
save("long_double", np.zeros(2, dtype=np.longdouble))
)";

struct Expectation {
  std::string descr;
  bool fortran_order = false;
  std::vector<uint64_t> shape;
};

class NpyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    samples_ = new testing::PythonSamples(testing::make_python_samples(kSampleScript));
    expectations_ = new std::map<std::string, Expectation>();
    // Next to each sample the script prints what numpy itself says about the array.
    std::istringstream lines(samples_->output);
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string tag, name, descr, fortran, shape;
      if (!(fields >> tag >> name >> descr >> fortran >> shape) || tag != "EXPECT") continue;
      Expectation expectation{descr, fortran == "1", {}};
      if (shape != "-") {
        std::istringstream dims(shape);
        std::string dim;
        while (std::getline(dims, dim, ',')) expectation.shape.push_back(std::stoull(dim));
      }
      (*expectations_)[name] = expectation;
    }
  }
  static void TearDownTestSuite() {
    delete samples_;
    delete expectations_;
  }

  static const std::vector<uint8_t>& sample(const std::string& name) {
    static const std::vector<uint8_t> kMissing;
    if (!samples_->failure.empty()) ADD_FAILURE() << samples_->failure;
    const auto it = samples_->files.find(name);
    if (it == samples_->files.end()) {
      ADD_FAILURE() << "no sample " << name;
      return kMissing;
    }
    return it->second;
  }

  static inline testing::PythonSamples* samples_ = nullptr;
  static inline std::map<std::string, Expectation>* expectations_ = nullptr;
};

Result<NpyFile> parse(std::span<const uint8_t> bytes, const NpyLimits& limits = {}) {
  MemorySource source(bytes);
  return parse_npy_header(source, limits);
}
Result<NpyFile> parse(const std::string& bytes, const NpyLimits& limits = {}) {
  return parse(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), limits);
}

std::string write_header(const NpyHeader& header) {
  MemorySink sink;
  auto written = write_npy_header(header, sink);
  EXPECT_TRUE(written) << written.error().describe();
  return std::string(sink.bytes().begin(), sink.bytes().end());
}

TEST_F(NpyTest, ReadsWhatNumpyWritesAndWritesTheSameHeaderBack) {
  for (const std::string name : {"f4_2x3", "f8_scalar", "bool_3", "i1_4", "big_endian_fortran", "u2_empty", "c16_2",
                                 "f2_3", "datetime_ns", "timedelta_5s", "version_2", "version_3"}) {
    SCOPED_TRACE(name);
    const std::vector<uint8_t>& bytes = sample(name);
    auto file = parse(bytes);
    ASSERT_TRUE(file) << file.error().describe();
    const Expectation& expected = expectations_->at(name);
    EXPECT_EQ(file->header.descr.str(), expected.descr);
    EXPECT_EQ(file->header.fortran_order, expected.fortran_order);
    EXPECT_EQ(file->header.shape, expected.shape);
    EXPECT_EQ(file->data_offset + file->data_size, bytes.size());
    EXPECT_EQ(file->data_offset % 64, 0u);
    // numpy.save chooses version 1.0 for these, so the canonical header is exactly numpy's.
    if (name != "version_2" && name != "version_3") {
      EXPECT_EQ(file->major_version, 1);
      EXPECT_EQ(write_header(file->header), std::string(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(file->data_offset)));
    }
  }
  EXPECT_EQ(parse(sample("version_2"))->major_version, 2);
  EXPECT_EQ(parse(sample("version_3"))->major_version, 3);
}

TEST_F(NpyTest, RefusesNumpyFilesOutsideThePlainNumericSet) {
  const std::vector<std::tuple<std::string, ErrorCode, std::string>> cases = {
      {"object", ErrorCode::kForbidden, "pickled Python objects"},
      {"structured", ErrorCode::kUnsupported, "structured dtypes"},
      {"unicode", ErrorCode::kUnsupported, "string, bytes and void"},
      {"long_double", ErrorCode::kUnsupported, "long double"},
  };
  for (const auto& [name, code, message] : cases) {
    auto file = parse(sample(name));
    ASSERT_FALSE(file) << name;
    EXPECT_EQ(file.error().code, code) << file.error().describe();
    EXPECT_NE(file.error().message.find(message), std::string::npos) << file.error().describe();
    // The offset points at the descr value inside the header.
    EXPECT_EQ(file.error().offset, 10u + std::string("{'descr': ").size()) << file.error().describe();
  }
}

// A version 1.0 file with `dict` as its header text, padded with spaces so that the data starts at a
// multiple of `alignment`, then `data`.
std::string make_file(const std::string& dict, const std::string& data, size_t alignment = 64) {
  std::string text = dict;
  while ((10 + text.size() + 1) % alignment != 0) text += ' ';
  text += '\n';
  return "\x93NUMPY\x01\x00"s + static_cast<char>(text.size() & 0xff) + static_cast<char>(text.size() >> 8) + text + data;
}

void expect_refusal(const std::string& file, ErrorCode code, uint64_t offset, std::string_view needle,
                    const NpyLimits& limits = {}) {
  auto result = parse(file, limits);
  ASSERT_FALSE(result) << "accepted: " << file.substr(10);
  EXPECT_EQ(result.error().code, code) << result.error().describe();
  EXPECT_EQ(result.error().offset, offset) << result.error().describe();
  EXPECT_NE(result.error().message.find(needle), std::string::npos) << result.error().describe();
}

const std::string kDict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
const std::string kData(8, '\0');

TEST(NpyParse, AcceptsOldSixteenByteAlignmentAndAnyKeyOrder) {
  auto old = parse(make_file(kDict, kData, 16));
  ASSERT_TRUE(old) << old.error().describe();
  EXPECT_EQ(old->data_offset, 80u);
  auto reordered = parse(make_file("{'shape':(3, 2),'fortran_order':True,'descr':'>u8'}", std::string(48, '\0')));
  ASSERT_TRUE(reordered) << reordered.error().describe();
  EXPECT_EQ(reordered->header.shape, (std::vector<uint64_t>{3, 2}));
  EXPECT_TRUE(reordered->header.fortran_order);
  EXPECT_EQ(reordered->header.descr.str(), ">u8");
}

TEST(NpyParse, RefusesBadPrefixes) {
  expect_refusal("\x93NUMPY\x01"s, ErrorCode::kParse, 0, "too short");
  expect_refusal("\x93NUMPX\x01\x00\x76\x00"s + std::string(118, ' '), ErrorCode::kParse, 0, "magic");
  std::string version_four = make_file(kDict, kData);
  version_four[6] = 4;
  expect_refusal(version_four, ErrorCode::kUnsupported, 6, "version 4.0");
  std::string minor = make_file(kDict, kData);
  minor[7] = 1;
  expect_refusal(minor, ErrorCode::kUnsupported, 6, "version 1.1");
  expect_refusal("\x93NUMPY\x02\x00\x10\x00"s, ErrorCode::kParse, 8, "inside the header length");
  expect_refusal("\x93NUMPY\x01\x00\xff\x00"s + std::string(100, ' '), ErrorCode::kParse, 8, "runs past the end");
  NpyLimits limits;
  limits.max_header_size = 64;
  expect_refusal(make_file(kDict, kData), ErrorCode::kLimitExceeded, 8, "max_npy_header_size", limits);
  expect_refusal(make_file(kDict, kData, 8), ErrorCode::kParse, 8, "not a multiple of 16");
}

TEST(NpyParse, RefusesMalformedHeaderText) {
  // Header text starts at offset 10; offsets below point into it.
  struct Case {
    std::string dict;
    size_t column;  // offset of the problem inside the header text: its '{' is column 0
    ErrorCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"['descr', '<f4']", 0, ErrorCode::kParse, "dict literal"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1, }", 56, ErrorCode::kParse,
       "unknown key 'extra'"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 17, ErrorCode::kParse,
       "duplicate key 'descr'"},
      {"{'descr': '<f4', 'shape': (2,), }", 33, ErrorCode::kParse, "lacks the key 'fortran_order'"},
      {"{\"descr\": '<f4', 'fortran_order': False, 'shape': (2,), }", 1, ErrorCode::kParse, "single quotes"},
      {"{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }", 16, ErrorCode::kParse, "expected ',' or '}'"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (2,), }", 9, ErrorCode::kParse, "expected ':'"},
      {"{'descr': '\\x3cf4', 'fortran_order': False, 'shape': (2,), }", 11, ErrorCode::kParse, "escape"},
      {"{'descr': 'f4', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kParse, "byte order"},
      {"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kForbidden, "pickled Python objects"},
      {"{'descr': '<S3', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kUnsupported, "string, bytes"},
      {"{'descr': '<V8', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kUnsupported, "void"},
      {"{'descr': '<f3', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kUnsupported, "item size 3"},
      {"{'descr': '<c32', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kUnsupported, "long double"},
      {"{'descr': '<?', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kUnsupported, "plain numeric kinds"},
      {"{'descr': '<f', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kParse, "item size"},
      {"{'descr': '<f4[ns]', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kParse, "after the item size"},
      {"{'descr': '<M8[fortnight]', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kParse, "unknown datetime unit"},
      {"{'descr': '<M8[0s]', 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kParse, "multiple"},
      {"{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (2,), }", 10, ErrorCode::kUnsupported, "structured"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", 34, ErrorCode::kParse, "True or False"},
      {"{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2,), }", 34, ErrorCode::kParse, "True or False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2], }", 50, ErrorCode::kParse, "must be a tuple"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", 53, ErrorCode::kParse, "(n,)"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 51, ErrorCode::kParse, "decimal integers"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (02,), }", 51, ErrorCode::kParse, "decimal integers"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }", 52, ErrorCode::kParse, "no suffixes"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1_0,), }", 52, ErrorCode::kParse, "no suffixes"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775808,), }", 51, ErrorCode::kParse, "2^63-1"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,,), }", 53, ErrorCode::kParse, "decimal integers"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk", 58, ErrorCode::kParse, "final '\\n'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.dict);
    expect_refusal(make_file(c.dict, kData), c.code, 10 + c.column, c.message);
  }
}

TEST(NpyParse, RefusesBadPaddingAndControlCharacters) {
  const std::string good = make_file(kDict, kData);
  const size_t data_offset = good.size() - kData.size();
  std::string no_newline = good;
  no_newline[data_offset - 1] = ' ';
  expect_refusal(no_newline, ErrorCode::kParse, data_offset - 1, "end with '\\n'");
  std::string tab = good;
  tab[10 + 9] = '\t';
  expect_refusal(tab, ErrorCode::kParse, 19, "printable ASCII");
  std::string inner_newline = good;
  inner_newline[data_offset - 2] = '\n';
  expect_refusal(inner_newline, ErrorCode::kParse, data_offset - 2, "printable ASCII");
}

TEST(NpyParse, DataLengthMustMatchExactly) {
  const uint64_t data_offset = make_file(kDict, "").size();
  expect_refusal(make_file(kDict, kData + "PK\x03\x04"), ErrorCode::kParse, data_offset + 8, "4 bytes follow the array data");
  expect_refusal(make_file(kDict, "abc"), ErrorCode::kParse, data_offset + 3, "ends 5 bytes early");
  expect_refusal(make_file("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", ""),
                 ErrorCode::kParse, 10, "more bytes than fit in 64 bits");
  EXPECT_TRUE(parse(make_file("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", std::string(8, 'x'))));
}

TEST(NumpyDescr, NormalisesLikeNumpy) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"<f4", "<f4"}, {"|f4", "<f4"}, {"=f4", "<f4"}, {">i1", "|i1"}, {"<b1", "|b1"}, {"=u2", "<u2"},
      {">c8", ">c8"}, {"<M8", "<M8"}, {"<M8[1s]", "<M8[s]"}, {"<m8[25us]", "<m8[25us]"}, {"|M8[D]", "<M8[D]"},
  };
  for (const auto& [input, canonical] : cases) {
    auto descr = parse_numpy_descr(input);
    ASSERT_TRUE(descr) << input << ": " << descr.error().describe();
    EXPECT_EQ(descr->str(), canonical) << input;
  }
}

TEST(NpyWrite, RoundTripsIncludingVersionTwo) {
  std::vector<NpyHeader> headers = {
      {NumpyDescr{'<', 'f', 4, ""}, false, {2, 3}},
      {NumpyDescr{'|', 'u', 1, ""}, true, {}},
      {NumpyDescr{'>', 'm', 8, "5s"}, true, {7, 0, 9223372036854775807ull}},
  };
  headers.push_back({NumpyDescr{'<', 'i', 2, ""}, false, std::vector<uint64_t>(22000, 1)});
  NpyLimits limits;
  limits.max_header_size = 1 << 20;
  for (const NpyHeader& header : headers) {
    const std::string bytes = write_header(header);
    auto size = npy_data_size(header);
    ASSERT_TRUE(size);
    const std::string data(*size, '\x5a');
    auto parsed = parse(bytes + data, limits);
    ASSERT_TRUE(parsed) << parsed.error().describe();
    EXPECT_EQ(parsed->header, header);
    EXPECT_EQ(parsed->data_offset % 64, 0u);
    EXPECT_EQ(parsed->major_version, header.shape.size() > 10000 ? 2 : 1);
  }
}

TEST(NpyWrite, RefusesHeadersItCouldNotReadBack) {
  MemorySink sink;
  auto equals_order = write_npy_header({NumpyDescr{'=', 'f', 4, ""}, false, {1}}, sink);
  ASSERT_FALSE(equals_order);
  EXPECT_EQ(equals_order.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(write_npy_header({NumpyDescr{'<', 'O', 8, ""}, false, {1}}, sink));
  EXPECT_FALSE(write_npy_header({NumpyDescr{'<', 'f', 4, ""}, false, {1ull << 63}}, sink));
  EXPECT_FALSE(write_npy_header({NumpyDescr{'<', 'f', 8, ""}, false, {1ull << 62, 4}}, sink));
  EXPECT_EQ(sink.position(), 0u);
}

TEST(NpyWrite, NumpyLoadsTheOutput) {
  const NpyHeader header{NumpyDescr{'<', 'i', 4, ""}, true, {2, 3}};
  std::string data;
  for (int32_t value : {1, 4, 2, 5, 3, 6}) data.append(reinterpret_cast<const char*>(&value), sizeof value);
  const std::string file = write_header(header) + data;
  const testing::PythonRun run = testing::run_python(R"(
import numpy as np
array = np.load("a.npy", allow_pickle=False)
assert array.dtype.str == "<i4", array.dtype
assert np.isfortran(array)
assert array.tolist() == [[1, 2, 3], [4, 5, 6]], array.tolist()
print("ok")
)",
                                                     {{"a.npy", file}});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("ok"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace zoogate::cdr
