// Sample files made by the real libraries (torch, numpy, the standard library), for format tests.
//
// A sample script calls emit(name, data) for each file it makes; make_python_samples() runs it with
// Debian's Python and returns the files by name. Anything else the script prints (warnings) is ignored.
#pragma once

#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/encoding.h"
#include "tests/cdr/python_runner.h"

namespace zoogate::testing {

inline constexpr std::string_view kSamplePrelude = R"(
import base64, sys
def emit(name, data):
    print("SAMPLE", name, base64.b64encode(bytes(data)).decode())
)";

struct PythonSamples {
  std::map<std::string, std::vector<uint8_t>> files;
  std::string output;   // everything the script printed, for lines of its own besides the samples
  std::string failure;  // why the script failed, empty on success
};

inline PythonSamples make_python_samples(std::string_view script) {
  PythonSamples samples;
  const PythonRun run = run_python(std::string(kSamplePrelude) + std::string(script));
  samples.output = run.output;
  if (run.exit_code != 0) {
    samples.failure = "sample script failed (exit " + std::to_string(run.exit_code) + "):\n" + run.output;
    return samples;
  }
  std::istringstream lines(run.output);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string tag, name, encoded;
    if (!(fields >> tag >> name) || tag != "SAMPLE") continue;
    fields >> encoded;  // empty for an empty file
    auto decoded = from_base64(encoded);
    if (!decoded) {
      samples.failure = "sample " + name + " is not valid base64";
      return samples;
    }
    samples.files[name] = std::move(*decoded);
  }
  return samples;
}

}  // namespace zoogate::testing
