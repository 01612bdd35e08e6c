#include "proxy/artifact_cache.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <span>
#include <tuple>
#include <unordered_set>
#include <utility>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/encoding.h"

namespace zoogate::proxy {
namespace fs = std::filesystem;

namespace {

// Changing what a name is computed from, or what an item holds, changes these labels, so that
// processes of two versions sharing a folder never read each other's items.
constexpr std::string_view kKeyLabel = "zoogate artifact cache key v1";
constexpr std::string_view kRecordLabel = "zoogate artifact cache record v1";
constexpr uint64_t kEntryFormat = 1;

constexpr std::string_view kBodyFile = "body";
constexpr std::string_view kInfoFile = "info.json";
constexpr std::string_view kManifestFile = "manifest";
constexpr std::string_view kSpoolDataFile = "data";
constexpr std::string_view kOwnerLockFile = "owner.lock";
constexpr std::string_view kNewSessionPrefix = ".new-";
constexpr std::string_view kDeadPrefix = ".dead-";

constexpr size_t kHashChunkBytes = size_t{1} << 20;
// "<bytes> <entries>\n" with two 64-bit numbers fits easily; anything longer is not ours.
constexpr uint64_t kMaxUsageFileBytes = 64;
constexpr size_t kSessionIdBytes = 16;
constexpr size_t kNameHexDigits = 64;
// A publication that finds another process's item, which then vanishes before it can be read
// (evicted or found damaged), tries again; this many times before giving up.
constexpr int kPublishAttempts = 3;

std::string join(std::string_view folder, std::string_view name) {
  std::string path(folder);
  path += '/';
  path += name;
  return path;
}

std::string cache_lock_path(std::string_view root) { return join(join(root, "locks"), "cache.lock"); }

tl::unexpected<Error> os_failure(std::string_view action, const std::string& path, int error_number) {
  return fail(ErrorCode::kIo, std::string(action) + " " + path + ": " + std::strerror(error_number));
}

bool is_lower_hex(std::string_view text, size_t digits) {
  return text.size() == digits &&
         std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// The fan-out folder an item name lives in.
std::string_view fan_out(std::string_view name) { return name.substr(0, 2); }

void hash_length_prefixed(Sha256& hash, std::string_view part) {
  std::array<uint8_t, 8> length{};
  uint64_t remaining = part.size();
  for (size_t i = length.size(); i-- > 0;) {
    length[i] = static_cast<uint8_t>(remaining & 0xff);
    remaining >>= 8;
  }
  hash.update(std::span<const uint8_t>(length));
  hash.update(part);
}

class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  // Closes now, reporting what close(2) reports (on network file systems, a write that failed late).
  Status close(const std::string& path) {
    const int fd = release();
    if (::close(fd) != 0) return os_failure("cannot close", path, errno);
    return {};
  }

 private:
  int fd_;
};

Status make_directory(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return os_failure("cannot create", path, errno);
  return {};
}

Status lock_exclusively(int fd, const std::string& path) {
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) return os_failure("cannot lock", path, errno);
  }
  return {};
}

Status write_new_file(const std::string& path, std::string_view text, bool synced) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) return os_failure("cannot create", path, errno);
  while (!text.empty()) {
    const ssize_t written = ::write(fd.get(), text.data(), text.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return os_failure("cannot write", path, errno);
    }
    text.remove_prefix(static_cast<size_t>(written));
  }
  if (synced && ::fsync(fd.get()) != 0) return os_failure("cannot fsync", path, errno);
  return fd.close(path);
}

Status sync_directory(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return os_failure("cannot open", path, errno);
  if (::fsync(fd.get()) != 0) return os_failure("cannot fsync", path, errno);
  return {};
}

// The whole file, or nullopt when it does not exist; larger than `max_bytes` is kLimitExceeded.
Result<std::optional<std::string>> read_file_if_present(const std::string& path, uint64_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    return os_failure("cannot open", path, errno);
  }
  struct stat status {};
  if (::fstat(fd.get(), &status) != 0) return os_failure("cannot stat", path, errno);
  if (!S_ISREG(status.st_mode)) return fail(ErrorCode::kIo, path + " is not a regular file");
  if (static_cast<uint64_t>(status.st_size) > max_bytes) {
    return fail(ErrorCode::kLimitExceeded, path + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::string text(static_cast<size_t>(status.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t got = ::pread(fd.get(), text.data() + done, text.size() - done, static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return os_failure("cannot read", path, errno);
    if (got == 0) return fail(ErrorCode::kIo, path + " shrank while it was read");
    done += static_cast<size_t>(got);
  }
  return text;
}

// SHA-256 of the first `size` bytes of `fd`. A file that ends before is kIntegrity (it changed after
// its size was checked).
Result<Sha256::Digest> hash_file(int fd, uint64_t size, const std::string& path) {
  Sha256 hash;
  std::vector<uint8_t> buffer(kHashChunkBytes);
  uint64_t offset = 0;
  while (offset < size) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), size - offset));
    const ssize_t got = ::pread(fd, buffer.data(), want, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return os_failure("cannot read", path, errno);
    if (got == 0) return fail(ErrorCode::kIntegrity, path + " ended before its recorded size");
    hash.update(std::span<const uint8_t>(buffer.data(), static_cast<size_t>(got)));
    offset += static_cast<uint64_t>(got);
  }
  return hash.finish();
}

// Total size of the regular files directly inside `folder` (an item's files).
Result<uint64_t> directory_bytes(const std::string& folder) {
  std::error_code error;
  uint64_t total = 0;
  for (fs::directory_iterator it(folder, error), end; !error && it != end; it.increment(error)) {
    struct stat status {};
    if (::lstat(it->path().c_str(), &status) == 0 && S_ISREG(status.st_mode)) {
      total += static_cast<uint64_t>(status.st_size);
    }
  }
  if (error) return fail(ErrorCode::kIo, "cannot list " + folder + ": " + error.message());
  return total;
}

void remove_quietly(const std::string& path) {
  std::error_code ignored;
  fs::remove_all(path, ignored);
}

// Marks an item as just used. A failure (the item was evicted meanwhile) changes nothing worth
// reporting: the item only ages.
void touch(const std::string& path) { ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0); }

Result<std::string> random_hex(size_t bytes) {
  std::vector<uint8_t> buffer(bytes);
  size_t filled = 0;
  while (filled < bytes) {
    const ssize_t got = ::getrandom(buffer.data() + filled, bytes - filled, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return fail(ErrorCode::kIo, std::string("getrandom failed: ") + std::strerror(errno));
    filled += static_cast<size_t>(got);
  }
  return to_hex(buffer);
}

struct EntryInfo {
  uint64_t size = 0;
  Sha256::Digest sha256{};
  std::optional<uint64_t> manifest_size;
  nlohmann::json meta;
};

nlohmann::json entry_info_json(const EntryInfo& info) {
  nlohmann::json json = {{"format", kEntryFormat}, {"size", info.size}, {"sha256", to_hex(info.sha256)},
                         {"meta", info.meta}};
  if (info.manifest_size) json["manifest_size"] = *info.manifest_size;
  return json;
}

std::optional<EntryInfo> parse_entry_info(std::string_view text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
  if (!json.is_object()) return std::nullopt;
  auto format = json.find("format");
  auto size = json.find("size");
  auto sha256 = json.find("sha256");
  auto meta = json.find("meta");
  if (format == json.end() || !format->is_number_unsigned() || format->get<uint64_t>() != kEntryFormat) {
    return std::nullopt;
  }
  if (size == json.end() || !size->is_number_unsigned()) return std::nullopt;
  if (sha256 == json.end() || !sha256->is_string() || meta == json.end()) return std::nullopt;
  auto digest = from_hex(sha256->get_ref<const std::string&>());
  if (!digest || digest->size() != Sha256::Digest{}.size()) return std::nullopt;
  EntryInfo info;
  info.size = size->get<uint64_t>();
  std::copy(digest->begin(), digest->end(), info.sha256.begin());
  info.meta = *meta;
  if (auto manifest_size = json.find("manifest_size"); manifest_size != json.end()) {
    if (!manifest_size->is_number_unsigned()) return std::nullopt;
    info.manifest_size = manifest_size->get<uint64_t>();
  }
  return info;
}

Result<Sha256::Digest> digest_from_hex(std::string_view sha256_hex) {
  if (!is_lower_hex(sha256_hex, kNameHexDigits)) {
    return fail(ErrorCode::kInvalidArgument, "not a SHA-256 in lowercase hex: \"" + std::string(sha256_hex) + "\"");
  }
  Sha256::Digest digest{};
  auto bytes = from_hex(sha256_hex);
  std::copy(bytes->begin(), bytes->end(), digest.begin());
  return digest;
}

// Creates tmp/<id>/ holding owner.lock, locked for as long as the returned descriptor stays open. The
// folder is built under another name and renamed, so that a cleaner never sees a session folder
// whose lock is not held yet.
Result<int> create_session(const std::string& tmp_dir, const std::string& session_id) {
  const std::string building = join(tmp_dir, std::string(kNewSessionPrefix) + session_id);
  ZG_TRY(make_directory(building));
  const std::string lock_path = join(building, kOwnerLockFile);
  UniqueFd fd(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) return os_failure("cannot create", lock_path, errno);
  ZG_TRY(lock_exclusively(fd.get(), lock_path));
  const std::string session_dir = join(tmp_dir, session_id);
  if (::rename(building.c_str(), session_dir.c_str()) != 0) {
    const int error_number = errno;
    remove_quietly(building);
    return os_failure("cannot rename " + building + " to", session_dir, error_number);
  }
  return fd.release();
}

}  // namespace

std::string CacheKey::name() const {
  Sha256 hash;
  hash_length_prefixed(hash, kKeyLabel);
  hash_length_prefixed(hash, upstream_id);
  hash_length_prefixed(hash, policy_version);
  hash_length_prefixed(hash, variant_id);
  return to_hex(hash.finish());
}

ArtifactCache::FileIdentity ArtifactCache::identity_of(const struct stat& status) {
  return {static_cast<uint64_t>(status.st_dev), static_cast<uint64_t>(status.st_ino),
          static_cast<uint64_t>(status.st_size), static_cast<int64_t>(status.st_mtim.tv_sec),
          static_cast<int64_t>(status.st_mtim.tv_nsec)};
}

// ---- FillLock

FillLock::FillLock(FillLock&& other) noexcept
    : cache_(std::exchange(other.cache_, nullptr)),
      key_name_(std::move(other.key_name_)),
      fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)) {}

FillLock::~FillLock() {
  if (fd_ < 0) return;
  // Unlinking before closing, while still holding the lock: a waiter that gets the lock afterwards
  // sees that its file is no longer the one at the path and starts over on a fresh one.
  ::unlink(path_.c_str());
  ::close(fd_);
  cache_->release_fill_slot(key_name_);
}

// ---- EntryWriter

EntryWriter::EntryWriter(ArtifactCache& cache, std::string key_name, std::string staging_dir)
    : cache_(cache),
      key_name_(std::move(key_name)),
      staging_dir_(std::move(staging_dir)),
      body_path_(join(staging_dir_, kBodyFile)) {}

EntryWriter::~EntryWriter() {
  if (!committed_) remove_quietly(staging_dir_);
}

Result<CachedArtifact> EntryWriter::commit(const nlohmann::json& meta, std::optional<std::string_view> manifest_text,
                                           std::optional<Sha256::Digest> body_sha256) {
  if (committed_) return fail(ErrorCode::kInternal, "the cache entry " + key_name_ + " was committed already");
  UniqueFd body(::open(body_path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (body.get() < 0) return os_failure("cannot open the entry body", body_path_, errno);
  struct stat status {};
  if (::fstat(body.get(), &status) != 0) return os_failure("cannot stat", body_path_, errno);
  if (!S_ISREG(status.st_mode)) return fail(ErrorCode::kIo, body_path_ + " is not a regular file");

  EntryInfo info;
  info.size = static_cast<uint64_t>(status.st_size);
  if (body_sha256) {
    info.sha256 = *body_sha256;
  } else {
    auto hashed = hash_file(body.get(), info.size, body_path_);
    if (!hashed) return tl::unexpected(hashed.error());
    info.sha256 = *hashed;
  }
  info.meta = meta;
  if (manifest_text) {
    info.manifest_size = manifest_text->size();
    ZG_TRY(write_new_file(join(staging_dir_, kManifestFile), *manifest_text, true));
  }
  // Invalid UTF-8 in the filler's strings is replaced rather than thrown about.
  const std::string info_text = entry_info_json(info).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (info_text.size() > ArtifactCache::kMaxEntryInfoBytes) {
    return fail(ErrorCode::kLimitExceeded, "the metadata of cache entry " + key_name_ + " is larger than " +
                                               std::to_string(ArtifactCache::kMaxEntryInfoBytes) + " bytes");
  }
  ZG_TRY(write_new_file(join(staging_dir_, kInfoFile), info_text, true));
  ZG_TRY(sync_directory(staging_dir_));

  const std::string item = cache_.entry_path(key_name_);
  for (int attempt = 0; attempt < kPublishAttempts; ++attempt) {
    auto published = cache_.publish(staging_dir_, item, ArtifactCache::ItemKind::kEntry);
    if (!published) return tl::unexpected(published.error());
    if (*published == ArtifactCache::Publication::kOurs) {
      committed_ = true;
      cache_.remember_verified(item, ArtifactCache::identity_of(status), info.sha256);
      CachedArtifact artifact;
      artifact.body_path = join(item, kBodyFile);
      artifact.size = info.size;
      artifact.sha256 = info.sha256;
      artifact.meta = std::move(info.meta);
      if (manifest_text) artifact.manifest_path = join(item, kManifestFile);
      return artifact;
    }
    auto theirs = cache_.find_entry(key_name_);
    if (!theirs) return tl::unexpected(theirs.error());
    if (*theirs) {
      remove_quietly(staging_dir_);
      committed_ = true;
      return std::move(**theirs);
    }
  }
  return fail(ErrorCode::kIo, "the cache entry " + key_name_ + " kept being replaced and removed while it was published");
}

// ---- SpoolWriter

SpoolWriter::SpoolWriter(ArtifactCache& cache, std::string sha256_hex, Sha256::Digest expected, std::string staging_dir)
    : cache_(cache),
      sha256_hex_(std::move(sha256_hex)),
      expected_(expected),
      staging_dir_(std::move(staging_dir)),
      path_(join(staging_dir_, kSpoolDataFile)) {}

SpoolWriter::~SpoolWriter() {
  if (!committed_) remove_quietly(staging_dir_);
}

Result<SpooledUpstream> SpoolWriter::commit(std::optional<Sha256::Digest> sha256) {
  if (committed_) return fail(ErrorCode::kInternal, "the spool of " + sha256_hex_ + " was committed already");
  UniqueFd data(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (data.get() < 0) return os_failure("cannot open the spooled file", path_, errno);
  struct stat status {};
  if (::fstat(data.get(), &status) != 0) return os_failure("cannot stat", path_, errno);
  if (!S_ISREG(status.st_mode)) return fail(ErrorCode::kIo, path_ + " is not a regular file");
  const uint64_t size = static_cast<uint64_t>(status.st_size);
  if (!sha256) {
    auto hashed = hash_file(data.get(), size, path_);
    if (!hashed) return tl::unexpected(hashed.error());
    sha256 = *hashed;
  }
  if (*sha256 != expected_) {
    return fail(ErrorCode::kIntegrity,
                "the spooled file has SHA-256 " + to_hex(*sha256) + ", not the " + sha256_hex_ + " it was named by");
  }
  ZG_TRY(sync_directory(staging_dir_));

  const std::string item = cache_.spool_item_path(sha256_hex_);
  for (int attempt = 0; attempt < kPublishAttempts; ++attempt) {
    auto published = cache_.publish(staging_dir_, item, ArtifactCache::ItemKind::kSpool);
    if (!published) return tl::unexpected(published.error());
    if (*published == ArtifactCache::Publication::kOurs) {
      committed_ = true;
      cache_.remember_verified(item, ArtifactCache::identity_of(status), expected_);
      return SpooledUpstream{join(item, kSpoolDataFile), size};
    }
    auto theirs = cache_.lookup_spool(sha256_hex_);
    if (!theirs) return tl::unexpected(theirs.error());
    if (*theirs) {
      remove_quietly(staging_dir_);
      committed_ = true;
      return std::move(**theirs);
    }
  }
  return fail(ErrorCode::kIo, "the spool of " + sha256_hex_ + " kept being replaced and removed while it was published");
}

// ---- ArtifactCache: opening and closing

ArtifactCache::ArtifactCache(std::string root, uint64_t max_size, CacheListener* listener, int cache_lock_fd,
                             std::string session_id, int session_lock_fd)
    : root_(std::move(root)),
      max_size_(max_size),
      listener_(listener),
      cache_lock_fd_(cache_lock_fd),
      session_id_(std::move(session_id)),
      session_dir_(join(join(root_, "tmp"), session_id_)),
      session_lock_fd_(session_lock_fd) {}

Result<std::unique_ptr<ArtifactCache>> ArtifactCache::open(const std::string& dir, uint64_t max_size_bytes,
                                                           CacheListener* listener) {
  if (dir.empty()) return fail(ErrorCode::kInvalidArgument, "the cache folder is not set (cache.dir)");
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) return fail(ErrorCode::kIo, "cannot create the cache folder " + dir + ": " + error.message());
  for (std::string_view sub : {"entries", "spool", "records", "tmp", "locks"}) {
    ZG_TRY(make_directory(join(dir, sub)));
  }
  const std::string lock_path = cache_lock_path(dir);
  UniqueFd cache_lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (cache_lock.get() < 0) return os_failure("cannot open", lock_path, errno);

  auto session_id = random_hex(kSessionIdBytes);
  if (!session_id) return tl::unexpected(session_id.error());
  auto session_lock = create_session(join(dir, "tmp"), *session_id);
  if (!session_lock) return tl::unexpected(session_lock.error());

  std::unique_ptr<ArtifactCache> cache(
      new ArtifactCache(dir, max_size_bytes, listener, cache_lock.release(), *session_id, *session_lock));
  cache->remove_abandoned_temporaries();
  ZG_TRY(cache->rescan_and_evict(""));
  return cache;
}

ArtifactCache::~ArtifactCache() {
  // Renamed first, so that a crash halfway through the deletion leaves a ".dead-" folder that the next
  // open() removes without asking whose it was.
  const std::string dead = join(join(root_, "tmp"), std::string(kDeadPrefix) + session_id_);
  if (::rename(session_dir_.c_str(), dead.c_str()) == 0) remove_quietly(dead);
  ::close(session_lock_fd_);
  ::close(cache_lock_fd_);
}

void ArtifactCache::remove_abandoned_temporaries() {
  const std::string tmp_dir = join(root_, "tmp");
  const auto now = std::chrono::system_clock::now();
  std::error_code error;
  for (fs::directory_iterator it(tmp_dir, error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    const std::string path = it->path().string();
    if (name == session_id_) continue;
    if (name.starts_with(kDeadPrefix)) {
      remove_quietly(path);
      continue;
    }
    struct stat status {};
    if (::lstat(path.c_str(), &status) != 0) continue;
    const auto modified = std::chrono::system_clock::time_point(std::chrono::seconds(status.st_mtim.tv_sec));
    const bool stale = now - modified > kStaleTemporaryAge;
    if (!S_ISDIR(status.st_mode) || !is_lower_hex(name, 2 * kSessionIdBytes)) {
      // Half-created session folders and whatever else found its way here.
      if (stale) remove_quietly(path);
      continue;
    }
    const std::string lock_path = join(path, kOwnerLockFile);
    UniqueFd owner(::open(lock_path.c_str(), O_RDWR | O_CLOEXEC));
    if (owner.get() < 0) {
      if (stale) remove_quietly(path);
      continue;
    }
    if (::flock(owner.get(), LOCK_EX | LOCK_NB) != 0) continue;  // its process is alive
    const std::string dead = join(tmp_dir, std::string(kDeadPrefix) + name);
    if (::rename(path.c_str(), dead.c_str()) == 0) remove_quietly(dead);
  }
}

// ---- Paths

std::string ArtifactCache::entry_path(const std::string& key_name) const {
  return join(join(join(root_, "entries"), fan_out(key_name)), key_name);
}

std::string ArtifactCache::spool_item_path(const std::string& sha256_hex) const {
  return join(join(join(root_, "spool"), fan_out(sha256_hex)), sha256_hex);
}

std::string ArtifactCache::record_path(std::string_view name) const {
  Sha256 hash;
  hash_length_prefixed(hash, kRecordLabel);
  hash_length_prefixed(hash, name);
  const std::string file_name = to_hex(hash.finish());
  return join(join(join(root_, "records"), fan_out(file_name)), file_name);
}

std::string ArtifactCache::temporary_path(std::string_view label) {
  return join(session_dir_, std::string(label) + "-" + std::to_string(next_temporary_.fetch_add(1)));
}

Result<std::string> ArtifactCache::make_staging_dir(std::string_view label) {
  std::string staging = temporary_path(label);
  if (::mkdir(staging.c_str(), 0755) != 0) return os_failure("cannot create", staging, errno);
  return staging;
}

// ---- The folder-wide lock and what runs under it

template <typename Action>
auto ArtifactCache::with_cache_lock(Action&& action) -> decltype(action()) {
  std::lock_guard in_process(cache_lock_mutex_);
  ZG_TRY(lock_exclusively(cache_lock_fd_, cache_lock_path(root_)));
  struct Unlock {
    int fd;
    ~Unlock() { ::flock(fd, LOCK_UN); }
  } unlock{cache_lock_fd_};
  return action();
}

Result<ArtifactCache::Usage> ArtifactCache::load_usage_locked() {
  auto text = read_file_if_present(join(root_, "usage"), kMaxUsageFileBytes);
  if (text && *text) {
    Usage usage;
    const char* begin = (*text)->data();
    const char* end = begin + (*text)->size();
    auto [after_bytes, bytes_error] = std::from_chars(begin, end, usage.bytes);
    if (bytes_error == std::errc() && after_bytes != end && *after_bytes == ' ') {
      auto [after_entries, entries_error] = std::from_chars(after_bytes + 1, end, usage.entries);
      if (entries_error == std::errc() && after_entries != end && *after_entries == '\n') return usage;
    }
  }
  // Missing or unreadable (a machine crash can leave it empty, since it is not fsynced): count again.
  auto items = scan_locked();
  if (!items) return tl::unexpected(items.error());
  Usage usage;
  for (const Item& item : *items) {
    usage.bytes += item.bytes;
    if (item.kind == ItemKind::kEntry) ++usage.entries;
  }
  return usage;
}

Status ArtifactCache::store_usage_locked(const Usage& usage) {
  const std::string temporary = temporary_path("usage");
  ZG_TRY(write_new_file(temporary, std::to_string(usage.bytes) + " " + std::to_string(usage.entries) + "\n", false));
  const std::string path = join(root_, "usage");
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int error_number = errno;
    ::unlink(temporary.c_str());
    return os_failure("cannot replace", path, error_number);
  }
  return {};
}

Result<std::vector<ArtifactCache::Item>> ArtifactCache::scan_locked() {
  std::vector<Item> items;
  for (auto [tree, kind] : {std::pair{"entries", ItemKind::kEntry}, std::pair{"spool", ItemKind::kSpool},
                            std::pair{"records", ItemKind::kRecord}}) {
    const std::string tree_path = join(root_, tree);
    std::error_code error;
    for (fs::directory_iterator outer(tree_path, error), end; !error && outer != end; outer.increment(error)) {
      const std::string prefix = outer->path().filename().string();
      if (!is_lower_hex(prefix, 2)) continue;
      std::error_code inner_error;
      for (fs::directory_iterator inner(outer->path(), inner_error); !inner_error && inner != end;
           inner.increment(inner_error)) {
        const std::string name = inner->path().filename().string();
        if (!is_lower_hex(name, kNameHexDigits) || fan_out(name) != prefix) continue;
        std::string path = inner->path().string();
        struct stat status {};
        if (::lstat(path.c_str(), &status) != 0) continue;
        uint64_t bytes = 0;
        if (kind == ItemKind::kRecord) {
          if (!S_ISREG(status.st_mode)) continue;
          bytes = static_cast<uint64_t>(status.st_size);
        } else {
          if (!S_ISDIR(status.st_mode)) continue;
          auto counted = directory_bytes(path);
          if (!counted) return tl::unexpected(counted.error());
          bytes = *counted;
        }
        items.push_back(Item{kind, std::move(path), bytes, status.st_mtim});
      }
      if (inner_error) {
        return fail(ErrorCode::kIo, "cannot list " + outer->path().string() + ": " + inner_error.message());
      }
    }
    if (error) return fail(ErrorCode::kIo, "cannot list " + tree_path + ": " + error.message());
  }
  return items;
}

Result<std::optional<std::string>> ArtifactCache::detach_locked(const std::string& path, ItemKind kind) {
  if (kind == ItemKind::kRecord) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return os_failure("cannot remove", path, errno);
    return std::nullopt;
  }
  std::string trash = temporary_path("trash");
  if (::rename(path.c_str(), trash.c_str()) != 0) {
    if (errno == ENOENT) return std::nullopt;
    return os_failure("cannot move " + path + " to", trash, errno);
  }
  return trash;
}

Result<ArtifactCache::Publication> ArtifactCache::publish(const std::string& staging_dir, const std::string& item,
                                                          ItemKind kind) {
  auto bytes = directory_bytes(staging_dir);
  if (!bytes) return tl::unexpected(bytes.error());
  const std::string parent = fs::path(item).parent_path().string();
  ZG_TRY(make_directory(parent));
  Usage usage;
  auto published = with_cache_lock([&]() -> Result<Publication> {
    auto loaded = load_usage_locked();
    if (!loaded) return tl::unexpected(loaded.error());
    usage = *loaded;
    if (::rename(staging_dir.c_str(), item.c_str()) != 0) {
      // rename(2) replaces only an empty folder; a published item never is one.
      if (errno == ENOTEMPTY || errno == EEXIST) return Publication::kTheirs;
      return os_failure("cannot move " + staging_dir + " to", item, errno);
    }
    usage.bytes += *bytes;
    if (kind == ItemKind::kEntry) ++usage.entries;
    ZG_TRY(store_usage_locked(usage));
    return Publication::kOurs;
  });
  if (!published || *published == Publication::kTheirs) return published;
  // The rename is made durable here, as the fsyncs before made the small files (see "Crash safety").
  ZG_TRY(sync_directory(parent));
  touch(item);
  notify_size(usage);
  evict_if_over(usage, item);
  return published;
}

Status ArtifactCache::discard_damaged(const std::string& item, uint64_t inode, ItemKind kind) {
  std::optional<std::string> trash;
  std::optional<Usage> usage;
  auto discarded = with_cache_lock([&]() -> Status {
    struct stat status {};
    if (::lstat(item.c_str(), &status) != 0) {
      if (errno == ENOENT) return {};
      return os_failure("cannot stat", item, errno);
    }
    if (static_cast<uint64_t>(status.st_ino) != inode) return {};  // refilled since we looked
    auto bytes = directory_bytes(item);
    if (!bytes) return tl::unexpected(bytes.error());
    auto loaded = load_usage_locked();
    if (!loaded) return tl::unexpected(loaded.error());
    auto detached = detach_locked(item, kind);
    if (!detached) return tl::unexpected(detached.error());
    trash = *detached;
    loaded->bytes -= std::min(loaded->bytes, *bytes);
    if (kind == ItemKind::kEntry && loaded->entries > 0) --loaded->entries;
    usage = *loaded;
    return store_usage_locked(*loaded);
  });
  forget_verified(item);
  if (trash) remove_quietly(*trash);
  if (usage) notify_size(*usage);
  return discarded;
}

Status ArtifactCache::rescan_and_evict(const std::string& protected_item) {
  std::vector<std::string> trash;
  std::vector<uint64_t> evicted;
  std::unordered_set<std::string> present;
  Usage usage;
  auto settled = with_cache_lock([&]() -> Status {
    auto items = scan_locked();
    if (!items) return tl::unexpected(items.error());
    for (const Item& item : *items) {
      usage.bytes += item.bytes;
      if (item.kind == ItemKind::kEntry) ++usage.entries;
      present.insert(item.path);
    }
    std::sort(items->begin(), items->end(), [](const Item& a, const Item& b) {
      return std::tie(a.last_used.tv_sec, a.last_used.tv_nsec, a.path) <
             std::tie(b.last_used.tv_sec, b.last_used.tv_nsec, b.path);
    });
    Status outcome;
    for (const Item& item : *items) {
      if (usage.bytes <= max_size_) break;
      if (item.path == protected_item) continue;
      auto detached = detach_locked(item.path, item.kind);
      if (!detached) {
        // What was removed so far is still counted in the usage stored below.
        outcome = tl::unexpected(detached.error());
        break;
      }
      if (*detached) trash.push_back(**detached);
      present.erase(item.path);
      usage.bytes -= item.bytes;
      if (item.kind == ItemKind::kEntry) --usage.entries;
      evicted.push_back(item.bytes);
    }
    ZG_TRY(store_usage_locked(usage));
    return outcome;
  });
  {
    // Items that other processes removed, or that this one just evicted, need no memory here.
    std::lock_guard lock(verify_mutex_);
    std::erase_if(verified_, [&](const auto& verified) { return !present.contains(verified.first); });
  }
  for (const std::string& path : trash) remove_quietly(path);
  if (listener_ != nullptr) {
    for (uint64_t bytes : evicted) listener_->on_evict(bytes);
  }
  if (settled) notify_size(usage);
  return settled;
}

void ArtifactCache::evict_if_over(const Usage& usage, const std::string& protected_item) {
  // The item just written is kept even when it alone exceeds max_size: its writer is about to use it.
  // A failed eviction leaves the cache over its limit until the next write tries again; it does not
  // undo the write that is already published.
  if (usage.bytes > max_size_) (void)rescan_and_evict(protected_item);
}

Status ArtifactCache::evict_to_fit() { return rescan_and_evict(""); }

void ArtifactCache::notify_size(const Usage& usage) {
  if (listener_ != nullptr) listener_->on_size(usage.bytes, usage.entries);
}

// ---- Entries

Result<std::optional<CachedArtifact>> ArtifactCache::lookup(const CacheKey& key) {
  auto found = find_entry(key.name());
  if (found && listener_ != nullptr) {
    if (*found) {
      listener_->on_hit();
    } else {
      listener_->on_miss();
    }
  }
  return found;
}

Result<std::optional<CachedArtifact>> ArtifactCache::find_entry(const std::string& key_name) {
  const std::string item = entry_path(key_name);
  struct stat item_status {};
  if (::lstat(item.c_str(), &item_status) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    return os_failure("cannot stat", item, errno);
  }
  const uint64_t item_inode = static_cast<uint64_t>(item_status.st_ino);
  auto damaged = [&]() -> Result<std::optional<CachedArtifact>> {
    ZG_TRY(discard_damaged(item, item_inode, ItemKind::kEntry));
    return std::nullopt;
  };

  auto info_text = read_file_if_present(join(item, kInfoFile), kMaxEntryInfoBytes);
  if (!info_text) {
    if (info_text.error().code == ErrorCode::kLimitExceeded) return damaged();
    return tl::unexpected(info_text.error());
  }
  if (!*info_text) {
    // Published items are complete; an item without its info is gone (evicted meanwhile) or damaged.
    if (::access(item.c_str(), F_OK) != 0) return std::nullopt;
    return damaged();
  }
  std::optional<EntryInfo> info = parse_entry_info(**info_text);
  if (!info) return damaged();

  const std::string body_path = join(item, kBodyFile);
  UniqueFd body(::open(body_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (body.get() < 0) {
    if (errno == ENOENT) return damaged();
    return os_failure("cannot open", body_path, errno);
  }
  struct stat body_status {};
  if (::fstat(body.get(), &body_status) != 0) return os_failure("cannot stat", body_path, errno);
  if (!S_ISREG(body_status.st_mode) || static_cast<uint64_t>(body_status.st_size) != info->size) return damaged();
  auto intact = verify_once(item, body.get(), identity_of(body_status), info->sha256);
  if (!intact) return tl::unexpected(intact.error());
  if (!*intact) return damaged();

  CachedArtifact artifact;
  if (info->manifest_size) {
    std::string manifest_path = join(item, kManifestFile);
    struct stat manifest_status {};
    if (::stat(manifest_path.c_str(), &manifest_status) != 0 ||
        static_cast<uint64_t>(manifest_status.st_size) != *info->manifest_size) {
      return damaged();
    }
    artifact.manifest_path = std::move(manifest_path);
  }
  touch(item);
  artifact.body_path = body_path;
  artifact.size = info->size;
  artifact.sha256 = info->sha256;
  artifact.meta = std::move(info->meta);
  return artifact;
}

Result<std::unique_ptr<EntryWriter>> ArtifactCache::begin(const CacheKey& key) {
  auto staging = make_staging_dir("entry");
  if (!staging) return tl::unexpected(staging.error());
  return std::unique_ptr<EntryWriter>(new EntryWriter(*this, key.name(), std::move(*staging)));
}

// ---- Verification

Result<bool> ArtifactCache::verify_once(const std::string& item, int fd, const FileIdentity& identity,
                                        const Sha256::Digest& expected) {
  {
    std::unique_lock lock(verify_mutex_);
    verification_done_.wait(lock, [&] { return !verifying_.contains(item); });
    auto known = verified_.find(item);
    if (known != verified_.end() && known->second.identity == identity && known->second.sha256 == expected) {
      return true;
    }
    verifying_.insert(item);
  }
  auto digest = hash_file(fd, identity.size, item);
  {
    std::lock_guard lock(verify_mutex_);
    verifying_.erase(item);
    if (digest && *digest == expected) verified_[item] = Verified{identity, expected};
  }
  verification_done_.notify_all();
  if (!digest) {
    if (digest.error().code == ErrorCode::kIntegrity) return false;
    return tl::unexpected(digest.error());
  }
  return *digest == expected;
}

void ArtifactCache::remember_verified(const std::string& item, const FileIdentity& identity,
                                      const Sha256::Digest& sha256) {
  std::lock_guard lock(verify_mutex_);
  verified_[item] = Verified{identity, sha256};
}

void ArtifactCache::forget_verified(const std::string& item) {
  std::lock_guard lock(verify_mutex_);
  verified_.erase(item);
}

// ---- Fill locks

Result<FillLock> ArtifactCache::acquire_fill_lock(const CacheKey& key) {
  auto lock = acquire_lock(key.name(), /*wait=*/true);
  if (!lock) return tl::unexpected(lock.error());
  return std::move(**lock);
}

Result<std::optional<FillLock>> ArtifactCache::try_acquire_fetch_lock(std::string_view upstream_id) {
  Sha256 hash;
  hash_length_prefixed(hash, "zoogate fetch lock");
  hash_length_prefixed(hash, upstream_id);
  return acquire_lock("fetch-" + to_hex(hash.finish()), /*wait=*/false);
}

Result<std::optional<FillLock>> ArtifactCache::acquire_lock(std::string name, bool wait) {
  {
    std::unique_lock lock(fill_mutex_);
    if (!wait && filling_.contains(name)) return std::nullopt;
    fill_released_.wait(lock, [&] { return !filling_.contains(name); });
    filling_.insert(name);
  }
  const std::string path = join(join(root_, "locks"), name + ".lock");
  for (;;) {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (fd.get() < 0) {
      release_fill_slot(name);
      return tl::unexpected(os_failure("cannot open", path, errno));
    }
    int result = 0;
    while ((result = ::flock(fd.get(), wait ? LOCK_EX : LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {
    }
    if (result != 0) {
      const int error = errno;
      release_fill_slot(name);
      if (error == EWOULDBLOCK) return std::nullopt;
      return tl::unexpected(os_failure("cannot lock", path, error));
    }
    // The holder before us may have removed the file we waited on; the lock counts only on the file
    // that is at the path now.
    struct stat held {};
    struct stat named {};
    if (::fstat(fd.get(), &held) == 0 && ::stat(path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino) {
      return std::optional<FillLock>(FillLock(*this, std::move(name), fd.release(), path));
    }
  }
}

void ArtifactCache::release_fill_slot(const std::string& key_name) {
  {
    std::lock_guard lock(fill_mutex_);
    filling_.erase(key_name);
  }
  fill_released_.notify_all();
}

// ---- Spool

Result<std::optional<SpooledUpstream>> ArtifactCache::lookup_spool(std::string_view sha256_hex) {
  auto expected = digest_from_hex(sha256_hex);
  if (!expected) return tl::unexpected(expected.error());
  const std::string item = spool_item_path(std::string(sha256_hex));
  struct stat item_status {};
  if (::lstat(item.c_str(), &item_status) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    return os_failure("cannot stat", item, errno);
  }
  auto damaged = [&]() -> Result<std::optional<SpooledUpstream>> {
    ZG_TRY(discard_damaged(item, static_cast<uint64_t>(item_status.st_ino), ItemKind::kSpool));
    return std::nullopt;
  };
  const std::string data_path = join(item, kSpoolDataFile);
  UniqueFd data(::open(data_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (data.get() < 0) {
    if (errno != ENOENT) return os_failure("cannot open", data_path, errno);
    if (::access(item.c_str(), F_OK) != 0) return std::nullopt;
    return damaged();
  }
  struct stat data_status {};
  if (::fstat(data.get(), &data_status) != 0) return os_failure("cannot stat", data_path, errno);
  if (!S_ISREG(data_status.st_mode)) return damaged();
  auto intact = verify_once(item, data.get(), identity_of(data_status), *expected);
  if (!intact) return tl::unexpected(intact.error());
  if (!*intact) return damaged();
  touch(item);
  return SpooledUpstream{data_path, static_cast<uint64_t>(data_status.st_size)};
}

Result<std::unique_ptr<SpoolWriter>> ArtifactCache::begin_spool(std::string_view sha256_hex) {
  auto expected = digest_from_hex(sha256_hex);
  if (!expected) return tl::unexpected(expected.error());
  auto staging = make_staging_dir("spool");
  if (!staging) return tl::unexpected(staging.error());
  return std::unique_ptr<SpoolWriter>(
      new SpoolWriter(*this, std::string(sha256_hex), *expected, std::move(*staging)));
}

// ---- Records

Status ArtifactCache::write_record(std::string_view name, std::string_view text) {
  if (text.size() > kMaxRecordBytes) {
    return fail(ErrorCode::kLimitExceeded,
                "a cache record of " + std::to_string(text.size()) + " bytes is larger than " +
                    std::to_string(kMaxRecordBytes));
  }
  const std::string path = record_path(name);
  const std::string temporary = temporary_path("record");
  Usage usage;
  auto written = [&]() -> Status {
    ZG_TRY(write_new_file(temporary, text, true));
    ZG_TRY(make_directory(fs::path(path).parent_path().string()));
    return with_cache_lock([&]() -> Status {
      auto loaded = load_usage_locked();
      if (!loaded) return tl::unexpected(loaded.error());
      usage = *loaded;
      struct stat replaced {};
      const uint64_t replaced_bytes =
          ::lstat(path.c_str(), &replaced) == 0 && S_ISREG(replaced.st_mode) ? static_cast<uint64_t>(replaced.st_size)
                                                                            : 0;
      if (::rename(temporary.c_str(), path.c_str()) != 0) return os_failure("cannot move " + temporary + " to", path, errno);
      usage.bytes = usage.bytes - std::min(usage.bytes, replaced_bytes) + text.size();
      return store_usage_locked(usage);
    });
  }();
  if (!written) {
    ::unlink(temporary.c_str());
    return written;
  }
  notify_size(usage);
  evict_if_over(usage, path);
  return {};
}

Result<std::optional<std::string>> ArtifactCache::read_record(std::string_view name) {
  const std::string path = record_path(name);
  auto text = read_file_if_present(path, kMaxRecordBytes);
  if (text && *text) touch(path);
  return text;
}

}  // namespace zoogate::proxy
