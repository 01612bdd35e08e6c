#!/usr/bin/python3
"""Opens files the way naive code does (pickle.load, torch.load(weights_only=False), numpy.load with
allow_pickle) -- i.e. it RUNS whatever the files contain. Never import this into a test process.

    naive_loader.py JOBS.json

JOBS.json is a list of jobs: {"path", "loaders": [{"loader", "member"}...], "probe_paths", "cwd",
"result"}. torch and numpy are imported once; then every job runs in its own forked child whose
working directory is the job's `cwd` (a fresh temporary directory) and whose output goes to a log
file there, so that one payload's side effects (monkeypatching torch, say) never leak into the next
job and importing torch once keeps a hundred loads fast. Each loader runs even when an earlier one
failed; the first loader's result is probed. The child writes the job's `result` JSON:
{"errors": [message or null per loader], "probes": [fingerprint per probe path]}; a child that dies
or hangs gets {"crashed": reason}.
"""
import inspect
import io
import json
import os
import pickle
import signal
import sys
import time
import zipfile

import numpy
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import fixture_common  # noqa: E402

JOB_TIMEOUT_SECONDS = 60
HAS_WEIGHTS_ONLY = "weights_only" in inspect.signature(torch.load).parameters


def torch_load(source, weights_only):
    if HAS_WEIGHTS_ONLY:
        return torch.load(source, weights_only=weights_only)
    return torch.load(source)


def pickle_stream(path):
    """Every pickle in the file, one after another, as a reader of stacked pickles would."""
    objects = []
    with open(path, "rb") as handle:
        while handle.peek(1)[:1]:
            objects.append(pickle.load(handle))
    return objects


def numpy_load(path):
    loaded = numpy.load(path, allow_pickle=True)
    if isinstance(loaded, numpy.lib.npyio.NpzFile):
        return {name: loaded[name] for name in loaded.files}
    return loaded


def every_pickle(path):
    """Unpickles every zip member, or every stacked pickle of a non-zip file: whatever a curious
    tool might feed to pickle.load. Errors are expected and ignored, payloads are not."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                try:
                    pickle.loads(archive.read(name))
                except Exception:  # noqa: BLE001 - most members are not pickles
                    pass
        return None
    return pickle_stream(path)


def load(path, loader, member):
    if loader == "torch":
        return torch_load(path, weights_only=False)
    if loader == "torch_weights_only":
        return torch_load(path, weights_only=True)
    if loader == "pickle":
        with open(path, "rb") as handle:
            return pickle.load(handle)
    if loader == "pickle_stream":
        return pickle_stream(path)[0]
    if loader == "numpy":
        return numpy_load(path)
    if loader == "zip_member":
        with zipfile.ZipFile(path) as archive, archive.open(member) as handle:
            return pickle.load(handle)
    if loader == "nested_torch":
        with zipfile.ZipFile(path) as archive:
            return torch_load(io.BytesIO(archive.read(member)), weights_only=False)
    if loader == "pickle_at":
        with open(path, "rb") as handle:
            handle.seek(member)
            return pickle.load(handle)
    if loader == "every_pickle":
        return every_pickle(path)
    raise ValueError(f"unknown loader {loader!r}")


def probe(root, path):
    """Fingerprint of what sits at `path` in a loaded object, or why nothing does."""
    try:
        value = fixture_common.lookup(root, path)
    except LookupError as error:
        return {"missing": str(error)}
    fingerprint = fixture_common.describe(value)
    if fingerprint is not None:
        return fingerprint
    if isinstance(value, (int, float, str, bool)) or value is None:
        return {"value": value}
    return {"other": type(value).__name__}


def run_job(job):
    """Body of the forked child: load, probe, write the result."""
    errors, root = [], None
    for index, spec in enumerate(job["loaders"]):
        try:
            loaded = load(job["path"], spec["loader"], spec.get("member"))
            errors.append(None)
            if index == 0:
                root = loaded
        except BaseException as error:  # noqa: BLE001 - a payload may raise anything, even SystemExit
            errors.append(f"{type(error).__name__}: {error}")
    probes = [probe(root, path) for path in job["probe_paths"]]
    with open(job["result"], "w", encoding="utf-8") as handle:
        json.dump({"errors": errors, "probes": probes}, handle)


def isolate_output(cwd):
    """Sends the child's stdin/stdout/stderr to files in its own directory."""
    os.chdir(cwd)
    log = os.open("loader.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)


def run_forked(job):
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            isolate_output(job["cwd"])
            run_job(job)
        except BaseException:  # noqa: BLE001 - report through the missing result file
            status = 1
        finally:
            os._exit(status)
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return None if status == 0 else f"child exited with status {status}"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return f"timed out after {JOB_TIMEOUT_SECONDS} s"


def main(jobs_path):
    with open(jobs_path, encoding="utf-8") as handle:
        jobs = json.load(handle)
    for job in jobs:
        crash = run_forked(job)
        if crash is not None or not os.path.exists(job["result"]):
            with open(job["result"], "w", encoding="utf-8") as handle:
                json.dump({"crashed": crash or "no result written"}, handle)


if __name__ == "__main__":
    main(sys.argv[1])
