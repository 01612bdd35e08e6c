// One request of a client and the answer zoogate writes for it.
//
// Handlers answer through send() (a whole small answer) or through send_header() and send_body()
// (a streamed answer whose Content-Length the header states). The exchange counts what it wrote for
// the access log and the metrics, and adds the request id to every answer.
//
// A ClientExchange belongs to the connection's coroutine; it is not thread-safe. It writes through a
// ClientConnection, so the same handlers answer plain connections and TLS connections of the egress
// mode alike.
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <sys/sendfile.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "common/error.h"
#include "proxy/access_log.h"
#include "proxy/metrics.h"

namespace zoogate::proxy {

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;
using HttpHeader = boost::beast::http::response<boost::beast::http::empty_body>;
using HttpResponse = boost::beast::http::response<boost::beast::http::string_body>;

// The byte stream to one client. write() and send_file() must make progress within the connection's
// write timeout (a client that stops reading is dropped).
class ClientConnection {
 public:
  virtual ~ClientConnection() = default;
  virtual boost::asio::awaitable<boost::system::error_code> write(std::span<const uint8_t> bytes) = 0;
  // Sends `length` bytes of the open file `fd` from `offset` (the caller keeps `fd` open). Fewer
  // bytes than asked, without an error, mean the file is shorter than that.
  virtual boost::asio::awaitable<std::pair<boost::system::error_code, uint64_t>> send_file(int fd, uint64_t offset,
                                                                                           uint64_t length) = 0;
  virtual void close() = 0;
  // True when the client's bytes travel in TLS (an intercepted egress connection).
  virtual bool encrypted() const = 0;
};

// Piece size of a file sent through a TLS stream: the memory one such download holds.
inline constexpr size_t kFilePieceBytes = 64 * 1024;

// A ClientConnection over any Asio stream whose lowest layer is a beast::tcp_stream. On a plain TCP
// stream, files go out with sendfile(2): the kernel copies them from the page cache, and a download
// holds no buffer of zoogate's.

template <typename Stream>
class StreamConnection final : public ClientConnection {
 public:
  StreamConnection(Stream& stream, std::chrono::milliseconds write_timeout)
      : stream_(stream), write_timeout_(write_timeout) {}
  boost::asio::awaitable<boost::system::error_code> write(std::span<const uint8_t> bytes) override {
    boost::beast::get_lowest_layer(stream_).expires_after(write_timeout_);
    auto [error, written] = co_await boost::asio::async_write(
        stream_, boost::asio::buffer(bytes.data(), bytes.size()), boost::asio::as_tuple(boost::asio::use_awaitable));
    co_return error;
  }
  boost::asio::awaitable<std::pair<boost::system::error_code, uint64_t>> send_file(int fd, uint64_t offset,
                                                                                   uint64_t length) override {
    if constexpr (std::is_same_v<Stream, boost::beast::tcp_stream>) {
      co_return co_await send_file_with_sendfile(fd, offset, length);
    } else {
      co_return co_await send_file_in_pieces(fd, offset, length);
    }
  }
  bool encrypted() const override { return !std::is_same_v<Stream, boost::beast::tcp_stream>; }
  void close() override {
    boost::beast::error_code ignored;
    boost::beast::get_lowest_layer(stream_).socket().shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
    boost::beast::get_lowest_layer(stream_).close();
  }

 private:
  using SendResult = std::pair<boost::system::error_code, uint64_t>;

  boost::asio::awaitable<SendResult> send_file_with_sendfile(int fd, uint64_t offset, uint64_t length) {
    using namespace boost::asio::experimental::awaitable_operators;
    auto& socket = stream_.socket();
    boost::system::error_code error;
    socket.non_blocking(true, error);
    if (error) co_return SendResult{error, 0};
    boost::asio::steady_timer timer(socket.get_executor());
    uint64_t sent = 0;
    while (sent < length) {
      off_t position = static_cast<off_t>(offset + sent);
      const ssize_t wrote = ::sendfile(socket.native_handle(), fd, &position,
                                       static_cast<size_t>(std::min<uint64_t>(length - sent, kSendfileCallBytes)));
      if (wrote > 0) {
        sent += static_cast<uint64_t>(wrote);
        continue;
      }
      if (wrote == 0) break;  // the file ends here
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        co_return SendResult{boost::system::error_code(errno, boost::system::system_category()), sent};
      }
      // The socket buffer is full: wait until the client takes bytes, or give up after the timeout.
      timer.expires_after(write_timeout_);
      auto ready = co_await (socket.async_wait(boost::asio::ip::tcp::socket::wait_write,
                                               boost::asio::as_tuple(boost::asio::use_awaitable)) ||
                             timer.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable)));
      if (ready.index() == 1) co_return SendResult{boost::asio::error::timed_out, sent};
      if (auto [wait_error] = std::get<0>(ready); wait_error) co_return SendResult{wait_error, sent};
    }
    co_return SendResult{{}, sent};
  }

  boost::asio::awaitable<SendResult> send_file_in_pieces(int fd, uint64_t offset, uint64_t length) {
    std::vector<uint8_t> piece(static_cast<size_t>(std::min<uint64_t>(length, kFilePieceBytes)));
    uint64_t sent = 0;
    while (sent < length) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(piece.size(), length - sent));
      const ssize_t got = ::pread(fd, piece.data(), want, static_cast<off_t>(offset + sent));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) co_return SendResult{boost::system::error_code(errno, boost::system::system_category()), sent};
      if (got == 0) break;
      if (auto error = co_await write(std::span(piece.data(), static_cast<size_t>(got)))) co_return SendResult{error, sent};
      sent += static_cast<uint64_t>(got);
    }
    co_return SendResult{{}, sent};
  }

  // Bytes one sendfile(2) call may send: keeps one download from holding its thread for long.
  static constexpr uint64_t kSendfileCallBytes = 4 << 20;

  Stream& stream_;
  std::chrono::milliseconds write_timeout_;
};

class ClientExchange {
 public:
  ClientExchange(ClientConnection& connection, HttpRequest request, std::string client_address,
                 std::string request_id);

  const HttpRequest& request() const { return request_; }
  bool is_head() const { return request_.method() == boost::beast::http::verb::head; }
  const std::string& client_address() const { return client_address_; }
  const std::string& request_id() const { return request_id_; }
  bool encrypted() const { return connection_.encrypted(); }

  // A complete answer: Content-Length and the request id are set here; HEAD requests get the header only.
  boost::asio::awaitable<Status> send(HttpResponse response);
  // A plain-text answer with `status`, and for errors X-Error-Code / X-Error-Message (what Hub clients
  // show their users).
  boost::asio::awaitable<Status> send_error(unsigned status, std::string_view error_code, std::string_view message);
  // The header of a streamed answer; its Content-Length must be set by the caller.
  boost::asio::awaitable<Status> send_header(HttpHeader header);
  // Body bytes of a streamed answer (nothing is written for HEAD requests).
  boost::asio::awaitable<Status> send_body(std::span<const uint8_t> bytes);
  // Body bytes of a streamed answer from a file (see ClientConnection::send_file); a file shorter
  // than `length` is an error, and the connection is aborted.
  boost::asio::awaitable<Status> send_file_body(int fd, uint64_t offset, uint64_t length);
  // Closes the connection: a streamed answer that cannot be completed must never look complete.
  void abort();

  bool answered() const { return status_ != 0; }
  unsigned status() const { return status_; }
  uint64_t bytes_sent() const { return bytes_sent_; }
  bool keep_alive() const { return keep_alive_ && !aborted_; }
  void close_after() { keep_alive_ = false; }

  // Facts handlers leave for the access log and the metrics.
  Route route = Route::kOther;
  std::optional<VerdictLabel> verdict;
  std::optional<CacheOutcome> cache;
  std::optional<unsigned> upstream_status;
  std::optional<std::string> error_message;
  // The authenticated user: of the egress proxy, or named by a trusted proxy on the Hub endpoint.
  std::optional<std::string> user;
  // The connection's address when client_address() is another one, forwarded by a trusted proxy.
  std::optional<std::string> peer;
  // "http" or "https": the scheme the client used, as a trusted proxy in front of zoogate says.
  std::optional<std::string> forwarded_scheme;

 private:
  boost::asio::awaitable<Status> write(std::string_view bytes);

  ClientConnection& connection_;
  HttpRequest request_;
  std::string client_address_;
  std::string request_id_;
  unsigned status_ = 0;
  uint64_t bytes_sent_ = 0;
  bool keep_alive_;
  bool aborted_ = false;
};

}  // namespace zoogate::proxy
