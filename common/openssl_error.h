// What OpenSSL complained about, for error messages.
#pragma once

#include <string>

namespace zoogate {

// Names the last error on the calling thread's OpenSSL error queue and empties the queue, so that one
// failure never shows up in the message of the next. "unknown OpenSSL error" when the queue is empty.
std::string openssl_reason();

}  // namespace zoogate
