// Times cdr::parse_pickle() on one pickle file, in process, for tests/bench/run_bench.py.
//
//   bench_pickle_vm PICKLE_FILE [TIMED_RUNS]
//
// The file is read into memory first so that only the VM is timed, not the disk. One untimed run
// warms the allocator and the caches; then TIMED_RUNS runs (default 10) are timed one by one. Building
// the tree is timed, destroying it is not (the CPython baseline in run_bench.py is timed the same way).
// Prints one JSON object on stdout:
//   {"bytes": N, "opcodes": N, "protocol": N, "run_seconds": [...], "median_seconds": S,
//    "megabytes_per_second": R}
// where a megabyte is 10^6 bytes of opcode stream. Exit status 1 if the file cannot be read or does
// not parse cleanly under the default policy: a benchmark of a rejected input would measure nothing.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "cdr/pickle_vm.h"
#include "cdr/policy.h"
#include "common/byte_source.h"

namespace {

constexpr int kDefaultTimedRuns = 10;

bool read_whole_file(const char* path, std::vector<uint8_t>& bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t middle = values.size() / 2;
  return values.size() % 2 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s PICKLE_FILE [TIMED_RUNS]\n", argv[0]);
    return 1;
  }
  const int timed_runs = argc == 3 ? std::atoi(argv[2]) : kDefaultTimedRuns;
  if (timed_runs < 1) {
    std::fprintf(stderr, "bench_pickle_vm: TIMED_RUNS must be a positive integer\n");
    return 1;
  }
  std::vector<uint8_t> bytes;
  if (!read_whole_file(argv[1], bytes)) {
    std::fprintf(stderr, "bench_pickle_vm: cannot read %s\n", argv[1]);
    return 1;
  }

  const zoogate::MemorySource source(bytes);
  const zoogate::cdr::Policy policy;
  const zoogate::cdr::PickleParseOptions options;  // plain pickle: PersistentIdMode::kNone
  std::vector<double> run_seconds;
  uint64_t opcodes = 0;
  int protocol = 0;
  for (int run = 0; run <= timed_runs; ++run) {
    const auto start = std::chrono::steady_clock::now();
    auto parsed = zoogate::cdr::parse_pickle(source, policy, options);
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    if (!parsed) {
      std::fprintf(stderr, "bench_pickle_vm: %s\n", parsed.error().describe().c_str());
      return 1;
    }
    if (!parsed->findings.empty()) {
      std::fprintf(stderr, "bench_pickle_vm: %zu findings; the benchmark input must be clean\n",
                   parsed->findings.size());
      return 1;
    }
    opcodes = parsed->opcode_count;
    protocol = parsed->protocol;
    if (run > 0) run_seconds.push_back(elapsed.count());  // run 0 is the warm-up
  }

  const double median_seconds = median(run_seconds);
  std::printf("{\"bytes\": %zu, \"opcodes\": %llu, \"protocol\": %d, \"run_seconds\": [", bytes.size(),
              static_cast<unsigned long long>(opcodes), protocol);
  for (size_t i = 0; i < run_seconds.size(); ++i) std::printf("%s%.6f", i ? ", " : "", run_seconds[i]);
  std::printf("], \"median_seconds\": %.6f, \"megabytes_per_second\": %.1f}\n", median_seconds,
              static_cast<double>(bytes.size()) / median_seconds / 1e6);
  return 0;
}
