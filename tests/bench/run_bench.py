#!/usr/bin/python3
"""zoogate benchmarks (DESIGN.md section 8): every figure is a ratio against a baseline measured in
the same run, on the same machine, so that the figures mean something on a busy or slow host.

Run with Debian's /usr/bin/python3, which has torch (used only to generate the test checkpoint),
usually through `cmake --build build --target bench`. Benchmarks never pass or fail: they print a
table that marks each design target as met or missed and write the same figures, with every raw run,
to <work>/bench-results.json. The exit status is non-zero only when the harness could not measure
(a tool missing or failing). Generated inputs are cached in <work> and reused.

Adding a benchmark: write `bench_<name>(options) -> BenchResult` and list it in BENCHMARKS.
`measure_interleaved()` times external commands (wall time and peak RSS); `run_json()` runs a
program that times itself and reports JSON.
"""
import argparse
import collections
import json
import os
import pickle
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEBIAN_PYTHON = "/usr/bin/python3"
GNU_TIME = "/usr/bin/time"  # Debian package `time`
MIB = 1 << 20
REPOSITORY = Path(__file__).resolve().parents[2]


class BenchError(Exception):
    """The harness could not measure: a tool is missing, failed, or produced something unexpected."""


class Skipped(Exception):
    """The benchmark needs something that this run was not given."""


@dataclass
class Figure:
    """One measured value, its ratios against the run's baselines, and the design target if any."""
    measurement: str
    value: float
    unit: str
    ratios: dict = field(default_factory=dict)  # baseline name -> value / baseline value
    target: str = ""
    met: bool | None = None


@dataclass
class BenchResult:
    figures: list
    details: dict  # inputs, raw runs and anything else needed to reproduce or question the figures


# ---------------------------------------------------------------------------------------------------
# Measuring processes


@dataclass
class ProcessRun:
    wall_seconds: float
    peak_rss_mib: float


@dataclass
class Measurement:
    command: list
    runs: list = field(default_factory=list)

    @property
    def wall_seconds(self):
        return statistics.median(run.wall_seconds for run in self.runs)

    @property
    def peak_rss_mib(self):
        return statistics.median(run.peak_rss_mib for run in self.runs)

    def to_json(self):
        return {"command": self.command, "median_wall_seconds": self.wall_seconds,
                "median_peak_rss_mib": self.peak_rss_mib, "runs": [asdict(run) for run in self.runs]}


def run_process(command, log_path):
    """Runs `command` to completion; returns its wall time and its own peak RSS.

    The peak RSS comes from GNU time rather than from wait4() here: Linux carries the RSS high-water
    mark of the process that forks into the child over exec, so every child of this Python process
    would report at least this process's own peak. GNU time itself stays around 1 MiB."""
    rss_path = log_path.with_suffix(".peak-rss")
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        start = time.perf_counter()
        completed = subprocess.run([GNU_TIME, "--quiet", "--format=%M", f"--output={rss_path}", *command],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wall_seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise BenchError(f"{shlex.join(command)} exited with {completed.returncode}; "
                         f"its output is in {log_path}")
    return ProcessRun(wall_seconds, int(rss_path.read_text()) / 1024)  # %M is in KiB


def measure_interleaved(commands, runs, log_path):
    """Runs every command of {name: argv} `runs` times, in rounds of one run each, so that load from
    other processes on the machine spreads over all commands instead of skewing one of them."""
    if not os.access(GNU_TIME, os.X_OK):
        raise BenchError(f"{GNU_TIME} is missing: install the Debian package `time`")
    log_path.write_bytes(b"")
    measurements = {name: Measurement(command) for name, command in commands.items()}
    for round_number in range(1, runs + 1):
        for name, measurement in measurements.items():
            print(f"  round {round_number}/{runs}: {name}", flush=True)
            measurement.runs.append(run_process(measurement.command, log_path))
    return measurements


def run_json(command):
    """Runs a program that times itself and prints one JSON object; returns that object."""
    completed = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if completed.returncode != 0:
        raise BenchError(f"{shlex.join(command)} exited with {completed.returncode}: "
                         f"{completed.stderr.strip()}")
    return json.loads(completed.stdout)


def collect_self_timed_runs(timers, rounds):
    """Runs each self-timing program of {name: argv} once per round, interleaved for the same reason
    as in measure_interleaved(); returns {name: every "run_seconds" entry of its reports}."""
    run_seconds = {name: [] for name in timers}
    for round_number in range(1, rounds + 1):
        for name, command in timers.items():
            print(f"    round {round_number}/{rounds}: {name}", flush=True)
            run_seconds[name] += run_json(command)["run_seconds"]
    return run_seconds


def require_tool(path, option):
    if path is None:
        raise Skipped(f"{option} not given")
    if not os.access(path, os.X_OK):
        raise BenchError(f"{option} {path} is not an executable file")
    return str(Path(path).resolve())


def system_tool(name):
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"{name} is not installed")
    return path


def warm_page_cache(path):
    """Reads the file once so that every measured command finds it in memory, not on disk."""
    buffer = bytearray(16 * MIB)
    with open(path, "rb", buffering=0) as file:
        while file.readinto(buffer):
            pass


# ---------------------------------------------------------------------------------------------------
# Sanitizing a Llama-style checkpoint


# TinyLlama-1.1B's dimensions (grouped-query attention with 4 key/value heads); the layer count is
# chosen to reach the requested file size.
LLAMA_HIDDEN = 2048
LLAMA_INTERMEDIATE = 5632
LLAMA_HEADS = 32
LLAMA_KV_HEADS = 4
LLAMA_VOCAB = 32000
LLAMA_HEAD_DIM = LLAMA_HIDDEN // LLAMA_HEADS
CHECKPOINT_SEED = 20240601

# Load and re-save with PyTorch's restricted loader: the way to rewrite a checkpoint without zoogate.
TORCH_RESAVE = "import sys, torch; torch.save(torch.load(sys.argv[1], weights_only=True), sys.argv[2])"

# The design's budgets for `zoogate sanitize`.
SANITIZE_TIME_RATIO_TARGET = 1.3  # times `openssl dgst -sha256` on the same file
SANITIZE_RSS_BUDGET_MIB = 64      # plus the size of the checkpoint's pickle


def llama_layer_count(target_mib):
    """How many decoder layers bring a bf16 checkpoint closest to `target_mib` (at least one)."""
    kv_width = LLAMA_KV_HEADS * LLAMA_HEAD_DIM
    layer_elements = (2 * LLAMA_HIDDEN * LLAMA_HIDDEN + 2 * kv_width * LLAMA_HIDDEN
                      + 3 * LLAMA_INTERMEDIATE * LLAMA_HIDDEN + 2 * LLAMA_HIDDEN)
    fixed_elements = 2 * LLAMA_VOCAB * LLAMA_HIDDEN + LLAMA_HIDDEN
    return max(1, round((target_mib * MIB / 2 - fixed_elements) / layer_elements))


def llama_state_dict_layout(layers):
    """(name, shape) of every tensor of a Llama state dict, in the order transformers saves them,
    including the rotary buffer that older transformers versions saved in every layer."""
    kv_width = LLAMA_KV_HEADS * LLAMA_HEAD_DIM
    yield "model.embed_tokens.weight", (LLAMA_VOCAB, LLAMA_HIDDEN)
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        yield prefix + "self_attn.q_proj.weight", (LLAMA_HIDDEN, LLAMA_HIDDEN)
        yield prefix + "self_attn.k_proj.weight", (kv_width, LLAMA_HIDDEN)
        yield prefix + "self_attn.v_proj.weight", (kv_width, LLAMA_HIDDEN)
        yield prefix + "self_attn.o_proj.weight", (LLAMA_HIDDEN, LLAMA_HIDDEN)
        yield prefix + "self_attn.rotary_emb.inv_freq", (LLAMA_HEAD_DIM // 2,)
        yield prefix + "mlp.gate_proj.weight", (LLAMA_INTERMEDIATE, LLAMA_HIDDEN)
        yield prefix + "mlp.up_proj.weight", (LLAMA_INTERMEDIATE, LLAMA_HIDDEN)
        yield prefix + "mlp.down_proj.weight", (LLAMA_HIDDEN, LLAMA_INTERMEDIATE)
        yield prefix + "input_layernorm.weight", (LLAMA_HIDDEN,)
        yield prefix + "post_attention_layernorm.weight", (LLAMA_HIDDEN,)
    yield "model.norm.weight", (LLAMA_HIDDEN,)
    yield "lm_head.weight", (LLAMA_VOCAB, LLAMA_HIDDEN)


def cached_llama_checkpoint(work, target_mib):
    """A torch.save'd Llama-style bf16 state dict of about `target_mib`, generated once per size and
    seed. Only the state dict itself is held in memory while it is written."""
    layers = llama_layer_count(target_mib)
    path = work / f"llama-h{LLAMA_HIDDEN}-{layers}layers-seed{CHECKPOINT_SEED}.pt"
    if path.exists():
        return path
    import torch  # only generation needs torch; the rest of the harness runs without it

    print(f"  generating {path.name} (once; later runs reuse it)", flush=True)
    generator = torch.Generator().manual_seed(CHECKPOINT_SEED)
    state_dict = collections.OrderedDict()
    for name, shape in llama_state_dict_layout(layers):
        # Values shaped like a fresh model's: float32 rotary frequencies, bf16 norms at one and bf16
        # weights drawn from N(0, 0.02), so the file holds incompressible bytes like a real one.
        if name.endswith("inv_freq"):
            exponents = torch.arange(0, LLAMA_HEAD_DIM, 2, dtype=torch.float32) / LLAMA_HEAD_DIM
            state_dict[name] = 1.0 / (10000 ** exponents)
        elif name.endswith("norm.weight"):
            state_dict[name] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            state_dict[name] = torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=generator)
    partial = path.with_name(path.name + ".partial")  # an interrupted run must not leave a "cached" file
    torch.save(state_dict, partial)
    os.replace(partial, path)
    return path


def pickle_size_in_archive(checkpoint):
    """Size of the data.pkl record of a torch.save zip archive."""
    with zipfile.ZipFile(checkpoint) as archive:
        pickles = [info.file_size for info in archive.infolist() if info.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise BenchError(f"{checkpoint} does not hold exactly one data.pkl")
    return pickles[0]


def checked_sanitize_report(report_path):
    """The parts of zoogate's JSON report that show it did the whole job: a clean verdict, the output
    digest and a digest per written record."""
    report = json.loads(report_path.read_text())
    if report.get("verdict") != "clean":
        raise BenchError(f"zoogate sanitize did not report a clean verdict: see {report_path}")
    if "sha256" not in report.get("output", {}) or not report.get("records"):
        raise BenchError(f"zoogate's report lacks the output or record digests: see {report_path}")
    return {"verdict": report["verdict"], "container": report.get("container"),
            "output_size": report["output"]["size"], "output_sha256": report["output"]["sha256"],
            "records": len(report["records"])}


def bench_sanitize(options):
    zoogate = require_tool(options.zoogate, "--zoogate")
    openssl = system_tool("openssl")
    dd = system_tool("dd")
    checkpoint = cached_llama_checkpoint(options.work, options.checkpoint_mib)
    pickle_mib = pickle_size_in_archive(checkpoint) / MIB
    warm_page_cache(checkpoint)

    sanitized = options.work / "sanitized.pt"
    resaved = options.work / "torch-resaved.pt"
    copied = options.work / "dd-copy.pt"
    report_path = options.work / "sanitize-report.json"
    scan_report_path = options.work / "scan-report.json"
    commands = {
        "openssl dgst": [openssl, "dgst", "-sha256", str(checkpoint)],
        "zoogate sanitize": [zoogate, "sanitize", str(checkpoint), "-o", str(sanitized),
                             "--json", "--report", str(report_path)],
        # The same engine with nothing written: separates parsing and hashing from the output's I/O.
        "zoogate scan": [zoogate, "scan", str(checkpoint), "--json", "--report", str(scan_report_path)],
        "torch load+save": [DEBIAN_PYTHON, "-c", TORCH_RESAVE, str(checkpoint), str(resaved)],
        # What writing the same number of bytes through the page cache costs (sanitize does not fsync
        # by default either): the floor under any tool that writes a rebuilt file.
        "dd copy": [dd, f"if={checkpoint}", f"of={copied}", "bs=1M", "status=none"],
    }
    try:
        measured = measure_interleaved(commands, options.runs, options.work / "sanitize.log")
        report = checked_sanitize_report(report_path)
    finally:
        for output in (sanitized, resaved, copied):  # more 1 GiB files are not worth keeping
            output.unlink(missing_ok=True)

    digest, zoogate_run, scan_run, torch_run, copy_run = (measured[name] for name in commands)
    rss_budget_mib = SANITIZE_RSS_BUDGET_MIB + pickle_mib
    time_ratio = zoogate_run.wall_seconds / digest.wall_seconds
    figures = [
        Figure("openssl dgst -sha256: wall time", digest.wall_seconds, "s"),
        Figure("torch load+save: wall time", torch_run.wall_seconds, "s",
               {"openssl dgst": torch_run.wall_seconds / digest.wall_seconds}),
        Figure("zoogate sanitize: wall time", zoogate_run.wall_seconds, "s",
               {"openssl dgst": time_ratio,
                "torch load+save": zoogate_run.wall_seconds / torch_run.wall_seconds,
                "dd copy": zoogate_run.wall_seconds / copy_run.wall_seconds},
               target=f"<= {SANITIZE_TIME_RATIO_TARGET}x openssl dgst",
               met=time_ratio <= SANITIZE_TIME_RATIO_TARGET),
        Figure("zoogate scan (nothing written): wall time", scan_run.wall_seconds, "s",
               {"openssl dgst": scan_run.wall_seconds / digest.wall_seconds}),
        Figure("dd copy (write floor): wall time", copy_run.wall_seconds, "s",
               {"openssl dgst": copy_run.wall_seconds / digest.wall_seconds}),
        Figure("openssl dgst -sha256: peak RSS", digest.peak_rss_mib, "MiB"),
        Figure("torch load+save: peak RSS", torch_run.peak_rss_mib, "MiB",
               {"openssl dgst": torch_run.peak_rss_mib / digest.peak_rss_mib}),
        Figure("zoogate sanitize: peak RSS", zoogate_run.peak_rss_mib, "MiB",
               {"openssl dgst": zoogate_run.peak_rss_mib / digest.peak_rss_mib,
                "torch load+save": zoogate_run.peak_rss_mib / torch_run.peak_rss_mib},
               target=f"< {rss_budget_mib:.1f} MiB ({SANITIZE_RSS_BUDGET_MIB} MiB + pickle)",
               met=zoogate_run.peak_rss_mib < rss_budget_mib),
    ]
    details = {
        "checkpoint": {"path": str(checkpoint), "size": checkpoint.stat().st_size,
                       "pickle_size": round(pickle_mib * MIB)},
        "sanitize_report": report,
        "measurements": {name: measurement.to_json() for name, measurement in measured.items()},
    }
    return BenchResult(figures, details)


# ---------------------------------------------------------------------------------------------------
# MTD: layout and weight variation plus a signed manifest, on the same checkpoint

MTD_TIME_RATIO_TARGET = 2.0  # times `openssl dgst -sha256` on the same file
MTD_SECRET = bytes(range(32))  # a fixed secret: the variant, and so the work, is the same every run


def bench_mtd(options):
    zoogate = require_tool(options.zoogate, "--zoogate")
    openssl = system_tool("openssl")
    checkpoint = cached_llama_checkpoint(options.work, options.checkpoint_mib)
    warm_page_cache(checkpoint)
    secret = options.work / "mtd-secret"
    secret.write_bytes(MTD_SECRET)
    config = options.work / "llama-config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": LLAMA_HIDDEN,
                                  "intermediate_size": LLAMA_INTERMEDIATE, "num_attention_heads": LLAMA_HEADS,
                                  "num_key_value_heads": LLAMA_KV_HEADS}))
    key, public_key = options.work / "mtd-signing.key", options.work / "mtd-signing.pub"
    subprocess.run([zoogate, "keygen", "--private", str(key), "--public", str(public_key), "--force"],
                   check=True, capture_output=True)
    varied = options.work / "varied.pt"
    manifest = options.work / "varied.manifest.json"
    commands = {
        "openssl dgst": [openssl, "dgst", "-sha256", str(checkpoint)],
        "zoogate sanitize + MTD": [zoogate, "sanitize", str(checkpoint), "-o", str(varied), "--mtd-secret", str(secret),
                                   "--mtd-scope", "bench", "--mtd-weights", "--model-config", str(config),
                                   "--sign", str(key), "--manifest", str(manifest)],
    }
    try:
        measured = measure_interleaved(commands, options.runs, options.work / "mtd.log")
        verified = subprocess.run([zoogate, "verify", str(varied), "--manifest", str(manifest), "--pubkey",
                                   str(public_key)], capture_output=True, text=True)
        if verified.returncode != 0:
            raise BenchError(f"the varied file does not verify against its manifest: {verified.stdout}")
    finally:
        varied.unlink(missing_ok=True)
    digest, varied_run = measured["openssl dgst"], measured["zoogate sanitize + MTD"]
    ratio = varied_run.wall_seconds / digest.wall_seconds
    figures = [
        Figure("openssl dgst -sha256: wall time", digest.wall_seconds, "s"),
        Figure("sanitize + layout/weight variation + signed manifest: wall time", varied_run.wall_seconds, "s",
               {"openssl dgst": ratio}, target=f"<= {MTD_TIME_RATIO_TARGET}x openssl dgst",
               met=ratio <= MTD_TIME_RATIO_TARGET),
        Figure("sanitize + layout/weight variation + signed manifest: peak RSS", varied_run.peak_rss_mib, "MiB",
               {"openssl dgst": varied_run.peak_rss_mib / digest.peak_rss_mib}),
    ]
    details = {"measurements": {name: measurement.to_json() for name, measurement in measured.items()}}
    return BenchResult(figures, details)


# ---------------------------------------------------------------------------------------------------
# Pickle VM throughput on many small objects


SMALL_RECORD_COUNT = 400_000
PICKLE_PROTOCOLS = (2, 4)
VM_THROUGHPUT_TARGET_MBPS = 200

# CPython's C unpickler timed in process exactly like bench_pickle_vm times zoogate's VM: one warm-up,
# then timed runs, building the objects timed and freeing them not. The cyclic garbage collector is
# off while timing so that the baseline is the unpickler itself (the stricter comparison).
CPYTHON_UNPICKLE_TIMER = """
import gc, json, pickle, sys, time
data = open(sys.argv[1], "rb").read()
run_seconds = []
for run in range(int(sys.argv[2]) + 1):
    gc.disable()
    start = time.perf_counter()
    value = pickle.loads(data)
    elapsed = time.perf_counter() - start
    del value
    gc.enable()
    if run:
        run_seconds.append(elapsed)
print(json.dumps({"run_seconds": run_seconds}))
"""


def write_small_records_pickle(path, protocol):
    """Many small objects, as in a tokenizer table or training-state pickle: a list of short tuples
    of int, str, float and bool."""
    records = [(index, f"token-{index}", index * 0.001, index % 3 == 0)
               for index in range(SMALL_RECORD_COUNT)]
    path.write_bytes(pickle.dumps(records, protocol=protocol))


def bench_pickle_vm(options):
    bench_vm = require_tool(options.bench_vm, "--bench-vm")
    figures, details = [], {"records": SMALL_RECORD_COUNT, "protocols": {}}
    for protocol in PICKLE_PROTOCOLS:
        path = options.work / f"small-records-p{protocol}.pkl"
        write_small_records_pickle(path, protocol)
        size = path.stat().st_size
        print(f"  protocol {protocol}: {size / MIB:.1f} MiB", flush=True)
        runs = str(options.vm_runs)
        run_seconds = collect_self_timed_runs({
            "CPython": [DEBIAN_PYTHON, "-c", CPYTHON_UNPICKLE_TIMER, str(path), runs],
            "zoogate": [bench_vm, str(path), runs],
        }, options.runs)
        cpython_mbps = size / statistics.median(run_seconds["CPython"]) / 1e6
        zoogate_mbps = size / statistics.median(run_seconds["zoogate"]) / 1e6
        figures += [
            Figure(f"CPython pickle.loads, protocol {protocol}", cpython_mbps, "MB/s"),
            Figure(f"zoogate pickle VM, protocol {protocol}", zoogate_mbps, "MB/s",
                   {"CPython pickle.loads": zoogate_mbps / cpython_mbps},
                   target=f">= {VM_THROUGHPUT_TARGET_MBPS} MB/s (~10x CPython)",
                   met=zoogate_mbps >= VM_THROUGHPUT_TARGET_MBPS),
        ]
        details["protocols"][protocol] = {"bytes": size, "run_seconds": run_seconds}
    return BenchResult(figures, details)


# ---------------------------------------------------------------------------------------------------
# Driver


BENCHMARKS = {
    "sanitize": bench_sanitize,
    "mtd": bench_mtd,
    "pickle_vm": bench_pickle_vm,
}


def host_description():
    """What the figures depend on besides the code: the machine, how busy it was, the source tree."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    commit = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "load_average": os.getloadavg(), "git_commit": commit or None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def format_value(value, unit):
    return f"{value:.3f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def print_table(results):
    rows = [("benchmark", "measurement", "value", "ratio", "target", "")]
    for name, result in results.items():
        if "figures" not in result:
            rows.append((name, result.get("skipped") or f"ERROR: {result['error']}", "", "", "", ""))
            continue
        for figure in result["figures"]:
            ratios = ", ".join(f"{ratio:.2f}x {baseline}" for baseline, ratio in figure["ratios"].items())
            verdict = {True: "met", False: "MISSED", None: ""}[figure["met"]]
            rows.append((name, figure["measurement"], format_value(figure["value"], figure["unit"]),
                         ratios, figure["target"], verdict))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    print()
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths).rstrip())


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoogate", help="the zoogate executable (for the sanitize benchmark)")
    parser.add_argument("--bench-vm", help="the bench_pickle_vm executable (for the pickle_vm benchmark)")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for generated inputs (kept and reused), outputs, logs and results")
    parser.add_argument("--only", action="append", choices=BENCHMARKS,
                        help="run only this benchmark (repeatable); default: all")
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds: runs of each external command or self-timing program (default 3)")
    parser.add_argument("--vm-runs", type=int, default=10,
                        help="timed runs of each unpickler within one process (default 10)")
    parser.add_argument("--checkpoint-mib", type=int, default=1024,
                        help="size of the generated checkpoint (default 1024; about 340 at least)")
    options = parser.parse_args()
    if options.runs < 1 or options.vm_runs < 1:
        parser.error("--runs and --vm-runs must be at least 1")
    return options


def main():
    options = parse_arguments()
    options.work.mkdir(parents=True, exist_ok=True)
    host = host_description()
    print(f"host: {host['cpu']}, {host['cpus']} CPUs, load average {host['load_average'][0]:.2f}")
    results, harness_failed = {}, False
    for name in options.only or BENCHMARKS:
        print(f"{name}:", flush=True)
        try:
            result = BENCHMARKS[name](options)
            results[name] = {"figures": [asdict(figure) for figure in result.figures],
                             "details": result.details}
        except Skipped as reason:
            results[name] = {"skipped": f"skipped: {reason}"}
        except BenchError as error:
            results[name] = {"error": str(error)}
            harness_failed = True
    print_table(results)
    results_path = options.work / "bench-results.json"
    results_path.write_text(json.dumps({"host": host, "benchmarks": results}, indent=2) + "\n")
    print(f"\nfigures and raw runs: {results_path}")
    return 1 if harness_failed else 0


if __name__ == "__main__":
    sys.exit(main())
