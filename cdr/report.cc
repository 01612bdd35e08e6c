#include "cdr/report.h"

#include <cstdio>
#include <sstream>

#include "common/encoding.h"

namespace zoogate::cdr {
namespace {

std::string global_text(const GlobalName& global) { return global.module + "." + global.name; }

nlohmann::json finding_to_json(const Finding& finding) {
  return {{"kind", to_string(finding.kind)},   {"action", to_string(finding.action)},
          {"record", finding.record},          {"offset", finding.offset},
          {"construct", finding.construct},    {"reason", finding.reason}};
}

std::string seconds_text(double seconds) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3f s", seconds);
  return buffer;
}

}  // namespace

nlohmann::json report_to_json(const SanitizeReport& report) {
  nlohmann::json json;
  json["verdict"] = to_string(report.verdict);
  json["container"] = report.container;
  json["globals"] = nlohmann::json::array();
  for (const auto& global : report.globals) json["globals"].push_back(global_text(global));
  json["findings"] = nlohmann::json::array();
  for (const auto& finding : report.findings) json["findings"].push_back(finding_to_json(finding));
  json["notes"] = report.notes;
  if (report.error) {
    json["error"] = {{"code", to_string(report.error->code)}, {"message", report.error->message}};
    if (report.error->offset) json["error"]["offset"] = *report.error->offset;
  }
  json["input"] = {{"size", report.input_size}, {"sha256", to_hex(report.input_sha256)}};
  if (!report.output_format.empty()) {
    json["output"] = {{"format", report.output_format},
                      {"size", report.output_size},
                      {"sha256", to_hex(report.output_sha256)}};
  }
  json["records"] = nlohmann::json::array();
  for (const auto& record : report.records) {
    json["records"].push_back({{"name", record.name}, {"size", record.size}, {"sha256", to_hex(record.sha256)}});
  }
  json["timings"] = {{"parse_seconds", report.parse_seconds}, {"write_seconds", report.write_seconds}};
  return json;
}

std::string report_to_text(const SanitizeReport& report) {
  std::ostringstream out;
  out << "verdict:   " << to_string(report.verdict) << "\n";
  out << "container: " << (report.container.empty() ? "unknown" : report.container) << "\n";
  out << "input:     " << report.input_size << " bytes, sha256 " << to_hex(report.input_sha256) << "\n";
  if (!report.output_format.empty()) {
    out << "output:    " << report.output_format << ", " << report.output_size << " bytes, sha256 "
        << to_hex(report.output_sha256) << "\n";
  }
  if (report.error) out << "blocked:   " << report.error->describe() << "\n";
  out << "globals:   ";
  for (size_t i = 0; i < report.globals.size(); ++i) out << (i ? ", " : "") << global_text(report.globals[i]);
  out << (report.globals.empty() ? "none\n" : "\n");
  if (!report.findings.empty()) {
    out << "findings:\n";
    for (const auto& finding : report.findings) {
      out << "  - " << finding.record << " @ " << finding.offset << ": " << finding.construct << ": "
          << finding.reason << " [" << to_string(finding.action) << "]\n";
    }
  }
  for (const auto& note : report.notes) out << "note:      " << note << "\n";
  if (!report.records.empty()) {
    uint64_t total = 0;
    for (const auto& record : report.records) total += record.size;
    out << "records:   " << report.records.size() << " written, " << total << " bytes\n";
  }
  out << "timings:   parse " << seconds_text(report.parse_seconds) << ", write "
      << seconds_text(report.write_seconds) << "\n";
  return out.str();
}

}  // namespace zoogate::cdr
