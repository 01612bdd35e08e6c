// Feeds arbitrary text to the policy file parser. It must answer with a config or with a
// kInvalidArgument Error that names the file, and never crash, throw, leak or hang; a config it accepts
// must give a policy for any repository id.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config/policy_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = zoogate::config::parse_policy_config(text, "fuzz.yaml");
  if (!config) {
    const zoogate::Error& error = config.error();
    if (error.code != zoogate::ErrorCode::kInvalidArgument || !error.message.starts_with("fuzz.yaml")) {
      __builtin_trap();
    }
    return 0;
  }
  for (std::string_view repository : {"", "acme/model", "ACME/Model-7b", "datasets/acme/data", "a/b/c/d/e"}) {
    zoogate::cdr::Policy policy = config->policy_for(repository);
    if (!policy.version.starts_with(config->version + "+")) __builtin_trap();
  }
  return 0;
}
