#include "proxy/server.h"

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <openssl/ssl.h>

#include "common/encoding.h"
#include "common/password_hash.h"
#include "mtd/signing.h"
#include "mtd/variant_seed.h"
#include "proxy/access_log.h"
#include "proxy/artifact_cache.h"
#include "proxy/artifact_pipeline.h"
#include "proxy/address_policy.h"
#include "proxy/certificate_authority.h"
#include "proxy/client_exchange.h"
#include "proxy/forwarded_client.h"
#include "proxy/hub_headers.h"
#include "proxy/hub_route.h"
#include "proxy/hub_service.h"
#include "proxy/metrics.h"
#include "proxy/upstream_client.h"
#include "proxy/worker_pool.h"

namespace zoogate::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

namespace {

constexpr auto kAsTuple = asio::as_tuple(asio::use_awaitable);
// Request bodies zoogate accepts are small forms (paths-info, prefetch); anything larger is refused.
constexpr uint64_t kMaxRequestBodyBytes = 1 << 20;
// After SIGTERM, requests in flight get this long to finish before the process exits.
constexpr std::chrono::seconds kDrainTimeout{30};

// Feeds the cache's events into the metrics; the cache itself knows nothing of Prometheus.
class CacheMetrics final : public CacheListener {
 public:
  explicit CacheMetrics(Metrics& metrics) : metrics_(metrics) {}
  void on_hit() override { metrics_.count_cache_hit(); }
  void on_miss() override { metrics_.count_cache_miss(); }
  void on_evict(uint64_t bytes) override { metrics_.count_cache_eviction(bytes); }
  void on_size(uint64_t bytes, uint64_t entries) override { metrics_.set_cache_size(bytes, entries); }

 private:
  Metrics& metrics_;
};

AccessRecord access_record(const ClientExchange& exchange, Listener listener,
                           std::chrono::system_clock::time_point arrived, std::chrono::nanoseconds duration) {
  AccessRecord record;
  record.time = arrived;
  record.request_id = exchange.request_id();
  record.listener = listener;
  record.client = exchange.client_address();
  record.peer = exchange.peer;
  record.user = exchange.user;
  record.method = std::string(exchange.request().method_string());
  record.target = std::string(exchange.request().target());
  record.status = exchange.status();
  record.bytes_sent = exchange.bytes_sent();
  record.duration = duration;
  record.route = exchange.route;
  record.verdict = exchange.verdict;
  record.upstream_status = exchange.upstream_status;
  record.cache = exchange.cache;
  record.error = exchange.error_message;
  return record;
}

// Feeds the leaf certificate cache's events into the metrics.
class CertificateMetrics final : public CertificateCacheListener {
 public:
  explicit CertificateMetrics(Metrics& metrics) : metrics_(metrics) {}
  void on_certificate_cache_hit() override { metrics_.count_certificate_cache_hit(); }
  void on_certificate_minted() override { metrics_.count_certificate_minted(); }

 private:
  Metrics& metrics_;
};

// "host:port" of a CONNECT request ("[v6]:port" for IPv6 literals); the host lowercased.
std::optional<std::pair<std::string, uint16_t>> parse_authority(std::string_view authority) {
  std::string host;
  std::string_view port_text;
  if (authority.starts_with("[")) {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos || close + 1 >= authority.size() || authority[close + 1] != ':') return std::nullopt;
    host = std::string(authority.substr(1, close - 1));
    port_text = authority.substr(close + 2);
  } else {
    const size_t colon = authority.rfind(':');
    if (colon == std::string_view::npos || authority.find(':') != colon) return std::nullopt;
    host = std::string(authority.substr(0, colon));
    port_text = authority.substr(colon + 1);
  }
  auto port = parse_decimal(port_text);
  if (host.empty() || !port || *port == 0 || *port > 65535) return std::nullopt;
  if (!canonical_server_name(host)) return std::nullopt;
  std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return std::pair{host, static_cast<uint16_t>(*port)};
}

// The host of a Host header, lowercased, without the port.
std::string host_of(std::string_view host_header) {
  std::string host(host_header);
  if (host.starts_with("[")) {
    host = host.substr(1, host.find(']') == std::string::npos ? std::string::npos : host.find(']') - 1);
  } else if (auto colon = host.rfind(':'); colon != std::string::npos) {
    host.resize(colon);
  }
  std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return host;
}

config::EgressAction egress_action(const config::EgressConfig& egress, const std::string& host, uint16_t port) {
  for (const config::EgressRule& rule : egress.rules) {
    const bool host_matched = std::any_of(rule.hosts.begin(), rule.hosts.end(),
                                          [&](const std::string& pattern) { return config::host_matches(pattern, host); });
    const bool port_matched = rule.ports.empty() || std::find(rule.ports.begin(), rule.ports.end(), port) != rule.ports.end();
    if (host_matched && port_matched) return rule.action;
  }
  return config::EgressAction::kDeny;
}

Result<tcp::endpoint> endpoint_of(const config::ListenAddress& address) {
  boost::system::error_code error;
  auto ip = asio::ip::make_address(address.host == "localhost" ? "127.0.0.1" : address.host, error);
  if (error) return fail(ErrorCode::kInvalidArgument, "cannot listen on " + address.to_string() + ": not an IP address");
  return tcp::endpoint(ip, address.port);
}

std::string url_of(const tcp::endpoint& endpoint) {
  const std::string host = endpoint.address().is_v6() ? "[" + endpoint.address().to_string() + "]"
                                                      : endpoint.address().to_string();
  return "http://" + host + ":" + std::to_string(endpoint.port());
}

Result<std::vector<uint8_t>> load_or_create_secret(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) ZG_TRY(mtd::create_secret_file(path));
  return mtd::load_secret(path);
}

Result<mtd::PrivateKey> load_or_create_signing_key(const std::string& path) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    auto key = mtd::PrivateKey::generate();
    if (!key) return tl::unexpected(key.error());
    std::string public_path = path;
    if (public_path.ends_with(".pem")) public_path.resize(public_path.size() - 4);
    ZG_TRY(key->write_key_pair(path, public_path + ".pub.pem"));
  }
  return mtd::PrivateKey::load(path);
}

// The client's address as the access log and the MTD scope name it.
std::string peer_address(const tcp::socket& socket) {
  boost::system::error_code error;
  const tcp::endpoint peer = socket.remote_endpoint(error);
  return error ? std::string("unknown") : peer.address().to_string();
}

// The value of the header `name` when `request` has exactly one line of it. A proxy sets such headers
// once; two lines would leave it to chance which one it wrote.
std::optional<std::string_view> single_field(const HttpRequest& request, std::string_view name) {
  auto [first, end] = request.equal_range(name);
  if (first == end || std::next(first) != end) return std::nullopt;
  return std::string_view(first->value().data(), first->value().size());
}

// Every X-Forwarded-For line of `request`, in order, joined by "," (as one line would hold them).
std::string joined_forwarded_for(const HttpRequest& request) {
  std::string joined;
  auto [begin, end] = request.equal_range("X-Forwarded-For");
  for (auto field = begin; field != end; ++field) {
    if (!joined.empty()) joined += ',';
    joined += field->value();
  }
  return joined;
}

// Threads of the pool for short blocking work (see ServerState::file_workers).
constexpr unsigned kFileWorkerThreads = 4;

// An io_context run by one thread. The concurrency hint says so to Asio, which then queues the work a
// loop gives itself on a list private to its thread, without taking the loop's lock.
class EventLoop : public asio::io_context {
 public:
  EventLoop() : asio::io_context(1) {}
  // Destroys the coroutines and handlers still waiting on the stopped loop, which then runs nothing.
  // The loop's destructor would do the same, but only once the server's other parts were gone.
  void destroy_waiting_work() { shutdown(); }
};

std::vector<std::unique_ptr<EventLoop>> make_event_loops(unsigned count) {
  std::vector<std::unique_ptr<EventLoop>> loops;
  for (unsigned i = 0; i < count; ++i) loops.push_back(std::make_unique<EventLoop>());
  return loops;
}

}  // namespace

class ServerState {
 public:
  explicit ServerState(config::ServerConfig server_config)
      : config(std::move(server_config)),
        event_loops(make_event_loops(config.io_threads)),
        disarm_workers(config.worker_threads == 0 ? std::max(2u, std::thread::hardware_concurrency())
                                                  : config.worker_threads),
        file_workers(kFileWorkerThreads),
        hub_acceptor(main_loop()),
        admin_acceptor(main_loop()),
        egress_acceptor(main_loop()),
        signals(main_loop(), SIGTERM, SIGINT) {}

  config::ServerConfig config;
  // One event loop per I/O thread. A connection stays on the loop that accepted it, with the upstream
  // connections it opens, so its socket work never hops between threads (which costs wake-ups and
  // cache misses on every piece of a download). The first loop also runs the listeners, the signal
  // wait and the drain.
  std::vector<std::unique_ptr<EventLoop>> event_loops;
  asio::io_context& main_loop() { return *event_loops.front(); }
  size_t next_loop = 0;  // round-robin over event_loops; used on the main loop only
  // Disarms and variations: one runs as long as its download, waiting for bytes as they arrive.
  asio::thread_pool disarm_workers;
  // Short blocking work (cache lookups and records, password checks), kept apart from the disarms so
  // that a cached file is served however many downloads are being disarmed.
  asio::thread_pool file_workers;
  std::unique_ptr<Metrics> metrics;
  std::unique_ptr<CacheMetrics> cache_metrics;
  std::unique_ptr<AccessLog> log;
  std::unique_ptr<ArtifactCache> cache;
  std::shared_ptr<UpstreamClient> upstream;
  std::unique_ptr<ArtifactPipeline> pipeline;
  std::unique_ptr<HubService> hub;
  tcp::acceptor hub_acceptor;
  tcp::acceptor admin_acceptor;
  tcp::acceptor egress_acceptor;
  Url hub_url;
  std::optional<CertificateAuthority> authority;      // egress interception only
  std::unique_ptr<LeafCertificateCache> leaves;       // egress interception only
  std::unique_ptr<CertificateMetrics> certificate_metrics;
  asio::signal_set signals;
  std::atomic<bool> draining{false};
  std::atomic<unsigned> sessions{0};
  std::atomic<unsigned> requests_in_flight{0};

  asio::awaitable<void> accept_loop(tcp::acceptor& acceptor, Listener listener);
  asio::awaitable<void> session(tcp::socket socket, Listener listener);
  // Reads requests from `stream` and answers each with `handler`, until the client or zoogate ends
  // the connection. The one request loop of every listener, plain or TLS.
  template <typename Stream, typename Handler>
  asio::awaitable<void> serve_requests(Stream& stream, beast::flat_buffer& buffer, const std::string& client,
                                       Listener listener, Handler handler);
  asio::awaitable<void> handle_admin(ClientExchange& exchange);
  asio::awaitable<void> egress_session(tcp::socket socket);
  asio::awaitable<void> intercept(beast::tcp_stream& stream, beast::flat_buffer& buffer, const std::string& client,
                                  const std::string& host, uint16_t port, std::optional<std::string> user);
  asio::awaitable<void> tunnel(beast::tcp_stream& stream, beast::flat_buffer& buffer, const std::string& host,
                               uint16_t port);
  // The user a request authenticates as; nullopt when authentication is configured and fails.
  asio::awaitable<std::optional<std::string>> authenticate(const HttpRequest& request);
  asio::awaitable<void> drain();
};

asio::awaitable<void> ServerState::accept_loop(tcp::acceptor& acceptor, Listener listener) {
  for (;;) {
    asio::io_context& loop = *event_loops[next_loop++ % event_loops.size()];
    auto [error, socket] = co_await acceptor.async_accept(loop, kAsTuple);
    if (error == asio::error::operation_aborted || !acceptor.is_open()) co_return;
    if (error) continue;  // a connection reset before it was accepted, out of descriptors...
    if (sessions.load() >= config.limits.max_connections) {
      boost::system::error_code ignored;
      socket.close(ignored);  // over the limit: refusing one is better than failing all
      continue;
    }
    auto executor = socket.get_executor();
    if (listener == Listener::kEgress) {
      asio::co_spawn(executor, egress_session(std::move(socket)), asio::detached);
    } else {
      asio::co_spawn(executor, session(std::move(socket), listener), asio::detached);
    }
  }
}

asio::awaitable<void> ServerState::session(tcp::socket socket, Listener listener) {
  ++sessions;
  auto in_flight = metrics->session_in_flight();
  const std::string client = peer_address(socket);
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  // Named, not a temporary inside the co_await: see worker_pool.h on g++ 12.
  auto answer = [this, listener](ClientExchange& exchange) -> asio::awaitable<void> {
    if (listener == Listener::kHub) {
      co_await hub->handle(exchange, mtd_scope(exchange.user, exchange.client_address()));
    } else {
      co_await handle_admin(exchange);
    }
  };
  co_await serve_requests(stream, buffer, client, listener, std::move(answer));
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  --sessions;
}

template <typename Stream, typename Handler>
asio::awaitable<void> ServerState::serve_requests(Stream& stream, beast::flat_buffer& buffer, const std::string& client,
                                                  Listener listener, Handler handler) {
  StreamConnection<Stream> connection(stream, config.limits.client_idle_timeout);
  while (!draining || listener == Listener::kAdmin) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<uint32_t>(config.limits.max_request_header_bytes));
    parser.body_limit(kMaxRequestBodyBytes);
    beast::get_lowest_layer(stream).expires_after(config.limits.client_idle_timeout);
    auto [error, bytes] = co_await http::async_read(stream, buffer, parser, kAsTuple);
    if (error) {
      // A request zoogate cannot parse gets a 400 and the connection closes; a client that simply
      // went away or idled out gets nothing.
      if (error.category() == http::make_error_code(http::error::bad_target).category() &&
          error != http::error::end_of_stream && error != http::error::partial_message) {
        static constexpr std::string_view kBadRequest =
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        (void)co_await connection.write(std::span(reinterpret_cast<const uint8_t*>(kBadRequest.data()), kBadRequest.size()));
        metrics->count_request(listener, Route::kOther, 400, 0);
      }
      co_return;
    }
    ++requests_in_flight;
    auto request_guard = metrics->request_in_flight();
    const auto started = std::chrono::steady_clock::now();
    const auto arrived = std::chrono::system_clock::now();
    HttpRequest request = parser.release();
    std::string request_client = client;
    std::optional<std::string> user;
    std::optional<std::string> scheme;
    // Only the Hub endpoint sits behind load balancers; the admin listener and the egress proxy see
    // their clients directly.
    if (listener == Listener::kHub && is_trusted_proxy(client, config.trusted_proxies)) {
      request_client = forwarded_client(client, joined_forwarded_for(request), config.trusted_proxies);
      if (auto proto = single_field(request, "X-Forwarded-Proto")) scheme = forwarded_scheme(*proto);
      if (!config.trusted_user_header.empty()) {
        if (auto name = single_field(request, config.trusted_user_header)) user = forwarded_user(*name);
      }
    }
    ClientExchange exchange(connection, std::move(request), request_client, new_request_id());
    if (request_client != client) exchange.peer = client;
    exchange.user = std::move(user);
    exchange.forwarded_scheme = std::move(scheme);
    if (draining) exchange.close_after();
    co_await handler(exchange);
    if (!exchange.answered()) co_await exchange.send_error(500, "ZoogateInternal", "no answer was produced");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    metrics->count_request(listener, exchange.route, exchange.status(), seconds);
    log->write(access_record(exchange, listener, arrived, std::chrono::steady_clock::now() - started));
    --requests_in_flight;
    if (!exchange.keep_alive()) co_return;
  }
}

asio::awaitable<void> ServerState::handle_admin(ClientExchange& exchange) {
  const HttpRequest& request = exchange.request();
  const std::string_view target(request.target().data(), request.target().size());
  const std::string_view path = target.substr(0, target.find('?'));
  exchange.route = Route::kAdmin;
  HttpResponse response{http::status::ok, 11};
  response.set(http::field::content_type, "text/plain; charset=utf-8");
  if (path == "/metrics" && request.method() == http::verb::get) {
    response.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    response.body() = metrics->serialize();
  } else if (path == "/healthz") {
    response.body() = "ok\n";
  } else if (path == "/readyz") {
    if (draining) {
      response.result(http::status::service_unavailable);
      response.body() = "draining\n";
    } else {
      response.body() = "ready\n";
    }
  } else if (path == "/admin/prefetch" && request.method() == http::verb::post) {
    auto query = parse_query(target);
    auto repo = query.find("repo");
    if (repo == query.end()) co_return (void)co_await exchange.send_error(400, "BadRequest", "repo= is required");
    auto type = repo_type_from_name(query.count("type") ? query["type"] : "model");
    if (!type) co_return (void)co_await exchange.send_error(400, "BadRequest", "type= is model, dataset or space");
    const std::string revision = query.count("revision") ? query["revision"] : "main";
    const std::string scope = query.count("scope") ? query["scope"] : exchange.client_address();
    auto summary = co_await hub->prefetch(*type, repo->second, revision,
                                          std::string(request[http::field::authorization]), scope);
    if (!summary) co_return (void)co_await exchange.send_error(502, "ZoogatePrefetchFailed", summary.error().describe());
    response.set(http::field::content_type, "application/json");
    response.body() = summary->dump(2) + "\n";
  } else {
    co_return (void)co_await exchange.send_error(404, "NotFound",
                                                 "the admin listener serves /metrics, /healthz, /readyz and "
                                                 "POST /admin/prefetch");
  }
  co_await exchange.send(std::move(response));
}

// ---------------------------------------------------------------------------------------------------
// Egress (forward proxy): CONNECT and absolute-form requests, decided per host and port.

namespace {

// Host and port a Host header names, the host lowercased; `default_port` when it names no port;
// nullopt when it is not a host with an optional port.
std::optional<std::pair<std::string, uint16_t>> host_and_port_of(std::string_view value, uint16_t default_port) {
  if (value.empty()) return std::nullopt;
  const bool bracketed = value.starts_with("[");
  const bool has_port = bracketed ? !value.ends_with("]") : value.find(':') != std::string_view::npos;
  if (has_port) return parse_authority(value);
  return parse_authority(std::string(value) + ":" + std::to_string(default_port));
}

}  // namespace

asio::awaitable<std::optional<std::string>> ServerState::authenticate(const HttpRequest& request) {
  const auto& auth = config.egress.auth;
  if (!auth) co_return std::string();
  auto header = request.find(http::field::proxy_authorization);
  if (header == request.end()) co_return std::nullopt;
  std::string_view value(header->value().data(), header->value().size());
  constexpr std::string_view kBasic = "Basic ";
  if (value.size() <= kBasic.size() || !std::equal(kBasic.begin(), kBasic.end(), value.begin(), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
      })) {
    co_return std::nullopt;
  }
  auto decoded = from_base64(value.substr(kBasic.size()));
  if (!decoded) co_return std::nullopt;
  const std::string credentials(decoded->begin(), decoded->end());
  const size_t colon = credentials.find(':');
  if (colon == std::string::npos) co_return std::nullopt;
  const std::string user = credentials.substr(0, colon);
  const std::string password = credentials.substr(colon + 1);
  auto entry = std::find_if(auth->users.begin(), auth->users.end(), [&](const auto& pair) { return pair.first == user; });
  // An unknown user costs the same scrypt run as a known one (against another user's hash, whose
  // answer is ignored): answering at once would tell a client which user names exist.
  const bool known = entry != auth->users.end();
  const std::string& hash = known ? entry->second : auth->users.begin()->second;
  // scrypt takes tens of milliseconds by design: off the I/O threads.
  bool (*verify)(std::string_view, std::string_view) = &verify_password;
  const bool valid = co_await run_on_workers(file_workers, verify, password, hash);
  co_return known && valid ? std::optional<std::string>(user) : std::nullopt;
}

asio::awaitable<void> ServerState::egress_session(tcp::socket socket) {
  ++sessions;
  auto in_flight = metrics->session_in_flight();
  const std::string client = peer_address(socket);
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  StreamConnection<beast::tcp_stream> connection(stream, config.limits.client_idle_timeout);

  http::request_parser<http::string_body> parser;
  parser.header_limit(static_cast<uint32_t>(config.limits.max_request_header_bytes));
  parser.body_limit(kMaxRequestBodyBytes);
  stream.expires_after(config.limits.client_idle_timeout);
  auto [read_error, bytes] = co_await http::async_read(stream, buffer, parser, kAsTuple);
  const auto started = std::chrono::steady_clock::now();
  const auto arrived = std::chrono::system_clock::now();
  if (read_error) {
    if (read_error != http::error::end_of_stream && read_error != beast::error::timeout) {
      metrics->count_denial(DenialReason::kParse);
      static constexpr std::string_view kBadRequest =
          "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      (void)co_await connection.write(std::span(reinterpret_cast<const uint8_t*>(kBadRequest.data()), kBadRequest.size()));
    }
    --sessions;
    co_return;
  }
  ClientExchange exchange(connection, parser.release(), client, new_request_id());
  exchange.close_after();
  auto finish = [&] {
    metrics->count_request(Listener::kEgress, exchange.route, exchange.status(), 
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    log->write(access_record(exchange, Listener::kEgress, arrived, std::chrono::steady_clock::now() - started));
  };
  const HttpRequest& request = exchange.request();
  std::optional<std::string> user = co_await authenticate(request);
  if (!user) {
    metrics->count_denial(DenialReason::kAuth);
    HttpResponse response{http::status::proxy_authentication_required, 11};
    response.set(http::field::proxy_authenticate, "Basic realm=\"" + config.egress.auth->realm + "\"");
    response.set(http::field::content_type, "text/plain; charset=utf-8");
    response.body() = "zoogate: proxy authentication required\n";
    co_await exchange.send(std::move(response));
    finish();
    --sessions;
    co_return;
  }
  if (!user->empty()) exchange.user = *user;

  std::string host;
  uint16_t port = 0;
  const bool is_connect = request.method() == http::verb::connect;
  if (is_connect) {
    auto connect_target = parse_authority(std::string_view(request.target().data(), request.target().size()));
    if (!connect_target) {
      metrics->count_denial(DenialReason::kParse);
      co_await exchange.send_error(400, "BadRequest", "CONNECT needs host:port");
      finish();
      --sessions;
      co_return;
    }
    std::tie(host, port) = *connect_target;
  } else {
    // Absolute-form plain-HTTP requests name their host in the target.
    const std::string_view target(request.target().data(), request.target().size());
    constexpr std::string_view kHttp = "http://";
    if (!target.starts_with(kHttp)) {
      co_await exchange.send_error(400, "BadRequest", "a forward proxy takes CONNECT or absolute-form requests");
      finish();
      --sessions;
      co_return;
    }
    host = host_of(target.substr(kHttp.size(), target.find('/', kHttp.size()) - kHttp.size()));
    port = 80;
  }
  const config::EgressAction action = egress_action(config.egress, host, port);
  if (action == config::EgressAction::kDeny) {
    metrics->count_denial(DenialReason::kPolicy);
    co_await exchange.send_error(403, "ZoogateEgressDenied",
                                 "zoogate's egress policy denies " + host + ":" + std::to_string(port));
    finish();
    --sessions;
    co_return;
  }
  if (!is_connect) {
    // Plain HTTP would carry model files without TLS; zoogate passes none of it on.
    metrics->count_denial(DenialReason::kPolicy);
    co_await exchange.send_error(403, "ZoogateEgressDenied",
                                 "zoogate forwards HTTPS (CONNECT) only; use https://" + host);
    finish();
    --sessions;
    co_return;
  }
  if (action == config::EgressAction::kTunnel) {
    finish();
    co_await tunnel(stream, buffer, host, port);
  } else {
    // Nothing is minted for an upstream that zoogate cannot reach with verified TLS. The upstream
    // client judges the address it connects to; refused addresses are not even tried (see
    // resolve_destination), with the same exception for the configured Hub as the upstream client's.
    std::vector<std::string> non_public_allowed = config.egress.allow_private_destinations;
    non_public_allowed.push_back(hub_url.host);
    const DestinationCheck check(std::move(non_public_allowed));
    auto executor = stream.get_executor();
    const ResolvedDestination destination = co_await resolve_destination(executor, host, port, &check);
    if (!destination.resolve_error && destination.allowed.empty() && !destination.refusal.empty()) {
      metrics->count_denial(DenialReason::kAddress);
      co_await exchange.send_error(502, "ZoogateUpstreamError",
                                   "refused to connect to https://" + host + ":" + std::to_string(port) + ": " +
                                       destination.refusal);
      finish();
      --sessions;
      co_return;
    }
    Url upstream_url{host, port, "/"};
    if (auto reachable = co_await upstream->check_upstream(upstream_url); !reachable) {
      // Only a refusal counts as a denial; an upstream that is down or unknown is not one.
      if (reachable.error().code == ErrorCode::kForbidden) {
        metrics->count_denial(DenialReason::kAddress);
      } else if (reachable.error().message.find("TLS") != std::string::npos) {
        metrics->count_denial(DenialReason::kUpstreamTls);
      }
      co_await exchange.send_error(502, "ZoogateUpstreamError", reachable.error().message);
      finish();
      --sessions;
      co_return;
    }
    HttpHeader established{http::status::ok, 11};
    established.reason("Connection established");
    co_await exchange.send_header(std::move(established));
    finish();
    co_await intercept(stream, buffer, client, host, port, exchange.user);
  }
  --sessions;
}

asio::awaitable<void> ServerState::tunnel(beast::tcp_stream& stream, beast::flat_buffer& buffer, const std::string& host,
                                          uint16_t port) {
  const DestinationCheck check(config.egress.allow_private_destinations);
  auto executor = stream.get_executor();
  const ResolvedDestination resolved = co_await resolve_destination(executor, host, port, &check);
  StreamConnection<beast::tcp_stream> connection(stream, config.limits.client_idle_timeout);
  auto refuse = [&](std::string_view why) -> asio::awaitable<void> {
    std::string answer = "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\nX-Error-Message: " +
                         std::string(why) + "\r\n\r\n";
    (void)co_await connection.write(std::span(reinterpret_cast<const uint8_t*>(answer.data()), answer.size()));
  };
  if (resolved.resolve_error || (resolved.allowed.empty() && resolved.refusal.empty())) {
    co_return co_await refuse("cannot resolve the destination");
  }
  if (resolved.allowed.empty()) {
    metrics->count_denial(DenialReason::kAddress);
    co_return co_await refuse(resolved.refusal);
  }
  beast::tcp_stream destination(stream.get_executor());
  destination.expires_after(config.upstream.connect_timeout);
  auto [connect_error, endpoint] = co_await destination.async_connect(resolved.allowed, kAsTuple);
  if (connect_error) co_return co_await refuse("cannot connect to the destination");
  // Judged again by the address actually connected to.
  DestinationVerdict verdict = check.check(host, endpoint.address());
  if (!verdict.allowed) {
    metrics->count_denial(DenialReason::kAddress);
    co_return co_await refuse(verdict.reason);
  }
  metrics->count_tunnel();
  static constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection established\r\n\r\n";
  if (co_await connection.write(std::span(reinterpret_cast<const uint8_t*>(kEstablished.data()), kEstablished.size()))) {
    co_return;
  }
  // Bytes the client sent after its CONNECT header belong to the destination.
  if (buffer.size() > 0) {
    destination.expires_after(config.limits.client_idle_timeout);
    auto [error, written] = co_await asio::async_write(destination, buffer.data(), kAsTuple);
    if (error) co_return;
    buffer.consume(buffer.size());
  }
  // Relay both ways with one fixed buffer each; either side closing ends the tunnel.
  auto pump = [this](beast::tcp_stream& from, beast::tcp_stream& to) -> asio::awaitable<void> {
    std::array<uint8_t, 64 * 1024> relay{};
    for (;;) {
      from.expires_after(config.limits.client_idle_timeout);
      auto [read_error, got] = co_await from.async_read_some(asio::buffer(relay), kAsTuple);
      if (read_error || got == 0) break;
      to.expires_after(config.limits.client_idle_timeout);
      auto [write_error, written] = co_await asio::async_write(to, asio::buffer(relay.data(), got), kAsTuple);
      if (write_error) break;
    }
    beast::error_code ignored;
    to.socket().shutdown(tcp::socket::shutdown_send, ignored);
  };
  using namespace asio::experimental::awaitable_operators;
  co_await (pump(stream, destination) && pump(destination, stream));
}

asio::awaitable<void> ServerState::intercept(beast::tcp_stream& stream, beast::flat_buffer& buffer,
                                             const std::string& client, const std::string& host, uint16_t port,
                                             std::optional<std::string> user) {
  auto leaf = leaves->get(host);
  if (!leaf) {
    log->write_event("interception_failed", {{"host", host}, {"reason", leaf.error().describe()}});
    co_return;
  }
  asio::ssl::context tls(asio::ssl::context::tls_server);
  SSL_CTX* context = tls.native_handle();
  SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION);
  SSL_CTX_use_certificate(context, (*leaf)->certificate());
  SSL_CTX_use_PrivateKey(context, (*leaf)->private_key());
  for (const auto& certificate : (*leaf)->chain()) SSL_CTX_add1_chain_cert(context, certificate.get());
  beast::ssl_stream<beast::tcp_stream&> secure(stream, tls);
  stream.expires_after(config.upstream.connect_timeout);
  auto [handshake_error, used] = co_await secure.async_handshake(asio::ssl::stream_base::server, buffer.data(), kAsTuple);
  if (handshake_error) co_return;
  buffer.consume(used);
  // The CONNECT target, the TLS server name and every request's Host must name the same host.
  const char* server_name = SSL_get_servername(secure.native_handle(), TLSEXT_NAMETYPE_host_name);
  if (server_name != nullptr && host_of(server_name) != host) {
    metrics->count_denial(DenialReason::kMismatch);
    log->write_event("egress_mismatch", {{"connect", host}, {"server_name", server_name}});
    co_return;
  }
  metrics->count_interception();
  const bool is_hub = host == hub_url.host && port == hub_url.port;
  const std::string scope = mtd_scope(user, client);
  auto answer = [&](ClientExchange& exchange) -> asio::awaitable<void> {
    exchange.user = user;
    // Host and port: a Host without a port names 443, the port of https.
    const auto host_header = exchange.request()[http::field::host];
    const auto request_authority = host_and_port_of(std::string_view(host_header.data(), host_header.size()), 443);
    if (!request_authority || request_authority->first != host || request_authority->second != port) {
      metrics->count_denial(DenialReason::kMismatch);
      exchange.close_after();
      // Named, not a temporary inside the co_await: see worker_pool.h on g++ 12.
      const std::string named = request_authority ? request_authority->first + ":" +
                                                        std::to_string(request_authority->second)
                                                  : std::string("no host");
      const std::string message = "the Host header names " + named + ", the tunnel was opened to " + host + ":" +
                                  std::to_string(port);
      co_return (void)co_await exchange.send_error(400, "ZoogateHostMismatch", message);
    }
    if (!is_hub) {
      co_return (void)co_await exchange.send_error(
          403, "ZoogateEgressDenied", "zoogate intercepts " + host + " but serves only the Hub there; set the rule to tunnel");
    }
    co_await hub->handle(exchange, scope);
  };
  co_await serve_requests(secure, buffer, client, Listener::kEgress, std::move(answer));
  stream.expires_after(std::chrono::seconds(5));
  (void)co_await secure.async_shutdown(kAsTuple);
}

asio::awaitable<void> ServerState::drain() {
  auto [signal_error, signal_number] = co_await signals.async_wait(kAsTuple);
  (void)signal_number;
  if (signal_error) co_return;
  draining = true;
  log->write_event("draining", {{"requests_in_flight", requests_in_flight.load()}});
  boost::system::error_code ignored;
  // The admin listener stays up to the end: /readyz answers 503 and /metrics shows the drain.
  hub_acceptor.close(ignored);
  egress_acceptor.close(ignored);
  asio::steady_timer timer(main_loop());
  const auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
  // Downloads and disarms in progress finish too: their entries spare the other replicas a fetch.
  while ((requests_in_flight.load() > 0 || pipeline->running_jobs() > 0) && std::chrono::steady_clock::now() < deadline) {
    timer.expires_after(std::chrono::milliseconds(100));
    co_await timer.async_wait(kAsTuple);
  }
  pipeline->shut_down();
  for (auto& loop : event_loops) loop->stop();
}

Server::Server(std::unique_ptr<ServerState> state) : state_(std::move(state)) {}
Server::~Server() = default;

Result<std::unique_ptr<Server>> Server::create(config::ServerConfig config) {
  auto state = std::make_unique<ServerState>(std::move(config));
  auto metrics = Metrics::create();
  if (!metrics) return tl::unexpected(metrics.error());
  state->metrics = std::move(*metrics);
  state->cache_metrics = std::make_unique<CacheMetrics>(*state->metrics);
  const config::ServerConfig& settings = state->config;
  auto log = AccessLog::open(settings.logging.access_log);
  if (!log) return tl::unexpected(log.error());
  state->log = std::move(*log);

  auto policies = settings.policy_file.empty() ? Result<config::PolicyConfig>(config::default_policy_config())
                                               : config::load_policy_config(settings.policy_file);
  if (!policies) return tl::unexpected(policies.error());
  auto cache = ArtifactCache::open(settings.cache.dir, settings.cache.max_size, state->cache_metrics.get());
  if (!cache) return tl::unexpected(cache.error());
  state->cache = std::move(*cache);

  const std::filesystem::path cache_dir(settings.cache.dir);
  PipelineSettings pipeline_settings;
  pipeline_settings.client_wait = settings.pipeline.client_wait;
  pipeline_settings.max_artifact_size = settings.pipeline.max_artifact_size;
  pipeline_settings.mtd_epoch = settings.mtd.epoch;
  pipeline_settings.permute_weights = settings.mtd.permute_weights;
  pipeline_settings.spool_direct_io = settings.cache.spool_direct_io;
  if (settings.mtd.layout_variation) {
    const std::string secret_file =
        settings.mtd.secret_file.empty() ? (cache_dir / "mtd-secret").string() : settings.mtd.secret_file;
    auto secret = load_or_create_secret(secret_file);
    if (!secret) return tl::unexpected(secret.error());
    pipeline_settings.mtd_secret = std::move(*secret);
  }
  const std::string key_file =
      settings.mtd.signing_key_file.empty() ? (cache_dir / "signing-key.pem").string() : settings.mtd.signing_key_file;
  auto signing_key = load_or_create_signing_key(key_file);
  if (!signing_key) return tl::unexpected(signing_key.error());

  auto hub_url = Url::parse(settings.upstream.hub_url);
  if (!hub_url) return tl::unexpected(hub_url.error());
  state->hub_url = *hub_url;
  UpstreamSettings upstream_settings;
  // The configured Hub is the operator's own choice; every other host must resolve to a public
  // address unless the configuration allows it.
  std::vector<std::string> non_public_allowed = settings.egress.allow_private_destinations;
  non_public_allowed.push_back(hub_url->host);
  upstream_settings.destination_check = std::make_shared<DestinationCheck>(std::move(non_public_allowed));
  upstream_settings.ca_bundle = settings.upstream.ca_bundle;
  upstream_settings.connect_timeout = settings.upstream.connect_timeout;
  upstream_settings.read_timeout = settings.upstream.read_timeout;
  upstream_settings.retries = settings.upstream.retries;
  upstream_settings.max_idle_connections = settings.upstream.max_idle_connections;
  auto upstream = UpstreamClient::create(upstream_settings, state->metrics.get());
  if (!upstream) return tl::unexpected(upstream.error());
  state->upstream = std::move(*upstream);

  state->pipeline = std::make_unique<ArtifactPipeline>(std::move(pipeline_settings), std::move(*policies), *state->cache,
                                                       std::move(*signing_key), state->file_workers,
                                                       state->disarm_workers, *state->metrics,
                                                       *state->log);
  if (settings.egress.listen) {
    const std::string ca_cert = settings.egress.ca_cert.empty() ? (cache_dir / "ca" / "ca.pem").string() : settings.egress.ca_cert;
    const std::string ca_key = settings.egress.ca_key.empty() ? (cache_dir / "ca" / "ca.key").string() : settings.egress.ca_key;
    auto authority = CertificateAuthority::load(ca_cert, ca_key);
    if (!authority) {
      return fail(authority.error().code, "egress interception needs its CA (create one with `zoogate ca init`): " +
                                              authority.error().describe());
    }
    state->authority.emplace(std::move(*authority));
    state->certificate_metrics = std::make_unique<CertificateMetrics>(*state->metrics);
    LeafCacheOptions leaf_options;
    leaf_options.capacity = static_cast<size_t>(settings.egress.leaf_cache_size);
    leaf_options.leaf_lifetime = std::chrono::duration_cast<std::chrono::seconds>(settings.egress.leaf_lifetime);
    leaf_options.renew_before = std::min(leaf_options.renew_before, leaf_options.leaf_lifetime / 4);
    auto leaves = LeafCertificateCache::create(*state->authority, leaf_options, state->certificate_metrics.get());
    if (!leaves) return tl::unexpected(leaves.error());
    state->leaves = std::move(*leaves);
  }
  state->hub = std::make_unique<HubService>(state->config, *hub_url, state->upstream, *state->pipeline, *state->cache,
                                            state->file_workers, *state->metrics);
  return std::unique_ptr<Server>(new Server(std::move(state)));
}

Status Server::run() {
  ServerState& state = *state_;
  auto bind = [&](tcp::acceptor& acceptor, const config::ListenAddress& address) -> Status {
    auto endpoint = endpoint_of(address);
    if (!endpoint) return tl::unexpected(endpoint.error());
    boost::system::error_code error;
    acceptor.open(endpoint->protocol(), error);
    if (!error) acceptor.set_option(tcp::acceptor::reuse_address(true), error);
    if (!error) acceptor.bind(*endpoint, error);
    if (!error) acceptor.listen(asio::socket_base::max_listen_connections, error);
    if (error) return fail(ErrorCode::kIo, "cannot listen on " + address.to_string() + ": " + error.message());
    return {};
  };
  ZG_TRY(bind(state.hub_acceptor, state.config.listen));
  ZG_TRY(bind(state.admin_acceptor, state.config.admin_listen));
  if (state.config.egress.listen) ZG_TRY(bind(state.egress_acceptor, *state.config.egress.listen));
  const std::string hub_url = url_of(state.hub_acceptor.local_endpoint());
  const std::string admin_url = url_of(state.admin_acceptor.local_endpoint());
  std::printf("zoogate: serving the Hub at %s  (set HF_ENDPOINT=%s)\n", hub_url.c_str(), hub_url.c_str());
  std::printf("zoogate: admin at %s\n", admin_url.c_str());
  if (state.egress_acceptor.is_open()) {
    const std::string egress_url = url_of(state.egress_acceptor.local_endpoint());
    std::printf("zoogate: egress proxy at %s  (set HTTPS_PROXY=%s)\n", egress_url.c_str(), egress_url.c_str());
  }
  std::fflush(stdout);
  state.log->write_event("listening", {{"hub", hub_url}, {"admin", admin_url}});

  asio::io_context& main_loop = state.main_loop();
  asio::co_spawn(main_loop, state.accept_loop(state.hub_acceptor, Listener::kHub), asio::detached);
  asio::co_spawn(main_loop, state.accept_loop(state.admin_acceptor, Listener::kAdmin), asio::detached);
  if (state.egress_acceptor.is_open()) {
    asio::co_spawn(main_loop, state.accept_loop(state.egress_acceptor, Listener::kEgress), asio::detached);
  }
  asio::co_spawn(main_loop, state.drain(), asio::detached);

  // Every loop runs until the drain stops it, including the ones no connection has reached yet.
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> kept_running;
  for (auto& loop : state.event_loops) kept_running.push_back(asio::make_work_guard(*loop));
  std::vector<std::thread> threads;
  for (size_t i = 1; i < state.event_loops.size(); ++i) {
    threads.emplace_back([loop = state.event_loops[i].get()] { loop->run(); });
  }
  main_loop.run();
  for (auto& thread : threads) thread.join();
  state.disarm_workers.join();
  state.file_workers.join();
  // The coroutines still suspended (idle keep-alive connections, work the drain's deadline cut) go
  // now, while what they use (metrics, the log, the pipeline, the other loops) is still there.
  for (auto& loop : state.event_loops) loop->destroy_waiting_work();
  state.log->write_event("stopped", {});
  return {};
}

}  // namespace zoogate::proxy
