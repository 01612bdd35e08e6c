"""Shared plumbing of the deployment tests (tests/deploy/): where things are, the zoogate executable,
PromQL metric references, and the metrics reference of docs/metrics.md.

The tests run under Debian's /usr/bin/python3 (python3-yaml); CTest passes the zoogate executable as
ZOOGATE_BIN to the tests that run it.
"""
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")
KUSTOMIZE_BASE = os.path.join(DEPLOY, "kubernetes", "base")
RULES_FILE = os.path.join(DEPLOY, "prometheus", "zoogate-rules.yml")
RULES_TEST_FILE = os.path.join(DEPLOY, "prometheus", "zoogate-rules.test.yml")
DASHBOARD_FILE = os.path.join(DEPLOY, "grafana", "zoogate-dashboard.json")
LB_CONFIG_FILE = os.path.join(DEPLOY, "nginx", "zoogate-lb.conf")
IMAGE_CONFIG_FILE = os.path.join(DEPLOY, "docker", "zoogate.yaml")
DOCKERFILE = os.path.join(REPO, "Dockerfile")
METRICS_DOC = os.path.join(REPO, "docs", "metrics.md")

# Labels Prometheus adds to every scraped series (target labels), and the bucket bound of histograms:
# zoogate does not export them, so selectors on them say nothing about zoogate.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container", "le"}


def zoogate_bin():
    """The zoogate executable under test; a clear error (never a skip) when it is not given."""
    path = os.environ.get("ZOOGATE_BIN")
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError("set ZOOGATE_BIN to the zoogate executable (CTest does this)")
    return path


def tool(name):
    """The path of a command-line tool the tests need; a clear error when it is missing."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if not path:
        raise RuntimeError(f"{name} is not installed (scripts/install-deps.sh test installs it)")
    return path


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def load_yaml_documents(path):
    with open(path, encoding="utf-8") as handle:
        return [document for document in yaml.safe_load_all(handle) if document is not None]


def make_workdir(prefix):
    """A fresh temporary folder, removed when the test process exits (kept when the environment
    sets ZOOGATE_KEEP_WORKDIRS, for looking at what a failed test left)."""
    path = tempfile.mkdtemp(prefix=f"zoogate-deploy-{prefix}-")
    if not os.environ.get("ZOOGATE_KEEP_WORKDIRS"):
        atexit.register(shutil.rmtree, path, True)
    return path


def run(command, timeout=120, **kwargs):
    """subprocess.run with text output captured; never raises on a non-zero exit."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


# ---------------------------------------------------------------------------------------------
# nginx with deploy/nginx/zoogate-lb.conf


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now (nginx cannot listen on port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lb_wrapper(prefix, backend_ports, listen_port, access_log=None, worker_connections=1024):
    """Renders deploy/nginx/zoogate-lb.conf for a test: its upstream servers become the given loopback
    ports (in order; the file must list exactly that many), its listener 127.0.0.1:`listen_port`, and
    everything else stays as written. Writes PREFIX/conf/zoogate-lb.conf and PREFIX/conf/nginx.conf (a
    non-daemon, single-process nginx with its pid and temp files under PREFIX, so no root is needed)
    that includes it; returns the path of nginx.conf. `access_log`: a file for an access log that
    names the replica(s) each request went to ($upstream_addr, $upstream_status), or None."""
    text = read(LB_CONFIG_FILE)
    ports = iter(backend_ports)

    def backend(match):
        return f"server 127.0.0.1:{next(ports)}{match.group(1)};"

    text, servers = re.subn(r"server\s+[^\s;]+:\d+([^;]*);", backend, text)
    if servers != len(backend_ports):
        raise AssertionError(f"the LB file has {servers} upstream servers, the test expected {len(backend_ports)}")
    text = re.sub(r"listen\s+\[::\]:\d+;", "", text)
    text, listens = re.subn(r"listen\s+\d+;", f"listen 127.0.0.1:{listen_port};", text)
    if listens != 1:
        raise AssertionError("the LB file should listen on one IPv4 port")
    conf = os.path.join(prefix, "conf")
    temp = os.path.join(prefix, "temp")
    os.makedirs(conf, exist_ok=True)
    os.makedirs(temp, exist_ok=True)
    with open(os.path.join(conf, "zoogate-lb.conf"), "w", encoding="utf-8") as handle:
        handle.write(text)
    if access_log:
        logging = ("log_format replicas '$msec $request_method $request_uri $status $body_bytes_sent '\n"
                   "                       '\"$upstream_addr\" \"$upstream_status\"';\n"
                   f"    access_log {access_log} replicas;")
    else:
        logging = "access_log off;"
    with open(os.path.join(conf, "nginx.conf"), "w", encoding="utf-8") as handle:
        handle.write(f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections {worker_connections}; }}
http {{
    {logging}
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include zoogate-lb.conf;
}}
""")
    return os.path.join(conf, "nginx.conf")


def nginx_command(prefix, config):
    return [tool("nginx"), "-p", prefix, "-c", config, "-e", "stderr"]


class NginxProcess:
    """nginx in the foreground with deploy/nginx/zoogate-lb.conf in front of `backend_ports`, listening
    on a free loopback port (`port`, `url`); stderr goes to PREFIX/nginx.stderr (`log_text()`)."""

    def __init__(self, prefix, backend_ports, access_log=None):
        self.prefix = prefix
        self.backend_ports = list(backend_ports)
        self.access_log = access_log
        self.stderr_path = os.path.join(prefix, "nginx.stderr")
        self.process = None
        self.port = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=10):
        # The free port may be taken between the probe and nginx's bind: try a few.
        for _attempt in range(3):
            self.port = free_port()
            config = lb_wrapper(self.prefix, self.backend_ports, self.port, self.access_log)
            with open(self.stderr_path, "ab") as log:
                self.process = subprocess.Popen(nginx_command(self.prefix, config), stdin=subprocess.DEVNULL,
                                                stdout=log, stderr=log)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
            if "Address already in use" not in self.log_text():
                break
        raise RuntimeError(f"nginx did not start listening: {self.log_text()[-2000:]}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self):
        try:
            return read(self.stderr_path)
        except FileNotFoundError:
            return ""


# ---------------------------------------------------------------------------------------------
# PromQL references


_SELECTOR = re.compile(r"\b(zoogate_[A-Za-z0-9_]+)\b(\s*\{([^{}]*)\})?")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


class MetricReference:
    """One use of a zoogate metric in a PromQL expression: its name and its label matchers
    [(label, operator, value)], and where it was found (for messages)."""

    def __init__(self, name, matchers, where):
        self.name = name
        self.matchers = matchers
        self.where = where

    def __repr__(self):
        return f"{self.name}{{{self.matchers}}} in {self.where}"


def metric_references(expr, where):
    """Every zoogate_* selector in a PromQL expression."""
    references = []
    for match in _SELECTOR.finditer(expr):
        matchers = []
        body = match.group(3) or ""
        position = 0
        while position < len(body.strip()):
            matcher = _MATCHER.match(body, position)
            if not matcher:
                raise ValueError(f"cannot read the label matchers {{{body}}} in {where}")
            matchers.append((matcher.group(1), matcher.group(2), matcher.group(3)))
            position = matcher.end()
        references.append(MetricReference(match.group(1), matchers, where))
    return references


def rule_expressions():
    """[(where, expr)] of every rule in deploy/prometheus/zoogate-rules.yml."""
    rules = yaml.safe_load(read(RULES_FILE))
    found = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            found.append((f"{os.path.relpath(RULES_FILE, REPO)}: {name}", rule["expr"]))
    return found


def dashboard_expressions():
    """[(where, expr)] of every query of deploy/grafana/zoogate-dashboard.json: panel targets (rows
    included) and template variable queries."""
    dashboard = json.loads(read(DASHBOARD_FILE))
    found = []

    def visit(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"dashboard panel '{panel.get('title')}' ({target.get('refId')})", target["expr"]))
            visit(panel.get("panels", []))

    visit(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            found.append((f"dashboard variable '{variable['name']}'", query))
    return found


def grafana_to_promql(expr):
    """A dashboard query as plain PromQL: Grafana's variables replaced by values Prometheus accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".+", expr)
    # label_values() is Grafana's, not PromQL: its first argument is the selector.
    match = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", expr, re.S)
    return match.group(1) if match else expr


# ---------------------------------------------------------------------------------------------
# docs/metrics.md


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics():
    """{family name: (type, [label names])} from the tables of docs/metrics.md, whose rows start
    | `zoogate_name` | type | labels | ..."""
    families = {}
    row = re.compile(r"^\|\s*`(zoogate_[a-z0-9_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|")
    for line in read(METRICS_DOC).splitlines():
        match = row.match(line)
        if match:
            labels = re.findall(r"`([a-z_]+)`", match.group(3))
            families[match.group(1)] = (match.group(2), labels)
    return families


def sample_names(families):
    """The sample names a set of families exports: histograms as _bucket, _sum and _count."""
    names = set()
    for name, (kind, _labels) in families.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names
