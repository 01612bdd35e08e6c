#include "proxy/upstream_client.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>


namespace zoogate::proxy {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

namespace {

constexpr auto kAsTuple = asio::as_tuple(asio::use_awaitable);
// Response headers larger than this are not a Hub's; refusing them bounds memory per exchange.
constexpr uint32_t kMaxResponseHeaderBytes = 64 * 1024;

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

class UpstreamConnection {
 public:
  UpstreamConnection(asio::any_io_executor executor, asio::ssl::context& tls, std::string origin_name)
      : stream(executor, tls), origin(std::move(origin_name)) {}

  beast::ssl_stream<beast::tcp_stream> stream;
  beast::flat_buffer buffer;  // bytes read past one response stay here for the next
  std::string origin;
};

UpstreamClient::UpstreamClient(asio::io_context& io, const UpstreamSettings& settings, Metrics* metrics)
    : io_(io), settings_(settings), metrics_(metrics), tls_(asio::ssl::context::tls_client) {}

Result<std::shared_ptr<UpstreamClient>> UpstreamClient::create(asio::io_context& io, const UpstreamSettings& settings,
                                                               Metrics* metrics) {
  std::shared_ptr<UpstreamClient> client(new UpstreamClient(io, settings, metrics));
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

std::unique_ptr<UpstreamConnection> UpstreamClient::take_idle(const std::string& origin) {
  std::lock_guard lock(pool_mutex_);
  auto found = idle_.find(origin);
  if (found == idle_.end() || found->second.empty()) return nullptr;
  auto connection = std::move(found->second.back());
  found->second.pop_back();
  return connection;
}

void UpstreamClient::return_idle(std::unique_ptr<UpstreamConnection> connection) {
  std::lock_guard lock(pool_mutex_);
  auto& idle = idle_[connection->origin];
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

asio::awaitable<Result<std::unique_ptr<UpstreamConnection>>> UpstreamClient::connect(const Url& url) {
  auto connection = std::make_unique<UpstreamConnection>(io_.get_executor(), tls_, url.origin());
  const ResolvedDestination destination =
      co_await resolve_destination(io_.get_executor(), url.host, url.port, settings_.destination_check.get());
  if (destination.resolve_error) {
    co_return tl::unexpected(upstream_error("cannot resolve", url, destination.resolve_error));
  }
  if (destination.allowed.empty()) {
    co_return fail(ErrorCode::kForbidden, "refused to connect to " + url.origin() + ": " + destination.refusal);
  }

  beast::tcp_stream& tcp_layer = connection->stream.next_layer();
  tcp_layer.expires_after(settings_.connect_timeout);
  auto [connect_error, endpoint] = co_await tcp_layer.async_connect(destination.allowed, kAsTuple);
  if (connect_error) co_return tl::unexpected(upstream_error("cannot connect to", url, connect_error));
  if (settings_.destination_check) {
    DestinationVerdict verdict = settings_.destination_check->check(url.host, endpoint.address());
    if (!verdict.allowed) {
      co_return fail(ErrorCode::kForbidden, "refused to connect to " + url.origin() + ": " + verdict.reason);
    }
  }
  tcp_layer.socket().set_option(tcp::no_delay(true));

  // The name the certificate must carry: a DNS name (also sent as SNI) or an IP address.
  SSL* ssl = connection->stream.native_handle();
  if (is_ip_literal(url.host)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), url.host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl, url.host.c_str());
    SSL_set1_host(ssl, url.host.c_str());
  }
  auto [handshake_error] = co_await connection->stream.async_handshake(asio::ssl::stream_base::client, kAsTuple);
  if (handshake_error) {
    const long verify_result = SSL_get_verify_result(ssl);
    std::string why = verify_result != X509_V_OK ? X509_verify_cert_error_string(verify_result)
                                                  : handshake_error.message();
    co_return tl::unexpected(
        Error{ErrorCode::kIo, "TLS with " + url.origin() + " failed: " + why, std::nullopt});
  }
  co_return connection;
}

asio::awaitable<Status> UpstreamClient::check_upstream(const Url& url) {
  if (auto idle = take_idle(url.origin())) {
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
  const auto started = std::chrono::steady_clock::now();
  const unsigned attempts = idempotent ? settings_.retries + 1 : 1;
  Error last_error{ErrorCode::kIo, "no attempt made", std::nullopt};
  UpstreamErrorReason last_failure = UpstreamErrorReason::kConnect;
  for (unsigned attempt = 0; attempt < attempts; ++attempt) {
    std::unique_ptr<UpstreamConnection> connection = take_idle(url.origin());
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
    beast::tcp_stream& tcp_layer = connection->stream.next_layer();
    tcp_layer.expires_after(settings_.read_timeout);
    auto [write_error, written] = co_await http::async_write(connection->stream, request, kAsTuple);
    if (write_error) {
      last_error = upstream_error("cannot send to", url, write_error);
      last_failure = classify(write_error);
      continue;
    }
    std::unique_ptr<UpstreamResponse> response(new UpstreamResponse(shared_from_this(), std::move(connection)));
    response->parser_.header_limit(kMaxResponseHeaderBytes);
    response->parser_.body_limit(boost::none);  // bodies are streamed; callers bound what they keep
    if (head) response->parser_.skip(true);
    auto [read_error, header_bytes] = co_await http::async_read_header(
        response->connection_->stream, response->connection_->buffer, response->parser_, kAsTuple);
    if (read_error) {
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
                                   std::unique_ptr<UpstreamConnection> connection)
    : client_(std::move(client)), connection_(std::move(connection)) {}

UpstreamResponse::~UpstreamResponse() = default;

asio::awaitable<Result<size_t>> UpstreamResponse::read_some(std::span<uint8_t> out) {
  if (!connection_ || out.empty()) co_return size_t{0};
  while (!parser_.is_done()) {
    parser_.get().body().data = out.data();
    parser_.get().body().size = out.size();
    connection_->stream.next_layer().expires_after(client_->settings().read_timeout);
    auto [error, ignored] = co_await http::async_read(connection_->stream, connection_->buffer, parser_, kAsTuple);
    const size_t got = out.size() - parser_.get().body().size;
    if (error && error != http::error::need_buffer) {
      last_failure_ = classify(error);
      if (client_->metrics_) client_->metrics_->count_upstream_error(last_failure_);
      connection_.reset();
      co_return tl::unexpected(Error{ErrorCode::kIo, "the upstream body broke off: " + error.message(), std::nullopt});
    }
    if (client_->metrics_) client_->metrics_->add_upstream_bytes(got);
    if (parser_.is_done() && parser_.keep_alive()) {
      client_->return_idle(std::move(connection_));
    } else if (parser_.is_done()) {
      connection_.reset();
    }
    if (got > 0 || !connection_) co_return got;
  }
  co_return size_t{0};
}

asio::awaitable<Result<std::string>> UpstreamResponse::read_all(uint64_t limit) {
  std::string body;
  if (auto length = content_length(); length && *length > limit) {
    co_return fail(ErrorCode::kLimitExceeded,
                   "the upstream answer has " + std::to_string(*length) + " bytes, more than " + std::to_string(limit));
  }
  std::vector<uint8_t> chunk(64 * 1024);
  for (;;) {
    auto got = co_await read_some(chunk);
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
