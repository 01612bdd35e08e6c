#include "cdr/zip_reader.h"

#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cdr/zip_format.h"
#include "common/byte_source.h"
#include "tests/cdr/zip_test_support.h"

namespace zoogate::cdr {
namespace {

using namespace ziptest;  // NOLINT(google-build-using-namespace)

Result<ZipDirectory> read(const Bytes& bytes, const ZipLimits& limits = {}) {
  MemorySource source(bytes);
  return read_zip_directory(source, limits);
}

// Streams every entry in chunks of `chunk` bytes; the contents by name, or the first error.
Result<std::map<std::string, std::string>> read_all(const ByteSource& source, const ZipDirectory& directory,
                                                    size_t chunk = 1 << 20) {
  std::map<std::string, std::string> out;
  std::vector<uint8_t> buffer(chunk);
  for (const ZipEntry& entry : directory.entries()) {
    auto stream = ZipEntryStream::open(source, entry);
    if (!stream) return tl::unexpected(stream.error());
    std::string& content = out[entry.name];
    while (true) {
      auto n = stream->read(buffer);
      if (!n) return tl::unexpected(n.error());
      if (*n == 0) break;
      content.append(reinterpret_cast<const char*>(buffer.data()), *n);
    }
    if (!stream->finished()) return fail(ErrorCode::kInternal, "stream stopped before the end");
  }
  return out;
}

Result<std::map<std::string, std::string>> read_all(const Bytes& bytes, size_t chunk = 1 << 20) {
  MemorySource source(bytes);
  auto directory = read_zip_directory(source, {});
  if (!directory) return tl::unexpected(directory.error());
  return read_all(source, *directory, chunk);
}

// Reading the directory must fail with `code`, a message containing `text`, and (when given) `offset`.
void expect_refused(const Bytes& bytes, ErrorCode code, std::string_view text,
                    std::optional<uint64_t> offset = std::nullopt, const ZipLimits& limits = {}) {
  auto directory = read(bytes, limits);
  ASSERT_FALSE(directory) << "accepted an archive that should be refused for: " << text;
  EXPECT_EQ(directory.error().code, code) << directory.error().describe();
  EXPECT_NE(directory.error().message.find(text), std::string::npos) << directory.error().describe();
  EXPECT_TRUE(directory.error().offset.has_value()) << directory.error().describe();
  if (offset) {
    EXPECT_EQ(directory.error().offset, offset) << directory.error().describe();
  }
}

RawEntry stored(std::string name, std::string content) {
  RawEntry entry;
  entry.name = std::move(name);
  entry.content = std::move(content);
  return entry;
}

RawEntry deflated(std::string name, std::string content) {
  RawEntry entry = stored(std::move(name), std::move(content));
  entry.method = zip::kMethodDeflate;
  return entry;
}

RawArchive two_entries() {
  RawArchive archive;
  archive.entries = {stored("model/data.pkl", "pickle bytes"), stored("model/data/0", std::string(100, '\x01'))};
  return archive;
}

// Text that deflates about 2:1, well inside the default ratio limit.
std::string noisy_text(size_t size) {
  std::string out;
  uint32_t state = 12345;
  while (out.size() < size) {
    state = state * 1103515245u + 12345u;
    out += static_cast<char>('a' + (state >> 16) % 26);
    if ((state >> 8) % 7 == 0) out += ' ';
  }
  out.resize(size);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Accepted archives

TEST(ZipReader, ReadsEntriesInArchiveOrderAndFindsThemByName) {
  Assembled built = assemble(two_entries());
  auto directory = read(built.bytes);
  ASSERT_TRUE(directory) << directory.error().describe();
  EXPECT_EQ(directory->top_folder(), "model");
  ASSERT_EQ(directory->entries().size(), 2u);
  const ZipEntry& first = directory->entries()[0];
  EXPECT_EQ(first.name, "model/data.pkl");
  EXPECT_EQ(first.local_header_offset, 0u);
  EXPECT_EQ(first.data_offset, zip::kLocalHeaderSize + first.name.size());
  EXPECT_EQ(first.size, 12u);
  EXPECT_EQ(first.compressed_size, 12u);
  EXPECT_EQ(first.crc32, crc_of("pickle bytes"));
  EXPECT_EQ(directory->entries()[1].local_header_offset, built.local_offsets[1]);

  ASSERT_NE(directory->find("model/data/0"), nullptr);
  EXPECT_EQ(directory->find("model/data/0")->size, 100u);
  EXPECT_EQ(directory->find("model/data"), nullptr);
  EXPECT_EQ(directory->find("MODEL/data.pkl"), nullptr);

  auto contents = read_all(built.bytes);
  ASSERT_TRUE(contents) << contents.error().describe();
  EXPECT_EQ((*contents)["model/data.pkl"], "pickle bytes");
  EXPECT_EQ((*contents)["model/data/0"], std::string(100, '\x01'));
}

TEST(ZipReader, StreamsDeflatedEntriesInAnyChunkSize) {
  RawArchive archive;
  const std::string text = noisy_text(300'000);
  archive.entries = {deflated("m/big.txt", text), deflated("m/small.txt", "x"), deflated("m/empty", "")};
  Assembled built = assemble(archive);
  for (size_t chunk : {size_t{1}, size_t{7}, size_t{4096}, size_t{1} << 20}) {
    SCOPED_TRACE(chunk);
    auto contents = read_all(built.bytes, chunk);
    ASSERT_TRUE(contents) << contents.error().describe();
    EXPECT_EQ((*contents)["m/big.txt"], text);
    EXPECT_EQ((*contents)["m/small.txt"], "x");
    EXPECT_EQ((*contents)["m/empty"], "");
  }
}

TEST(ZipReader, StreamReportsCrcOfProducedBytesAndStopsAtTheEnd) {
  Assembled built = assemble(two_entries());
  MemorySource source(built.bytes);
  auto directory = read_zip_directory(source, {});
  ASSERT_TRUE(directory);
  auto stream = ZipEntryStream::open(source, directory->entries()[0]);
  ASSERT_TRUE(stream);
  std::vector<uint8_t> buffer(5);
  auto n = stream->read(buffer);
  ASSERT_TRUE(n);
  EXPECT_EQ(*n, 5u);
  EXPECT_EQ(stream->crc32(), crc_of("pickl"));
  EXPECT_FALSE(stream->finished());
  while (true) {
    n = stream->read(buffer);
    ASSERT_TRUE(n) << n.error().describe();
    if (*n == 0) break;
  }
  EXPECT_TRUE(stream->finished());
  EXPECT_EQ(stream->produced(), 12u);
  EXPECT_EQ(stream->crc32(), crc_of("pickle bytes"));
  EXPECT_EQ(stream->read(buffer).value_or(99), 0u) << "reads after the end yield nothing";
}

TEST(ZipReader, AcceptsEveryDataDescriptorForm) {
  for (bool signature : {true, false}) {
    for (bool zip64 : {false, true}) {
      SCOPED_TRACE(std::to_string(signature) + "/" + std::to_string(zip64));
      RawArchive archive = two_entries();
      for (RawEntry& e : archive.entries) {
        e.flags |= zip::kFlagDataDescriptor;
        e.descriptor_signature = signature;
        e.descriptor_zip64 = zip64;
        // APPNOTE: 64-bit descriptor sizes go with a zip64 field in the local header (zeros, like Python).
        if (zip64) e.local_extra = zip64_extra({0, 0});
      }
      archive.entries[1].method = zip::kMethodDeflate;
      Assembled built = assemble(archive);
      auto contents = read_all(built.bytes);
      ASSERT_TRUE(contents) << contents.error().describe();
      EXPECT_EQ((*contents)["model/data/0"], std::string(100, '\x01'));
    }
  }
}

// A reader that follows an archive while it arrives reads each local header on its own, finds where
// the record ends (past a signed data descriptor), and finds a small record's size from its descriptor.
TEST(ZipReader, FollowsLocalRecordsWithoutTheCentralDirectory) {
  for (bool descriptor : {false, true}) {
    for (bool zip64 : {false, true}) {
      if (zip64 && !descriptor) continue;  // 64-bit sizes only matter in a descriptor
      SCOPED_TRACE(std::to_string(descriptor) + "/" + std::to_string(zip64));
      RawArchive archive;
      archive.entries = {stored("model/data.pkl", "pickle"), stored("model/byteorder", "little"),
                         stored("model/data/0", std::string(100, '\x07'))};
      for (RawEntry& e : archive.entries) {
        if (descriptor) e.flags |= zip::kFlagDataDescriptor;
        e.descriptor_zip64 = zip64;
        if (zip64) e.local_extra = zip64_extra({0, 0});
      }
      Assembled built = assemble(archive);
      MemorySource source(built.bytes);
      uint64_t at = 0;
      for (size_t i = 0; i < archive.entries.size(); ++i) {
        const RawEntry& entry = archive.entries[i];
        auto header = read_local_header(source, at);
        ASSERT_TRUE(header) << header.error().describe();
        EXPECT_EQ(header->name, entry.name);
        EXPECT_EQ(header->data_offset, at + zip::kLocalHeaderSize + entry.name.size() + entry.local_extra.size());
        EXPECT_EQ(header->zip64_extra, zip64);
        if (descriptor) {
          EXPECT_FALSE(header->size);
          auto found = find_small_stored_size(source, *header, 64);
          if (entry.content.size() <= 64) {
            ASSERT_TRUE(found) << found.error().describe();
            EXPECT_EQ(*found, entry.content.size());
          } else {
            EXPECT_FALSE(found) << "a record longer than the limit has no descriptor within it";
          }
        } else {
          EXPECT_EQ(header->size, entry.content.size());
        }
        auto end = local_record_end(source, *header, entry.content.size());
        ASSERT_TRUE(end) << end.error().describe();
        at = *end;
        EXPECT_EQ(at, i + 1 < archive.entries.size() ? built.local_offsets[i + 1] : built.cd_offset);
      }
      auto central = read_local_header(source, at);
      ASSERT_FALSE(central) << "the central directory is no local header";
      EXPECT_EQ(central.error().code, ErrorCode::kParse);
    }
  }
  RawArchive unsigned_descriptor;
  unsigned_descriptor.entries = {stored("model/data.pkl", "pickle")};
  unsigned_descriptor.entries[0].flags |= zip::kFlagDataDescriptor;
  unsigned_descriptor.entries[0].descriptor_signature = false;
  Assembled built = assemble(unsigned_descriptor);
  MemorySource source(built.bytes);
  auto header = read_local_header(source, 0);
  ASSERT_TRUE(header);
  auto end = local_record_end(source, *header, 6);
  ASSERT_FALSE(end) << "the walk follows only signed descriptors";
  EXPECT_EQ(end.error().code, ErrorCode::kUnsupported);
}

TEST(ZipReader, AcceptsZip64RecordsAndFields) {
  RawArchive archive = two_entries();
  archive.zip64_end_records = true;
  // Central sizes and offset deferred to the zip64 field; the local header carries both sizes.
  RawEntry& e = archive.entries[1];
  e.central_extra = zip64_extra({100, 100, 0});  // offset patched below once it is known
  e.local_extra = zip64_extra({100, 100});
  Assembled built = assemble(archive);
  const uint64_t central = built.central_offsets[1];
  const uint64_t extra_data = central + zip::kCentralHeaderSize + e.name.size() + zip::kExtraHeaderSize;
  patch64(built.bytes, extra_data + 16, built.local_offsets[1]);
  patch32(built.bytes, central + zip::kCentralCompressedSize, zip::kSentinel32);
  patch32(built.bytes, central + zip::kCentralSize, zip::kSentinel32);
  patch32(built.bytes, central + zip::kCentralLocalHeaderOffset, zip::kSentinel32);
  patch32(built.bytes, built.local_offsets[1] + zip::kLocalCompressedSize, zip::kSentinel32);
  patch32(built.bytes, built.local_offsets[1] + zip::kLocalSize, zip::kSentinel32);
  auto contents = read_all(built.bytes);
  ASSERT_TRUE(contents) << contents.error().describe();
  EXPECT_EQ((*contents)["model/data/0"], std::string(100, '\x01'));

  // The end record may also defer every field to the zip64 end record.
  patch16(built.bytes, built.end_offset + 8, zip::kSentinel16);
  patch16(built.bytes, built.end_offset + 10, zip::kSentinel16);
  patch32(built.bytes, built.end_offset + 12, zip::kSentinel32);
  patch32(built.bytes, built.end_offset + 16, zip::kSentinel32);
  EXPECT_TRUE(read(built.bytes)) << read(built.bytes).error().describe();
}

TEST(ZipReader, AcceptsTorchPaddingFieldAndLocalOnlyZip64Values) {
  RawArchive archive = two_entries();
  for (RawEntry& e : archive.entries) {
    e.flags |= zip::kFlagDataDescriptor;
    e.version_needed = 0;
    const size_t unpadded = zip::kLocalHeaderSize + e.name.size() + zip::kExtraHeaderSize;
    e.local_extra = extra_field(zip::kExtraTorchPadding, std::string((64 - unpadded % 64) % 64, 'Z'));
  }
  // miniz puts the real size in a local zip64 field although the header fields stay zero.
  archive.entries[1].local_extra = zip64_extra({100, 0}) + archive.entries[1].local_extra;
  archive.entries[1].descriptor_zip64 = true;
  Assembled built = assemble(archive);
  auto directory = read(built.bytes);
  ASSERT_TRUE(directory) << directory.error().describe();
  EXPECT_EQ(directory->entries()[0].data_offset % 64, 0u);
  EXPECT_TRUE(read_all(built.bytes));
}

// ---------------------------------------------------------------------------------------------------
// Names

TEST(ZipReader, RefusesDuplicateNames) {
  RawArchive archive = two_entries();
  archive.entries[1].name = archive.entries[0].name;
  expect_refused(assemble(archive).bytes, ErrorCode::kForbidden, "appears twice");
}

TEST(ZipReader, RefusesNamesThatDifferOnlyInCase) {
  RawArchive archive = two_entries();
  archive.entries[1].name = "model/DATA.pkl";
  expect_refused(assemble(archive).bytes, ErrorCode::kForbidden, "only in letter case");
}

TEST(ZipReader, RefusesUnsafeNames) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model/../etc/passwd", "'.' or '..'"},
      {"model/./data.pkl", "'.' or '..'"},
      {"/model/data.pkl", "absolute"},
      {"model\\data.pkl", "backslash"},
      {"model//data.pkl", "empty path segment"},
      {std::string("model/da\0ta", 11), "control character"},
      {"model/data\n.pkl", "control character"},
      {"C:/model/data.pkl", "':'"},
      {"model/data/", "directory entry"},
      {"data.pkl", "not inside a top-level folder"},
      {"model/\xC0\xAF", "not valid UTF-8"},
  };
  for (const auto& [name, reason] : cases) {
    SCOPED_TRACE(name);
    RawArchive archive = two_entries();
    archive.entries[1].name = name;
    Assembled built = assemble(archive);
    expect_refused(built.bytes, ErrorCode::kForbidden, reason, built.central_offsets[1] + zip::kCentralHeaderSize);
  }
}

TEST(ZipReader, RefusesOverlongNames) {
  RawArchive archive = two_entries();
  archive.entries[1].name = "model/" + std::string(zip::kMaxEntryNameLength, 'n');
  expect_refused(assemble(archive).bytes, ErrorCode::kLimitExceeded, "longer than 1024");
}

TEST(ZipReader, AcceptsFlatNamesOnlyWhenEveryNameIsFlat) {
  RawArchive flat = two_entries();
  flat.entries[0].name = "weights.npy";
  flat.entries[1].name = "bias.npy";
  Assembled built = assemble(flat);
  MemorySource source(built.bytes);
  auto directory = read_zip_directory(source, ZipLimits{});
  ASSERT_TRUE(directory) << directory.error().describe();
  EXPECT_EQ(directory->top_folder(), "");

  RawArchive mixed = two_entries();
  mixed.entries[0].name = "weights.npy";
  expect_refused(assemble(mixed).bytes, ErrorCode::kForbidden, "unlike the names at the top level");
}

TEST(ZipReader, RefusesASecondTopLevelFolder) {
  RawArchive archive = two_entries();
  archive.entries[1].name = "other/data/0";
  expect_refused(assemble(archive).bytes, ErrorCode::kForbidden, "second top-level folder");
}

TEST(ZipReader, RefusesNonAsciiNamesWithoutTheUtf8Flag) {
  RawArchive archive = two_entries();
  archive.entries[1].name = "model/d\xC3\xA9j\xC3\xA0";
  EXPECT_TRUE(read(assemble(archive).bytes)) << "valid UTF-8 with bit 11 is fine";
  archive.entries[1].flags = 0;
  expect_refused(assemble(archive).bytes, ErrorCode::kForbidden, "without the UTF-8 flag");
}

TEST(ZipReader, RefusesEntriesMarkedAsDirectoriesOrLinks) {
  RawArchive archive = two_entries();
  archive.entries[1].version_made_by = 0x0314;  // Unix
  archive.entries[1].external_attributes = 0120777u << 16;  // symbolic link
  expect_refused(assemble(archive).bytes, ErrorCode::kForbidden, "not a regular file");
  archive.entries[1].external_attributes = 0100644u << 16;
  EXPECT_TRUE(read(assemble(archive).bytes));
  archive.entries[1].external_attributes = 0x10;  // MS-DOS directory attribute
  expect_refused(assemble(archive).bytes, ErrorCode::kForbidden, "marked as a directory");
}

// ---------------------------------------------------------------------------------------------------
// Local header against central directory

TEST(ZipReader, RefusesLocalNameMismatch) {
  Assembled built = assemble(two_entries());
  built.bytes[built.local_offsets[1] + zip::kLocalHeaderSize + 6] = 'X';
  expect_refused(built.bytes, ErrorCode::kParse, "local header names", built.local_offsets[1] + zip::kLocalHeaderSize);
}

TEST(ZipReader, RefusesLocalMethodMismatch) {
  Assembled built = assemble(two_entries());
  patch16(built.bytes, built.local_offsets[1] + zip::kLocalMethod, zip::kMethodDeflate);
  expect_refused(built.bytes, ErrorCode::kParse, "has method 8", built.local_offsets[1] + zip::kLocalMethod);
}

TEST(ZipReader, RefusesLocalFlagsMismatch) {
  Assembled built = assemble(two_entries());
  patch16(built.bytes, built.local_offsets[0] + zip::kLocalFlags, 0);
  expect_refused(built.bytes, ErrorCode::kParse, "has flags 0x0", built.local_offsets[0] + zip::kLocalFlags);
}

TEST(ZipReader, RefusesLocalSizeMismatch) {
  Assembled built = assemble(two_entries());
  patch32(built.bytes, built.local_offsets[1] + zip::kLocalSize, 99);
  expect_refused(built.bytes, ErrorCode::kParse, "states size 99", built.local_offsets[1] + zip::kLocalSize);
  built = assemble(two_entries());
  patch32(built.bytes, built.local_offsets[1] + zip::kLocalCompressedSize, 101);
  expect_refused(built.bytes, ErrorCode::kParse, "states compressed size 101");
}

TEST(ZipReader, RefusesLocalCrcMismatch) {
  Assembled built = assemble(two_entries());
  patch32(built.bytes, built.local_offsets[1] + zip::kLocalCrc, 0x12345678);
  expect_refused(built.bytes, ErrorCode::kParse, "has CRC 0x12345678", built.local_offsets[1] + zip::kLocalCrc);
}

TEST(ZipReader, RefusesLocalSizesBeforeADataDescriptor) {
  RawArchive archive = two_entries();
  archive.entries[1].flags |= zip::kFlagDataDescriptor;
  Assembled built = assemble(archive);
  patch32(built.bytes, built.local_offsets[1] + zip::kLocalSize, 100);
  expect_refused(built.bytes, ErrorCode::kParse, "expected 0 before a data descriptor");
}

TEST(ZipReader, RefusesDataDescriptorThatDisagreesWithTheCentralDirectory) {
  RawArchive archive = two_entries();
  archive.entries[1].flags |= zip::kFlagDataDescriptor;
  Assembled built = assemble(archive);
  const uint64_t descriptor = built.cd_offset - 16;
  patch32(built.bytes, descriptor + 4, 0xDEADBEEF);
  expect_refused(built.bytes, ErrorCode::kParse, "data descriptor of 'model/data/0'", descriptor);
}

TEST(ZipReader, RefusesDataDescriptorWithoutZip64FieldButWith64BitSizes) {
  RawArchive archive = two_entries();
  archive.entries[1].flags |= zip::kFlagDataDescriptor;
  archive.entries[1].descriptor_zip64 = true;  // no zip64 field in the local header, so 32-bit sizes are expected
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "disagrees with the central directory");
}

// ---------------------------------------------------------------------------------------------------
// Flags, methods, versions, extra fields

TEST(ZipReader, RefusesEncryptedEntries) {
  for (uint16_t bit : {zip::kFlagEncrypted, zip::kFlagStrongEncryption, zip::kFlagMaskedHeaders}) {
    RawArchive archive = two_entries();
    archive.entries[1].flags |= bit;
    Assembled built = assemble(archive);
    expect_refused(built.bytes, ErrorCode::kUnsupported, "is encrypted", built.central_offsets[1]);
  }
}

TEST(ZipReader, RefusesOtherFlagBits) {
  RawArchive archive = two_entries();
  archive.entries[1].flags |= 1u << 1;
  expect_refused(assemble(archive).bytes, ErrorCode::kUnsupported, "general purpose flags 0x2");
}

TEST(ZipReader, RefusesUnknownCompressionMethods) {
  RawArchive archive = two_entries();
  archive.entries[1].method = 12;  // bzip2
  expect_refused(assemble(archive).bytes, ErrorCode::kUnsupported, "compression method 12");
}

TEST(ZipReader, RefusesVersionNeededAbove45) {
  RawArchive archive = two_entries();
  archive.entries[1].version_needed = 63;
  expect_refused(assemble(archive).bytes, ErrorCode::kUnsupported, "needs ZIP version 63");
}

TEST(ZipReader, RefusesMalformedOrRepeatedExtraFields) {
  RawArchive archive = two_entries();
  archive.entries[1].central_extra = le16(0xCAFE) + le16(10) + "short";
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "runs past the end of the extra data");
  archive.entries[1].central_extra = "abc";
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "ends inside a field header");
  archive.entries[1].central_extra = "";
  archive.entries[1].local_extra = extra_field(0xCAFE, "a") + extra_field(0xCAFE, "b");
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "appears twice");
}

TEST(ZipReader, AcceptsUnknownExtraFieldsButNotASecondName) {
  RawArchive archive = two_entries();
  archive.entries[1].central_extra = extra_field(0x5455, "\x01" "abcd");  // extended timestamp
  EXPECT_TRUE(read(assemble(archive).bytes));
  archive.entries[1].central_extra = extra_field(zip::kExtraUnicodePath, "\x01" "abcd" "model/evil");
  expect_refused(assemble(archive).bytes, ErrorCode::kUnsupported, "second name");
}

TEST(ZipReader, RefusesEntryComments) {
  RawArchive archive = two_entries();
  archive.entries[0].comment = "hidden";
  expect_refused(assemble(archive).bytes, ErrorCode::kUnsupported, "entry comments");
}

// ---------------------------------------------------------------------------------------------------
// Layout: every byte in exactly one structure

TEST(ZipReader, RefusesBytesBetweenEntries) {
  RawArchive archive = two_entries();
  archive.entries[0].after = "hidden payload";
  Assembled built = assemble(archive);
  expect_refused(built.bytes, ErrorCode::kParse, "14 bytes between the records", built.local_offsets[1] - 14);
}

TEST(ZipReader, RefusesBytesBeforeTheCentralDirectory) {
  RawArchive archive = two_entries();
  archive.entries[1].after = "x";
  Assembled built = assemble(archive);
  expect_refused(built.bytes, ErrorCode::kParse, "and the central directory belong to no entry", built.cd_offset - 1);
}

TEST(ZipReader, RefusesAppendedData) {
  RawArchive archive = two_entries();
  archive.suffix = "appended";
  Assembled built = assemble(archive);
  expect_refused(built.bytes, ErrorCode::kParse, "8 bytes appended", built.end_offset + zip::kEndOfCentralDirSize);
}

TEST(ZipReader, RefusesPrependedData) {
  RawArchive archive = two_entries();
  archive.prefix = "MZ self-extractor stub";
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "does not start with a zip local header", 0);

  // A hidden record at the front that only a streaming reader would see.
  archive.prefix = local_record(stored("model/hidden", "payload"));
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "before the first local record", 0);
}

TEST(ZipReader, RefusesArchiveComment) {
  RawArchive archive = two_entries();
  archive.comment = "comment";
  Assembled built = assemble(archive);
  expect_refused(built.bytes, ErrorCode::kUnsupported, "archive comment of 7 bytes",
                 built.end_offset + zip::kEndOfCentralDirSize);
}

TEST(ZipReader, RefusesOverlappingEntries) {
  RawArchive archive = two_entries();
  // The second entry's local record hides inside the data of the first.
  RawEntry inner = stored("model/data/0", "evil");
  archive.entries[0].content = local_record(inner);
  archive.entries[1] = inner;
  archive.entries[1].omit_local = true;
  archive.entries[1].local_offset = zip::kLocalHeaderSize + archive.entries[0].name.size();
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "overlaps the record of 'model/data.pkl'",
                 *archive.entries[1].local_offset);
}

TEST(ZipReader, RefusesTwoEntriesSharingOneRecord) {
  RawArchive archive = two_entries();
  archive.entries[1] = archive.entries[0];
  archive.entries[1].name = "model/data.pkx";  // a second name for the first record
  archive.entries[1].omit_local = true;
  archive.entries[1].local_offset = 0;
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "overlaps the record", 0);
}

TEST(ZipReader, RefusesLocalRecordsOutOfCentralDirectoryOrder) {
  RawArchive archive = two_entries();
  archive.central_order = {1, 0};
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "not in central directory order", 0);
}

TEST(ZipReader, RefusesASecondEndRecord) {
  // The last entry's data ends with an end record that points at a fake central directory; a reader
  // that searches from the front would take it.
  RawArchive archive = two_entries();
  const std::string fake_end = le32(zip::kEndOfCentralDirSignature) + le16(0) + le16(0) + le16(1) + le16(1) +
                               le32(46) + le32(0) + le16(0);
  archive.entries[1].content = std::string(40, 'w') + fake_end;
  Assembled built = assemble(archive);
  const uint64_t fake_at = built.cd_offset - fake_end.size();
  patch16(built.bytes, fake_at + 20, static_cast<uint16_t>(built.bytes.size() - fake_at - zip::kEndOfCentralDirSize));
  expect_refused(built.bytes, ErrorCode::kParse, "second end-of-central-directory record", fake_at);
}

TEST(ZipReader, AcceptsEndRecordSignaturesInsideEntryData) {
  // A benign tensor whose bytes happen to spell an empty end record is data, not structure.
  RawArchive archive = two_entries();
  archive.entries[1].content = std::string(40, 'w') + le32(zip::kEndOfCentralDirSignature) + std::string(18, '\0');
  Assembled built = assemble(archive);
  MemorySource source(built.bytes);
  auto directory = read_zip_directory(source, ZipLimits{});
  EXPECT_TRUE(directory) << directory.error().describe();
}

TEST(ZipReader, RefusesTruncatedCentralDirectory) {
  Assembled built = assemble(two_entries());
  patch16(built.bytes, built.end_offset + 8, 3);
  patch16(built.bytes, built.end_offset + 10, 3);
  expect_refused(built.bytes, ErrorCode::kParse, "cannot hold 3 entries");

  built = assemble(two_entries());
  patch16(built.bytes, built.end_offset + 8, 1);
  patch16(built.bytes, built.end_offset + 10, 1);
  expect_refused(built.bytes, ErrorCode::kParse, "after the last of 1 central directory entries",
                 built.central_offsets[1]);

  built = assemble(two_entries());
  patch32(built.bytes, built.end_offset + 12, static_cast<uint32_t>(built.end_offset - built.cd_offset - 10));
  expect_refused(built.bytes, ErrorCode::kParse, "does not end where the end-of-central-directory record begins");

  built = assemble(two_entries());
  expect_refused(Bytes(built.bytes.begin(), built.bytes.end() - 5), ErrorCode::kParse,
                 "no end-of-central-directory record");

  built = assemble(two_entries());
  patch16(built.bytes, built.central_offsets[1] + zip::kCentralNameLength, 400);
  expect_refused(built.bytes, ErrorCode::kParse, "name and extra field needs 400 bytes");
}

TEST(ZipReader, RefusesMultiDiskArchives) {
  Assembled built = assemble(two_entries());
  patch16(built.bytes, built.end_offset + 4, 1);
  expect_refused(built.bytes, ErrorCode::kUnsupported, "multi-disk");
}

TEST(ZipReader, RefusesEmptyArchive) {
  RawArchive archive = two_entries();
  Assembled built = assemble(archive);
  patch16(built.bytes, built.end_offset + 8, 0);
  patch16(built.bytes, built.end_offset + 10, 0);
  expect_refused(built.bytes, ErrorCode::kParse, "no entries");
}

// ---------------------------------------------------------------------------------------------------
// Zip64

TEST(ZipReader, RefusesZip64EndRecordThatDisagreesWithTheEndRecord) {
  RawArchive archive = two_entries();
  archive.zip64_end_records = true;
  Assembled built = assemble(archive);
  patch64(built.bytes, built.zip64_end_offset + 32, 3);  // total entries
  patch64(built.bytes, built.zip64_end_offset + 24, 3);
  expect_refused(built.bytes, ErrorCode::kParse, "entry count 2 disagrees with the zip64 end record's 3",
                 built.end_offset);
}

TEST(ZipReader, RefusesZip64LocatorPointingElsewhere) {
  RawArchive archive = two_entries();
  archive.zip64_end_records = true;
  Assembled built = assemble(archive);
  patch64(built.bytes, built.end_offset - zip::kZip64EndLocatorSize + 8, built.zip64_end_offset - 8);
  expect_refused(built.bytes, ErrorCode::kParse, "not at a zip64 end record directly before it");
}

TEST(ZipReader, RefusesZip64EndRecordWithExtensibleData) {
  RawArchive archive = two_entries();
  archive.zip64_end_records = true;
  Assembled built = assemble(archive);
  patch64(built.bytes, built.zip64_end_offset + 4, 52);
  expect_refused(built.bytes, ErrorCode::kParse, "states a size of 52 bytes", built.zip64_end_offset);
}

TEST(ZipReader, RefusesZip64LocatorForSeveralDisks) {
  RawArchive archive = two_entries();
  archive.zip64_end_records = true;
  Assembled built = assemble(archive);
  patch32(built.bytes, built.end_offset - 4, 2);
  expect_refused(built.bytes, ErrorCode::kUnsupported, "multi-disk");
}

TEST(ZipReader, RefusesZip64FieldsThatDoNotMatchTheSentinels) {
  RawArchive archive = two_entries();
  archive.entries[1].central_extra = zip64_extra({100});  // no field of the header is 0xFFFFFFFF
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "only 0 are called for");

  archive.entries[1].central_extra = "";
  Assembled built = assemble(archive);
  patch32(built.bytes, built.central_offsets[1] + zip::kCentralSize, zip::kSentinel32);
  expect_refused(built.bytes, ErrorCode::kParse, "does not hold the value");
}

TEST(ZipReader, RefusesLocalZip64SizesThatDisagree) {
  RawArchive archive = two_entries();
  archive.entries[1].local_extra = zip64_extra({100, 99});
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "states compressed size 99");
  archive.entries[1].local_extra = zip64_extra({100, 100, 12345});
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "states offset 12345");
  archive.entries[1].local_extra = extra_field(zip::kExtraZip64, std::string(12, '\0'));
  expect_refused(assemble(archive).bytes, ErrorCode::kParse, "has 12 bytes");
}

// ---------------------------------------------------------------------------------------------------
// Limits

TEST(ZipReader, RefusesTooManyEntries) {
  ZipLimits limits;
  limits.max_entries = 1;
  Assembled built = assemble(two_entries());
  expect_refused(built.bytes, ErrorCode::kLimitExceeded, "2 entries, over the limit of 1", std::nullopt, limits);
}

TEST(ZipReader, RefusesOversizedEntries) {
  ZipLimits limits;
  limits.max_entry_size = 99;
  Assembled built = assemble(two_entries());
  expect_refused(built.bytes, ErrorCode::kLimitExceeded, "declares 100 bytes", built.central_offsets[1], limits);
}

TEST(ZipReader, RefusesDeflateBombsOverTheRatioLimit) {
  RawArchive archive;
  archive.entries = {deflated("m/bomb", std::string(10 << 20, '\0'))};
  Assembled built = assemble(archive);
  expect_refused(built.bytes, ErrorCode::kLimitExceeded, "over the compression ratio limit of 100");
  ZipLimits generous;
  generous.max_compression_ratio = 1'000'000;
  EXPECT_TRUE(read(built.bytes, generous));
}

TEST(ZipReader, DeflatedEntryCannotInflatePastItsDeclaredSize) {
  // The header understates the size so that the ratio check passes; streaming stops at the declared size.
  RawArchive archive;
  archive.entries = {deflated("m/bomb", std::string(1 << 20, '\0'))};
  archive.entries[0].size = 1000;
  Assembled built = assemble(archive);
  auto contents = read_all(built.bytes);
  ASSERT_FALSE(contents);
  EXPECT_EQ(contents.error().code, ErrorCode::kParse);
  EXPECT_NE(contents.error().message.find("inflates to more than the declared 1000 bytes"), std::string::npos)
      << contents.error().describe();
}

// ---------------------------------------------------------------------------------------------------
// Entry data, checked while streaming

TEST(ZipReader, BadCrcIsDetectedWhenTheLastByteIsProduced) {
  RawArchive archive = two_entries();
  archive.entries[1].crc = 0x0BADC0DE;
  Assembled built = assemble(archive);
  MemorySource source(built.bytes);
  auto directory = read_zip_directory(source, {});
  ASSERT_TRUE(directory) << "the CRC is only known to be wrong once the data was read";
  auto stream = ZipEntryStream::open(source, directory->entries()[1]);
  ASSERT_TRUE(stream);
  std::vector<uint8_t> buffer(60);
  EXPECT_EQ(stream->read(buffer).value_or(0), 60u);
  auto last = stream->read(buffer);
  ASSERT_FALSE(last);
  EXPECT_EQ(last.error().code, ErrorCode::kIntegrity);
  EXPECT_EQ(last.error().offset, directory->entries()[1].data_offset);
  EXPECT_FALSE(stream->finished());
  EXPECT_FALSE(stream->read(buffer)) << "the error repeats";
}

TEST(ZipReader, BadCrcIsDetectedInDeflatedAndEmptyEntries) {
  RawArchive archive;
  archive.entries = {deflated("m/a", "some text"), stored("m/empty", "")};
  archive.entries[0].crc = 1;
  archive.entries[1].crc = 2;
  Assembled built = assemble(archive);
  MemorySource source(built.bytes);
  auto directory = read_zip_directory(source, {});
  ASSERT_TRUE(directory);
  for (const ZipEntry& entry : directory->entries()) {
    auto all = read_all(source, ZipDirectory({entry}, "m"));
    ASSERT_FALSE(all) << entry.name;
    EXPECT_EQ(all.error().code, ErrorCode::kIntegrity) << all.error().describe();
  }
}

TEST(ZipReader, RefusesDeflateDataThatEndsEarlyOrLeavesBytesOver) {
  const std::string text = noisy_text(15000);
  struct Case {
    std::string name;
    std::string stored;
    uint64_t size;
    std::string error;
  };
  const std::string stream = deflate_raw(text);
  const std::vector<Case> cases = {
      {"short", stream, text.size() + 1, "ends after 15000 bytes"},
      {"trailing", stream + "junk", text.size(), "4 bytes follow the deflate stream"},
      {"truncated", stream.substr(0, stream.size() - 3), text.size(), "truncated"},
      {"garbage", std::string("\xff\xff\xff\xff", 4), 10, "invalid deflate data"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    RawArchive archive;
    archive.entries = {deflated("m/x", text)};
    archive.entries[0].stored = c.stored;
    archive.entries[0].size = c.size;
    archive.entries[0].crc = crc_of(text);
    auto contents = read_all(assemble(archive).bytes, 4096);
    ASSERT_FALSE(contents);
    EXPECT_EQ(contents.error().code, ErrorCode::kParse) << contents.error().describe();
    EXPECT_NE(contents.error().message.find(c.error), std::string::npos) << contents.error().describe();
  }
}

TEST(ZipReader, StreamRefusesEntriesFromAnotherSource) {
  ZipEntry entry;
  entry.name = "m/x";
  entry.data_offset = 100;
  entry.compressed_size = entry.size = 10;
  Bytes small(50);
  MemorySource source(small);
  auto stream = ZipEntryStream::open(source, entry);
  ASSERT_FALSE(stream);
  EXPECT_EQ(stream.error().code, ErrorCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------------
// Archives made by real writers

class ZipReaderRealArchives : public ::testing::Test {
 protected:
  // Runs a Python script that writes archives into the scratch folder, then checks each one: our reader
  // accepts it, and every entry streams to the bytes zipfile extracts.
  void check_python_archives(const std::string& script, const std::vector<std::string>& files) {
    testing::PythonRun made = run_python_in(dir_, script);
    ASSERT_EQ(made.exit_code, 0) << made.output;
    for (const std::string& file : files) {
      SCOPED_TRACE(file);
      auto source = FileSource::open(dir_.file(file));
      ASSERT_TRUE(source);
      auto directory = read_zip_directory(**source, {});
      ASSERT_TRUE(directory) << directory.error().describe();
      auto contents = read_all(**source, *directory);
      ASSERT_TRUE(contents) << contents.error().describe();
      for (const auto& [name, content] : *contents) {
        Bytes expected = read_file(dir_.file("extracted/" + file + "/" + name));
        EXPECT_EQ(content, std::string(expected.begin(), expected.end())) << name;
      }
    }
  }

  static constexpr const char* kExtract = R"(
import os, sys, zipfile
def extract(path):
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        z.extractall(os.path.join('extracted', path))
)";
  TemporaryFolder dir_;
};

TEST_F(ZipReaderRealArchives, ReadsTorchSaveArchives) {
  if (!system_torch_available()) GTEST_SKIP() << "no torch in " << testing::kSystemPython;
  check_python_archives(std::string(kExtract) + R"(
import torch, collections
torch.save({"w": torch.ones(3)}, "x.pt")
torch.save({"e": torch.empty(0), "a": torch.arange(10), "b": torch.zeros(2, 3, dtype=torch.float64),
            "shared": [torch.ones(4)] * 2}, "several.pt")
torch.save(collections.OrderedDict(layer=torch.randn(1000, 100)), "larger.pt")
for name in ["x.pt", "several.pt", "larger.pt"]:
    extract(name)
)",
                        {"x.pt", "several.pt", "larger.pt"});

  auto source = FileSource::open(dir_.file("several.pt"));
  ASSERT_TRUE(source);
  auto directory = read_zip_directory(**source, {});
  ASSERT_TRUE(directory);
  EXPECT_EQ(directory->top_folder(), "several");
  ASSERT_NE(directory->find("several/data.pkl"), nullptr);
  ASSERT_NE(directory->find("several/version"), nullptr);
  for (const ZipEntry& entry : directory->entries()) {
    EXPECT_EQ(entry.data_offset % 64, 0u) << entry.name;
    EXPECT_EQ(entry.method, zip::kMethodStored);
  }
}

TEST_F(ZipReaderRealArchives, ReadsPythonZipfileArchives) {
  check_python_archives(std::string(kExtract) + R"(
import io

class Unseekable(io.RawIOBase):
    def __init__(self, f): self.f = f
    def writable(self): return True
    def write(self, b): return self.f.write(b)

def fill(z):
    z.writestr("top/a.txt", " ".join(str(i * i) for i in range(2000)).encode())
    with z.open("top/b.bin", "w", force_zip64=True) as f:
        f.write(bytes(range(256)) * 40)
    z.writestr("top/empty", b"")
    z.writestr("top/n\u00e4me", b"utf-8 name")

for name, method in [("stored.zip", zipfile.ZIP_STORED), ("deflated.zip", zipfile.ZIP_DEFLATED)]:
    with zipfile.ZipFile(name, "w", method) as z:
        fill(z)
    extract(name)
with open("streamed.zip", "wb") as out:
    with zipfile.ZipFile(Unseekable(out), "w", zipfile.ZIP_DEFLATED) as z:
        fill(z)
extract("streamed.zip")
)",
                        {"stored.zip", "deflated.zip", "streamed.zip"});
}

}  // namespace
}  // namespace zoogate::cdr
