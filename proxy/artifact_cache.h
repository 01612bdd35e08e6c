// The proxy's on-disk artifact cache (DESIGN.md section 7): content-addressed, shared by every zoogate
// process that mounts the same folder (replicas behind a load balancer on one volume), safe against
// crashes, bounded in size.
//
// Layout of the folder. Every "item" counts toward max_size and is evicted least recently used first:
//   entries/<ab>/<key name>/      an artifact: `body`, `info.json` (body size and SHA-256, the filler's
//                                 metadata), and `manifest` when the filler gave one
//   spool/<ab>/<sha256 hex>/data  an upstream file as downloaded, named by its SHA-256, so that a new
//                                 variant of it needs no second upstream fetch
//   records/<ab>/<name hash>      a small text record (route facts, remembered blocks, manifests)
// Outside the accounting:
//   tmp/<session>/                the scratch folder of one open ArtifactCache: staging folders of
//                                 writers, temporary_path() files, items on their way to deletion
//   locks/<key name>.lock         fill locks (they exist only while held)
//   locks/cache.lock              the folder-wide lock that orders publishing, removal and accounting
//   usage                         "<bytes> <entries>": the shared count of all items
// (<ab> is the first two hex digits of the name, so that no folder grows to millions of children.)
//
// Crash safety: an item becomes visible through one rename(2) of a complete folder (or file), and
// disappears through one rename out of the tree before it is deleted. So no reader, in this process or
// another, ever sees a partial item, whenever a process dies. Small files (info.json, manifests,
// records) and the folders are fsynced before the rename; bodies and spooled files are not, because
// flushing a large file sits on the path of a cold download (seconds per GiB on a disk) and is not
// needed for integrity: after a machine crash, a body whose bytes never reached the disk fails the
// verification on read below, which every process does before it serves a file, and is filled again.
// Staging folders of a process that died are removed by the next open(): each session folder holds a
// lock file that its live owner keeps flock()ed, so a lock that can be taken marks a dead owner. The
// usage count is not fsynced; open() always recomputes it by scanning.
//
// Sharing between processes: publishing, removal and every update of the usage count happen under
// locks/cache.lock, so the count stays exact however many processes write, and eviction decisions are
// made on one consistent scan. Fill locks make one process (and one thread) fill a key while the
// others wait and then find the entry. Two fills of one key that race anyway (without the fill lock)
// are harmless: the first rename wins, the second writer gets the winner's entry, and both are
// equivalent by construction of the key. Locks are flock(2) locks, which Linux also honours on NFS
// (emulated there with byte-range locks); each process holds at most one descriptor per lock file, so
// the emulation's per-process semantics give the same exclusion.
//
// Verification on read: the size of a body (or spooled file) is checked on every lookup; its full
// SHA-256 the first time this ArtifactCache opens that file, remembered by (path, device, inode, size,
// modification time). A file that fails either check is removed and the lookup reports a miss, so the
// caller fills it again rather than serving damaged bytes. The trade-off: the first hit on a large
// entry after a start costs a full read of it (about a second per 2 GB) on the worker thread that asks,
// while later hits cost a few system calls; and a change made later by someone who can write the cache
// folder and restore the modification time goes unnoticed until the next start. Clients detect that
// case through the signed manifest (DESIGN.md section 4), which is what the promise of integrity after
// the bytes leave zoogate rests on.
//
// Eviction: after a write pushes the shared count over max_size, the writing process scans the folder
// under the folder-wide lock and removes items least recently used first until the total fits. Use is
// the modification time of the item, which lookups and record reads update. Removing an entry that is
// being served is fine: open descriptors keep its data until they are closed.
//
// Thread safety: every ArtifactCache method may be called concurrently from any number of threads
// (and processes). They block on file I/O, on hashing and on locks held by other processes, so they run
// on worker threads, never on an I/O thread. An EntryWriter or SpoolWriter is used by one thread at a
// time; different writers run in parallel. The ArtifactCache must outlive the writers and fill locks it
// hands out. No method throws.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/sha256.h"

struct stat;

namespace zoogate::proxy {

// What an artifact in the cache is the result of.
struct CacheKey {
  std::string upstream_id;     // the upstream file's content ("sha256:<hex>", "git:<blob id>")
  std::string policy_version;  // the CDR policy that judged it
  std::string variant_id;      // what selected the served bytes (MTD scope, epoch, options)

  // 64 hex digits: SHA-256 over a format version label and the three parts, each prefixed with its
  // length, so no two different keys share a name and no part (a client scope, say) shows in a path.
  std::string name() const;
};

// The cache's events, for metrics. Callbacks run on the thread that called the cache, possibly on
// several threads at once; they must be thread-safe, quick, and must not call back into the cache.
class CacheListener {
 public:
  virtual ~CacheListener() = default;
  // A lookup() found the entry (after verification) or did not.
  virtual void on_hit() = 0;
  virtual void on_miss() = 0;
  // Eviction removed an item of `bytes` bytes.
  virtual void on_evict(uint64_t bytes) = 0;
  // The shared count changed: all items' bytes, and how many of them are artifact entries.
  virtual void on_size(uint64_t total_bytes, uint64_t entries) = 0;
};

// A verified artifact. The paths stay valid until the entry is evicted: open them right away, and the
// open descriptor keeps the data readable whatever happens to the entry afterwards.
struct CachedArtifact {
  std::string body_path;
  uint64_t size = 0;
  Sha256::Digest sha256{};  // of the body
  nlohmann::json meta;      // what the filler gave to EntryWriter::commit()
  std::optional<std::string> manifest_path;
};

// A verified upstream file in the spool; the path stays valid as CachedArtifact's do.
struct SpooledUpstream {
  std::string path;
  uint64_t size = 0;
};

class ArtifactCache;

// Holds the fill lock of one key, across threads and processes, until destroyed. Its lock file is
// removed on release (a waiter that then finds its descriptor pointing to a removed file reopens the
// path), so locks/ holds only the locks that are held, and those of processes that died holding them
// (the lock itself dies with its process; the next holder of the key removes the file).
class FillLock {
 public:
  FillLock(FillLock&& other) noexcept;
  FillLock& operator=(FillLock&&) = delete;
  FillLock(const FillLock&) = delete;
  FillLock& operator=(const FillLock&) = delete;
  ~FillLock();

 private:
  friend class ArtifactCache;
  FillLock(ArtifactCache& cache, std::string key_name, int fd, std::string path)
      : cache_(&cache), key_name_(std::move(key_name)), fd_(fd), path_(std::move(path)) {}

  ArtifactCache* cache_;
  std::string key_name_;
  int fd_;
  std::string path_;
};

// Fills one entry. Whoever writes the body (this writer's owner or code it hands the path to, such as
// the sanitizer's AtomicFileSink) creates the file at body_path(); commit() publishes it. A writer
// destroyed without a successful commit() removes everything it staged.
class EntryWriter {
 public:
  ~EntryWriter();
  EntryWriter(const EntryWriter&) = delete;
  EntryWriter& operator=(const EntryWriter&) = delete;

  // Where the body goes: a path inside this writer's staging folder under tmp/. Nothing exists there
  // until the body's writer creates it.
  const std::string& body_path() const { return body_path_; }

  // Publishes the entry: writes info.json (with `meta`) and the manifest, fsyncs them (not the body:
  // see "Crash safety" above), and renames the staging folder into entries/. `body_sha256` is the
  // body's digest when its writer computed it on the way (the sanitizer does), which spares a second
  // read of the body; without it the body is hashed here. When another writer (of this or another
  // process) published the key first, theirs is kept and returned, and this writer's files are
  // removed. A meta that serializes to more than ArtifactCache::kMaxEntryInfoBytes is
  // kLimitExceeded. May be called once successfully.
  Result<CachedArtifact> commit(const nlohmann::json& meta,
                                std::optional<std::string_view> manifest_text = std::nullopt,
                                std::optional<Sha256::Digest> body_sha256 = std::nullopt);

 private:
  friend class ArtifactCache;
  EntryWriter(ArtifactCache& cache, std::string key_name, std::string staging_dir);

  ArtifactCache& cache_;
  std::string key_name_;
  std::string staging_dir_;
  std::string body_path_;
  bool committed_ = false;
};

// Spools one upstream file under its SHA-256, with the same staging and publishing as EntryWriter.
class SpoolWriter {
 public:
  ~SpoolWriter();
  SpoolWriter(const SpoolWriter&) = delete;
  SpoolWriter& operator=(const SpoolWriter&) = delete;

  // Where the download goes (SpoolFile::create(path(), size) for instance).
  const std::string& path() const { return path_; }

  // Checks the file against the SHA-256 it was begun with and publishes it. `sha256` is the digest
  // the downloader computed on the way; without it the file is hashed here. A mismatch is kIntegrity
  // and publishes nothing. When the same file was spooled first by someone else, theirs is returned.
  Result<SpooledUpstream> commit(std::optional<Sha256::Digest> sha256 = std::nullopt);

 private:
  friend class ArtifactCache;
  SpoolWriter(ArtifactCache& cache, std::string sha256_hex, Sha256::Digest expected, std::string staging_dir);

  ArtifactCache& cache_;
  std::string sha256_hex_;
  Sha256::Digest expected_;
  std::string staging_dir_;
  std::string path_;
  bool committed_ = false;
};

class ArtifactCache {
 public:
  // Staging leftovers that no live session owns (half-created session folders, stray files) are
  // removed by open() once they are this old; dead sessions' folders go at once.
  static constexpr std::chrono::seconds kStaleTemporaryAge{3600};
  // The largest record write_record() accepts (a signed manifest of a model with many tensors fits).
  static constexpr uint64_t kMaxRecordBytes = uint64_t{16} << 20;
  // The largest info.json of an entry, which carries the filler's metadata.
  static constexpr uint64_t kMaxEntryInfoBytes = uint64_t{1} << 20;

  // Opens (creating it and its layout when missing) the cache folder `dir`, holding at most
  // `max_size_bytes` bytes of items. Removes what dead processes left in tmp/, recomputes the shared
  // usage by scanning, and evicts when it is over the limit (a lowered max_size takes effect here).
  // `listener` may be null; it must outlive the cache.
  static Result<std::unique_ptr<ArtifactCache>> open(const std::string& dir, uint64_t max_size_bytes,
                                                     CacheListener* listener);
  // Removes this session's scratch folder. Every writer and fill lock must be gone by then.
  ~ArtifactCache();
  ArtifactCache(const ArtifactCache&) = delete;
  ArtifactCache& operator=(const ArtifactCache&) = delete;

  // The verified entry of `key`, or nullopt (also when the entry was damaged: it is then removed).
  // Marks the entry as used. Reports on_hit/on_miss; an error (the folder cannot be read) reports
  // neither.
  Result<std::optional<CachedArtifact>> lookup(const CacheKey& key);

  // Starts filling `key`. Does not check whether the entry exists; call under acquire_fill_lock() after
  // a lookup() miss so that one filler does the work.
  Result<std::unique_ptr<EntryWriter>> begin(const CacheKey& key);

  // Blocks until this thread holds the fill lock of `key` in this process and across processes. Not
  // reentrant: a thread that asks again for a key it holds waits forever.
  Result<FillLock> acquire_fill_lock(const CacheKey& key);
  // The fetch lock of one upstream file (by UpstreamFile::upstream_id()), held by whoever downloads
  // it, so that processes sharing the folder download it once; nullopt when someone, in this process
  // or another, holds it now. Never blocks.
  Result<std::optional<FillLock>> try_acquire_fetch_lock(std::string_view upstream_id);

  // The verified spooled upstream file with this SHA-256 (64 lowercase hex digits), or nullopt (also
  // when it was damaged: it is then removed). Marks it as used. Reports no hit or miss.
  Result<std::optional<SpooledUpstream>> lookup_spool(std::string_view sha256_hex);
  // Starts spooling the upstream file with this SHA-256 (64 lowercase hex digits).
  Result<std::unique_ptr<SpoolWriter>> begin_spool(std::string_view sha256_hex);

  // Replaces the record `name` (any bytes; the file name is a hash of it) with `text`, atomically and
  // durably. Records count toward max_size and are evicted like entries: a caller treats a missing
  // record as forgotten. More than kMaxRecordBytes is kLimitExceeded.
  Status write_record(std::string_view name, std::string_view text);
  // The record's text, or nullopt when there is none. Marks it as used.
  Result<std::optional<std::string>> read_record(std::string_view name);

  // Rescans the folder and removes least recently used items until the total fits max_size.
  Status evict_to_fit();

  // A fresh path in this session's scratch folder ("<label>-<n>"; `label` is a plain word). Nothing
  // is created there; the caller removes what it creates, and a crash leaves nothing for long since
  // the next open() removes dead sessions' folders.
  std::string temporary_path(std::string_view label);

 private:
  friend class EntryWriter;
  friend class SpoolWriter;
  friend class FillLock;

  enum class ItemKind { kEntry, kSpool, kRecord };
  struct Usage {
    uint64_t bytes = 0;
    uint64_t entries = 0;
  };
  struct Item {
    ItemKind kind;
    std::string path;
    uint64_t bytes;
    timespec last_used;
  };
  // Which file a verification was for; a file changed in any of these is verified again.
  struct FileIdentity {
    uint64_t device = 0;
    uint64_t inode = 0;
    uint64_t size = 0;
    int64_t mtime_seconds = 0;
    int64_t mtime_nanoseconds = 0;
    bool operator==(const FileIdentity&) const = default;
  };
  struct Verified {
    FileIdentity identity;
    Sha256::Digest sha256;
  };
  static FileIdentity identity_of(const struct stat& status);
  enum class Publication { kOurs, kTheirs };

  ArtifactCache(std::string root, uint64_t max_size, CacheListener* listener, int cache_lock_fd,
                std::string session_id, int session_lock_fd);

  std::string entry_path(const std::string& key_name) const;
  std::string spool_item_path(const std::string& sha256_hex) const;
  std::string record_path(std::string_view name) const;
  Result<std::string> make_staging_dir(std::string_view label);

  // Runs `action` holding locks/cache.lock (and this process's mutex for it).
  template <typename Action>
  auto with_cache_lock(Action&& action) -> decltype(action());
  // The following run under the cache lock.
  Result<Usage> load_usage_locked();
  Status store_usage_locked(const Usage& usage);
  Result<std::vector<Item>> scan_locked();
  // Takes the item out of the tree; returns the trash path to delete after unlocking, if any.
  Result<std::optional<std::string>> detach_locked(const std::string& path, ItemKind kind);

  // Renames a complete staging folder to `item`; kTheirs when an item of that name already exists.
  Result<Publication> publish(const std::string& staging_dir, const std::string& item, ItemKind kind);
  // Removes a damaged item, unless it was replaced (another inode) since it was examined.
  Status discard_damaged(const std::string& item, uint64_t inode, ItemKind kind);
  Status rescan_and_evict(const std::string& protected_item);
  void evict_if_over(const Usage& usage, const std::string& protected_item);
  void remove_abandoned_temporaries();

  Result<std::optional<CachedArtifact>> find_entry(const std::string& key_name);
  // True when the file behind `fd` has `expected` as SHA-256, hashing it unless this identity was
  // verified before. One thread hashes a given item at a time; others wait for its result.
  Result<bool> verify_once(const std::string& item, int fd, const FileIdentity& identity,
                           const Sha256::Digest& expected);
  void remember_verified(const std::string& item, const FileIdentity& identity, const Sha256::Digest& sha256);
  void forget_verified(const std::string& item);
  void notify_size(const Usage& usage);
  // A fill or fetch lock by its name (in locks/); with `wait` false, nullopt when it is held.
  Result<std::optional<FillLock>> acquire_lock(std::string name, bool wait);
  void release_fill_slot(const std::string& key_name);

  std::string root_;
  uint64_t max_size_;
  CacheListener* listener_;
  int cache_lock_fd_;
  std::mutex cache_lock_mutex_;  // flock() does not order the threads of one process on NFS
  std::string session_id_;
  std::string session_dir_;
  int session_lock_fd_;
  std::atomic<uint64_t> next_temporary_{0};

  std::mutex verify_mutex_;
  std::condition_variable verification_done_;
  std::map<std::string, Verified> verified_;  // by item path; guarded by verify_mutex_
  std::set<std::string> verifying_;           // items being hashed now; guarded by verify_mutex_

  std::mutex fill_mutex_;
  std::condition_variable fill_released_;
  std::set<std::string> filling_;  // names of the locks a thread of this process holds
};

}  // namespace zoogate::proxy
