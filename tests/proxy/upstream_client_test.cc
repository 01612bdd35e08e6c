// The upstream HTTPS client against a scripted TLS server on loopback: body framings (length,
// chunked, until the connection closes), connection reuse, bodies cut short, a stalled peer and an
// untrusted certificate. The server is plain blocking OpenSSL on its own threads, so that what the
// client sees does not depend on the client's own machinery.
#include "proxy/upstream_client.h"

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/certificate_authority.h"
#include "tests/common/temporary_folder.h"

namespace zoogate::proxy {
namespace {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using zoogate::testing::TemporaryFolder;
using namespace std::chrono_literals;

// Accepts TLS connections on 127.0.0.1 and answers each request with `answer`, which writes the
// raw response and says whether the connection stays open for another request.
class ScriptedTlsServer {
 public:
  using Answer = std::function<bool(SSL* ssl, const std::string& request, const std::atomic<bool>& stopping)>;

  ScriptedTlsServer(const LeafCertificate& leaf, Answer answer) : answer_(std::move(answer)) {
    context_ = SSL_CTX_new(TLS_server_method());
    SSL_CTX_use_certificate(context_, leaf.certificate());
    SSL_CTX_use_PrivateKey(context_, leaf.private_key());
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ::listen(listener_, 16);
    socklen_t length = sizeof address;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~ScriptedTlsServer() {
    stopping_ = true;
    acceptor_.join();
    {
      std::lock_guard lock(mutex_);
      for (int connection : open_) ::shutdown(connection, SHUT_RDWR);
    }
    for (auto& thread : connections_) thread.join();
    ::close(listener_);
    SSL_CTX_free(context_);
  }

  uint16_t port() const { return port_; }
  int accepted() const { return accepted_; }

 private:
  void accept_loop() {
    while (!stopping_) {
      pollfd ready{listener_, POLLIN, 0};
      if (::poll(&ready, 1, 50) <= 0) continue;
      const int connection = ::accept(listener_, nullptr, nullptr);
      if (connection < 0) continue;
      ++accepted_;
      std::lock_guard lock(mutex_);
      open_.push_back(connection);
      connections_.emplace_back([this, connection] { serve(connection); });
    }
  }

  void serve(int connection) {
    SSL* ssl = SSL_new(context_);
    SSL_set_fd(ssl, connection);
    if (SSL_accept(ssl) == 1) {
      std::string received;
      char buffer[4096];
      for (;;) {
        const size_t end = received.find("\r\n\r\n");
        if (end != std::string::npos) {
          const std::string request = received.substr(0, end + 4);
          received.erase(0, end + 4);
          if (!answer_(ssl, request, stopping_)) break;
          continue;
        }
        const int got = SSL_read(ssl, buffer, sizeof buffer);
        if (got <= 0) break;
        received.append(buffer, static_cast<size_t>(got));
      }
    }
    SSL_free(ssl);
    std::lock_guard lock(mutex_);
    std::erase(open_, connection);
    ::close(connection);
  }

  Answer answer_;
  SSL_CTX* context_ = nullptr;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> accepted_{0};
  std::mutex mutex_;
  std::vector<int> open_;
  std::vector<std::thread> connections_;
  std::thread acceptor_;
};

void write_all(SSL* ssl, std::string_view bytes) {
  while (!bytes.empty()) {
    const int sent = SSL_write(ssl, bytes.data(), static_cast<int>(std::min<size_t>(bytes.size(), 1 << 20)));
    if (sent <= 0) return;
    bytes.remove_prefix(static_cast<size_t>(sent));
  }
}

// A body larger than the client's read-ahead and its parse buffer, with a pattern that shows any
// misplaced byte.
std::string patterned_body(size_t size) {
  std::string body(size, '\0');
  for (size_t i = 0; i < size; ++i) body[i] = static_cast<char>('a' + (i * 7 + i / 4099) % 26);
  return body;
}

struct Fetched {
  unsigned status = 0;
  std::string body;
  std::string error;  // the client's failure, "" when the whole body arrived
};

asio::awaitable<Fetched> fetch(std::shared_ptr<UpstreamClient> client, Url url, http::verb method) {
  UpstreamClient::Request request{method, url.target, 11};
  auto response = co_await client->send(url, std::move(request));
  Fetched fetched;
  if (!response) {
    fetched.error = response.error().message;
    co_return fetched;
  }
  fetched.status = (*response)->status();
  auto body = co_await (*response)->read_all(64 << 20);
  if (body) {
    fetched.body = std::move(*body);
  } else {
    fetched.error = body.error().message;
  }
  co_return fetched;
}

class UpstreamClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(create_ca(folder_.file("ca.pem"), folder_.file("ca.key"), "zoogate test CA", std::chrono::days(1)));
    auto authority = CertificateAuthority::load(folder_.file("ca.pem"), folder_.file("ca.key"));
    ASSERT_TRUE(authority) << authority.error().describe();
    auto leaf = authority->mint_leaf("127.0.0.1", std::chrono::hours(1));
    ASSERT_TRUE(leaf) << leaf.error().describe();
    leaf_ = *leaf;
    io_thread_ = std::thread([this] { io_.run(); });
  }

  void TearDown() override {
    work_.reset();
    io_.stop();
    io_thread_.join();
    client_.reset();  // its pooled connections go once nothing runs on the io_context
  }

  void start_client(std::chrono::milliseconds read_timeout = 10s, bool trust_ca = true) {
    UpstreamSettings settings;
    if (trust_ca) settings.ca_bundle = folder_.file("ca.pem");
    settings.read_timeout = read_timeout;
    settings.retries = 0;
    auto client = UpstreamClient::create(settings, nullptr);
    ASSERT_TRUE(client) << client.error().describe();
    client_ = *client;
  }

  Fetched get(const ScriptedTlsServer& server, http::verb method = http::verb::get) {
    Url url;
    url.host = "127.0.0.1";
    url.port = server.port();
    url.target = "/file";
    return asio::co_spawn(io_, fetch(client_, url, method), asio::use_future).get();
  }

  TemporaryFolder folder_;
  std::shared_ptr<const LeafCertificate> leaf_;
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{io_.get_executor()};
  std::thread io_thread_;
  std::shared_ptr<UpstreamClient> client_;
};

TEST_F(UpstreamClientTest, ReadsACountedBodyWholeAndReusesTheConnection) {
  const std::string body = patterned_body(3 * 1024 * 1024 + 17);
  ScriptedTlsServer server(*leaf_, [&](SSL* ssl, const std::string& request, const std::atomic<bool>&) {
    const bool head = request.starts_with("HEAD ");
    write_all(ssl, "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n");
    if (!head) write_all(ssl, body);
    return true;
  });
  start_client();
  for (http::verb method : {http::verb::head, http::verb::get, http::verb::get}) {
    Fetched fetched = get(server, method);
    ASSERT_EQ(fetched.error, "");
    EXPECT_EQ(fetched.status, 200u);
    EXPECT_EQ(fetched.body, method == http::verb::head ? "" : body);
  }
  EXPECT_EQ(server.accepted(), 1) << "a HEAD answer and a body read to its end give their connection back";
}

TEST_F(UpstreamClientTest, ReadsChunkedBodies) {
  const std::string body = patterned_body(300 * 1024);
  ScriptedTlsServer server(*leaf_, [&](SSL* ssl, const std::string&, const std::atomic<bool>&) {
    write_all(ssl, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (size_t at = 0; at < body.size(); at += 70001) {
      const std::string piece = body.substr(at, 70001);
      char size_line[32];
      std::snprintf(size_line, sizeof size_line, "%zx\r\n", piece.size());
      write_all(ssl, size_line + piece + "\r\n");
    }
    write_all(ssl, "0\r\n\r\n");
    return true;
  });
  start_client();
  for (int round = 0; round < 2; ++round) {
    Fetched fetched = get(server);
    ASSERT_EQ(fetched.error, "");
    EXPECT_EQ(fetched.body, body);
  }
  EXPECT_EQ(server.accepted(), 1);
}

TEST_F(UpstreamClientTest, ReadsABodyThatEndsWithTheConnection) {
  const std::string body = patterned_body(200 * 1024);
  ScriptedTlsServer server(*leaf_, [&](SSL* ssl, const std::string&, const std::atomic<bool>&) {
    write_all(ssl, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body);
    SSL_shutdown(ssl);
    return false;
  });
  start_client();
  Fetched fetched = get(server);
  ASSERT_EQ(fetched.error, "");
  EXPECT_EQ(fetched.body, body);
}

TEST_F(UpstreamClientTest, ABodyShorterThanItsLengthIsAnError) {
  ScriptedTlsServer server(*leaf_, [&](SSL* ssl, const std::string&, const std::atomic<bool>&) {
    write_all(ssl, "HTTP/1.1 200 OK\r\nContent-Length: 500000\r\n\r\n" + patterned_body(200000));
    SSL_shutdown(ssl);
    return false;
  });
  start_client();
  Fetched fetched = get(server);
  EXPECT_NE(fetched.error.find("broke off"), std::string::npos) << fetched.error;
}

TEST_F(UpstreamClientTest, AStalledPeerTimesOut) {
  ScriptedTlsServer server(*leaf_, [&](SSL* ssl, const std::string&, const std::atomic<bool>& stopping) {
    write_all(ssl, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + patterned_body(1000));
    while (!stopping) std::this_thread::sleep_for(10ms);
    return false;
  });
  start_client(300ms);
  const auto started = std::chrono::steady_clock::now();
  Fetched fetched = get(server);
  EXPECT_NE(fetched.error.find("timeout"), std::string::npos) << fetched.error;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

TEST_F(UpstreamClientTest, RefusesACertificateItDoesNotTrust) {
  ScriptedTlsServer server(*leaf_, [&](SSL* ssl, const std::string&, const std::atomic<bool>&) {
    write_all(ssl, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    return true;
  });
  start_client(10s, /*trust_ca=*/false);
  Fetched fetched = get(server);
  EXPECT_NE(fetched.error.find("TLS"), std::string::npos) << fetched.error;
  EXPECT_NE(fetched.error.find("certificate"), std::string::npos) << fetched.error;
}

}  // namespace
}  // namespace zoogate::proxy
