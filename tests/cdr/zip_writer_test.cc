#include "cdr/zip_writer.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "cdr/zip_format.h"
#include "cdr/zip_reader.h"
#include "common/byte_source.h"
#include "common/encoding.h"
#include "tests/cdr/zip_test_support.h"

namespace zoogate::cdr {
namespace {

using namespace ziptest;  // NOLINT(google-build-using-namespace)

// Deterministic bytes that do not repeat with a short period.
std::string pattern(size_t size, uint32_t seed) {
  std::string out(size, '\0');
  for (char& c : out) {
    seed = seed * 1664525u + 1013904223u;
    c = static_cast<char>(seed >> 24);
  }
  return out;
}

using Entries = std::vector<std::pair<std::string, std::string>>;

// Writes `entries` through a ZipWriter, `chunk` bytes per write() call.
Bytes write_archive(const Entries& entries, ZipWriterOptions options = {}, size_t chunk = 4097,
                    bool give_crc = false) {
  MemorySink sink;
  ZipWriter zip(sink, options);
  for (const auto& [name, content] : entries) {
    std::optional<uint32_t> crc;
    if (give_crc) crc = crc_of(content);
    EXPECT_TRUE(zip.begin_entry(name, content.size(), crc));
    for (size_t done = 0; done < content.size(); done += chunk) {
      EXPECT_TRUE(zip.write(as_bytes(std::string_view(content).substr(done, chunk))));
    }
    EXPECT_TRUE(zip.end_entry());
  }
  EXPECT_TRUE(zip.finish());
  return sink.take();
}

// Reads an archive back with the strict reader: contents by name, in archive order.
Entries read_back(const Bytes& bytes) {
  MemorySource source(bytes);
  auto directory = read_zip_directory(source, {});
  EXPECT_TRUE(directory) << directory.error().describe();
  Entries out;
  if (!directory) return out;
  std::vector<uint8_t> buffer(1 << 20);
  for (const ZipEntry& entry : directory->entries()) {
    auto stream = ZipEntryStream::open(source, entry);
    EXPECT_TRUE(stream);
    std::string content;
    while (stream) {
      auto n = stream->read(buffer);
      EXPECT_TRUE(n) << n.error().describe();
      if (!n || *n == 0) break;
      content.append(reinterpret_cast<const char*>(buffer.data()), *n);
    }
    out.emplace_back(entry.name, std::move(content));
  }
  return out;
}

Entries various_sizes() {
  Entries entries;
  uint32_t seed = 1;
  for (size_t size : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{65}, size_t{1000}, (size_t{3} << 20) + 7}) {
    entries.emplace_back("archive/data/" + std::to_string(entries.size()), pattern(size, seed++));
  }
  entries.emplace_back("archive/data.pkl", "pickle");
  entries.emplace_back("archive/d\xC3\xA9j\xC3\xA0 vu", "non-ASCII name");
  return entries;
}

TEST(ZipWriter, RoundTripsThroughTheStrictReader) {
  const Entries entries = various_sizes();
  for (bool zip64 : {false, true}) {
    SCOPED_TRACE(zip64);
    Bytes bytes = write_archive(entries, {.force_zip64 = zip64});
    EXPECT_EQ(read_back(bytes), entries);

    MemorySource source(bytes);
    auto directory = read_zip_directory(source, {});
    ASSERT_TRUE(directory);
    EXPECT_EQ(directory->top_folder(), "archive");
    for (size_t i = 0; i < entries.size(); ++i) {
      const ZipEntry& entry = directory->entries()[i];
      EXPECT_EQ(entry.data_offset % zip::kDataAlignment, 0u) << entry.name;
      EXPECT_EQ(entry.crc32, crc_of(entries[i].second)) << entry.name;
      EXPECT_EQ(entry.method, zip::kMethodStored);
      EXPECT_EQ(entry.flags, zip::kFlagDataDescriptor | zip::kFlagUtf8Name);
    }
  }
}

TEST(ZipWriter, OutputIsDeterministicWhateverTheChunkingOrCrcSource) {
  const Entries entries = various_sizes();
  const Bytes reference = write_archive(entries);
  EXPECT_EQ(write_archive(entries, {}, 1), reference);
  EXPECT_EQ(write_archive(entries, {}, 1 << 20), reference);
  EXPECT_EQ(write_archive(entries, {}, 4097, /*give_crc=*/true), reference);
}

// A ZipLayout's records, each entry placed in reverse order into a random-access sink, must be exactly
// ZipWriter's bytes: the CDR engine relies on that to write storages as they arrive.
Bytes place_in_reverse(const Entries& entries, ZipWriterOptions options) {
  std::vector<ZipLayout::PlannedEntry> planned;
  for (const auto& [name, content] : entries) planned.push_back({name, content.size()});
  auto layout = ZipLayout::plan(planned, options);
  EXPECT_TRUE(layout) << layout.error().describe();
  if (!layout) return {};
  MemorySink sink;
  std::vector<uint32_t> crcs(entries.size());
  for (size_t i = entries.size(); i-- > 0;) {
    crcs[i] = crc_of(entries[i].second);
    EXPECT_TRUE(sink.write_at(layout->data_offset(i), as_bytes(entries[i].second)));
    EXPECT_TRUE(sink.write_at(layout->data_offset(i) + layout->size(i), layout->data_descriptor(i, crcs[i])));
    EXPECT_TRUE(sink.write_at(layout->header_offset(i), layout->local_header(i)));
  }
  auto directory = layout->central_directory(crcs);
  EXPECT_TRUE(directory);
  EXPECT_TRUE(sink.write_at(layout->central_directory_offset(), *directory));
  return sink.take();
}

TEST(ZipLayout, PlacedInAnyOrderGivesZipWritersBytes) {
  const Entries entries = various_sizes();
  for (bool zip64 : {false, true}) {
    SCOPED_TRACE(zip64);
    EXPECT_EQ(place_in_reverse(entries, {.force_zip64 = zip64}), write_archive(entries, {.force_zip64 = zip64}));
  }
}

TEST(ZipLayout, RefusesWhatZipWriterRefuses) {
  EXPECT_FALSE(ZipLayout::plan({}));
  auto duplicate = ZipLayout::plan({{"archive/a", 1}, {"archive/A", 1}});
  ASSERT_FALSE(duplicate);
  EXPECT_EQ(duplicate.error().code, ErrorCode::kForbidden);
  EXPECT_FALSE(ZipLayout::plan({{"archive/a", UINT64_MAX - 10}})) << "an archive past 2^64 bytes cannot be laid out";
  auto layout = ZipLayout::plan({{"archive/a", 1}, {"archive/b", 2}});
  ASSERT_TRUE(layout);
  EXPECT_FALSE(layout->central_directory(std::vector<uint32_t>{1})) << "one CRC per entry";
}

TEST(ZipWriter, LaysEntriesOutLikeTorchSave) {
  const Bytes bytes = write_archive({{"archive/data.pkl", "abc"}, {"archive/version", "3\n"}});
  // Local header: version 2.0, data descriptor + UTF-8 flags, stored, fixed date, zero CRC and sizes.
  EXPECT_EQ(zip::load_u32(&bytes[0]), zip::kLocalHeaderSignature);
  EXPECT_EQ(zip::load_u16(&bytes[zip::kLocalVersionNeeded]), 20);
  EXPECT_EQ(zip::load_u16(&bytes[zip::kLocalFlags]), 0x0808);
  EXPECT_EQ(zip::load_u16(&bytes[zip::kLocalMethod]), 0);
  EXPECT_EQ(zip::load_u32(&bytes[10]), 0x00210000u) << "00:00 on 1980-01-01";
  EXPECT_EQ(zip::load_u32(&bytes[zip::kLocalCrc]), 0u);
  EXPECT_EQ(zip::load_u32(&bytes[zip::kLocalSize]), 0u);
  // The extra field is torch's "FB" padding, 'Z'-filled, that puts the data at offset 64.
  const size_t name_length = zip::load_u16(&bytes[zip::kLocalNameLength]);
  const size_t extra_at = zip::kLocalHeaderSize + name_length;
  EXPECT_EQ(zip::load_u16(&bytes[zip::kLocalExtraLength]), 64 - extra_at);
  EXPECT_EQ(zip::load_u16(&bytes[extra_at]), zip::kExtraTorchPadding);
  EXPECT_EQ(std::string(bytes.begin() + extra_at + 4, bytes.begin() + 64), std::string(64 - extra_at - 4, 'Z'));
  EXPECT_EQ(std::string(bytes.begin() + 64, bytes.begin() + 67), "abc");
  // A signed data descriptor with 32-bit sizes follows the data.
  EXPECT_EQ(zip::load_u32(&bytes[67]), zip::kDataDescriptorSignature);
  EXPECT_EQ(zip::load_u32(&bytes[71]), crc_of("abc"));
  EXPECT_EQ(zip::load_u32(&bytes[75]), 3u);
  EXPECT_EQ(zip::load_u32(&bytes[79]), 3u);
  EXPECT_EQ(zip::load_u32(&bytes[83]), zip::kLocalHeaderSignature);
  // No zip64 records are needed; the end record closes the file with no comment.
  const size_t end = bytes.size() - zip::kEndOfCentralDirSize;
  EXPECT_EQ(zip::load_u32(&bytes[end]), zip::kEndOfCentralDirSignature);
  EXPECT_NE(zip::load_u32(&bytes[end - zip::kZip64EndLocatorSize]), zip::kZip64EndLocatorSignature);
  EXPECT_EQ(zip::load_u16(&bytes[end + 10]), 2);
}

TEST(ZipWriter, ForcedZip64UsesZip64FieldsAndEndRecords) {
  const Bytes bytes = write_archive({{"archive/data.pkl", "abc"}}, {.force_zip64 = true});
  EXPECT_EQ(zip::load_u16(&bytes[zip::kLocalVersionNeeded]), 45);
  EXPECT_EQ(zip::load_u32(&bytes[zip::kLocalSize]), zip::kSentinel32);
  const size_t extra_at = zip::kLocalHeaderSize + 16;
  EXPECT_EQ(zip::load_u16(&bytes[extra_at]), zip::kExtraZip64);
  EXPECT_EQ(zip::load_u16(&bytes[extra_at + 2]), 16);
  EXPECT_EQ(zip::load_u16(&bytes[extra_at + 20]), zip::kExtraTorchPadding);
  const size_t data_at = 128;  // 30 + 16 (name) + 20 (zip64) + 4 (padding header) = 70, aligned up
  EXPECT_EQ(std::string(bytes.begin() + data_at, bytes.begin() + data_at + 3), "abc");
  EXPECT_EQ(zip::load_u64(&bytes[data_at + 3 + 8]), 3u) << "64-bit sizes in the data descriptor";
  EXPECT_EQ(zip::load_u64(&bytes[data_at + 3 + 16]), 3u);
  const size_t end = bytes.size() - zip::kEndOfCentralDirSize;
  EXPECT_EQ(zip::load_u32(&bytes[end - zip::kZip64EndLocatorSize]), zip::kZip64EndLocatorSignature);
  EXPECT_EQ(zip::load_u16(&bytes[end + 10]), zip::kSentinel16);
  EXPECT_EQ(zip::load_u32(&bytes[end + 16]), zip::kSentinel32);
}

TEST(ZipWriter, RefusesMisuseAndStaysFailed) {
  MemorySink sink;
  ZipWriter zip(sink);
  EXPECT_EQ(zip.write(as_bytes("x")).error().code, ErrorCode::kInvalidArgument);

  ZipWriter empty(sink);
  EXPECT_EQ(empty.finish().error().code, ErrorCode::kInvalidArgument);

  const auto refused = [](Status status, ErrorCode code, std::string_view text) {
    ASSERT_FALSE(status);
    EXPECT_EQ(status.error().code, code) << status.error().describe();
    EXPECT_NE(status.error().message.find(text), std::string::npos) << status.error().describe();
  };
  {
    MemorySink out;
    ZipWriter w(out);
    ASSERT_TRUE(w.begin_entry("a/b", 3));
    refused(w.write(as_bytes("abcd")), ErrorCode::kInvalidArgument, "exceed the declared size 3");
    refused(w.end_entry(), ErrorCode::kInvalidArgument, "failed earlier");
  }
  {
    MemorySink out;
    ZipWriter w(out);
    ASSERT_TRUE(w.begin_entry("a/b", 3));
    ASSERT_TRUE(w.write(as_bytes("ab")));
    refused(w.end_entry(), ErrorCode::kInvalidArgument, "received 2 of its declared 3 bytes");
  }
  {
    MemorySink out;
    ZipWriter w(out);
    ASSERT_TRUE(w.begin_entry("a/b", 0));
    refused(w.begin_entry("a/c", 0), ErrorCode::kInvalidArgument, "while 'a/b' is open");
  }
  {
    MemorySink out;
    ZipWriter w(out);
    ASSERT_TRUE(w.begin_entry("a/b", 0));
    refused(w.finish(), ErrorCode::kInvalidArgument, "while 'a/b' is open");
  }
  {
    MemorySink out;
    ZipWriter w(out);
    ASSERT_TRUE(w.begin_entry("a/b", 0));
    ASSERT_TRUE(w.end_entry());
    ASSERT_TRUE(w.finish());
    refused(w.finish(), ErrorCode::kInvalidArgument, "twice");
  }
}

TEST(ZipWriter, RefusesNamesTheReaderWouldRefuse) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a/../b", "'.' or '..'"},          {"/a/b", "absolute"},          {"a\\b", "backslash"},
      {"a/b/", "directory entry"},        {"b", "not inside a top-level folder"},     {"other/b", "second top-level folder"},
      {"a/first", "appears twice"},       {"a/FIRST", "letter case"},    {"a/" + std::string(1100, 'n'), "longer than 1024"},
  };
  for (const auto& [name, reason] : cases) {
    SCOPED_TRACE(name.substr(0, 20));
    MemorySink out;
    ZipWriter w(out);
    ASSERT_TRUE(w.begin_entry("a/first", 0));
    ASSERT_TRUE(w.end_entry());
    auto status = w.begin_entry(name, 0);
    ASSERT_FALSE(status);
    EXPECT_NE(status.error().message.find(reason), std::string::npos) << status.error().describe();
  }
}

// A sink whose device fills up after `capacity` bytes.
class FullDiskSink final : public ByteSink {
 public:
  explicit FullDiskSink(uint64_t capacity) : capacity_(capacity) {}
  uint64_t position() const override { return written_; }

 private:
  Status write_bytes(std::span<const uint8_t> bytes) override {
    if (written_ + bytes.size() > capacity_) return fail(ErrorCode::kIo, "no space left on device");
    written_ += bytes.size();
    return {};
  }
  uint64_t capacity_;
  uint64_t written_ = 0;
};

TEST(ZipWriter, PassesSinkFailuresOnAndStopsThere) {
  FullDiskSink sink(100);
  ZipWriter zip(sink);
  ASSERT_TRUE(zip.begin_entry("a/b", 1000));
  auto status = zip.write(as_bytes(std::string(1000, 'x')));
  ASSERT_FALSE(status);
  EXPECT_EQ(status.error().code, ErrorCode::kIo);
  EXPECT_FALSE(zip.end_entry());
  EXPECT_FALSE(zip.finish());
}

// ---------------------------------------------------------------------------------------------------
// Other readers: Python's zipfile and torch.load

// The pickle torch.save (PyTorch 1.13, protocol 2) writes for {"w": torch.ones(3)}: one FloatStorage
// with key "0" of 3 elements.
constexpr std::string_view kOnesPickleHex =
    "80027d7100580100000077710163746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a7102"
    "2828580700000073746f72616765710363746f7263680a466c6f617453746f726167650a710458010000003071055803"
    "00000063707571064b03747107514b004b038571084b018571098963636f6c6c656374696f6e730a4f72646572656444"
    "6963740a710a2952710b74710c52710d732e";

Entries torch_archive_entries() {
  auto pickle = from_hex(kOnesPickleHex);
  std::string ones;
  const float one = 1.0f;
  for (int i = 0; i < 3; ++i) ones.append(reinterpret_cast<const char*>(&one), sizeof one);
  return {{"archive/data.pkl", std::string(pickle->begin(), pickle->end())},
          {"archive/data/0", ones},
          {"archive/version", "3\n"}};
}

TEST(ZipWriter, PythonZipfileReadsTheOutput) {
  TemporaryFolder dir;
  const Entries entries = various_sizes();
  write_file(dir.file("plain.zip"), write_archive(entries));
  write_file(dir.file("zip64.zip"), write_archive(entries, {.force_zip64 = true}));
  std::filesystem::create_directories(dir.path() / "expected");
  for (size_t i = 0; i < entries.size(); ++i) {
    write_file(dir.file("expected/" + std::to_string(i)), as_bytes(entries[i].second));
  }
  auto run = run_python_in(dir, R"(
import zipfile
for name in ["plain.zip", "zip64.zip"]:
    with zipfile.ZipFile(name) as z:
        assert z.testzip() is None, name
        for i, info in enumerate(z.infolist()):
            assert z.read(info) == open("expected/%d" % i, "rb").read(), (name, info.filename)
            assert info.date_time == (1980, 1, 1, 0, 0, 0), info.date_time
print("ok")
)");
  EXPECT_EQ(run.exit_code, 0) << run.output;
}

TEST(ZipWriter, TorchLoadsTheOutput) {
  if (!system_torch_available()) GTEST_SKIP() << "no torch in " << testing::kSystemPython;
  TemporaryFolder dir;
  write_file(dir.file("plain.pt"), write_archive(torch_archive_entries()));
  write_file(dir.file("zip64.pt"), write_archive(torch_archive_entries(), {.force_zip64 = true}));
  auto run = run_python_in(dir, R"(
import torch
for name in ["plain.pt", "zip64.pt"]:
    for weights_only in [False, True]:
        loaded = torch.load(name, weights_only=weights_only)
        assert list(loaded.keys()) == ["w"], loaded
        assert torch.equal(loaded["w"], torch.ones(3)), loaded
print("ok")
)");
  EXPECT_EQ(run.exit_code, 0) << run.output;
}

// ---------------------------------------------------------------------------------------------------
// Real zip64: an entry over 4 GiB, written to a sparse file so that it costs no disk space.

// Writes all-zero chunks as holes.
class SparseFileSink final : public ByteSink {
 public:
  explicit SparseFileSink(const std::string& path) : fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644)) {}
  ~SparseFileSink() override { ::close(fd_); }
  SparseFileSink(const SparseFileSink&) = delete;
  SparseFileSink& operator=(const SparseFileSink&) = delete;
  uint64_t position() const override { return position_; }
  // Gives the file its full length when it ends in a hole.
  bool close_out() { return ::ftruncate(fd_, static_cast<off_t>(position_)) == 0; }

 private:
  Status write_bytes(std::span<const uint8_t> bytes) override {
    static const std::vector<uint8_t> kZeros(1 << 20, 0);
    bool all_zero = bytes.size() <= kZeros.size() && std::memcmp(bytes.data(), kZeros.data(), bytes.size()) == 0;
    if (all_zero) {
      if (::lseek(fd_, static_cast<off_t>(bytes.size()), SEEK_CUR) < 0) return fail(ErrorCode::kIo, "lseek failed");
    } else if (::write(fd_, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
      return fail(ErrorCode::kIo, "write failed");
    }
    position_ += bytes.size();
    return {};
  }
  int fd_;
  uint64_t position_ = 0;
};

TEST(ZipWriter, WritesZip64ForAnEntryOver4GiB) {
  constexpr uint64_t kBigSize = (uint64_t{4} << 30) + 12345;
  TemporaryFolder dir;
  const std::string path = dir.file("big.zip");
  {
    SparseFileSink sink(path);
    ZipWriter zip(sink);
    ASSERT_TRUE(zip.begin_entry("big/data.pkl", 3));
    ASSERT_TRUE(zip.write(as_bytes("pkl")));
    ASSERT_TRUE(zip.end_entry());
    // The CRC of the zeros, combined from the CRC of one chunk, so that the test does not spend its
    // time computing it; the reader still verifies it over every byte.
    const std::vector<uint8_t> zeros(1 << 20, 0);
    uLong chunk_crc = crc32(0, zeros.data(), static_cast<uInt>(zeros.size()));
    uLong crc = 0;
    for (uint64_t done = 0; done < kBigSize; done += zeros.size()) {
      uint64_t n = std::min<uint64_t>(zeros.size(), kBigSize - done);
      crc = crc32_combine(crc, n == zeros.size() ? chunk_crc : crc32(0, zeros.data(), static_cast<uInt>(n)),
                          static_cast<z_off_t>(n));
    }
    ASSERT_TRUE(zip.begin_entry("big/data/0", kBigSize, static_cast<uint32_t>(crc)));
    for (uint64_t done = 0; done < kBigSize; done += zeros.size()) {
      uint64_t n = std::min<uint64_t>(zeros.size(), kBigSize - done);
      ASSERT_TRUE(zip.write(std::span<const uint8_t>(zeros.data(), static_cast<size_t>(n))));
    }
    ASSERT_TRUE(zip.end_entry());
    ASSERT_TRUE(zip.begin_entry("big/version", 2));  // starts past 4 GiB: a zip64 offset
    ASSERT_TRUE(zip.write(as_bytes("3\n")));
    ASSERT_TRUE(zip.end_entry());
    ASSERT_TRUE(zip.finish());
    ASSERT_TRUE(sink.close_out());
  }

  auto source = FileSource::open(path);
  ASSERT_TRUE(source);
  auto directory = read_zip_directory(**source, {});
  ASSERT_TRUE(directory) << directory.error().describe();
  ASSERT_EQ(directory->entries().size(), 3u);
  EXPECT_EQ(directory->entries()[1].size, kBigSize);
  EXPECT_GT(directory->entries()[2].local_header_offset, kBigSize);
  // Stream the small entries, the last of which lies past 4 GiB, and the start of the big one (reading
  // all of it would only repeat what the smaller tests check, at the cost of seconds).
  std::vector<uint8_t> buffer(1 << 20);
  for (const ZipEntry& entry : directory->entries()) {
    auto stream = ZipEntryStream::open(**source, entry);
    ASSERT_TRUE(stream);
    auto n = stream->read(buffer);
    ASSERT_TRUE(n) << n.error().describe();
    EXPECT_EQ(*n, std::min<uint64_t>(entry.size, buffer.size()));
    EXPECT_EQ(stream->finished(), entry.size < kBigSize) << entry.name;
  }
  auto version = ZipEntryStream::open(**source, directory->entries()[2]);
  ASSERT_TRUE(version);
  ASSERT_TRUE(version->read(buffer));
  EXPECT_EQ(std::string(buffer.begin(), buffer.begin() + 2), "3\n");

  auto run = run_python_in(dir, R"(
import zipfile
with zipfile.ZipFile("big.zip") as z:
    sizes = [(i.filename, i.file_size) for i in z.infolist()]
    assert sizes == [("big/data.pkl", 3), ("big/data/0", 4 * 2**30 + 12345), ("big/version", 2)], sizes
    assert z.read("big/version") == b"3\n"
    with z.open("big/data/0") as f:
        assert f.read(1 << 20) == bytes(1 << 20)
print("ok")
)");
  EXPECT_EQ(run.exit_code, 0) << run.output;
}

}  // namespace
}  // namespace zoogate::cdr
