// The proxy's HTTPS client for upstream hosts (the Hub, its CDN): verified TLS, a keep-alive connection
// pool, a timeout on every wait, bounded retries of idempotent requests whose connection failed before
// any response byte arrived, and bodies read piece by piece so that memory does not grow with a file.
//
// TLS runs through OpenSSL on the socket itself rather than through Asio's SSL stream, which feeds
// OpenSSL from a 17 KiB memory buffer and so delivers a body one TLS record (16 KiB) per asynchronous
// operation. Here OpenSSL reads ahead many records per system call, one read decrypts every
// record already received, and the coroutine waits for readiness only when none is left: a 1 GiB body
// costs thousands of waits instead of tens of thousands of composed operations.
//
// It never follows redirects: the caller decides, host by host, what it follows (DESIGN.md section 5).
//
// Thread safety: an UpstreamClient may be used from any number of coroutines on any threads. A
// connection belongs to the event loop of the coroutine that opened it, and the pool hands it only to
// coroutines on that loop, so a download's socket work stays on one thread. An UpstreamResponse
// belongs to the one coroutine that received it.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "common/error.h"
#include "proxy/address_policy.h"
#include "proxy/metrics.h"

namespace zoogate::proxy {

// An absolute https URL, split for connecting and for the request line.
struct Url {
  std::string host;         // a name or an IP literal (without brackets)
  uint16_t port = 443;
  std::string target = "/";  // path and query, as sent in the request line

  // Accepts https://host[:port][/path[?query]]; IPv6 literals in brackets. Anything else
  // (another scheme, user info, a fragment, control characters) is kInvalidArgument.
  static Result<Url> parse(std::string_view text);
  // "https://host[:port]", the port only when it is not 443.
  std::string origin() const;
  std::string host_header() const;  // "host[:port]", IPv6 literals in brackets
};

struct UpstreamSettings {
  std::string ca_bundle;  // extra PEM bundle trusted on top of the system's store; "" for none
  std::chrono::milliseconds connect_timeout{10'000};  // resolve + connect + TLS handshake
  std::chrono::milliseconds read_timeout{60'000};     // each wait for response bytes or a write
  unsigned retries = 2;                               // extra attempts after a connection failure
  unsigned max_idle_connections = 32;                 // kept alive per origin and event loop
  // Decides, for the address a connection actually reached, whether zoogate may talk to it (loopback,
  // private, link-local and metadata addresses are refused unless the host is allowed). Null: any.
  std::shared_ptr<const DestinationCheck> destination_check;
};

// The addresses a destination resolved to, less those a DestinationCheck refuses.
struct ResolvedDestination {
  boost::system::error_code resolve_error;  // set when the name did not resolve
  std::vector<boost::asio::ip::tcp::endpoint> allowed;
  std::string refusal;  // why the first refused address was refused
};

// Resolves `host` and judges every address before any connection is tried: connecting first and
// judging afterwards would send packets to refused addresses, and would tell a client whether a
// port on an internal address is open ("cannot connect" for a closed one, "private address" for an
// open one). Callers judge the address finally connected to again. A null `check` allows every address.
boost::asio::awaitable<ResolvedDestination> resolve_destination(boost::asio::any_io_executor executor,
                                                                const std::string& host, uint16_t port,
                                                                const DestinationCheck* check);

class UpstreamConnection;
class UpstreamClient;

// One response whose header has arrived. The body is read with read(); once it has been read to
// the end (at once for a response without a body), the connection goes back to the pool when the
// server allows keep-alive. Destroying a response before its end closes the connection.
class UpstreamResponse {
 public:
  ~UpstreamResponse();
  UpstreamResponse(const UpstreamResponse&) = delete;
  UpstreamResponse& operator=(const UpstreamResponse&) = delete;

  const boost::beast::http::response_header<>& header() const { return parser_.get().base(); }
  unsigned status() const { return header().result_int(); }
  // The body's length when the server said it (Content-Length), nullopt for a chunked body.
  std::optional<uint64_t> content_length() const {
    auto length = parser_.content_length();
    return length ? std::optional<uint64_t>(*length) : std::nullopt;
  }

  // Fills `out` with body bytes, fewer only at the body's end; 0 means the body has ended. Errors are
  // kIo with the failure's words; a body shorter than its Content-Length is an error, never a short file.
  boost::asio::awaitable<Result<size_t>> read(std::span<uint8_t> out);
  // The whole (remaining) body, refused with kLimitExceeded above `limit` bytes.
  boost::asio::awaitable<Result<std::string>> read_all(uint64_t limit);

  UpstreamErrorReason last_failure() const { return last_failure_; }

 private:
  friend class UpstreamClient;
  UpstreamResponse(std::shared_ptr<UpstreamClient> client, std::shared_ptr<UpstreamConnection> connection);

  // Reads the header (called once by UpstreamClient::send); a body-less response is done at once.
  boost::asio::awaitable<boost::system::error_code> read_header();
  // Body reads: straight into `out` when the length is known, through the parser for chunked bodies
  // and bodies that end with the connection.
  boost::asio::awaitable<Result<size_t>> read_counted(std::span<uint8_t> out);
  boost::asio::awaitable<Result<size_t>> read_parsed(std::span<uint8_t> out);
  Error body_failed(const boost::system::error_code& error);
  // Hands the connection back to the pool (keep-alive) or closes it.
  void finish_body();

  std::shared_ptr<UpstreamClient> client_;
  std::shared_ptr<UpstreamConnection> connection_;  // null once the body is done or failed
  boost::beast::http::response_parser<boost::beast::http::buffer_body> parser_;
  std::optional<uint64_t> counted_remaining_;  // body bytes still due, for a Content-Length body
  UpstreamErrorReason last_failure_ = UpstreamErrorReason::kProtocol;
};

class UpstreamClient : public std::enable_shared_from_this<UpstreamClient> {
 public:
  using Request = boost::beast::http::request<boost::beast::http::string_body>;

  // Builds the TLS context: peer verification on, TLS 1.2 at least, the system's trust store plus
  // `settings.ca_bundle`. Fails when the bundle cannot be loaded. Sets SIGPIPE to be ignored in the
  // whole process: OpenSSL writes to the sockets with write(2), and a closed peer must be an error.
  static Result<std::shared_ptr<UpstreamClient>> create(const UpstreamSettings& settings, Metrics* metrics);

  // Sends `request` to `url` (its target, Host and Content-Length are set here) and returns once the
  // response header has arrived. Idempotent requests (GET, HEAD, and POST requests the caller marks
  // as `idempotent`) are retried up to `retries` times when the connection fails before any response
  // byte: a pooled connection the server had closed, a refused connection, a reset.
  boost::asio::awaitable<Result<std::unique_ptr<UpstreamResponse>>> send(const Url& url, Request request,
                                                                         bool idempotent = true);

  // Connects to `url` (TLS verified, the destination checked) without sending a request, and keeps
  // the connection for the next request there. Egress interception calls it before minting a leaf
  // certificate, so that nothing is minted for an upstream that failed verification.
  boost::asio::awaitable<Status> check_upstream(const Url& url);

  const UpstreamSettings& settings() const { return settings_; }

 private:
  friend class UpstreamResponse;
  UpstreamClient(const UpstreamSettings& settings, Metrics* metrics);

  // Opens a connection on the event loop of the calling coroutine.
  boost::asio::awaitable<Result<std::shared_ptr<UpstreamConnection>>> connect(const Url& url);
  // An idle connection to `origin` on `loop`, or null.
  std::shared_ptr<UpstreamConnection> take_idle(const boost::asio::execution_context& loop, const std::string& origin);
  void return_idle(std::shared_ptr<UpstreamConnection> connection);

  UpstreamSettings settings_;
  Metrics* metrics_;  // not owned; may be null
  boost::asio::ssl::context tls_;
  std::mutex pool_mutex_;
  // By event loop and origin.
  using PoolKey = std::pair<const boost::asio::execution_context*, std::string>;
  std::map<PoolKey, std::deque<std::shared_ptr<UpstreamConnection>>> idle_;
};

}  // namespace zoogate::proxy
