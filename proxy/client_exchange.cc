#include "proxy/client_exchange.h"

#include <sstream>

#include <boost/beast/http/write.hpp>

namespace zoogate::proxy {

namespace asio = boost::asio;
namespace http = boost::beast::http;

namespace {
// Header values are echoed from upstreams and from zoogate's own messages; a CR or LF in one would
// split the answer.
std::string header_safe(std::string_view text) {
  std::string safe;
  safe.reserve(text.size());
  for (char c : text) safe.push_back(c == '\r' || c == '\n' || c == '\0' ? ' ' : c);
  return safe;
}
}  // namespace

ClientExchange::ClientExchange(ClientConnection& connection, HttpRequest request, std::string client_address,
                               std::string request_id)
    : connection_(connection),
      request_(std::move(request)),
      client_address_(std::move(client_address)),
      request_id_(std::move(request_id)),
      keep_alive_(request_.keep_alive()) {}

asio::awaitable<Status> ClientExchange::write(std::string_view bytes) {
  const boost::system::error_code error =
      co_await connection_.write(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  if (error) {
    abort();
    co_return fail(ErrorCode::kIo, "the client went away: " + error.message());
  }
  co_return Status{};
}

asio::awaitable<Status> ClientExchange::send(HttpResponse response) {
  HttpHeader header{response.base()};
  header.content_length(response.body().size());
  ZG_CO_TRY(co_await send_header(std::move(header)));
  if (is_head()) co_return Status{};
  bytes_sent_ += response.body().size();
  co_return co_await write(response.body());
}

asio::awaitable<Status> ClientExchange::send_error(unsigned status, std::string_view error_code,
                                                   std::string_view message) {
  HttpResponse response{static_cast<http::status>(status), 11};
  response.set(http::field::content_type, "text/plain; charset=utf-8");
  response.set("X-Error-Code", header_safe(error_code));
  response.set("X-Error-Message", header_safe(message.substr(0, 2000)));
  response.body() = std::string(message) + "\n";
  error_message = std::string(message.substr(0, 500));
  co_return co_await send(std::move(response));
}

asio::awaitable<Status> ClientExchange::send_header(HttpHeader header) {
  header.version(11);
  header.set("X-Request-Id", request_id_);
  header.keep_alive(keep_alive_);
  status_ = header.result_int();
  std::ostringstream text;
  text << header.base();
  co_return co_await write(text.str());
}

asio::awaitable<Status> ClientExchange::send_body(std::span<const uint8_t> bytes) {
  if (is_head() || bytes.empty()) co_return Status{};
  bytes_sent_ += bytes.size();
  co_return co_await write(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

asio::awaitable<Status> ClientExchange::send_file_body(int fd, uint64_t offset, uint64_t length) {
  if (is_head() || length == 0) co_return Status{};
  auto [error, sent] = co_await connection_.send_file(fd, offset, length);
  bytes_sent_ += sent;
  if (error) {
    abort();
    co_return fail(ErrorCode::kIo, "the client went away: " + error.message());
  }
  if (sent < length) {
    abort();
    co_return fail(ErrorCode::kIo, "the file ended " + std::to_string(length - sent) + " bytes early");
  }
  co_return Status{};
}

void ClientExchange::abort() {
  aborted_ = true;
  connection_.close();
}

}  // namespace zoogate::proxy
