"""Runs `zoogate serve` as a real process for the integration tests.

Why: the proxy is tested as users run it (a process, a YAML config, loopback listeners on port 0),
so the tests need one place that writes the config, starts the server, learns its URLs from the two
lines it prints once bound (three with `egress.listen`: `egress_url`), scrapes its metrics and stops
it the way a service manager would.

    with ZoogateProcess(workdir, {"upstream": hub.upstream_config()}) as zoogate:
        requests.get(zoogate.hub_url + "/org/model/resolve/main/config.json")
        zoogate.metrics()[("zoogate_cache_hits_total", frozenset())]
        zoogate.metric("zoogate_http_requests_total", listener="hub", route="resolve", code="2xx")

The config given is laid over test defaults (both listeners on 127.0.0.1 port 0, the cache in the
work folder) and written as YAML by a tiny emitter (block style; strings always double-quoted, so
nothing is read as a number or a boolean by accident). stderr, where the JSON-lines access log goes
by default, is kept in a file: `log_lines()`, `access_log()` and `events()` read it.
"""
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 30
HUB_LINE = re.compile(r"serving the Hub at (http://\S+)")
ADMIN_LINE = re.compile(r"admin at (http://\S+)")
EGRESS_LINE = re.compile(r"egress proxy at (http://\S+)")


# ---------------------------------------------------------------------------------------------
# YAML


def _yaml_scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("YAML config values must be finite numbers")
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are a subset of YAML's double-quoted ones.
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} into the YAML config")


def to_yaml(value, indent=0):
    """Block-style YAML for dicts, lists and scalars; one key per line so that zoogate's
    file:line errors point somewhere useful."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        if not value:
            return pad + "{}\n"
        for key, item in value.items():
            name = _yaml_scalar(str(key)) if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", str(key)) else key
            if isinstance(item, dict) and item:
                lines.append(f"{pad}{name}:\n{to_yaml(item, indent + 2)}")
            elif isinstance(item, (list, tuple)) and item:
                lines.append(f"{pad}{name}:\n{to_yaml(list(item), indent + 2)}")
            elif isinstance(item, (dict, list, tuple)):
                lines.append(f"{pad}{name}: {'{}' if isinstance(item, dict) else '[]'}\n")
            else:
                lines.append(f"{pad}{name}: {_yaml_scalar(item)}\n")
        return "".join(lines)
    if isinstance(value, (list, tuple)):
        if not value:
            return pad + "[]\n"
        for item in value:
            if isinstance(item, (dict, list, tuple)) and item:
                nested = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {nested.lstrip()}")
            elif isinstance(item, (dict, list, tuple)):
                lines.append(f"{pad}- {'{}' if isinstance(item, dict) else '[]'}\n")
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}\n")
        return "".join(lines)
    return pad + _yaml_scalar(value) + "\n"


def _merge(base, override):
    """`override` laid over `base`, recursively for nested dicts."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------------------------
# Prometheus text format


def _parse_labels(text):
    labels = {}
    position = 0
    pattern = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
    while position < len(text):
        match = pattern.match(text, position)
        if not match:
            raise ValueError(f"bad label set {{{text}}}")
        value = match.group(2).replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        labels[match.group(1)] = value
        position = match.end()
    return labels


def parse_prometheus(text):
    """{(metric name, frozenset of (label, value))}: float, from the Prometheus text format."""
    samples = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?", line)
        if not match:
            raise ValueError(f"bad metrics line: {line!r}")
        name, labels, value = match.groups()
        samples[(name, frozenset(_parse_labels(labels or "").items()))] = float(value)
    return samples


# ---------------------------------------------------------------------------------------------
# The process


class ZoogateProcess:
    """`zoogate serve --config FILE` in `workdir` (see the module docstring)."""

    def __init__(self, workdir, config=None, binary=None, env=None, start_timeout=START_TIMEOUT_SECONDS):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.binary = binary or os.environ.get("ZOOGATE_BIN")
        if not self.binary or not os.access(self.binary, os.X_OK):
            raise RuntimeError("set ZOOGATE_BIN to the zoogate executable (CTest does this)")
        defaults = {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0",
                    "cache": {"dir": os.path.join(self.workdir, "cache")}}
        self.config = _merge(defaults, config or {})
        self.config_path = os.path.join(self.workdir, "zoogate.yaml")
        self.stderr_path = os.path.join(self.workdir, "zoogate.stderr")
        self.env = env
        self.start_timeout = start_timeout
        self.process = None
        self.hub_url = self.admin_url = self.egress_url = None
        # With `egress.listen` set, zoogate prints a third line: start() waits for it too.
        self.expects_egress = bool((self.config.get("egress") or {}).get("listen"))
        self.stdout_lines = []
        self.returncode = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        with open(self.config_path, "w", encoding="utf-8") as handle:
            handle.write(to_yaml(self.config))
        stderr = open(self.stderr_path, "ab")
        try:
            self.process = subprocess.Popen(
                [self.binary, "serve", "--config", self.config_path], cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                env={**os.environ, **(self.env or {})})
        finally:
            stderr.close()
        ready = threading.Event()
        threading.Thread(target=self._read_stdout, args=(ready,), daemon=True).start()
        if not ready.wait(self.start_timeout) or not self._urls_known():
            try:  # stdout ends a moment before the process can be reaped
                exited = self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                exited = None
            self._kill()
            why = (f"exited with {exited} before printing its listener URLs" if exited is not None
                   else f"did not print its listener URLs within {self.start_timeout} s")
            raise RuntimeError(f"zoogate {why}; stdout: {self.stdout_lines!r}; "
                               f"stderr: {self.stderr_text()[-3000:]}")

    def _urls_known(self):
        return bool(self.hub_url and self.admin_url and (self.egress_url or not self.expects_egress))

    def _read_stdout(self, ready):
        """Collects stdout for the whole life of the process (a full pipe would block zoogate)
        and signals once every listener URL is known or stdout ends."""
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.stdout_lines.append(line)
            hub = HUB_LINE.search(line)
            admin = ADMIN_LINE.search(line)
            egress = EGRESS_LINE.search(line)
            if hub:
                self.hub_url = hub.group(1)
            if admin:
                self.admin_url = admin.group(1)
            if egress:
                self.egress_url = egress.group(1)
            if self._urls_known():
                ready.set()
        ready.set()

    def stop(self, timeout=STOP_TIMEOUT_SECONDS):
        """SIGTERM (graceful drain), then SIGKILL after `timeout`; returns the exit code, which is
        negative when a signal ended the process."""
        if self.process is None or self.returncode is not None:
            return self.returncode
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self.returncode = self.process.wait()
        self.process.stdout.close()
        return self.returncode

    def _kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    # What it says ----------------------------------------------------------------------------

    def stderr_text(self):
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def log_lines(self):
        """Every stderr line so far (the access log goes there unless the config says otherwise)."""
        return self.stderr_text().splitlines()

    def log_records(self):
        """Every JSON line among the stderr lines: request records and events ("event" names those)."""
        records = []
        for line in self.log_lines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass
        return records

    def access_log(self):
        """The request records of the JSON-lines log (one per answered request)."""
        return [record for record in self.log_records() if "event" not in record]

    def events(self, name=None):
        """The event records of the JSON-lines log (listening, blocked, ...), optionally of one name."""
        return [record for record in self.log_records()
                if "event" in record and (name is None or record["event"] == name)]

    def admin_get(self, path, timeout=10):
        """(status, body bytes) of a GET on the admin listener."""
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def metrics(self):
        status, body = self.admin_get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_prometheus(body.decode())

    def metric(self, name, **labels):
        """One sample's value (0.0 when absent): labels must match exactly."""
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def metric_sum(self, name, **labels):
        """The sum over every sample of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (metric, sample), value in self.metrics().items()
                   if metric == name and wanted <= set(sample))

    def wait_until(self, predicate, timeout=10, interval=0.05):
        """Polls `predicate()` until true (returns True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return bool(predicate())
