#include "tests/cdr/python_runner.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace zoogate::testing {

namespace {

std::filesystem::path make_temporary_folder() {
  std::string pattern = ::testing::TempDir() + "zoogate-python-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

bool write_file(const std::filesystem::path& path, std::string_view content) {
  std::ofstream out(path, std::ios::binary);
  out.write(content.data(), static_cast<std::streamsize>(content.size()));
  return static_cast<bool>(out);
}

}  // namespace

PythonRun run_python(std::string_view script, const std::map<std::string, std::string>& files) {
  PythonRun run;
  const std::filesystem::path folder = make_temporary_folder();
  if (folder.empty()) {
    run.output = "cannot create a temporary folder";
    return run;
  }
  bool written = write_file(folder / "check.py", script);
  for (const auto& [name, content] : files) written = written && write_file(folder / name, content);
  if (written) {
    const std::string command =
        "cd '" + folder.string() + "' && " + kSystemPython + " check.py '" + folder.string() + "' 2>&1";
    if (FILE* pipe = popen(command.c_str(), "r")) {
      std::array<char, 4096> chunk{};
      size_t count = 0;
      while ((count = fread(chunk.data(), 1, chunk.size(), pipe)) > 0) run.output.append(chunk.data(), count);
      const int status = pclose(pipe);
      run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
  } else {
    run.output = "cannot write the script's files";
  }
  std::error_code ignored;
  std::filesystem::remove_all(folder, ignored);
  return run;
}

}  // namespace zoogate::testing
