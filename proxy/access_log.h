// The server's access and audit log (DESIGN.md section 7): JSON lines, one object per line.
//
// An access line per answered request:
//   {"time":"2024-05-01T12:34:56.789Z","request_id":"9f2c4e1a0b7d3c58","listener":"hub",
//    "client":"10.0.0.7","peer":"10.0.0.2","user":"alice","method":"GET",
//    "target":"/acme/m/resolve/main/model.bin","status":200,"bytes_sent":1087,"duration_ms":12.345,
//    "route":"resolve","verdict":"disarmed","upstream_status":200,"cache":"miss","error":"..."}
// (peer, user, verdict, upstream_status, cache and error only when known). An audit line per event:
//   {"time":"...","event":"blocked","repository":"acme/m","file":"model.bin",...}
//
// What never reaches the log: query strings and fragments (they carry tokens and signed-URL
// signatures), credentials in a target's userinfo, and request headers of any kind (Authorization and
// cookies included; a record has no field for them). Bytes that are not UTF-8 are written as U+FFFD.
//
// Several zoogate processes may append to one file: it is opened with O_APPEND and each line goes out
// in one write() call, which the kernel appends whole.
//
// Thread safety: write() and write_event() may be called concurrently from any thread; lines never
// interleave. new_request_id() may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "proxy/metrics.h"

namespace zoogate::proxy {

enum class CacheOutcome { kHit, kMiss };

struct AccessRecord {
  std::chrono::system_clock::time_point time;  // when the request arrived
  std::string request_id;
  Listener listener = Listener::kHub;
  std::string client;               // the client's address (see forwarded_client.h)
  // The connection's address, when the client is another one: a trusted proxy that forwarded for it.
  std::optional<std::string> peer;
  std::optional<std::string> user;  // the authenticated user name, when the request had one
  std::string method;
  std::string target;  // the request target as received; logged without query, fragment or userinfo
  unsigned status = 0;
  uint64_t bytes_sent = 0;
  std::chrono::nanoseconds duration{0};  // from arrival to the end of the answer
  Route route = Route::kOther;
  std::optional<VerdictLabel> verdict;
  std::optional<unsigned> upstream_status;
  std::optional<CacheOutcome> cache;
  std::optional<std::string> error;
};

class AccessLog {
 public:
  // "-" writes to stderr; anything else is a file, created (mode 0640) or appended to.
  static Result<std::unique_ptr<AccessLog>> open(const std::string& path);

  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;
  ~AccessLog();

  // Logging never stops serving: a line the system refuses to take (disk full, closed stderr) is
  // dropped.
  void write(const AccessRecord& record);
  // `fields` is an object whose members follow "time" and "event" (members named so are ignored);
  // null stands for no fields, and any other value is written as "detail".
  void write_event(std::string_view event, const nlohmann::json& fields);

 private:
  AccessLog(int fd, bool owns_fd);
  void write_line(const nlohmann::ordered_json& line);

  const int fd_;
  const bool owns_fd_;
  std::mutex write_mutex_;  // one line at a time, even when a line takes more than one write()
};

// 16 random lowercase hex digits (64 bits), for X-Request-Id and the log's request_id.
std::string new_request_id();

}  // namespace zoogate::proxy
