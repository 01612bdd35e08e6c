#include "common/error.h"

namespace zoogate {

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kIo: return "i/o error";
    case ErrorCode::kParse: return "parse error";
    case ErrorCode::kLimitExceeded: return "limit exceeded";
    case ErrorCode::kForbidden: return "forbidden";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kIntegrity: return "integrity error";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kInternal: return "internal error";
  }
  return "unknown error";
}

std::string Error::describe() const {
  std::string text(to_string(code));
  if (offset) text += " at offset " + std::to_string(*offset);
  text += ": ";
  text += message;
  return text;
}

Error Error::with_context(std::string_view context) const {
  Error copy = *this;
  copy.message = std::string(context) + ": " + message;
  return copy;
}

}  // namespace zoogate
