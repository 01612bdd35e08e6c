#include "proxy/upstream_client.h"

#include <algorithm>
#include <charconv>
#include <csignal>
#include <cstring>
#include <sstream>
#include <tuple>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/write.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include "common/openssl_error.h"
#include "common/openssl_ptr.h"

namespace zoogate::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

namespace {

constexpr auto kAsTuple = asio::as_tuple(asio::use_awaitable);
using Deadline = std::chrono::steady_clock::time_point;
// OpenSSL's read-ahead buffer per connection: up to this many bytes of records per system call.
constexpr size_t kTlsReadAheadBytes = 128 * 1024;
// Decrypted bytes read at once while a header or a chunked body is parsed.
constexpr size_t kParseReadBytes = 64 * 1024;
// Response headers larger than this are not a Hub's; refusing them bounds memory per exchange.
constexpr uint32_t kMaxResponseHeaderBytes = 64 * 1024;

// The event loop (the io_context) on which `executor` runs its work.
asio::execution_context& event_loop_of(const asio::any_io_executor& executor) {
  return asio::query(executor, asio::execution::context);
}

bool is_ip_literal(const std::string& host) {
  boost::system::error_code error;
  asio::ip::make_address(host, error);
  return !error;
}

Error upstream_error(std::string_view what, const Url& url, const boost::system::error_code& error) {
  return Error{ErrorCode::kIo, std::string(what) + " " + url.origin() + ": " + error.message(), std::nullopt};
}

UpstreamErrorReason classify(const boost::system::error_code& error) {
  if (error == beast::error::timeout) return UpstreamErrorReason::kTimeout;
  if (error.category() == asio::error::get_ssl_category() || error == asio::ssl::error::stream_truncated) {
    return UpstreamErrorReason::kTls;
  }
  if (error == asio::error::connection_reset || error == asio::error::eof || error == http::error::end_of_stream ||
      error == http::error::partial_message || error == asio::error::broken_pipe) {
    return UpstreamErrorReason::kReset;
  }
  if (error.category() == http::make_error_code(http::error::bad_version).category()) {
    return UpstreamErrorReason::kProtocol;
  }
  return UpstreamErrorReason::kConnect;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Url

Result<Url> Url::parse(std::string_view text) {
  constexpr std::string_view kScheme = "https://";
  auto invalid = [&](std::string_view why) {
    return fail(ErrorCode::kInvalidArgument, "not an https URL zoogate can fetch (" + std::string(why) + "): " +
                                                 std::string(text.substr(0, 200)));
  };
  if (text.size() < kScheme.size() || !std::equal(kScheme.begin(), kScheme.end(), text.begin(), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == b;
      })) {
    return invalid("scheme");
  }
  for (char c : text) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return invalid("control character or space");
  }
  std::string_view rest = text.substr(kScheme.size());
  const size_t authority_end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, authority_end);
  std::string_view target = authority_end == std::string_view::npos ? "/" : rest.substr(authority_end);
  if (target.find('#') != std::string_view::npos) return invalid("fragment");
  if (authority.find('@') != std::string_view::npos) return invalid("user info");
  Url url;
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return invalid("IPv6 literal");
    url.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return invalid("port");
      port_text = after.substr(1);
    }
    boost::system::error_code error;
    asio::ip::make_address_v6(url.host, error);
    if (error) return invalid("IPv6 literal");
  } else {
    const size_t colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (url.host.empty()) return invalid("host");
  std::transform(url.host.begin(), url.host.end(), url.host.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (!port_text.empty()) {
    unsigned port = 0;
    auto [end, error] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (error != std::errc{} || end != port_text.data() + port_text.size() || port == 0 || port > 65535) {
      return invalid("port");
    }
    url.port = static_cast<uint16_t>(port);
  }
  url.target = target.front() == '?' ? "/" + std::string(target) : std::string(target);
  return url;
}

std::string Url::host_header() const {
  std::string host_part = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return port == 443 ? host_part : host_part + ":" + std::to_string(port);
}

std::string Url::origin() const { return "https://" + host_header(); }

// ---------------------------------------------------------------------------------------------------
// Connections

// One TLS connection: OpenSSL on the socket's descriptor (non-blocking), driven by readiness waits.
//
// Every wait for the peer has a deadline, watched by one timer per connection. Moving the deadline
// later, which each step of progress does, costs no system call: the timer wakes at the old deadline,
// finds the new one and sleeps again. A deadline that passes shuts the socket down, which ends the
// pending wait; the waiter then reports a timeout.
//
// Thread safety: one coroutine at a time uses a connection (the pool and UpstreamResponse hand it
// over). The watchdog runs on the connection's event loop, not necessarily on the coroutine's thread;
// it shares only `watch_mutex_`'s fields and the descriptor, which stays open while the watchdog holds
// the connection.
class UpstreamConnection : public std::enable_shared_from_this<UpstreamConnection> {
 public:
  // Null when OpenSSL cannot make a TLS session from `context`.
  static std::shared_ptr<UpstreamConnection> create(asio::any_io_executor executor, SSL_CTX* context,
                                                    std::string origin);
  UpstreamConnection(asio::any_io_executor executor, SSL* ssl, std::string origin_name)
      : origin(std::move(origin_name)), socket_(executor), ssl_(ssl), watchdog_(executor) {}
  UpstreamConnection(const UpstreamConnection&) = delete;
  UpstreamConnection& operator=(const UpstreamConnection&) = delete;

  // Takes the connected socket and runs the client handshake, done by `deadline`.
  // Verification is set up by the caller through native_handle() before this.
  asio::awaitable<boost::system::error_code> handshake(tcp::socket socket, Deadline deadline);
  SSL* native_handle() { return ssl_.get(); }

  // Reads what has arrived, up to out.size() bytes, waiting (at most `timeout`) only when nothing has;
  // eof at the peer's end. A failure after some bytes is reported by the next call, those bytes first.
  asio::awaitable<std::tuple<boost::system::error_code, size_t>> read_some(std::span<uint8_t> out,
                                                                          std::chrono::milliseconds timeout);
  // Writes all of `bytes`, each wait for the peer at most `timeout`.
  asio::awaitable<boost::system::error_code> write_all(std::span<const uint8_t> bytes,
                                                       std::chrono::milliseconds timeout);
  // The event loop the connection's socket and timer belong to.
  asio::execution_context& event_loop() { return event_loop_of(socket_.get_executor()); }
  const std::string origin;
  beast::flat_buffer received;  // decrypted bytes not parsed yet; bytes past one response stay for the next

 private:
  enum class Step { kDone, kWaitRead, kWaitWrite, kFailed };
  // Classifies the result `outcome` of an OpenSSL call; on kFailed, `error` says why.
  Step next_step(int outcome, boost::system::error_code& error);
  asio::awaitable<boost::system::error_code> wait(Step step, Deadline deadline);
  void watch_deadline(Deadline deadline);
  // An operation ended: no wait is running, and the watchdog sleeps at its next wake.
  void stop_watching();
  void arm_watchdog(Deadline at);  // watch_mutex_ held
  void on_watchdog();

  tcp::socket socket_;
  // Destroyed before the socket; SSL_free leaves the descriptor open, the socket closes it.
  OpenSslPtr<SSL, SSL_free> ssl_;
  boost::system::error_code deferred_error_;  // a read failure behind bytes already returned

  std::mutex watch_mutex_;
  asio::steady_timer watchdog_;
  Deadline deadline_ = Deadline::max();        // of the wait running now; max() when none is
  Deadline watchdog_wakes_ = Deadline::max();  // when the timer is set to wake; max() when it is not
  bool timed_out_ = false;
};

std::shared_ptr<UpstreamConnection> UpstreamConnection::create(asio::any_io_executor executor, SSL_CTX* context,
                                                               std::string origin) {
  SSL* ssl = SSL_new(context);
  if (!ssl) return nullptr;
  // Read-ahead lets one system call take every record the kernel holds, up to the buffer's size.
  SSL_set_read_ahead(ssl, 1);
  SSL_set_default_read_buffer_len(ssl, kTlsReadAheadBytes);
  // Idle pooled connections give their buffers back; a retried write may come from another address.
  SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
  return std::make_shared<UpstreamConnection>(std::move(executor), ssl, std::move(origin));
}

void UpstreamConnection::arm_watchdog(Deadline at) {
  watchdog_wakes_ = at;
  watchdog_.expires_at(at);  // cancels a pending wait, whose handler then does nothing
  watchdog_.async_wait([weak = weak_from_this()](const boost::system::error_code& error) {
    if (error) return;  // re-armed, or the connection is gone
    if (auto self = weak.lock()) self->on_watchdog();
  });
}

void UpstreamConnection::on_watchdog() {
  std::lock_guard lock(watch_mutex_);
  watchdog_wakes_ = Deadline::max();
  if (deadline_ == Deadline::max()) return;  // idle: sleep until a wait starts
  if (std::chrono::steady_clock::now() < deadline_) return arm_watchdog(deadline_);
  timed_out_ = true;
  // shutdown(), not close(): the descriptor stays valid for the coroutine that owns the connection,
  // and its pending wait ends at once.
  ::shutdown(socket_.native_handle(), SHUT_RDWR);
}

void UpstreamConnection::watch_deadline(Deadline deadline) {
  std::lock_guard lock(watch_mutex_);
  deadline_ = deadline;
  if (deadline_ < watchdog_wakes_) arm_watchdog(deadline_);
}

void UpstreamConnection::stop_watching() {
  std::lock_guard lock(watch_mutex_);
  deadline_ = Deadline::max();
}

UpstreamConnection::Step UpstreamConnection::next_step(int outcome, boost::system::error_code& error) {
  if (outcome == 1) return Step::kDone;
  switch (SSL_get_error(ssl_.get(), outcome)) {
    case SSL_ERROR_WANT_READ:
      return Step::kWaitRead;
    case SSL_ERROR_WANT_WRITE:
      return Step::kWaitWrite;
    case SSL_ERROR_ZERO_RETURN:
      error = asio::error::eof;
      return Step::kFailed;
    case SSL_ERROR_SYSCALL: {
      // errno 0 and no OpenSSL error: the peer closed without a TLS close_notify, which could cut a
      // body short unnoticed, so it is an error of its own.
      const int system_error = errno;
      const unsigned long reason = ERR_get_error();
      error = reason != 0         ? boost::system::error_code(static_cast<int>(reason), asio::error::get_ssl_category())
              : system_error != 0 ? boost::system::error_code(system_error, boost::system::system_category())
                                  : boost::system::error_code(asio::ssl::error::stream_truncated);
      return Step::kFailed;
    }
    default: {
      const unsigned long reason = ERR_get_error();
      error = boost::system::error_code(reason != 0 ? static_cast<int>(reason) : SSL_R_UNEXPECTED_MESSAGE,
                                        asio::error::get_ssl_category());
      return Step::kFailed;
    }
  }
}

asio::awaitable<boost::system::error_code> UpstreamConnection::wait(Step step, Deadline deadline) {
  watch_deadline(deadline);
  boost::system::error_code error;
  if (step == Step::kWaitRead) {
    // A one-byte peek rather than async_wait: Asio tries a receive when the operation starts, so bytes
    // that arrived after OpenSSL's last attempt are seen now. async_wait would wait for the next
    // readiness event, and after a body's last bytes there is none.
    uint8_t peeked = 0;
    std::tie(error, std::ignore) =
        co_await socket_.async_receive(asio::buffer(&peeked, 1), tcp::socket::message_peek, kAsTuple);
    if (error == asio::error::eof) error = {};  // readable: OpenSSL reads the end itself
  } else {
    // Writes wait only while the kernel's send buffer is full, which a request seldom fills.
    std::tie(error) = co_await socket_.async_wait(tcp::socket::wait_write, kAsTuple);
  }
  std::lock_guard lock(watch_mutex_);
  if (timed_out_) co_return beast::error::timeout;
  co_return error;
}

asio::awaitable<boost::system::error_code> UpstreamConnection::handshake(tcp::socket socket, Deadline deadline) {
  socket_ = std::move(socket);
  boost::system::error_code error;
  socket_.non_blocking(true, error);
  if (error) co_return error;
  if (SSL_set_fd(ssl_.get(), socket_.native_handle()) != 1) co_return asio::error::bad_descriptor;
  for (;;) {
    ERR_clear_error();
    const Step step = next_step(SSL_connect(ssl_.get()), error);
    if (step == Step::kDone) break;
    if (step == Step::kFailed) co_return error;
    if (auto waited = co_await wait(step, deadline)) co_return waited;
  }
  stop_watching();
  co_return boost::system::error_code{};
}

asio::awaitable<std::tuple<boost::system::error_code, size_t>> UpstreamConnection::read_some(
    std::span<uint8_t> out, std::chrono::milliseconds timeout) {
  if (deferred_error_) co_return std::tuple(std::exchange(deferred_error_, {}), size_t{0});
  size_t total = 0;
  while (total < out.size()) {
    ERR_clear_error();
    size_t got = 0;
    boost::system::error_code error;
    const Step step = next_step(SSL_read_ex(ssl_.get(), out.data() + total, out.size() - total, &got), error);
    if (step == Step::kDone) {
      total += got;
      continue;  // the next record may be in the read-ahead buffer or the kernel's already
    }
    if (step == Step::kFailed) {
      if (total == 0) co_return std::tuple(error, size_t{0});
      deferred_error_ = error;
      break;
    }
    if (total > 0) break;  // return what has arrived rather than wait for more
    if (auto waited = co_await wait(step, Deadline::clock::now() + timeout)) co_return std::tuple(waited, size_t{0});
  }
  stop_watching();
  co_return std::tuple(boost::system::error_code{}, total);
}

asio::awaitable<boost::system::error_code> UpstreamConnection::write_all(std::span<const uint8_t> bytes,
                                                                         std::chrono::milliseconds timeout) {
  size_t written = 0;
  while (written < bytes.size()) {
    ERR_clear_error();
    size_t sent = 0;
    boost::system::error_code error;
    const Step step = next_step(SSL_write_ex(ssl_.get(), bytes.data() + written, bytes.size() - written, &sent), error);
    if (step == Step::kDone) {
      written += sent;
    } else if (step == Step::kFailed) {
      co_return error;
    } else if (auto waited = co_await wait(step, Deadline::clock::now() + timeout)) {
      co_return waited;
    }
  }
  stop_watching();
  co_return boost::system::error_code{};
}

UpstreamClient::UpstreamClient(const UpstreamSettings& settings, Metrics* metrics)
    : settings_(settings), metrics_(metrics), tls_(asio::ssl::context::tls_client) {}

Result<std::shared_ptr<UpstreamClient>> UpstreamClient::create(const UpstreamSettings& settings, Metrics* metrics) {
  // OpenSSL writes to the socket with write(2): a peer gone away must be an error, not SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  std::shared_ptr<UpstreamClient> client(new UpstreamClient(settings, metrics));
  SSL_CTX* context = client->tls_.native_handle();
  SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION);
  SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_set_default_verify_paths(context) != 1) {
    return fail(ErrorCode::kIo, "cannot load the system's trusted certificates");
  }
  if (!settings.ca_bundle.empty() &&
      SSL_CTX_load_verify_locations(context, settings.ca_bundle.c_str(), nullptr) != 1) {
    return fail(ErrorCode::kIo, "cannot load the CA bundle " + settings.ca_bundle);
  }
  return client;
}

std::shared_ptr<UpstreamConnection> UpstreamClient::take_idle(const asio::execution_context& loop,
                                                              const std::string& origin) {
  std::lock_guard lock(pool_mutex_);
  auto found = idle_.find(PoolKey(&loop, origin));
  if (found == idle_.end() || found->second.empty()) return nullptr;
  auto connection = std::move(found->second.back());
  found->second.pop_back();
  return connection;
}

void UpstreamClient::return_idle(std::shared_ptr<UpstreamConnection> connection) {
  std::lock_guard lock(pool_mutex_);
  auto& idle = idle_[PoolKey(&connection->event_loop(), connection->origin)];
  if (idle.size() >= settings_.max_idle_connections) idle.pop_front();  // the oldest is most likely stale
  idle.push_back(std::move(connection));
}

asio::awaitable<ResolvedDestination> resolve_destination(asio::any_io_executor executor, const std::string& host,
                                                         uint16_t port, const DestinationCheck* check) {
  ResolvedDestination destination;
  tcp::resolver resolver(executor);
  auto [error, endpoints] = co_await resolver.async_resolve(host, std::to_string(port), kAsTuple);
  if (error) {
    destination.resolve_error = error;
    co_return destination;
  }
  for (const auto& entry : endpoints) {
    const tcp::endpoint endpoint = entry.endpoint();
    DestinationVerdict verdict = check ? check->check(host, endpoint.address()) : DestinationVerdict{true, AddressClass::kPublic, ""};
    if (verdict.allowed) {
      destination.allowed.push_back(endpoint);
    } else if (destination.refusal.empty()) {
      destination.refusal = std::move(verdict.reason);
    }
  }
  co_return destination;
}

asio::awaitable<Result<std::shared_ptr<UpstreamConnection>>> UpstreamClient::connect(const Url& url) {
  const Deadline deadline = Deadline::clock::now() + settings_.connect_timeout;
  const asio::any_io_executor executor = co_await asio::this_coro::executor;
  auto connection = UpstreamConnection::create(executor, tls_.native_handle(), url.origin());
  if (!connection) {
    co_return fail(ErrorCode::kIo, "cannot set up TLS for " + url.origin() + ": " + openssl_reason());
  }
  const ResolvedDestination destination =
      co_await resolve_destination(executor, url.host, url.port, settings_.destination_check.get());
  if (destination.resolve_error) {
    co_return tl::unexpected(upstream_error("cannot resolve", url, destination.resolve_error));
  }
  if (destination.allowed.empty()) {
    co_return fail(ErrorCode::kForbidden, "refused to connect to " + url.origin() + ": " + destination.refusal);
  }

  // Beast's stream tries each address in turn within the deadline; then the socket is handed over.
  beast::tcp_stream connecting(executor);
  connecting.expires_at(deadline);
  auto [connect_error, endpoint] = co_await connecting.async_connect(destination.allowed, kAsTuple);
  if (connect_error) co_return tl::unexpected(upstream_error("cannot connect to", url, connect_error));
  if (settings_.destination_check) {
    DestinationVerdict verdict = settings_.destination_check->check(url.host, endpoint.address());
    if (!verdict.allowed) {
      co_return fail(ErrorCode::kForbidden, "refused to connect to " + url.origin() + ": " + verdict.reason);
    }
  }
  connecting.socket().set_option(tcp::no_delay(true));

  // The name the certificate must carry: a DNS name (also sent as SNI) or an IP address.
  SSL* ssl = connection->native_handle();
  if (is_ip_literal(url.host)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), url.host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl, url.host.c_str());
    SSL_set1_host(ssl, url.host.c_str());
  }
  if (auto handshake_error = co_await connection->handshake(connecting.release_socket(), deadline)) {
    const long verify_result = SSL_get_verify_result(ssl);
    std::string why = verify_result != X509_V_OK ? X509_verify_cert_error_string(verify_result)
                                                  : handshake_error.message();
    co_return tl::unexpected(
        Error{ErrorCode::kIo, "TLS with " + url.origin() + " failed: " + why, std::nullopt});
  }
  co_return connection;
}

asio::awaitable<Status> UpstreamClient::check_upstream(const Url& url) {
  const asio::any_io_executor executor = co_await asio::this_coro::executor;
  if (auto idle = take_idle(event_loop_of(executor), url.origin())) {
    return_idle(std::move(idle));
    co_return Status{};
  }
  auto connected = co_await connect(url);
  if (!connected) co_return tl::unexpected(connected.error());
  return_idle(std::move(*connected));
  co_return Status{};
}

asio::awaitable<Result<std::unique_ptr<UpstreamResponse>>> UpstreamClient::send(const Url& url, Request request,
                                                                                bool idempotent) {
  request.target(url.target);
  request.set(http::field::host, url.host_header());
  request.version(11);
  request.keep_alive(true);
  request.prepare_payload();
  const bool head = request.method() == http::verb::head;
  std::ostringstream serialized;
  serialized << request;
  const std::string wire = std::move(serialized).str();
  const auto started = std::chrono::steady_clock::now();
  const unsigned attempts = idempotent ? settings_.retries + 1 : 1;
  Error last_error{ErrorCode::kIo, "no attempt made", std::nullopt};
  UpstreamErrorReason last_failure = UpstreamErrorReason::kConnect;
  const asio::any_io_executor executor = co_await asio::this_coro::executor;
  const asio::execution_context& loop = event_loop_of(executor);
  for (unsigned attempt = 0; attempt < attempts; ++attempt) {
    std::shared_ptr<UpstreamConnection> connection = take_idle(loop, url.origin());
    if (!connection) {
      auto connected = co_await connect(url);
      if (!connected) {
        last_error = connected.error();
        last_failure = last_error.code == ErrorCode::kForbidden               ? UpstreamErrorReason::kPolicy
                       : last_error.message.find("TLS") != std::string::npos ? UpstreamErrorReason::kTls
                                                                             : UpstreamErrorReason::kConnect;
        // An untrusted certificate will not become trusted by asking again.
        if (last_failure == UpstreamErrorReason::kTls || last_error.code == ErrorCode::kForbidden) break;
        continue;
      }
      connection = std::move(*connected);
    }
    if (auto write_error = co_await connection->write_all(
            std::span(reinterpret_cast<const uint8_t*>(wire.data()), wire.size()), settings_.read_timeout)) {
      last_error = upstream_error("cannot send to", url, write_error);
      last_failure = classify(write_error);
      continue;
    }
    std::unique_ptr<UpstreamResponse> response(new UpstreamResponse(shared_from_this(), std::move(connection)));
    if (head) response->parser_.skip(true);
    if (auto read_error = co_await response->read_header()) {
      last_error = upstream_error("no response from", url, read_error);
      last_failure = classify(read_error);
      if (last_failure == UpstreamErrorReason::kTimeout || last_failure == UpstreamErrorReason::kProtocol) break;
      continue;
    }
    if (metrics_) {
      metrics_->count_upstream_response(
          response->status(), std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    co_return response;
  }
  if (metrics_) metrics_->count_upstream_error(last_failure);
  co_return tl::unexpected(last_error);
}

// ---------------------------------------------------------------------------------------------------
// Responses

UpstreamResponse::UpstreamResponse(std::shared_ptr<UpstreamClient> client,
                                   std::shared_ptr<UpstreamConnection> connection)
    : client_(std::move(client)), connection_(std::move(connection)) {
  parser_.header_limit(kMaxResponseHeaderBytes);
  parser_.body_limit(boost::none);  // bodies are streamed; callers bound what they keep
}

UpstreamResponse::~UpstreamResponse() = default;

asio::awaitable<boost::system::error_code> UpstreamResponse::read_header() {
  beast::flat_buffer& received = connection_->received;
  const auto timeout = client_->settings().read_timeout;
  for (;;) {
    if (received.size() > 0) {
      boost::system::error_code error;
      received.consume(parser_.put(received.data(), error));
      if (error && error != http::error::need_more) co_return error;
      if (parser_.is_header_done()) break;
    }
    auto [error, got] = co_await connection_->read_some(
        std::span(static_cast<uint8_t*>(received.prepare(kParseReadBytes).data()), kParseReadBytes), timeout);
    if (error) co_return error;
    received.commit(got);
  }
  if (parser_.is_done()) {
    finish_body();
  } else if (!parser_.chunked() && parser_.content_length()) {
    counted_remaining_ = *parser_.content_length();
  }
  co_return boost::system::error_code{};
}

void UpstreamResponse::finish_body() {
  if (parser_.keep_alive()) {
    client_->return_idle(std::move(connection_));
  } else {
    connection_.reset();
  }
}

Error UpstreamResponse::body_failed(const boost::system::error_code& error) {
  last_failure_ = classify(error);
  if (client_->metrics_) client_->metrics_->count_upstream_error(last_failure_);
  connection_.reset();
  return Error{ErrorCode::kIo, "the upstream body broke off: " + error.message(), std::nullopt};
}

asio::awaitable<Result<size_t>> UpstreamResponse::read(std::span<uint8_t> out) {
  size_t filled = 0;
  while (filled < out.size() && connection_) {
    // An if, not ?: : g++ 12 evaluates both arms of a conditional whose arms are co_await expressions.
    Result<size_t> got = size_t{0};
    if (counted_remaining_) {
      got = co_await read_counted(out.subspan(filled));
    } else {
      got = co_await read_parsed(out.subspan(filled));
    }
    if (!got) co_return got;
    filled += *got;
  }
  co_return filled;
}

asio::awaitable<Result<size_t>> UpstreamResponse::read_counted(std::span<uint8_t> out) {
  // The parser has read the header only; the body's bytes go straight to `out`, with none copied.
  out = out.first(static_cast<size_t>(std::min<uint64_t>(out.size(), *counted_remaining_)));
  beast::flat_buffer& received = connection_->received;
  size_t got = 0;
  if (received.size() > 0) {
    got = std::min(out.size(), received.size());
    std::memcpy(out.data(), received.data().data(), got);
    received.consume(got);
  } else {
    auto [error, read] = co_await connection_->read_some(out, client_->settings().read_timeout);
    if (error == asio::error::eof) error = http::error::partial_message;
    if (error) co_return tl::unexpected(body_failed(error));
    got = read;
  }
  *counted_remaining_ -= got;
  if (client_->metrics_) client_->metrics_->add_upstream_bytes(got);
  if (*counted_remaining_ == 0) finish_body();
  co_return got;
}

asio::awaitable<Result<size_t>> UpstreamResponse::read_parsed(std::span<uint8_t> out) {
  beast::flat_buffer& received = connection_->received;
  for (;;) {
    parser_.get().body().data = out.data();
    parser_.get().body().size = out.size();
    boost::system::error_code error;
    const size_t used = received.size() > 0 ? parser_.put(received.data(), error) : 0;
    received.consume(used);
    const size_t got = out.size() - parser_.get().body().size;
    if (error && error != http::error::need_buffer && error != http::error::need_more) {
      co_return tl::unexpected(body_failed(error));
    }
    if (client_->metrics_) client_->metrics_->add_upstream_bytes(got);
    if (parser_.is_done()) finish_body();
    if (got > 0 || !connection_) co_return got;  // no connection: the body is done
    if (used > 0 && received.size() > 0) continue;  // framing (a chunk's size line) consumed; parse on
    auto [read_error, read] = co_await connection_->read_some(
        std::span(static_cast<uint8_t*>(received.prepare(kParseReadBytes).data()), kParseReadBytes),
        client_->settings().read_timeout);
    if (read_error == asio::error::eof) {
      // A body without length or chunks ends with the connection; any other is cut short.
      parser_.put_eof(error);
      if (error) co_return tl::unexpected(body_failed(error));
      connection_.reset();
      co_return size_t{0};
    }
    if (read_error) co_return tl::unexpected(body_failed(read_error));
    received.commit(read);
  }
}

asio::awaitable<Result<std::string>> UpstreamResponse::read_all(uint64_t limit) {
  std::string body;
  if (auto length = content_length(); length && *length > limit) {
    co_return fail(ErrorCode::kLimitExceeded,
                   "the upstream answer has " + std::to_string(*length) + " bytes, more than " + std::to_string(limit));
  }
  std::vector<uint8_t> chunk(64 * 1024);
  for (;;) {
    auto got = co_await read(chunk);
    if (!got) co_return tl::unexpected(got.error());
    if (*got == 0) break;
    if (body.size() + *got > limit) {
      co_return fail(ErrorCode::kLimitExceeded, "the upstream answer exceeds " + std::to_string(limit) + " bytes");
    }
    body.append(reinterpret_cast<const char*>(chunk.data()), *got);
  }
  co_return body;
}

}  // namespace zoogate::proxy
