// Renders a SanitizeReport for people (text) and for programs (JSON).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "cdr/sanitize.h"

namespace zoogate::cdr {

// The JSON schema is documented in docs/cli.md; its keys are stable.
nlohmann::json report_to_json(const SanitizeReport& report);
std::string report_to_text(const SanitizeReport& report);

}  // namespace zoogate::cdr
