// Runs Debian's Python (the interpreter that has torch 1.13 and numpy 1.24) on a test script.
//
// Tests use it to check that what zoogate writes loads in the real libraries. The `python3` found on
// PATH may be another interpreter without torch, so the path is fixed.
#pragma once

#include <map>
#include <string>
#include <string_view>

namespace zoogate::testing {

inline constexpr const char* kSystemPython = "/usr/bin/python3";

struct PythonRun {
  int exit_code = -1;  // the interpreter's exit status, -1 if it could not be run
  std::string output;  // stdout and stderr together
};

// Writes `files` (name -> content) into a fresh temporary folder, runs `script` there with the folder
// as sys.argv[1] and the working directory, and removes the folder afterwards.
PythonRun run_python(std::string_view script, const std::map<std::string, std::string>& files = {});

}  // namespace zoogate::testing
