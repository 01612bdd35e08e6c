#include "tests/cdr/python_runner.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>

#include "tests/common/temporary_folder.h"

namespace zoogate::testing {

PythonRun run_python(std::string_view script, const std::map<std::string, std::string>& files) {
  PythonRun run;
  const TemporaryFolder folder;
  folder.write("check.py", script);
  for (const auto& [name, content] : files) folder.write(name, content);
  const std::string command =
      "cd '" + folder.path().string() + "' && " + kSystemPython + " check.py '" + folder.path().string() + "' 2>&1";
  if (FILE* pipe = popen(command.c_str(), "r")) {
    std::array<char, 4096> chunk{};
    size_t count = 0;
    while ((count = fread(chunk.data(), 1, chunk.size(), pipe)) > 0) run.output.append(chunk.data(), count);
    const int status = pclose(pipe);
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  return run;
}

}  // namespace zoogate::testing
