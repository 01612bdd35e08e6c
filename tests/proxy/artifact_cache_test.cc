#include "proxy/artifact_cache.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/encoding.h"
#include "tests/common/temporary_folder.h"

namespace zoogate::proxy {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::SizeIs;
using zoogate::testing::TemporaryFolder;

// Long enough for the coarse file timestamps the kernel keeps to tell two steps apart.
constexpr auto kTimestampTick = std::chrono::milliseconds(20);
constexpr uint64_t kUnbounded = uint64_t{1} << 40;

class RecordingListener final : public CacheListener {
 public:
  void on_hit() override { ++hits; }
  void on_miss() override { ++misses; }
  void on_evict(uint64_t bytes) override {
    std::lock_guard lock(mutex);
    evicted.push_back(bytes);
  }
  void on_size(uint64_t total_bytes, uint64_t entries) override {
    std::lock_guard lock(mutex);
    last_bytes = total_bytes;
    last_entries = entries;
  }

  std::atomic<int> hits{0};
  std::atomic<int> misses{0};
  std::mutex mutex;
  std::vector<uint64_t> evicted;
  uint64_t last_bytes = 0;
  uint64_t last_entries = 0;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

// Overwrites bytes in place: same file, same size, new content.
void overwrite_in_place(const std::string& path, uint64_t offset, const std::string& bytes) {
  std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
  file.seekp(static_cast<std::streamoff>(offset));
  file << bytes;
}

std::string sha256_hex(std::string_view text) { return to_hex(Sha256::of(text)); }

CacheKey key_of(std::string upstream) { return CacheKey{std::move(upstream), "policy-1", "canonical"}; }

// Every file and folder below `dir`, relative to it.
std::vector<std::string> tree(const std::string& dir) {
  std::vector<std::string> paths;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    paths.push_back(fs::relative(entry.path(), dir).string());
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

size_t items_in(const std::string& dir) {
  size_t count = 0;
  for (const auto& fan_out : fs::directory_iterator(dir)) count += static_cast<size_t>(std::distance(fs::directory_iterator(fan_out), {}));
  return count;
}

class ArtifactCacheTest : public ::testing::Test {
 protected:
  ArtifactCacheTest() { fs::create_directory(dir_); }

  std::unique_ptr<ArtifactCache> open_cache(uint64_t max_size = kUnbounded, CacheListener* listener = nullptr) {
    auto cache = ArtifactCache::open(dir_, max_size, listener == nullptr ? &listener_ : listener);
    EXPECT_TRUE(cache) << cache.error().describe();
    return cache ? std::move(*cache) : nullptr;
  }

  static CachedArtifact fill(ArtifactCache& cache, const CacheKey& key, const std::string& body,
                             std::optional<std::string> manifest = std::nullopt) {
    auto writer = cache.begin(key);
    EXPECT_TRUE(writer) << writer.error().describe();
    write_file((*writer)->body_path(), body);
    auto committed = (*writer)->commit({{"verdict", "clean"}, {"upstream", key.upstream_id}}, manifest);
    EXPECT_TRUE(committed) << committed.error().describe();
    return committed ? *committed : CachedArtifact{};
  }

  static std::optional<CachedArtifact> look(ArtifactCache& cache, const CacheKey& key) {
    auto found = cache.lookup(key);
    EXPECT_TRUE(found) << found.error().describe();
    return found ? *found : std::nullopt;
  }

  std::string entry_dir(const CacheKey& key) const {
    const std::string name = key.name();
    return dir_ + "/entries/" + name.substr(0, 2) + "/" + name;
  }

  const TemporaryFolder folder_;
  const std::string dir_ = folder_.file("cache");  // in a folder of its own: files beside it go too
  RecordingListener listener_;
};

TEST(ArtifactCacheKey, NamesAreStableAndUnambiguous) {
  const CacheKey key{"sha256:abc", "v1", "canonical"};
  EXPECT_EQ(key.name(), (CacheKey{"sha256:abc", "v1", "canonical"}.name()));
  EXPECT_EQ(key.name().size(), 64u);
  EXPECT_EQ(key.name().find_first_not_of("0123456789abcdef"), std::string::npos);
  // Moving bytes between parts makes another key.
  EXPECT_NE((CacheKey{"ab", "c", ""}.name()), (CacheKey{"a", "bc", ""}.name()));
  EXPECT_NE((CacheKey{"a", "", "b"}.name()), (CacheKey{"a", "b", ""}.name()));
  EXPECT_NE(key.name(), (CacheKey{"sha256:abc", "v2", "canonical"}.name()));
}

TEST_F(ArtifactCacheTest, MissThenFillThenHit) {
  auto cache = open_cache();
  const CacheKey key = key_of("sha256:1111");
  EXPECT_EQ(look(*cache, key), std::nullopt);
  EXPECT_EQ(listener_.misses, 1);

  const std::string body = "disarmed bytes";
  CachedArtifact committed = fill(*cache, key, body, "signed manifest");
  EXPECT_EQ(committed.size, body.size());
  EXPECT_EQ(committed.sha256, Sha256::of(body));
  EXPECT_EQ(read_file(committed.body_path), body);

  std::optional<CachedArtifact> found = look(*cache, key);
  ASSERT_TRUE(found);
  EXPECT_EQ(listener_.hits, 1);
  EXPECT_EQ(found->body_path, committed.body_path);
  EXPECT_EQ(found->size, body.size());
  EXPECT_EQ(found->sha256, Sha256::of(body));
  EXPECT_EQ(found->meta.value("verdict", ""), "clean");
  EXPECT_EQ(found->meta.value("upstream", ""), "sha256:1111");
  ASSERT_TRUE(found->manifest_path);
  EXPECT_EQ(read_file(*found->manifest_path), "signed manifest");
  EXPECT_EQ(listener_.last_entries, 1u);
  EXPECT_GT(listener_.last_bytes, body.size());

  // Another process (a fresh instance) verifies the body once and finds the same entry.
  cache.reset();
  auto reopened = open_cache();
  found = look(*reopened, key);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->sha256, Sha256::of(body));
  EXPECT_EQ(found->manifest_path, committed.manifest_path);
}

TEST_F(ArtifactCacheTest, CommitTrustsADigestComputedWhileWriting) {
  auto cache = open_cache();
  const CacheKey key = key_of("sha256:2222");
  auto writer = cache->begin(key);
  ASSERT_TRUE(writer);
  write_file((*writer)->body_path(), "sanitized");
  auto committed = (*writer)->commit(nlohmann::json::object(), std::nullopt, Sha256::of(std::string_view("sanitized")));
  ASSERT_TRUE(committed) << committed.error().describe();
  EXPECT_EQ(committed->manifest_path, std::nullopt);
  auto found = look(*cache, key);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->sha256, Sha256::of(std::string_view("sanitized")));
}

TEST_F(ArtifactCacheTest, UncommittedWriterLeavesNothing) {
  auto cache = open_cache();
  const std::vector<std::string> before = tree(dir_);
  const CacheKey key = key_of("sha256:3333");
  {
    auto writer = cache->begin(key);
    ASSERT_TRUE(writer);
    write_file((*writer)->body_path(), "half of a file");
  }
  EXPECT_EQ(tree(dir_), before);
  EXPECT_EQ(look(*cache, key), std::nullopt);

  // A writer whose body never appeared cannot commit, and leaves nothing either.
  {
    auto writer = cache->begin(key);
    ASSERT_TRUE(writer);
    auto committed = (*writer)->commit(nlohmann::json::object());
    ASSERT_FALSE(committed);
    EXPECT_EQ(committed.error().code, ErrorCode::kIo);
  }
  EXPECT_EQ(tree(dir_), before);
  EXPECT_EQ(listener_.last_bytes, 0u);
}

TEST_F(ArtifactCacheTest, CorruptedBodyIsDetectedAndRemoved) {
  const CacheKey key = key_of("sha256:4444");
  const std::string body(100000, 'x');
  {
    auto cache = open_cache();
    fill(*cache, key, body);
  }
  // Same size, one byte different: only the digest tells, which a fresh process checks on first use.
  overwrite_in_place(entry_dir(key) + "/body", 5000, "y");
  auto cache = open_cache();
  EXPECT_EQ(look(*cache, key), std::nullopt);
  EXPECT_EQ(listener_.misses, 1);
  EXPECT_FALSE(fs::exists(entry_dir(key)));
  EXPECT_EQ(listener_.last_bytes, 0u);
  EXPECT_EQ(listener_.last_entries, 0u);

  // The key can be filled again.
  fill(*cache, key, body);
  EXPECT_TRUE(look(*cache, key));
}

TEST_F(ArtifactCacheTest, ChangedBodyIsVerifiedAgainInTheSameProcess) {
  auto cache = open_cache();
  const CacheKey key = key_of("sha256:5555");
  fill(*cache, key, "the original body");
  ASSERT_TRUE(look(*cache, key));

  std::this_thread::sleep_for(kTimestampTick);
  overwrite_in_place(entry_dir(key) + "/body", 0, "T");  // a new modification time
  EXPECT_EQ(look(*cache, key), std::nullopt);
  EXPECT_FALSE(fs::exists(entry_dir(key)));

  fill(*cache, key, "the original body");
  fs::resize_file(entry_dir(key) + "/body", 3);  // a wrong size is caught on every lookup
  EXPECT_EQ(look(*cache, key), std::nullopt);
  EXPECT_FALSE(fs::exists(entry_dir(key)));
}

TEST_F(ArtifactCacheTest, DamagedInfoIsRemoved) {
  auto cache = open_cache();
  const CacheKey key = key_of("sha256:6666");
  fill(*cache, key, "body");
  write_file(entry_dir(key) + "/info.json", "{\"format\":1,");
  EXPECT_EQ(look(*cache, key), std::nullopt);
  EXPECT_FALSE(fs::exists(entry_dir(key)));
  EXPECT_EQ(listener_.last_entries, 0u);
}

TEST_F(ArtifactCacheTest, TwoWritersOfOneKeyPublishOneEntry) {
  auto cache = open_cache();
  const CacheKey key = key_of("sha256:7777");
  auto first = cache->begin(key);
  auto second = cache->begin(key);
  ASSERT_TRUE(first && second);
  write_file((*first)->body_path(), "written first");
  write_file((*second)->body_path(), "written second");

  auto published = (*first)->commit({{"by", "first"}});
  auto kept = (*second)->commit({{"by", "second"}});
  ASSERT_TRUE(published && kept);
  EXPECT_EQ(kept->body_path, published->body_path);
  EXPECT_EQ(kept->sha256, Sha256::of(std::string_view("written first")));
  EXPECT_EQ(kept->meta.value("by", ""), "first");
  first->reset();
  second->reset();

  EXPECT_EQ(items_in(dir_ + "/entries"), 1u);
  EXPECT_EQ(listener_.last_entries, 1u);
  auto found = look(*cache, key);
  ASSERT_TRUE(found);
  EXPECT_EQ(read_file(found->body_path), "written first");
  // Nothing of the second writer stayed behind.
  for (const auto& session : fs::directory_iterator(dir_ + "/tmp")) {
    EXPECT_THAT(tree(session.path().string()), ElementsAre("owner.lock"));
  }
}

TEST_F(ArtifactCacheTest, EvictsLeastRecentlyUsedFirstAndAccountsForIt) {
  constexpr uint64_t kMaxSize = 3200;
  auto cache = open_cache(kMaxSize);
  const std::string body(1000, 'b');
  const CacheKey a = key_of("sha256:aaaa");
  const CacheKey b = key_of("sha256:bbbb");
  const CacheKey c = key_of("sha256:cccc");

  fill(*cache, a, body);
  const uint64_t entry_bytes = listener_.last_bytes;
  ASSERT_GT(entry_bytes * 3, kMaxSize);  // the test needs room for two entries, not three
  ASSERT_LE(entry_bytes * 2, kMaxSize);
  std::this_thread::sleep_for(kTimestampTick);
  fill(*cache, b, body);
  std::this_thread::sleep_for(kTimestampTick);
  ASSERT_TRUE(look(*cache, a));  // a is now more recent than b
  std::this_thread::sleep_for(kTimestampTick);
  fill(*cache, c, body);

  EXPECT_THAT(listener_.evicted, ElementsAre(entry_bytes));
  EXPECT_EQ(listener_.last_bytes, 2 * entry_bytes);
  EXPECT_EQ(listener_.last_entries, 2u);
  EXPECT_EQ(look(*cache, b), std::nullopt);
  EXPECT_TRUE(look(*cache, a));
  EXPECT_TRUE(look(*cache, c));
}

TEST_F(ArtifactCacheTest, RecordsAndSpoolsAreEvictedWithEntries) {
  auto cache = open_cache(2500);
  ASSERT_TRUE(cache->write_record("old record", std::string(1000, 'r')));
  std::this_thread::sleep_for(kTimestampTick);
  const std::string upstream(1000, 'u');
  auto spool = cache->begin_spool(sha256_hex(upstream));
  ASSERT_TRUE(spool);
  write_file((*spool)->path(), upstream);
  ASSERT_TRUE((*spool)->commit());
  std::this_thread::sleep_for(kTimestampTick);
  fill(*cache, key_of("sha256:dddd"), std::string(1000, 'e'));

  EXPECT_THAT(listener_.evicted, ElementsAre(1000u));
  auto record = cache->read_record("old record");
  ASSERT_TRUE(record);
  EXPECT_EQ(*record, std::nullopt);
  auto spooled = cache->lookup_spool(sha256_hex(upstream));
  ASSERT_TRUE(spooled);
  EXPECT_TRUE(*spooled);
}

TEST_F(ArtifactCacheTest, KeepsTheItemJustWrittenEvenWhenItAloneIsTooLarge) {
  auto cache = open_cache(100);
  const CacheKey first = key_of("sha256:1000");
  const CacheKey second = key_of("sha256:2000");
  CachedArtifact artifact = fill(*cache, first, std::string(1000, 'x'));
  EXPECT_EQ(read_file(artifact.body_path).size(), 1000u);
  EXPECT_TRUE(look(*cache, first));
  std::this_thread::sleep_for(kTimestampTick);
  fill(*cache, second, std::string(1000, 'y'));
  EXPECT_EQ(look(*cache, first), std::nullopt);
  EXPECT_TRUE(look(*cache, second));
  // An explicit eviction has nothing to protect.
  ASSERT_TRUE(cache->evict_to_fit());
  EXPECT_EQ(look(*cache, second), std::nullopt);
  EXPECT_EQ(listener_.last_bytes, 0u);
}

TEST_F(ArtifactCacheTest, TwoProcessesFillOneKeyOnce) {
  const CacheKey key = key_of("sha256:fork");
  const std::string fill_log = dir_ + "-fills";
  int start[2];
  ASSERT_EQ(::pipe(start), 0);
  std::vector<pid_t> children;
  for (int child = 0; child < 2; ++child) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // The child reports through its exit status only; gtest assertions belong to the parent. It
      // releases its fill lock and closes its cache as a process that ends normally does.
      ::close(start[1]);
      auto run = [&]() -> int {
        auto cache = ArtifactCache::open(dir_, kUnbounded, nullptr);
        if (!cache) return 10;
        char go;
        if (::read(start[0], &go, 1) != 0) return 11;  // wait until the parent closes the pipe
        auto lock = (*cache)->acquire_fill_lock(key);
        if (!lock) return 12;
        auto found = (*cache)->lookup(key);
        if (!found) return 13;
        if (*found) return 0;
        const int log = ::open(fill_log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (log < 0 || ::write(log, "fill\n", 5) != 5) return 14;
        ::close(log);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));  // a slow sanitizer
        auto writer = (*cache)->begin(key);
        if (!writer) return 15;
        write_file((*writer)->body_path(), "filled once");
        return (*writer)->commit(nlohmann::json::object()) ? 0 : 16;
      };
      ::_exit(run());
    }
    children.push_back(pid);
  }
  ::close(start[0]);
  ::close(start[1]);
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  EXPECT_EQ(read_file(fill_log), "fill\n");
  fs::remove(fill_log);

  auto cache = open_cache();
  auto found = look(*cache, key);
  ASSERT_TRUE(found);
  EXPECT_EQ(read_file(found->body_path), "filled once");
  // Released fill locks leave no files; closed caches leave no sessions.
  EXPECT_THAT(tree(dir_ + "/locks"), ElementsAre("cache.lock"));
  EXPECT_THAT(tree(dir_ + "/tmp"), SizeIs(2));  // this session: its folder and owner.lock
}

TEST_F(ArtifactCacheTest, FillLockExcludesThreadsOfOneProcess) {
  auto cache = open_cache();
  const CacheKey key = key_of("sha256:threads");
  std::atomic<bool> first_released{false};
  std::atomic<bool> second_saw_release{false};
  auto first = cache->acquire_fill_lock(key);
  ASSERT_TRUE(first);
  std::thread second([&] {
    auto lock = cache->acquire_fill_lock(key);
    second_saw_release = lock && first_released.load();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  first_released = true;
  { FillLock released = std::move(*first); }
  second.join();
  EXPECT_TRUE(second_saw_release);
  EXPECT_THAT(tree(dir_ + "/locks"), ElementsAre("cache.lock"));
  // Other keys do not wait.
  auto other = cache->acquire_fill_lock(key_of("sha256:other"));
  auto again = cache->acquire_fill_lock(key);
  EXPECT_TRUE(other && again);
}

TEST_F(ArtifactCacheTest, RecordsAreAtomicNamedByHashAndAccounted) {
  auto cache = open_cache();
  auto missing = cache->read_record("route/sha256:abc");
  ASSERT_TRUE(missing);
  EXPECT_EQ(*missing, std::nullopt);

  ASSERT_TRUE(cache->write_record("route/sha256:abc", "pickle"));
  ASSERT_TRUE(cache->write_record("manifest/../../etc/passwd", std::string("bin\0ary", 7)));
  EXPECT_EQ(listener_.last_bytes, 6u + 7u);
  ASSERT_TRUE(cache->write_record("route/sha256:abc", "safetensors"));
  EXPECT_EQ(listener_.last_bytes, 11u + 7u);
  EXPECT_EQ(listener_.last_entries, 0u);

  auto route = cache->read_record("route/sha256:abc");
  ASSERT_TRUE(route);
  EXPECT_EQ(*route, "safetensors");
  auto odd = cache->read_record("manifest/../../etc/passwd");
  ASSERT_TRUE(odd);
  EXPECT_EQ(*odd, std::string("bin\0ary", 7));
  EXPECT_EQ(items_in(dir_ + "/records"), 2u);

  auto too_large = cache->write_record("big", std::string(ArtifactCache::kMaxRecordBytes + 1, 'x'));
  ASSERT_FALSE(too_large);
  EXPECT_EQ(too_large.error().code, ErrorCode::kLimitExceeded);

  cache.reset();
  auto reopened = open_cache();
  route = reopened->read_record("route/sha256:abc");
  ASSERT_TRUE(route);
  EXPECT_EQ(*route, "safetensors");
}

TEST_F(ArtifactCacheTest, SpoolIsVerifiedAgainstItsName) {
  const std::string upstream = "upstream pickle bytes";
  const std::string name = sha256_hex(upstream);
  {
    auto cache = open_cache();
    auto missing = cache->lookup_spool(name);
    ASSERT_TRUE(missing);
    EXPECT_EQ(*missing, std::nullopt);

    // Bytes that do not match the name are never published.
    auto wrong = cache->begin_spool(name);
    ASSERT_TRUE(wrong);
    write_file((*wrong)->path(), "something else");
    auto refused = (*wrong)->commit();
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, ErrorCode::kIntegrity);
    auto claimed = (*wrong)->commit(Sha256::of(std::string_view("something else")));
    ASSERT_FALSE(claimed);
    EXPECT_EQ(claimed.error().code, ErrorCode::kIntegrity);
    wrong->reset();
    EXPECT_EQ(items_in(dir_ + "/spool"), 0u);

    auto writer = cache->begin_spool(name);
    ASSERT_TRUE(writer);
    write_file((*writer)->path(), upstream);
    auto spooled = (*writer)->commit();
    ASSERT_TRUE(spooled) << spooled.error().describe();
    EXPECT_EQ(read_file(spooled->path), upstream);
    EXPECT_EQ(spooled->size, upstream.size());
    EXPECT_EQ(listener_.last_bytes, upstream.size());
    EXPECT_EQ(listener_.last_entries, 0u);

    auto found = cache->lookup_spool(name);
    ASSERT_TRUE(found);
    ASSERT_TRUE(*found);
    EXPECT_EQ((*found)->path, spooled->path);
    EXPECT_EQ(listener_.hits + listener_.misses, 0);  // spool lookups are not artifact hits

    auto invalid = cache->lookup_spool("ABC");
    ASSERT_FALSE(invalid);
    EXPECT_EQ(invalid.error().code, ErrorCode::kInvalidArgument);
    EXPECT_FALSE(cache->begin_spool(std::string(64, 'g')));

    overwrite_in_place((*found)->path, 0, "U");
  }
  auto cache = open_cache();
  auto damaged = cache->lookup_spool(name);
  ASSERT_TRUE(damaged);
  EXPECT_EQ(*damaged, std::nullopt);
  EXPECT_EQ(items_in(dir_ + "/spool"), 0u);
  EXPECT_EQ(listener_.last_bytes, 0u);
}

TEST_F(ArtifactCacheTest, ReopenRecomputesSize) {
  uint64_t bytes = 0;
  {
    auto cache = open_cache();
    fill(*cache, key_of("sha256:r1"), std::string(500, '1'));
    fill(*cache, key_of("sha256:r2"), std::string(700, '2'));
    ASSERT_TRUE(cache->write_record("route", "pickle"));
    bytes = listener_.last_bytes;
    EXPECT_EQ(listener_.last_entries, 2u);
  }
  // A count gone wrong (a crash between a publication and its count) and an entry removed by hand.
  write_file(dir_ + "/usage", "999999 7\n");
  const uint64_t removed = fs::file_size(entry_dir(key_of("sha256:r1")) + "/body") +
                           fs::file_size(entry_dir(key_of("sha256:r1")) + "/info.json");
  fs::remove_all(entry_dir(key_of("sha256:r1")));

  RecordingListener reopened_listener;
  auto cache = open_cache(kUnbounded, &reopened_listener);
  EXPECT_EQ(reopened_listener.last_bytes, bytes - removed);
  EXPECT_EQ(reopened_listener.last_entries, 1u);
  EXPECT_EQ(read_file(dir_ + "/usage"), std::to_string(bytes - removed) + " 1\n");
}

TEST_F(ArtifactCacheTest, ReopenWithASmallerLimitEvicts) {
  {
    auto cache = open_cache();
    fill(*cache, key_of("sha256:s1"), std::string(1000, '1'));
    std::this_thread::sleep_for(kTimestampTick);
    fill(*cache, key_of("sha256:s2"), std::string(1000, '2'));
  }
  RecordingListener reopened_listener;
  auto cache = open_cache(1500, &reopened_listener);
  EXPECT_THAT(reopened_listener.evicted, SizeIs(1));
  EXPECT_EQ(reopened_listener.last_entries, 1u);
  EXPECT_EQ(look(*cache, key_of("sha256:s1")), std::nullopt);
  EXPECT_TRUE(look(*cache, key_of("sha256:s2")));
}

TEST_F(ArtifactCacheTest, OpenRemovesWhatDeadProcessesLeftInTmp) {
  auto live = open_cache();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Dies in the middle of a fill and of a download, without running any destructor.
    auto cache = ArtifactCache::open(dir_, kUnbounded, nullptr);
    if (!cache) ::_exit(10);
    auto lock = (*cache)->acquire_fill_lock(key_of("sha256:crash"));
    if (!lock) ::_exit(12);
    auto writer = (*cache)->begin(key_of("sha256:crash"));
    if (!writer) ::_exit(11);
    write_file((*writer)->body_path(), "partial");
    write_file((*cache)->temporary_path("spool"), "partial download");
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_ + "/tmp"), {}), 2);  // the live session and the dead one

  const std::string old_stray = dir_ + "/tmp/stray-old";
  const std::string new_stray = dir_ + "/tmp/stray-new";
  write_file(old_stray, "left by something");
  write_file(new_stray, "left by something");
  const auto two_hours_ago = std::chrono::system_clock::now() - std::chrono::hours(2);
  const timespec old_time{std::chrono::system_clock::to_time_t(two_hours_ago), 0};
  const timespec times[2] = {old_time, old_time};
  ASSERT_EQ(::utimensat(AT_FDCWD, old_stray.c_str(), times, 0), 0);

  auto cache = open_cache();
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir_ + "/tmp")) left.push_back(entry.path().filename().string());
  // The two live sessions (the first cache's and this one's) and the fresh stray file remain.
  EXPECT_THAT(left, SizeIs(3));
  EXPECT_FALSE(fs::exists(old_stray));
  EXPECT_TRUE(fs::exists(new_stray));
  EXPECT_EQ(look(*cache, key_of("sha256:crash")), std::nullopt);
  // The dead filler's lock died with it; the next holder removes the file it left.
  { EXPECT_TRUE(cache->acquire_fill_lock(key_of("sha256:crash"))); }
  EXPECT_THAT(tree(dir_ + "/locks"), ElementsAre("cache.lock"));

  fs::remove(new_stray);
  live.reset();
  cache.reset();
  EXPECT_THAT(tree(dir_ + "/tmp"), SizeIs(0));  // closing removes a session's folder
}

TEST_F(ArtifactCacheTest, ConcurrentFillsAndLookupsFromManyThreads) {
  auto cache = open_cache();
  constexpr int kThreads = 8;
  constexpr int kKeys = 4;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kKeys; ++k) {
        const CacheKey key = key_of("sha256:concurrent-" + std::to_string(k));
        const std::string body(50000 + static_cast<size_t>(k), static_cast<char>('a' + k));
        auto lock = cache->acquire_fill_lock(key);
        if (!lock) {
          ++failures;
          continue;
        }
        auto found = cache->lookup(key);
        if (found && !*found) {
          auto writer = cache->begin(key);
          if (!writer) {
            ++failures;
            continue;
          }
          write_file((*writer)->body_path(), body);
          auto committed = (*writer)->commit({{"thread", t}});
          if (!committed || read_file(committed->body_path) != body) ++failures;
        } else if (!found || read_file((**found).body_path) != body) {
          ++failures;
        }
        if (!cache->write_record("record-" + std::to_string(k), std::to_string(t))) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(listener_.misses, kKeys);
  EXPECT_EQ(listener_.hits, kThreads * kKeys - kKeys);
  EXPECT_EQ(listener_.last_entries, static_cast<uint64_t>(kKeys));
}

}  // namespace
}  // namespace zoogate::proxy
