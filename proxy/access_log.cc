#include "proxy/access_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <openssl/err.h>
#include <openssl/rand.h>

#include "common/encoding.h"

namespace zoogate::proxy {
namespace {

// "2024-05-01T12:34:56.789Z"
std::string rfc3339_utc(std::chrono::system_clock::time_point time) {
  const auto millis = std::chrono::floor<std::chrono::milliseconds>(time);
  const auto day = std::chrono::floor<std::chrono::days>(millis);
  const std::chrono::year_month_day date(day);
  const std::chrono::hh_mm_ss clock(millis - day);
  std::array<char, 40> text{};
  std::snprintf(text.data(), text.size(), "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ", static_cast<int>(date.year()),
                static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
                static_cast<int>(clock.hours().count()), static_cast<int>(clock.minutes().count()),
                static_cast<int>(clock.seconds().count()), static_cast<int>(clock.subseconds().count()));
  return text.data();
}

// The target without what must never be logged: the query and the fragment (tokens, signed-URL
// signatures) and, in an absolute-form target ("http://user:secret@host/path"), the userinfo.
std::string loggable_target(std::string_view target) {
  target = target.substr(0, target.find_first_of("?#"));
  const size_t scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos || target.find('/') < scheme_end) return std::string(target);
  const size_t authority_start = scheme_end + 3;
  const std::string_view authority =
      target.substr(authority_start, target.find('/', authority_start) - authority_start);
  const size_t at = authority.rfind('@');
  if (at == std::string_view::npos) return std::string(target);
  return std::string(target.substr(0, authority_start)) + std::string(target.substr(authority_start + at + 1));
}

std::string_view to_string(CacheOutcome outcome) { return outcome == CacheOutcome::kHit ? "hit" : "miss"; }

// Request ids must be unique, not secret. Should OpenSSL's generator ever fail (only when the operating
// system has no entropy to give), ids come from a per-process sequence passed through the splitmix64
// finalizer, a bijection, so they stay distinct within the process.
uint64_t fallback_request_number() {
  static const uint64_t base =
      static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) ^
      (static_cast<uint64_t>(::getpid()) << 32);
  static std::atomic<uint64_t> sequence{0};
  uint64_t x = base + sequence.fetch_add(1, std::memory_order_relaxed);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

Result<std::unique_ptr<AccessLog>> AccessLog::open(const std::string& path) {
  if (path == "-") return std::unique_ptr<AccessLog>(new AccessLog(STDERR_FILENO, false));
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return fail(ErrorCode::kIo, "cannot open the access log " + path + ": " + std::strerror(errno));
  return std::unique_ptr<AccessLog>(new AccessLog(fd, true));
}

AccessLog::AccessLog(int fd, bool owns_fd) : fd_(fd), owns_fd_(owns_fd) {}

AccessLog::~AccessLog() {
  if (owns_fd_) ::close(fd_);
}

void AccessLog::write(const AccessRecord& record) {
  nlohmann::ordered_json line;
  line["time"] = rfc3339_utc(record.time);
  line["request_id"] = record.request_id;
  line["listener"] = std::string(to_string(record.listener));
  line["client"] = record.client;
  if (record.peer) line["peer"] = *record.peer;
  if (record.user) line["user"] = *record.user;
  line["method"] = record.method;
  line["target"] = loggable_target(record.target);
  line["status"] = record.status;
  line["bytes_sent"] = record.bytes_sent;
  line["duration_ms"] =
      static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(record.duration).count()) / 1000.0;
  line["route"] = std::string(to_string(record.route));
  if (record.verdict) line["verdict"] = std::string(to_string(*record.verdict));
  if (record.upstream_status) line["upstream_status"] = *record.upstream_status;
  if (record.cache) line["cache"] = std::string(to_string(*record.cache));
  if (record.error) line["error"] = *record.error;
  write_line(line);
}

void AccessLog::write_event(std::string_view event, const nlohmann::json& fields) {
  nlohmann::ordered_json line;
  line["time"] = rfc3339_utc(std::chrono::system_clock::now());
  line["event"] = std::string(event);
  if (fields.is_object()) {
    for (auto field = fields.begin(); field != fields.end(); ++field) {
      if (field.key() == "time" || field.key() == "event") continue;
      line[field.key()] = nlohmann::ordered_json(field.value());
    }
  } else if (!fields.is_null()) {
    line["detail"] = nlohmann::ordered_json(fields);
  }
  write_line(line);
}

void AccessLog::write_line(const nlohmann::ordered_json& line) {
  // Replacing invalid UTF-8 (a client's bytes in a target or an address) keeps dump() from throwing.
  std::string text = line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  text.push_back('\n');
  std::lock_guard lock(write_mutex_);
  std::string_view rest = text;
  while (!rest.empty()) {
    const ssize_t written = ::write(fd_, rest.data(), rest.size());
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return;
    rest.remove_prefix(static_cast<size_t>(written));
  }
}

std::string new_request_id() {
  std::array<uint8_t, 8> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    ERR_clear_error();  // leave no stale error for the next TLS call on this thread
    uint64_t number = fallback_request_number();
    for (uint8_t& byte : bytes) {
      byte = static_cast<uint8_t>(number);
      number >>= 8;
    }
  }
  return to_hex(bytes);
}

}  // namespace zoogate::proxy
