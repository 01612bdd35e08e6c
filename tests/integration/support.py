"""Shared plumbing of the Python integration tests: paths, fixture generation, running zoogate and
the naive-loader subprocess.

The tests run under Debian's /usr/bin/python3 (the one with python3-torch); CTest passes the zoogate
binary as ZOOGATE_BIN. Fixtures are generated into a temporary directory at test time.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES_DIR = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
sys.path.insert(0, FIXTURES_DIR)

import fixture_common  # noqa: E402

PYTHON = "/usr/bin/python3"
ZOOGATE_TIMEOUT_SECONDS = 120
# One process per run of the naive loader: torch's thread pools are not needed and fork badly.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def zoogate_bin():
    """The zoogate executable under test; a clear error (never a skip) when it is not given."""
    path = os.environ.get("ZOOGATE_BIN")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError("set ZOOGATE_BIN to the zoogate executable (CTest does this)")
    return path


def make_workdir(prefix):
    return tempfile.mkdtemp(prefix=f"zoogate-{prefix}-")


def run_generator(script, *args):
    """Runs a fixture generator in its own interpreter and returns its index {name: file name}."""
    subprocess.run([PYTHON, os.path.join(FIXTURES_DIR, script), *args], check=True, env=CHILD_ENV,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    with open(os.path.join(args[0], "index.json"), encoding="utf-8") as handle:
        return json.load(handle)


def run_zoogate(*args):
    """(exit code, stderr text) of one zoogate run; exit code None when it had to be killed."""
    try:
        completed = subprocess.run([zoogate_bin(), *args], capture_output=True,
                                   timeout=ZOOGATE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return None, f"killed after {ZOOGATE_TIMEOUT_SECONDS} s"
    return completed.returncode, completed.stderr.decode(errors="replace")


class Sanitized:
    """The outcome of `zoogate sanitize IN -o OUT --json --report REPORT`."""

    def __init__(self, source, output, report_path):
        self.output = output
        self.returncode, self.stderr = run_zoogate("sanitize", source, "-o", output, "--json",
                                                   "--report", report_path)
        self.report = None
        self.report_error = None
        try:
            with open(report_path, encoding="utf-8") as handle:
                self.report = json.load(handle)
        except (OSError, ValueError) as error:
            self.report_error = f"{type(error).__name__}: {error}"

    def describe(self):
        """Exit code, the report's verdict and error, and stderr: what a failing test shows."""
        report = self.report or {}
        return (f"exit {self.returncode}, verdict {report.get('verdict')!r}, error {report.get('error')!r}, "
                f"stderr: {self.stderr.strip()[-2000:]}")


def scan_exit_code(source):
    return run_zoogate("scan", source, "--json")[0]


def run_naive_loader(jobs, workdir):
    """Runs naive_loader.py on `jobs` (see its docstring) and returns their results, in order."""
    jobs_path = os.path.join(workdir, "jobs.json")
    with open(jobs_path, "w", encoding="utf-8") as handle:
        json.dump(jobs, handle)
    subprocess.run([PYTHON, os.path.join(HERE, "naive_loader.py"), jobs_path], check=True,
                   env=CHILD_ENV, timeout=60 + 70 * len(jobs))
    results = []
    for job in jobs:
        with open(job["result"], encoding="utf-8") as handle:
            results.append(json.load(handle))
    return results


def naive_job(workdir, job_id, path, loaders, probe_paths):
    """A naive-loader job that runs in a fresh directory of its own."""
    cwd = os.path.join(workdir, "cwd", job_id)
    os.makedirs(cwd)
    return {"path": path, "loaders": loaders, "probe_paths": probe_paths, "cwd": cwd,
            "result": os.path.join(cwd, "result.json")}


def read_sidecar(directory, file_name):
    return fixture_common.read_sidecar(os.path.join(directory, file_name))
