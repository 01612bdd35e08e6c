// Error values that cross every module boundary.
//
// Contract: functions that can fail return Result<T> (or Status for no value); they never throw on the
// data path. An Error carries a machine-readable code, a human-readable message and, for parsers, the
// byte offset in the input where the problem was found.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <tl/expected.hpp>

namespace zoogate {

enum class ErrorCode {
  kInvalidArgument,  // caller passed something unusable (bad option, bad config value)
  kIo,               // the operating system refused a read, write, open or rename
  kParse,            // input bytes do not follow their format
  kLimitExceeded,    // input is well-formed so far but exceeds a configured limit
  kForbidden,        // input is well-formed but expresses something the policy does not allow
  kUnsupported,      // input is a known format that zoogate deliberately does not accept
  kIntegrity,        // a digest, checksum or signature does not match
  kNotFound,         // a named thing (file, record, key) does not exist
  kInternal,         // a broken invariant inside zoogate
};

std::string_view to_string(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  std::optional<uint64_t> offset;  // byte offset in the parsed input, when a parser reports it

  // "parse error at offset 42: truncated BINUNICODE operand"
  std::string describe() const;

  // Prefixes the message with context ("archive/data.pkl: ..."), keeping code and offset.
  Error with_context(std::string_view context) const;
};

template <typename T>
using Result = tl::expected<T, Error>;
using Status = tl::expected<void, Error>;

inline tl::unexpected<Error> fail(ErrorCode code, std::string message,
                                  std::optional<uint64_t> offset = std::nullopt) {
  return tl::unexpected<Error>(Error{code, std::move(message), offset});
}

inline tl::unexpected<Error> fail(Error error) { return tl::unexpected<Error>(std::move(error)); }

// Propagates an error from an expression returning Result<T>/Status; evaluates to nothing on success.
#define ZG_TRY(expr)                                             \
  do {                                                           \
    if (auto zg_try_result_ = (expr); !zg_try_result_) {         \
      return ::tl::unexpected(std::move(zg_try_result_.error())); \
    }                                                            \
  } while (false)

// The same inside a coroutine (co_return instead of return).
#define ZG_CO_TRY(expr)                                             \
  do {                                                              \
    if (auto zg_try_result_ = (expr); !zg_try_result_) {            \
      co_return ::tl::unexpected(std::move(zg_try_result_.error())); \
    }                                                               \
  } while (false)

}  // namespace zoogate
