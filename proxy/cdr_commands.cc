// `zoogate sanitize` and `zoogate scan`: the CDR engine on local files.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include "cdr/report.h"
#include "cdr/sanitize.h"
#include "common/byte_sink.h"
#include "common/byte_source.h"
#include "config/policy_config.h"
#include "proxy/commands.h"

namespace zoogate::cli {
namespace {

struct CdrArguments {
  std::string input;
  std::string policy_file;
  std::string report_file;
  bool json = false;
};

void add_common_options(CLI::App& command, CdrArguments& arguments) {
  command.add_option("input", arguments.input, "Model file to read (identified by content, not name)")
      ->required();
  command.add_option("--policy", arguments.policy_file, "Policy file (YAML, see docs/policy.md)");
  command.add_option("--report", arguments.report_file, "Write the report to this file instead of stdout");
  command.add_flag("--json", arguments.json, "Report as JSON instead of text");
}

}  // namespace

Result<cdr::Policy> load_policy(const std::string& path) {
  if (path.empty()) return config::default_policy_config().policy_for("");
  auto loaded = config::load_policy_config(path);
  if (!loaded) return tl::unexpected(loaded.error());
  return loaded->policy_for("");
}

namespace {

bool emit_report(const cdr::SanitizeReport& report, const CdrArguments& arguments) {
  std::string text = arguments.json ? cdr::report_to_json(report).dump(2) + "\n" : cdr::report_to_text(report);
  if (arguments.report_file.empty()) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return true;
  }
  std::ofstream out(arguments.report_file, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    std::fprintf(stderr, "zoogate: cannot write report %s\n", arguments.report_file.c_str());
    return false;
  }
  return true;
}

// Maps a finished run to the exit code: I/O trouble is an error, not a verdict.
int exit_code_for(const cdr::SanitizeReport& report, bool scanning) {
  if (report.verdict == cdr::Verdict::kBlocked) {
    return report.error && report.error->code == ErrorCode::kIo ? kExitError : kExitBlocked;
  }
  if (scanning && report.verdict == cdr::Verdict::kDisarmed) return kExitFindings;
  return kExitOk;
}

int fail_with(const Error& error) {
  std::fprintf(stderr, "zoogate: %s\n", error.describe().c_str());
  return kExitError;
}

}  // namespace

void add_sanitize_command(CLI::App& app, int& exit_code) {
  auto arguments = std::make_shared<CdrArguments>();
  auto output = std::make_shared<std::string>();
  auto format = std::make_shared<std::string>("torch");
  CLI::App* command = app.add_subcommand(
      "sanitize", "Disarm and rebuild a model file. Exit 0: written (clean or disarmed); 3: blocked, "
                  "nothing written; 1: usage or I/O error");
  add_common_options(*command, *arguments);
  command->add_option("-o,--output", *output, "Where to write the rebuilt file")->required();
  command->add_option("--format", *format,
                      "torch: the input's own kind (legacy PyTorch becomes a current PyTorch zip); "
                      "safetensors: tensors only")
      ->check(CLI::IsMember({"torch", "safetensors"}));
  auto mtd = add_mtd_options(*command);
  command->callback([arguments, output, format, mtd, &exit_code] {
    auto policy = load_policy(arguments->policy_file);
    if (!policy) return void(exit_code = fail_with(policy.error()));
    auto source = FileSource::open(arguments->input);
    if (!source) return void(exit_code = fail_with(source.error()));
    if (auto prepared = prepare_mtd_options(*mtd, **source); !prepared) {
      return void(exit_code = fail_with(prepared.error()));
    }
    auto sink = AtomicFileSink::create(*output);
    if (!sink) return void(exit_code = fail_with(sink.error()));

    cdr::SanitizeOptions options;
    options.format = *format == "safetensors" ? cdr::OutputFormat::kSafetensors : cdr::OutputFormat::kNative;
    apply_mtd_options(*mtd, options);
    cdr::SanitizeReport report = cdr::sanitize(**source, *policy, options, **sink);
    if (report.verdict != cdr::Verdict::kBlocked) {
      if (auto committed = (*sink)->commit(); !committed) return void(exit_code = fail_with(committed.error()));
    }
    sink->reset();  // an uncommitted sink removes its temporary file: a blocked run leaves nothing
    if (auto manifest = write_signed_manifest(*mtd, report, *policy, *output); !manifest) {
      return void(exit_code = fail_with(manifest.error()));
    }
    exit_code = emit_report(report, *arguments) ? exit_code_for(report, false) : kExitError;
  });
}

void add_scan_command(CLI::App& app, int& exit_code) {
  auto arguments = std::make_shared<CdrArguments>();
  CLI::App* command = app.add_subcommand(
      "scan", "Run the disarm engine without writing a file. Exit 0: clean; 2: would be disarmed; "
              "3: blocked; 1: usage or I/O error");
  add_common_options(*command, *arguments);
  command->callback([arguments, &exit_code] {
    auto policy = load_policy(arguments->policy_file);
    if (!policy) return void(exit_code = fail_with(policy.error()));
    auto source = FileSource::open(arguments->input);
    if (!source) return void(exit_code = fail_with(source.error()));
    DiscardSink sink;  // scan runs the whole engine without writing a file
    cdr::SanitizeReport report = cdr::sanitize(**source, *policy, cdr::SanitizeOptions{}, sink);
    report.output_format.clear();  // nothing was written
    exit_code = emit_report(report, *arguments) ? exit_code_for(report, true) : kExitError;
  });
}

}  // namespace zoogate::cli
