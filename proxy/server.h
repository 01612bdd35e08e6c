// The zoogate server: the Hub endpoint listener (HF_ENDPOINT mode), the admin listener (/metrics,
// /healthz, /readyz, /admin/prefetch) and, when configured, the egress listener.
//
// Threads: each of the `io_threads` runs an event loop of its own; connections are dealt to the loops
// in turn, and a connection is a coroutine that stays on its loop, with its upstream connections;
// `worker_threads` run the disarms and variations; a small pool of its own runs the short blocking
// work (cache lookups and records, password checks), so that it never queues behind a disarm. Nothing
// on an I/O thread waits for a disk-bound computation.
//
// Lifetime: run() blocks until SIGTERM or SIGINT, then drains: the Hub and egress listeners close,
// their connections finish the request they are serving (up to kDrainTimeout) and close, while the
// admin listener goes on answering (/readyz with 503, /metrics) until the process ends.
#pragma once

#include <memory>
#include <string>

#include "common/error.h"
#include "config/server_config.h"

namespace zoogate::proxy {

class ServerState;

class Server {
 public:
  // Loads everything the configuration names (policy file, cache folder, MTD secret, signing key),
  // creating the secret and the signing key in the cache folder on first start when the
  // configuration names none.
  static Result<std::unique_ptr<Server>> create(config::ServerConfig config);
  ~Server();

  // Binds the listeners, prints where they are (the first lines of stdout), serves until a signal,
  // drains, and returns.
  Status run();

 private:
  explicit Server(std::unique_ptr<ServerState> state);
  std::unique_ptr<ServerState> state_;
};

}  // namespace zoogate::proxy
