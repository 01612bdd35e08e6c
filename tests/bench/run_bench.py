#!/usr/bin/python3
"""zoogate benchmarks (DESIGN.md section 8): every figure is a ratio against a baseline measured in
the same run, on the same machine, so that the figures mean something on a busy or slow host.

Run with Debian's /usr/bin/python3, which has torch (used only to generate the test checkpoint),
usually through `cmake --build build --target bench`. Benchmarks never pass or fail: they print a
table that marks each design target as met or missed and write the same figures, with every raw run,
to <work>/bench-results.json. The exit status is non-zero only when the harness could not measure
(a tool missing or failing). Generated inputs are cached in <work> and reused.

Adding a benchmark: write `bench_<name>(options) -> BenchResult` and list it in BENCHMARKS.
`measure_interleaved()` times external commands (wall time, peak RSS, CPU); `run_json()` runs a
program that times itself and reports JSON. The proxy benchmarks (`--only proxy`) run `zoogate serve`
between nginx servers on the loopback interface; proxy_bench.py has the servers and the clients.
"""
import argparse
import collections
import contextlib
import json
import os
import pickle
import platform
import random
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import proxy_bench

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
    # CPU time the whole machine spent busy during the run, in core-seconds: the origin, the proxy
    # and the client all run here, so this is the work one download costs, whoever does it.
    machine_busy_seconds: float
    own_cpu_seconds: float  # the command's own user and system time
    # The CPU that watched server processes spent during the run, by role ("origin", "proxy"), in
    # core-seconds: what each side of a download costs, which the machine's total does not tell.
    server_cpu_seconds: dict = field(default_factory=dict)


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

    @property
    def machine_busy_seconds(self):
        return statistics.median(run.machine_busy_seconds for run in self.runs)

    @property
    def own_cpu_seconds(self):
        return statistics.median(run.own_cpu_seconds for run in self.runs)

    def server_cpu_seconds(self, role):
        return statistics.median(run.server_cpu_seconds[role] for run in self.runs)

    def to_json(self):
        return {"command": self.command, "median_wall_seconds": self.wall_seconds,
                "median_peak_rss_mib": self.peak_rss_mib, "median_machine_busy_seconds": self.machine_busy_seconds,
                "median_own_cpu_seconds": self.own_cpu_seconds,
                "runs": [asdict(run) for run in self.runs]}


def machine_busy_seconds():
    """Core-seconds all CPUs have spent busy since boot: user, nice, system, irq and softirq of
    /proc/stat's cpu line (not idle or iowait, nor steal, time the hypervisor gave to others, nor
    guest time, which user already counts)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, irq, softirq = fields[0], fields[1], fields[2], fields[5], fields[6]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def run_process(command, log_path, servers=None):
    """Runs `command` to completion; returns its wall time, its own peak RSS and CPU, and the CPU of
    the `servers` ({role: process ids}) meanwhile.

    The peak RSS comes from GNU time rather than from wait4() here: Linux carries the RSS high-water
    mark of the process that forks into the child over exec, so every child of this Python process
    would report at least this process's own peak. GNU time itself stays around 1 MiB."""
    servers = servers or {}
    usage_path = log_path.with_suffix(".usage")
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        servers_at_start = {role: proxy_bench.cpu_seconds(pids) for role, pids in servers.items()}
        start, busy_at_start = time.perf_counter(), machine_busy_seconds()
        completed = subprocess.run([GNU_TIME, "--quiet", "--format=%M %U %S", f"--output={usage_path}", *command],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        wall_seconds, busy_seconds = time.perf_counter() - start, machine_busy_seconds() - busy_at_start
        server_seconds = {role: proxy_bench.cpu_seconds(pids) - servers_at_start[role]
                          for role, pids in servers.items()}
    if completed.returncode != 0:
        raise BenchError(f"{shlex.join(command)} exited with {completed.returncode}; "
                         f"its output is in {log_path}")
    peak_rss_kib, user_seconds, system_seconds = usage_path.read_text().split()
    return ProcessRun(wall_seconds, int(peak_rss_kib) / 1024, busy_seconds, float(user_seconds) + float(system_seconds),
                      server_seconds)


def measure_interleaved(commands, runs, log_path, servers=None):
    """Runs every command of {name: argv} `runs` times, in rounds of one run each, so that load from
    other processes on the machine spreads over all commands instead of skewing one of them.
    `servers` gives, by command name, the server processes to account CPU to ({role: process ids})."""
    if not os.access(GNU_TIME, os.X_OK):
        raise BenchError(f"{GNU_TIME} is missing: install the Debian package `time`")
    servers = servers or {}
    log_path.write_bytes(b"")
    measurements = {name: Measurement(command) for name, command in commands.items()}
    for round_number in range(1, runs + 1):
        for name, measurement in measurements.items():
            print(f"  round {round_number}/{runs}: {name}", flush=True)
            measurement.runs.append(run_process(measurement.command, log_path, servers.get(name)))
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
# The proxy (`zoogate serve`): pass-through, a cold pickle checkpoint, many concurrent downloads
#
# An nginx origin over TLS (test CA) plays the Hub for a few files: `resolve` answers 302 to its /cdn/
# path with the Hub's headers. The baseline is a second nginx in front of it (`proxy_pass` with the
# certificate verified). Clients reach zoogate and that nginx on plain HTTP over loopback.

PASS_THROUGH_RATIO_TARGET = 0.9  # zoogate's throughput, times nginx proxy_pass's
# zoogate's time for a cold checkpoint, times its time to pass the same number of bytes through
# (DESIGN.md section 8: "within 1.25x the time of the same bytes passed through")
COLD_PICKLE_RATIO_TARGET = 1.25
# The origin's rate for proxy_cold_pickle_link, in nginx's notation: 125 MiB/s, about a 1 Gbit/s link.
ORIGIN_LINK_RATE = "125m"
CONCURRENT_RSS_BUDGET_MIB = 256
BENCH_REPO = "bench/model"
SMALL_BENCH_REPO = "bench/small-model"
SAFETENSORS_SEED = 20240602
SAFETENSORS_MATRIX = (4096, 4096)  # bf16: 32 MiB
SMALL_CHECKPOINT_MIB = 4
# Long enough that a client waits for a cold 1 GiB checkpoint instead of getting 503 + Retry-After.
CLIENT_WAIT = "10m"


def safetensors_header(data_size):
    """The JSON header of a safetensors file whose data section is `data_size` bytes: as many bf16
    matrices as fit, then one uint8 tensor holding the rest."""
    rows, columns = SAFETENSORS_MATRIX
    matrix_bytes = rows * columns * 2
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    while data_size - offset >= matrix_bytes:
        header[f"model.layers.{len(header) - 1}.weight"] = {
            "dtype": "BF16", "shape": [rows, columns], "data_offsets": [offset, offset + matrix_bytes]}
        offset += matrix_bytes
    if offset < data_size:
        header["model.rest"] = {"dtype": "U8", "shape": [data_size - offset], "data_offsets": [offset, data_size]}
    return json.dumps(header, separators=(",", ":")).encode()


def cached_safetensors(work, size):
    """A safetensors file of exactly `size` bytes of random (incompressible) tensor data, generated
    once per size. The header is padded with spaces to a multiple of 8 bytes, as the reference
    writer pads it."""
    path = work / f"tensors-{size}-seed{SAFETENSORS_SEED}.safetensors"
    if path.exists():
        return path
    print(f"  generating {path.name} (once; later runs reuse it)", flush=True)
    header_size = 0
    for _ in range(10):  # the header's length depends on the data size, which depends on it
        header = safetensors_header(size - 8 - header_size)
        padded = -(-len(header) // 8) * 8
        if padded == header_size:
            break
        header_size = padded
    else:
        raise BenchError(f"found no safetensors layout of exactly {size} bytes")
    generator = random.Random(SAFETENSORS_SEED)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        file.write(struct.pack("<Q", header_size) + header.ljust(header_size, b" "))
        remaining = size - 8 - header_size
        while remaining:
            piece = min(remaining, 16 * MIB)
            file.write(generator.randbytes(piece))
            remaining -= piece
    os.replace(partial, path)
    return path


def cached_small_checkpoint(work):
    """A torch.save'd state dict of about SMALL_CHECKPOINT_MIB: bf16 weights drawn from N(0, 0.02)."""
    path = work / f"small-{SMALL_CHECKPOINT_MIB}mib-seed{CHECKPOINT_SEED}.pt"
    if path.exists():
        return path
    import torch

    generator = torch.Generator().manual_seed(CHECKPOINT_SEED)
    state_dict = collections.OrderedDict()
    for layer in range(SMALL_CHECKPOINT_MIB):  # 1 MiB each
        state_dict[f"model.layers.{layer}.weight"] = torch.empty((512, 1024), dtype=torch.bfloat16).normal_(
            0, 0.02, generator=generator)
    state_dict["model.norm.weight"] = torch.ones(1024, dtype=torch.bfloat16)
    partial = path.with_name(path.name + ".partial")
    torch.save(state_dict, partial)
    os.replace(partial, path)
    return path


def nginx_tool():
    """Debian installs nginx in /usr/sbin, which is not on every user's PATH."""
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if path is None:
        raise BenchError("nginx is not installed: install the Debian package `nginx`")
    return path


def start_hub_servers(stack, folder, files, origin_rate=None):
    """Starts, within `stack`, the origin (a minimal Hub over TLS for `files`, sending at most
    `origin_rate` bytes per second per connection when given, in nginx's notation) and the nginx that
    proxies to it; returns (certificates, origin, front)."""
    certificates = proxy_bench.TestCertificates(folder / "ca").generate(system_tool("openssl"))
    nginx = nginx_tool()
    origin = stack.enter_context(
        proxy_bench.Nginx.origin(nginx, folder / "nginx-origin", certificates, folder / "cdn", files, origin_rate))
    front = stack.enter_context(
        proxy_bench.Nginx.front(nginx, folder / "nginx-front", origin.port, certificates.ca_pem, folder / "cdn"))
    return certificates, origin, front


def start_zoogate(stack, zoogate, folder, origin, certificates, **sections):
    """Starts, within `stack`, `zoogate serve` in front of the origin with an empty cache folder,
    deleted once zoogate has stopped (its artifacts are as large as the inputs)."""
    cache = folder / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    stack.callback(shutil.rmtree, cache, ignore_errors=True)
    config = proxy_bench.zoogate_config(folder, origin.port, certificates.ca_pem, cache, **sections)
    return stack.enter_context(proxy_bench.Zoogate(zoogate, folder, config))


def curl_download(curl, url, ca_pem=None):
    """curl downloading to /dev/null, failing on any answer but 2xx."""
    return [curl, "--silent", "--show-error", "--fail", "--output", "/dev/null",
            *(["--cacert", str(ca_pem)] if ca_pem else []), url]


def checked_download(url, expected_sha256, what, ca_pem=None):
    """One download of `url` whose bytes must have `expected_sha256`; returns proxy_bench.fetch()'s
    result."""
    result = proxy_bench.fetch(url, ca_pem)
    if result["sha256"] != expected_sha256:
        raise BenchError(f"{what}: {url} gave {result['size']} bytes with SHA-256 {result['sha256']}, "
                         f"not {expected_sha256}")
    return result


def checked_artifact(url, upstream):
    """One download of a pickle-bearing file through zoogate: the bytes must match the digest in the
    answer's ETag, and the answer must name the upstream file and a clean or disarmed verdict."""
    result = proxy_bench.fetch(url)
    headers = result["headers"]
    served = headers.get("etag", "").removeprefix("W/").strip('"')
    problems = []
    if result["sha256"] != served:
        problems.append(f"the bytes have SHA-256 {result['sha256']}, the ETag says {served or 'nothing'}")
    if headers.get("x-zoogate-upstream-sha256") != upstream.sha256:
        problems.append(f"X-Zoogate-Upstream-Sha256 is {headers.get('x-zoogate-upstream-sha256')}")
    if headers.get("x-zoogate-verdict") not in ("clean", "disarmed"):
        problems.append(f"X-Zoogate-Verdict is {headers.get('x-zoogate-verdict')}")
    if problems:
        raise BenchError(f"zoogate's answer for {url}: " + "; ".join(problems))
    return result


def artifact_facts(result):
    headers = result["headers"]
    return {"size": result["size"], "sha256": result["sha256"], "verdict": headers.get("x-zoogate-verdict"),
            "upstream_sha256": headers.get("x-zoogate-upstream-sha256")}


def bench_safetensors_file(options):
    """The pass-through benchmarks' file: generated safetensors of --checkpoint-mib, warm in the page
    cache, as the Hub file model.safetensors."""
    tensors = cached_safetensors(options.work, options.checkpoint_mib * MIB)
    warm_page_cache(tensors)
    return proxy_bench.HubFile(BENCH_REPO, "model.safetensors", tensors)


def busy_figure(name, measurement, baseline, baseline_name):
    """The machine's busy CPU during `measurement`'s downloads, against `baseline`'s. Where every core
    is busy, time cannot shrink below this work divided by the cores, so a wall-time ratio well under
    this ratio needs a machine with idle cores."""
    return Figure(f"{name}: machine CPU busy ({os.cpu_count()} cores)", measurement.machine_busy_seconds,
                  "core-s", {baseline_name: measurement.machine_busy_seconds / baseline.machine_busy_seconds})


def bench_proxy_pass_through(options):
    zoogate = require_tool(options.zoogate, "--zoogate")
    curl = system_tool("curl")
    folder = options.work / "proxy-pass-through"
    file = bench_safetensors_file(options)
    with contextlib.ExitStack() as stack:
        certificates, origin, front = start_hub_servers(stack, folder, [file])
        gateway = start_zoogate(stack, zoogate, folder / "zoogate", origin, certificates)
        paths = {  # name: (URL, CA bundle for https)
            "origin direct": (f"https://127.0.0.1:{origin.port}{file.cdn_path}", certificates.ca_pem),
            "nginx proxy_pass": (front.url + file.cdn_path, None),
            "zoogate": (gateway.hub_url + file.resolve_path, None),
        }
        print("  checking the bytes of each path once", flush=True)
        for name, (url, ca_pem) in paths.items():
            checked_download(url, file.sha256, name, ca_pem)
        commands = {name: curl_download(curl, url, ca_pem) for name, (url, ca_pem) in paths.items()}
        # The work zoogate adds to a proxy's: its check of the bytes against the Hub's X-Linked-Etag.
        commands["sha256 of the file"] = [system_tool("openssl"), "dgst", "-sha256", str(file.path)]
        servers = {"origin direct": {"origin": origin.workers()},
                   "nginx proxy_pass": {"origin": origin.workers(), "proxy": front.workers()},
                   "zoogate": {"origin": origin.workers(), "proxy": [gateway.pid]}}
        measured = measure_interleaved(commands, options.runs, folder / "runs.log", servers)
        zoogate_rss, nginx_rss = gateway.peak_rss_mib(), front.workers_peak_rss_mib()
        metrics_path = folder / "zoogate-metrics.txt"
        metrics_path.write_text(gateway.metrics_text())

    throughput = {name: file.size / measured[name].wall_seconds / 1e6 for name in paths}
    ratio = throughput["zoogate"] / throughput["nginx proxy_pass"]
    hashing = measured["sha256 of the file"]
    zoogate_cpu, nginx_cpu = (measured[name].server_cpu_seconds("proxy") for name in ("zoogate", "nginx proxy_pass"))
    figures = [
        Figure("origin direct, TLS (the ceiling): throughput", throughput["origin direct"], "MB/s"),
        Figure("nginx proxy_pass: throughput", throughput["nginx proxy_pass"], "MB/s",
               {"origin direct": throughput["nginx proxy_pass"] / throughput["origin direct"]}),
        Figure("zoogate pass-through: throughput", throughput["zoogate"], "MB/s",
               {"nginx proxy_pass": ratio, "origin direct": throughput["zoogate"] / throughput["origin direct"]},
               target=f">= {PASS_THROUGH_RATIO_TARGET}x nginx proxy_pass", met=ratio >= PASS_THROUGH_RATIO_TARGET),
        Figure("zoogate: peak RSS (VmHWM)", zoogate_rss, "MiB", {"nginx workers": zoogate_rss / nginx_rss}),
        busy_figure("zoogate pass-through", measured["zoogate"], measured["nginx proxy_pass"], "nginx proxy_pass"),
        Figure("the file's SHA-256 (openssl dgst; zoogate's X-Linked-Etag check): machine CPU busy",
               hashing.machine_busy_seconds, "core-s",
               {"nginx proxy_pass": hashing.machine_busy_seconds / measured["nginx proxy_pass"].machine_busy_seconds}),
        Figure("zoogate's process: CPU", zoogate_cpu, "core-s", {"nginx proxy_pass workers": zoogate_cpu / nginx_cpu}),
        # What zoogate's relay costs beside nginx's, the hash it must add taken out.
        Figure("zoogate's process less the file's SHA-256 (openssl dgst's own CPU): CPU",
               zoogate_cpu - hashing.own_cpu_seconds, "core-s",
               {"nginx proxy_pass workers": (zoogate_cpu - hashing.own_cpu_seconds) / nginx_cpu}),
    ]
    details = {
        "file": {"path": str(file.path), "size": file.size, "sha256": file.sha256},
        "urls": {name: url for name, (url, _) in paths.items()},
        "zoogate_config": gateway.config, "zoogate_metrics": str(metrics_path),
        "nginx_workers_peak_rss_mib": nginx_rss,
        "measurements": {name: measurement.to_json() for name, measurement in measured.items()},
    }
    return BenchResult(figures, details)


def measure_cold_pickle(options, folder, origin_rate=None, with_comparisons=False):
    """Times, in rounds, nginx proxy_pass of the checkpoint, zoogate's cold download and a cached
    download of it (a fresh zoogate each round), and zoogate passing a safetensors file of the same
    size through. `origin_rate` limits what the origin sends per connection (nginx `limit_rate`, as
    "125m"), to stand for a network link; `with_comparisons` adds writing the checkpoint to two new
    files, hashing it, and a cold download with `cache.spool_direct_io` on. Returns the figures'
    inputs and the run details."""
    zoogate = require_tool(options.zoogate, "--zoogate")
    curl = system_tool("curl")
    checkpoint = cached_llama_checkpoint(options.work, options.checkpoint_mib)
    tensors = cached_safetensors(options.work, checkpoint.stat().st_size)  # a pass-through of the same size
    for path in (checkpoint, tensors):
        warm_page_cache(path)
    checkpoint_file = proxy_bench.HubFile(BENCH_REPO, "pytorch_model.bin", checkpoint)
    tensors_file = proxy_bench.HubFile(BENCH_REPO, "model.safetensors", tensors)
    sections = {"pipeline": {"client_wait": CLIENT_WAIT}}
    log_path = folder / "runs.log"
    measured = {name: Measurement([]) for name in
                ("nginx proxy_pass", "zoogate cold", "zoogate cached", "zoogate safetensors pass-through",
                 *(["new files", "sha256 of the checkpoint", "zoogate cold, spool_direct_io"] if with_comparisons
                   else []))}
    pipeline_seconds, zoogate_rss, served = [], [], None

    def timed(name, command, round_number, proxy=()):
        """Runs `command` as a run of `name`, with the CPU of the origin and of the `proxy` processes."""
        print(f"  round {round_number}/{options.runs}: {name}", flush=True)
        measured[name].command = command
        measured[name].runs.append(run_process(command, log_path, {"origin": origin.workers(), "proxy": list(proxy)}))

    with contextlib.ExitStack() as stack:
        certificates, origin, front = start_hub_servers(stack, folder, [checkpoint_file, tensors_file], origin_rate)
        log_path.write_bytes(b"")
        checked_download(front.url + checkpoint_file.cdn_path, checkpoint_file.sha256, "nginx proxy_pass")
        for round_number in range(1, options.runs + 1):
            timed("nginx proxy_pass", curl_download(curl, front.url + checkpoint_file.cdn_path), round_number,
                  front.workers())
            # A fresh zoogate with an empty cache each round: it downloads, disarms, then serves.
            with contextlib.ExitStack() as fresh:
                gateway = start_zoogate(fresh, zoogate, folder / "zoogate", origin, certificates, **sections)
                url = gateway.hub_url + checkpoint_file.resolve_path
                timed("zoogate cold", curl_download(curl, url), round_number, [gateway.pid])
                timed("zoogate cached", curl_download(curl, url), round_number, [gateway.pid])
                zoogate_rss.append(gateway.peak_rss_mib())
                metrics = gateway.metrics_text()
                pipeline_seconds.append({
                    "disarm": proxy_bench.metric_sum(metrics, "zoogate_disarm_duration_seconds_sum"),
                    "ready_after_download": proxy_bench.metric_sum(metrics,
                                                                   "zoogate_ready_after_download_seconds_sum"),
                    "variation": proxy_bench.metric_sum(metrics, "zoogate_variation_duration_seconds_sum"),
                    "clients_held": proxy_bench.metric_sum(metrics, "zoogate_clients_held_total")})
                if served is None:
                    served = artifact_facts(checked_artifact(url, checkpoint_file))
            with contextlib.ExitStack() as fresh:
                gateway = start_zoogate(fresh, zoogate, folder / "zoogate", origin, certificates, **sections)
                url = gateway.hub_url + tensors_file.resolve_path
                timed("zoogate safetensors pass-through", curl_download(curl, url), round_number, [gateway.pid])
                if round_number == 1:
                    checked_download(url, tensors_file.sha256, "zoogate safetensors pass-through")
            if with_comparisons:
                timed("new files", new_files_command(checkpoint, folder), round_number)
                timed("sha256 of the checkpoint", [system_tool("openssl"), "dgst", "-sha256", str(checkpoint)],
                      round_number)
                with contextlib.ExitStack() as fresh:
                    gateway = start_zoogate(fresh, zoogate, folder / "zoogate", origin, certificates,
                                            cache={"spool_direct_io": True}, **sections)
                    url = gateway.hub_url + checkpoint_file.resolve_path
                    timed("zoogate cold, spool_direct_io", curl_download(curl, url), round_number, [gateway.pid])
                    if round_number == 1:
                        checked_artifact(url, checkpoint_file)

    details = {
        "checkpoint": {"path": str(checkpoint), "size": checkpoint_file.size, "sha256": checkpoint_file.sha256},
        "safetensors": {"path": str(tensors), "size": tensors_file.size, "sha256": tensors_file.sha256},
        "origin_rate": origin_rate, "served_checkpoint": served, "zoogate_pipeline_metrics": pipeline_seconds,
        "zoogate_peak_rss_mib": zoogate_rss, "zoogate_config_sections": sections,
        "measurements": {name: measurement.to_json() for name, measurement in measured.items()},
    }
    return measured, pipeline_seconds, zoogate_rss, details


def new_files_command(source, folder):
    """A command that writes `source` (in memory) to two new files in `folder` and deletes them: the
    page-cache writes of a cold download, whose spool and rebuilt file are new files of about the
    checkpoint's size, without the network, the hashing or the disarm. Written 1 MiB at a time, as
    zoogate writes its spool."""
    copies = [folder / "new-file-1", folder / "new-file-2"]
    script = " && ".join([*(f"dd if={shlex.quote(str(source))} of={shlex.quote(str(copy))} bs=1M status=none"
                            for copy in copies),
                          "rm -f " + " ".join(shlex.quote(str(copy)) for copy in copies)])
    return ["/bin/sh", "-c", script]


def ready_after_download_figures(pipeline_seconds, cold, prefix=""):
    """The median time from a cold download's last byte to its rebuilt file being ready (zoogate's
    metric), beside the whole cold download."""
    ready = [entry["ready_after_download"] for entry in pipeline_seconds if entry["ready_after_download"] is not None]
    if not ready:
        return []
    return [Figure(f"{prefix}zoogate ready after the download's last byte (its metric)", statistics.median(ready),
                   "s", {"zoogate cold": statistics.median(ready) / cold})]


def bench_proxy_cold_pickle(options):
    measured, pipeline_seconds, zoogate_rss, details = measure_cold_pickle(options, options.work / "proxy-cold-pickle",
                                                                           with_comparisons=True)
    nginx, cold, cached, passed, new_files, _, cold_direct_io = (measured[name].wall_seconds for name in measured)
    ratio = cold / passed
    cold_cpu, cached_cpu, passed_cpu, cold_direct_io_cpu = (
        measured[name].server_cpu_seconds("proxy") for name in
        ("zoogate cold", "zoogate cached", "zoogate safetensors pass-through", "zoogate cold, spool_direct_io"))
    # A cold download hashes the checkpoint's bytes three times: the upstream check (X-Linked-Etag),
    # the per-tensor digests of the manifest and the served bytes' digest (ETag, Repr-Digest).
    hashing_cpu = 3 * measured["sha256 of the checkpoint"].own_cpu_seconds
    figures = [
        Figure("nginx proxy_pass, the checkpoint's bytes: wall time", nginx, "s"),
        Figure("zoogate, cold checkpoint (fetch, disarm, serve): wall time", cold, "s",
               {"zoogate safetensors pass-through": ratio, "nginx proxy_pass": cold / nginx},
               target=f"<= {COLD_PICKLE_RATIO_TARGET}x zoogate safetensors pass-through",
               met=ratio <= COLD_PICKLE_RATIO_TARGET),
        Figure("zoogate, same-size safetensors pass-through: wall time", passed, "s", {"nginx proxy_pass": passed / nginx}),
        Figure("zoogate, the checkpoint again (cached): wall time", cached, "s", {"nginx proxy_pass": cached / nginx}),
        Figure("writing the checkpoint to two new files (a cold download's spool and rebuilt file): wall time",
               new_files, "s", {"zoogate safetensors pass-through": new_files / passed}),
        Figure("zoogate, cold checkpoint with cache.spool_direct_io: wall time", cold_direct_io, "s",
               {"zoogate safetensors pass-through": cold_direct_io / passed, "zoogate cold": cold_direct_io / cold}),
        Figure("zoogate, cold checkpoint: peak RSS (VmHWM)", statistics.median(zoogate_rss), "MiB"),
        busy_figure("zoogate cold checkpoint", measured["zoogate cold"], measured["zoogate safetensors pass-through"],
                    "zoogate safetensors pass-through"),
        busy_figure("zoogate cold checkpoint with cache.spool_direct_io", measured["zoogate cold, spool_direct_io"],
                    measured["zoogate cold"], "zoogate cold"),
        Figure("zoogate cold checkpoint: its process's CPU", cold_cpu, "core-s",
               {"zoogate safetensors pass-through's": cold_cpu / passed_cpu}),
        Figure("zoogate cold checkpoint with cache.spool_direct_io: its process's CPU", cold_direct_io_cpu, "core-s",
               {"zoogate cold's": cold_direct_io_cpu / cold_cpu}),
        Figure("zoogate cached checkpoint: its process's CPU", cached_cpu, "core-s",
               {"zoogate safetensors pass-through's": cached_cpu / passed_cpu}),
        Figure("three SHA-256 passes over the checkpoint (3x openssl dgst's own CPU)", hashing_cpu, "core-s",
               {"zoogate cold's": hashing_cpu / cold_cpu}),
    ]
    disarm = [entry["disarm"] for entry in pipeline_seconds if entry["disarm"] is not None]
    if disarm:
        figures.append(Figure("zoogate disarm duration (its metric)", statistics.median(disarm), "s",
                              {"zoogate cold": statistics.median(disarm) / cold}))
    figures += ready_after_download_figures(pipeline_seconds, cold)
    return BenchResult(figures, details)


def bench_proxy_cold_pickle_link(options):
    """The cold checkpoint again, with the origin sending at most ORIGIN_LINK_RATE per connection, as
    a Hub behind a 1 Gbit/s link would: over loopback the download is faster than any real link, so
    the fixed costs after the last byte (the rest of the disarm, serving) weigh more than they would
    in use. An illustration beside the target, which the loopback figure is judged by."""
    measured, pipeline_seconds, _, details = measure_cold_pickle(options, options.work / "proxy-cold-pickle-link",
                                                                 ORIGIN_LINK_RATE)
    cold, passed = measured["zoogate cold"].wall_seconds, measured["zoogate safetensors pass-through"].wall_seconds
    figures = [
        Figure(f"origin at limit_rate {ORIGIN_LINK_RATE}: zoogate safetensors pass-through, wall time", passed, "s"),
        Figure(f"origin at limit_rate {ORIGIN_LINK_RATE}: zoogate cold checkpoint, wall time", cold, "s",
               {"zoogate safetensors pass-through": cold / passed}),
    ]
    figures += ready_after_download_figures(pipeline_seconds, cold, f"origin at limit_rate {ORIGIN_LINK_RATE}: ")
    return BenchResult(figures, details)


def bench_proxy_concurrent(options):
    zoogate = require_tool(options.zoogate, "--zoogate")
    folder = options.work / "proxy-concurrent"
    checkpoint = cached_small_checkpoint(options.work)
    file = proxy_bench.HubFile(SMALL_BENCH_REPO, "pytorch_model.bin", checkpoint)
    count = options.concurrent
    log_path = folder / "runs.log"
    reports = {"nginx static": [], "zoogate": []}
    with contextlib.ExitStack() as stack:
        certificates, origin, front = start_hub_servers(stack, folder, [file])
        gateway = start_zoogate(stack, zoogate, folder / "zoogate", origin, certificates,
                                pipeline={"client_wait": CLIENT_WAIT})
        urls = {"nginx static": f"{front.url}/static/{file.name}", "zoogate": gateway.hub_url + file.resolve_path}
        print("  warming zoogate's cache with one download", flush=True)
        first = checked_artifact(urls["zoogate"], file)
        expected = {"nginx static": file.sha256, "zoogate": first["sha256"]}
        checked_download(urls["nginx static"], file.sha256, "nginx static")
        rss_after_warming = gateway.peak_rss_mib()
        log_path.write_bytes(b"")
        for round_number in range(1, options.runs + 1):
            for name, url in urls.items():
                print(f"  round {round_number}/{options.runs}: {name}, {count} downloads at once", flush=True)
                report = proxy_bench.fetch_many(url, count, log_path)
                for server in (origin, front, gateway):
                    server.check_running()
                report["summary"] = proxy_bench.summarize_downloads(report, expected[name])
                del report["outcomes"]  # one entry per download; the summary keeps the failures' reasons
                reports[name].append(report)
        zoogate_rss, nginx_rss = gateway.peak_rss_mib(), front.workers_peak_rss_mib()
        metrics_path = folder / "zoogate-metrics.txt"
        metrics_path.write_text(gateway.metrics_text())

    seconds = {name: statistics.median(report["total_seconds"] for report in runs) for name, runs in reports.items()}
    failed = {name: sum(report["summary"]["failed"] for report in runs) for name, runs in reports.items()}
    # The weakest run's concurrency: answers begun and not finished at once, as the client saw them.
    answering = {name: min(report["peak"]["answering"] for report in runs) for name, runs in reports.items()}
    figures = [
        Figure(f"nginx static: {count} concurrent downloads, wall time", seconds["nginx static"], "s"),
        Figure(f"zoogate (cached): {count} concurrent downloads, wall time", seconds["zoogate"], "s",
               {"nginx static": seconds["zoogate"] / seconds["nginx static"]}),
        Figure(f"zoogate: failed downloads of {count * options.runs}", failed["zoogate"], "",
               target="0 (non-200, transport error, bytes unlike the first download)", met=failed["zoogate"] == 0),
        Figure(f"nginx static: failed downloads of {count * options.runs}", failed["nginx static"], ""),
        Figure("zoogate: answers in progress at once (lowest peak of the runs)", answering["zoogate"], "",
               {"nginx static": answering["zoogate"] / max(1, answering["nginx static"])}),
        Figure("zoogate: peak RSS (VmHWM)", zoogate_rss, "MiB", {"nginx workers": zoogate_rss / nginx_rss},
               target=f"< {CONCURRENT_RSS_BUDGET_MIB} MiB", met=zoogate_rss < CONCURRENT_RSS_BUDGET_MIB),
    ]
    details = {
        "file": {"path": str(checkpoint), "size": file.size, "sha256": file.sha256},
        "served": artifact_facts(first), "urls": urls, "downloads_at_once": count,
        "zoogate_peak_rss_mib_after_warming": rss_after_warming, "nginx_workers_peak_rss_mib": nginx_rss,
        "zoogate_config": gateway.config, "zoogate_metrics": str(metrics_path),
        "runs": reports,
    }
    return BenchResult(figures, details)


def bench_proxy_egress(options):
    """The egress proxy: an intercepted download (TLS from the client to zoogate, zoogate's own TLS
    to the origin, the Hub logic in between) against a blind CONNECT tunnel to the same origin, of the
    same 1 GiB safetensors file. The origin answers as 127.0.0.1 (intercepted) and as localhost
    (tunnelled): one file, one origin, two rules."""
    zoogate = require_tool(options.zoogate, "--zoogate")
    curl = system_tool("curl")
    folder = options.work / "proxy-egress"
    file = bench_safetensors_file(options)
    with contextlib.ExitStack() as stack:
        certificates, origin, _front = start_hub_servers(stack, folder, [file])
        interception_ca = folder / "interception-ca"
        shutil.rmtree(interception_ca, ignore_errors=True)
        subprocess.run([zoogate, "ca", "init", "--dir", str(interception_ca)], check=True, capture_output=True)
        egress = {"listen": "127.0.0.1:0", "ca_cert": str(interception_ca / "ca.pem"),
                  "ca_key": str(interception_ca / "ca.key"),
                  "allow_private_destinations": ["localhost", "127.0.0.1"],
                  "rules": [{"hosts": ["127.0.0.1"], "ports": [origin.port], "action": "intercept"},
                            {"hosts": ["localhost"], "ports": [origin.port], "action": "tunnel"}]}
        gateway = start_zoogate(stack, zoogate, folder / "zoogate", origin, certificates, egress=egress)
        if gateway.egress_url is None:
            raise BenchError("zoogate did not print its egress proxy's address")
        # The client trusts both CAs: zoogate's for the intercepted origin, the origin's for the tunnel.
        bundle = folder / "client-ca.pem"
        bundle.write_bytes((interception_ca / "ca.pem").read_bytes() + certificates.ca_pem.read_bytes())
        urls = {
            "blind tunnel": f"https://localhost:{origin.port}{file.cdn_path}",
            "zoogate interception": f"https://127.0.0.1:{origin.port}{file.resolve_path}",
        }
        commands = {name: [curl, "--silent", "--show-error", "--fail", "--proxy", gateway.egress_url,
                           "--cacert", str(bundle), "--output", str(folder / "download"), url]
                    for name, url in urls.items()}
        print("  checking the bytes of each path once", flush=True)
        for name, command in commands.items():
            subprocess.run(command, check=True)
            if proxy_bench.file_sha256(folder / "download") != file.sha256:
                raise BenchError(f"{name}: the downloaded bytes are not the file's")
        for command in commands.values():
            command[command.index(str(folder / "download"))] = "/dev/null"
        measured = measure_interleaved(commands, options.runs, folder / "runs.log")
        zoogate_rss = gateway.peak_rss_mib()

    throughput = {name: file.size / measurement.wall_seconds / 1e6 for name, measurement in measured.items()}
    figures = [
        Figure("blind CONNECT tunnel through zoogate: throughput", throughput["blind tunnel"], "MB/s"),
        Figure("intercepted download (TLS both ways, Hub logic): throughput", throughput["zoogate interception"],
               "MB/s", {"blind tunnel": throughput["zoogate interception"] / throughput["blind tunnel"]}),
        Figure("zoogate: peak RSS (VmHWM)", zoogate_rss, "MiB"),
    ]
    details = {"file": {"path": str(file.path), "size": file.size, "sha256": file.sha256}, "urls": urls,
               "zoogate_config": gateway.config,
               "measurements": {name: measurement.to_json() for name, measurement in measured.items()}}
    return BenchResult(figures, details)


# ---------------------------------------------------------------------------------------------------
# Driver


BENCHMARKS = {
    "sanitize": bench_sanitize,
    "mtd": bench_mtd,
    "pickle_vm": bench_pickle_vm,
    "proxy_pass_through": bench_proxy_pass_through,
    "proxy_cold_pickle": bench_proxy_cold_pickle,
    "proxy_cold_pickle_link": bench_proxy_cold_pickle_link,
    "proxy_concurrent": bench_proxy_concurrent,
    "proxy_egress": bench_proxy_egress,
}

# Names --only accepts for several benchmarks at once.
BENCHMARK_GROUPS = {
    "proxy": [name for name in BENCHMARKS if name.startswith("proxy_")],
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
    if isinstance(value, int):
        return f"{value} {unit}".rstrip()
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
    parser.add_argument("--zoogate", help="the zoogate executable (for the sanitize, mtd and proxy benchmarks)")
    parser.add_argument("--bench-vm", help="the bench_pickle_vm executable (for the pickle_vm benchmark)")
    parser.add_argument("--work", type=Path, required=True,
                        help="folder for generated inputs (kept and reused), outputs, logs and results")
    parser.add_argument("--only", action="append", choices=[*BENCHMARKS, *BENCHMARK_GROUPS],
                        help="run only this benchmark or group (repeatable): "
                             + "; ".join(f"{group} = {', '.join(names)}" for group, names in BENCHMARK_GROUPS.items())
                             + "; default: all")
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds: runs of each external command or self-timing program (default 3)")
    parser.add_argument("--vm-runs", type=int, default=10,
                        help="timed runs of each unpickler within one process (default 10)")
    parser.add_argument("--checkpoint-mib", type=int, default=1024,
                        help="size of the generated checkpoint and of the pass-through safetensors file "
                             "(default 1024; about 340 at least)")
    parser.add_argument("--concurrent", type=int, default=1000,
                        help="downloads at once in the proxy_concurrent benchmark (default 1000)")
    options = parser.parse_args()
    if options.runs < 1 or options.vm_runs < 1 or options.concurrent < 1:
        parser.error("--runs, --vm-runs and --concurrent must be at least 1")
    # Absolute: the servers started under it (nginx with -p) resolve their own paths from elsewhere.
    options.work = options.work.resolve()
    # Groups become their benchmarks, in BENCHMARKS' order, each once.
    if options.only:
        chosen = {name for choice in options.only for name in BENCHMARK_GROUPS.get(choice, [choice])}
        options.only = [name for name in BENCHMARKS if name in chosen]
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
        except (BenchError, proxy_bench.ProxyBenchError) as error:
            results[name] = {"error": str(error)}
            harness_failed = True
    print_table(results)
    results_path = options.work / "bench-results.json"
    results_path.write_text(json.dumps({"host": host, "benchmarks": results}, indent=2) + "\n")
    print(f"\nfigures and raw runs: {results_path}")
    return 1 if harness_failed else 0


if __name__ == "__main__":
    sys.exit(main())
