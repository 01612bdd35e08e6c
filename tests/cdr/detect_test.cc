#include "cdr/detect.h"

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/cdr/python_samples.h"

namespace zoogate::cdr {
namespace {

using namespace std::string_literals;

// Every sample is made by the library that really writes the format. The sample names say what the
// bytes are; identification never sees a name, so a misleading extension cannot matter.
constexpr std::string_view kSampleScript = R"(
import bz2, collections, gzip, io, lzma, os, pickle, struct, subprocess, tarfile, tempfile, zipfile
import numpy as np
import torch

state = {"w": torch.ones(2)}
def torch_bytes(**kwargs):
    buffer = io.BytesIO()
    torch.save(state, buffer, **kwargs)
    return buffer.getvalue()

emit("torch_zip", torch_bytes())
for protocol in (0, 2, 4):
    emit("torch_legacy_p%d" % protocol, torch_bytes(_use_new_zipfile_serialization=False, pickle_protocol=protocol))

def tar_of(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for name in members:
            data = pickle.dumps(name, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
emit("torch_tar", tar_of(["sys_info", "pickle", "storages", "tensors"]))
emit("plain_tar", tar_of(["model.bin"]))

buffer = io.BytesIO(); np.save(buffer, np.arange(6, dtype="<f4").reshape(2, 3)); emit("npy", buffer.getvalue())
buffer = io.BytesIO(); np.savez(buffer, a=np.zeros(3)); emit("npz", buffer.getvalue())

header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
header += b" " * (-len(header) % 8)
emit("safetensors", struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1, 2))

value = {"a": [1, 2.5, "x"], "b": None}
for protocol in range(6):
    emit("pickle_p%d" % protocol, pickle.dumps(value, protocol=protocol))
emit("pickle_global_p0", pickle.dumps(collections.OrderedDict(a=1), protocol=0))

payload = b"model weights " * 100
emit("gzip", gzip.compress(payload))
emit("bzip2", bz2.compress(payload))
emit("xz", lzma.compress(payload))
def tool(*command):
    return subprocess.run(command, input=payload, stdout=subprocess.PIPE, check=True).stdout
emit("zstd", tool("zstd", "-q", "-c"))
emit("lz4", tool("lz4", "-q", "-c"))
with tempfile.TemporaryDirectory() as folder:
    with open(os.path.join(folder, "weights.bin"), "wb") as f:
        f.write(payload)
    subprocess.run(["7z", "a", "-bd", "-y", os.path.join(folder, "a.7z"), os.path.join(folder, "weights.bin")],
                   stdout=subprocess.DEVNULL, check=True)
    emit("7z", open(os.path.join(folder, "a.7z"), "rb").read())

zip_buffer = io.BytesIO()
with zipfile.ZipFile(zip_buffer, "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps(value, protocol=2))
emit("zip_behind_junk", b"#!/bin/sh\nexit 0\n" + b"\0" * 23 + zip_buffer.getvalue())
empty_zip = io.BytesIO()
zipfile.ZipFile(empty_zip, "w").close()
emit("empty_zip", empty_zip.getvalue())
)";

class DetectTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { samples_ = new testing::PythonSamples(testing::make_python_samples(kSampleScript)); }
  static void TearDownTestSuite() {
    delete samples_;
    samples_ = nullptr;
  }

  static Detection identify_sample(const std::string& name) {
    if (!samples_->failure.empty()) ADD_FAILURE() << samples_->failure;
    const auto it = samples_->files.find(name);
    if (it == samples_->files.end()) {
      ADD_FAILURE() << "no sample " << name;
      return {};
    }
    return identify(it->second);
  }

  static Detection identify(const std::vector<uint8_t>& bytes) {
    MemorySource source(bytes);
    auto detection = identify_content(source);
    EXPECT_TRUE(detection) << detection.error().describe();
    return detection ? *detection : Detection{};
  }
  static Detection identify(std::string_view text) {
    return identify(std::vector<uint8_t>(text.begin(), text.end()));
  }

  static inline testing::PythonSamples* samples_ = nullptr;
};

TEST_F(DetectTest, PyTorchFormats) {
  EXPECT_EQ(identify_sample("torch_zip").kind, ContentKind::kZip);
  for (int protocol : {0, 2, 4}) {
    const Detection legacy = identify_sample("torch_legacy_p" + std::to_string(protocol));
    EXPECT_EQ(legacy.kind, ContentKind::kTorchLegacy) << protocol << ": " << legacy.reason;
    EXPECT_EQ(legacy.pickle_protocol, protocol);
  }
  const Detection tar = identify_sample("torch_tar");
  EXPECT_EQ(tar.kind, ContentKind::kTorchTar) << tar.reason;
  EXPECT_NE(tar.reason.find("'sys_info'"), std::string::npos) << tar.reason;
}

TEST_F(DetectTest, NumpyAndSafetensors) {
  EXPECT_EQ(identify_sample("npy").kind, ContentKind::kNpy);
  EXPECT_EQ(identify_sample("npz").kind, ContentKind::kZip) << "the caller tells .npz from PyTorch by entry names";
  const Detection safetensors = identify_sample("safetensors");
  EXPECT_EQ(safetensors.kind, ContentKind::kSafetensors) << safetensors.reason;
  EXPECT_FALSE(safetensors.pickle_protocol);
}

TEST_F(DetectTest, PicklesOfEveryProtocol) {
  for (int protocol = 0; protocol <= 5; ++protocol) {
    const Detection pickle = identify_sample("pickle_p" + std::to_string(protocol));
    EXPECT_EQ(pickle.kind, ContentKind::kPickle) << protocol << ": " << pickle.reason;
    EXPECT_EQ(pickle.pickle_protocol, protocol) << pickle.reason;
  }
  const Detection global = identify_sample("pickle_global_p0");
  EXPECT_EQ(global.kind, ContentKind::kPickle) << global.reason;
  EXPECT_EQ(global.pickle_protocol, 0);
}

TEST_F(DetectTest, ArchivesAndCompressedStreamsAreNamed) {
  const std::vector<std::pair<std::string, ContentKind>> expected = {
      {"plain_tar", ContentKind::kTar}, {"gzip", ContentKind::kGzip}, {"bzip2", ContentKind::kBzip2},
      {"xz", ContentKind::kXz},         {"zstd", ContentKind::kZstd}, {"lz4", ContentKind::kLz4},
      {"7z", ContentKind::kSevenZip},
  };
  for (const auto& [name, kind] : expected) {
    const Detection detection = identify_sample(name);
    EXPECT_EQ(detection.kind, kind) << name << ": " << detection.reason;
    EXPECT_FALSE(detection.reason.empty());
  }
  EXPECT_EQ(identify("Rar!\x1a\x07\x01\x00\x33\x92\xb5\xe5"s).kind, ContentKind::kRar);
  EXPECT_EQ(identify("Rar!\x1a\x07\x00\xcf\x90\x73\x00"s).kind, ContentKind::kRar);
  EXPECT_EQ(identify("GGUF\x03\x00\x00\x00\x00\x00\x00\x00"s).kind, ContentKind::kGguf);
  EXPECT_EQ(identify("\x89HDF\r\n\x1a\n\x00\x00\x00\x00"s).kind, ContentKind::kHdf5);
}

TEST_F(DetectTest, ZipOnlyAtOffsetZero) {
  const Detection behind_junk = identify_sample("zip_behind_junk");
  EXPECT_EQ(behind_junk.kind, ContentKind::kUnknown);
  EXPECT_NE(behind_junk.reason.find("ZIP local header at offset 40"), std::string::npos) << behind_junk.reason;

  const Detection empty = identify_sample("empty_zip");
  EXPECT_EQ(empty.kind, ContentKind::kUnknown);
  EXPECT_NE(empty.reason.find("empty ZIP archive"), std::string::npos) << empty.reason;

  EXPECT_NE(identify("PK\x07\x08rest"s).reason.find("spanned"), std::string::npos);
}

TEST_F(DetectTest, UnknownInputsSayWhatTheyLookLike) {
  const Detection empty = identify(""s);
  EXPECT_EQ(empty.kind, ContentKind::kUnknown);
  EXPECT_EQ(empty.reason, "input is empty");

  const Detection text = identify("None of this is a model.\n"s);
  EXPECT_EQ(text.kind, ContentKind::kUnknown) << "a leading 'N' alone does not make a pickle: " << text.reason;
  EXPECT_NE(text.reason.find("text"), std::string::npos);

  const Detection binary = identify("\x01\x02\x03\x04\x05\x06\x07\x08\x09"s);
  EXPECT_EQ(binary.kind, ContentKind::kUnknown);
  EXPECT_NE(binary.reason.find("0102030405060708"), std::string::npos) << binary.reason;
}

TEST_F(DetectTest, PickleShapesAreCheckedBeyondTheFirstByte) {
  EXPECT_EQ(identify("N."s).kind, ContentKind::kPickle);
  // A truncated pickle can still run a payload before it fails, so it goes to the pickle VM.
  const Detection truncated = identify("cos\nsystem\n(S'id'\ntR"s);
  EXPECT_EQ(truncated.kind, ContentKind::kPickle) << truncated.reason;
  EXPECT_EQ(truncated.pickle_protocol, 0);

  EXPECT_EQ(identify("cos system\n(S'id'\ntR."s).kind, ContentKind::kUnknown) << "GLOBAL needs two name lines";
  EXPECT_EQ(identify("I12x\n."s).kind, ContentKind::kUnknown) << "INT needs a decimal line";
  EXPECT_EQ(identify("dict(a=1)\n"s).kind, ContentKind::kUnknown) << "no pickle starts with DICT";
  EXPECT_EQ(identify("N"s).kind, ContentKind::kUnknown) << "a single opcode is not a pickle";

  const Detection future = identify("\x80\x09N."s);
  EXPECT_EQ(future.kind, ContentKind::kUnknown);
  EXPECT_NE(future.reason.find("protocol 9"), std::string::npos) << future.reason;

  const Detection bad_opcode = identify("\x80\x02\x00\x00"s);
  EXPECT_EQ(bad_opcode.kind, ContentKind::kUnknown);
  EXPECT_NE(bad_opcode.reason.find("byte 0x00 is no pickle opcode at offset 2"), std::string::npos) << bad_opcode.reason;

  const Detection short_operand = identify("\x80\x02X\xff\x00\x00\x00ab"s);
  EXPECT_EQ(short_operand.kind, ContentKind::kUnknown) << "BINUNICODE longer than the input";
  EXPECT_NE(short_operand.reason.find("BINUNICODE data past the end"), std::string::npos) << short_operand.reason;
}

TEST_F(DetectTest, LargeOperandsBeyondTheWindowAreAccepted) {
  // BINBYTES of 8000 bytes: the operand ends past the detection window but inside the input.
  std::string pickle = "\x80\x03" "B"s;
  const uint32_t length = 8000;
  for (int i = 0; i < 4; ++i) pickle += static_cast<char>((length >> (8 * i)) & 0xff);
  pickle += std::string(length, 'x') + "\x94.";
  const Detection detection = identify(pickle);
  EXPECT_EQ(detection.kind, ContentKind::kPickle) << detection.reason;
  EXPECT_NE(detection.reason.find("up to the detection window"), std::string::npos) << detection.reason;
}

TEST_F(DetectTest, SafetensorsLengthThatLooksLikeProtoIsStillSafetensors) {
  // N = 0x0280 starts with the bytes 0x80 0x02 (PROTO 2), then zeros: never a pickle opcode.
  std::string header = "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}";
  header.resize(0x280, ' ');
  const std::string file = "\x80\x02\x00\x00\x00\x00\x00\x00"s + header;
  const Detection detection = identify(file);
  EXPECT_EQ(detection.kind, ContentKind::kSafetensors) << detection.reason;

  const std::string overlong = "\xff\x00\x00\x00\x00\x00\x00\x00{\"w\":1}"s;
  const Detection truncated = identify(overlong);
  EXPECT_EQ(truncated.kind, ContentKind::kUnknown);
  EXPECT_NE(truncated.reason.find("header length 255 exceeds"), std::string::npos) << truncated.reason;
}

TEST_F(DetectTest, TarHeaderChecksumIsVerified) {
  const auto it = samples_->files.find("torch_tar");
  ASSERT_NE(it, samples_->files.end()) << samples_->failure;
  std::vector<uint8_t> corrupted = it->second;
  corrupted[0] ^= 0x20;  // 's' -> 'S' in "sys_info"
  const Detection detection = identify(corrupted);
  EXPECT_EQ(detection.kind, ContentKind::kUnknown);
  EXPECT_NE(detection.reason.find("checksum"), std::string::npos) << detection.reason;
}

// Records the furthest byte any read touched.
class ReadTracker final : public ByteSource {
 public:
  explicit ReadTracker(const ByteSource& inner) : inner_(inner) {}
  uint64_t size() const override { return inner_.size(); }
  Status read_at(uint64_t offset, std::span<uint8_t> out) const override {
    furthest_ = std::max(furthest_, offset + out.size());
    return inner_.read_at(offset, out);
  }
  uint64_t furthest() const { return furthest_; }

 private:
  const ByteSource& inner_;
  mutable uint64_t furthest_ = 0;
};

TEST_F(DetectTest, ReadsAtMostTheDetectionWindow) {
  std::vector<uint8_t> large(4 << 20, 'x');
  const std::string proto = "\x80\x04\x95";
  std::copy(proto.begin(), proto.end(), large.begin());
  MemorySource memory(large);
  ReadTracker tracker(memory);
  auto detection = identify_content(tracker);
  ASSERT_TRUE(detection);
  EXPECT_LE(tracker.furthest(), kDetectionWindow);
}

TEST(ContentKindNames, AreShortAndStable) {
  EXPECT_EQ(to_string(ContentKind::kTorchLegacy), "torch-legacy");
  EXPECT_EQ(to_string(ContentKind::kSevenZip), "7z");
  EXPECT_EQ(to_string(ContentKind::kUnknown), "unknown");
}

}  // namespace
}  // namespace zoogate::cdr
