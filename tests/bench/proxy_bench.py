#!/usr/bin/python3
"""Processes the proxy benchmarks of run_bench.py start, and the client they measure with.

- TestCertificates: a CA and a server certificate (DNS:localhost, IP:127.0.0.1), made with openssl.
- Nginx: nginx as this user's own process with its own prefix, in one of two roles: the origin (a
  minimal Hub over TLS that answers `resolve` with a 302 to its /cdn/ files) or the front (plain HTTP:
  `proxy_pass` to the origin, the baseline zoogate is compared with, and /static/ files).
- Zoogate: `zoogate serve` with a generated config, its addresses read from its stdout.
- fetch(): one download, hashed as it arrives. fetch_many(): N downloads over N connections that are
  all open before any request goes out, each hashed (run as a separate process, `proxy_bench.py
  fetch-many ...`, which prints a JSON report). curl cannot do this: 7.88 caps --parallel-max at 300
  live transfers.

Every server is a context manager that stops its process (SIGTERM, then wait) on exit, whatever
happened inside the `with`. All addresses are on the loopback interface.
"""
import argparse
import asyncio
import hashlib
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

MIB = 1 << 20
STARTUP_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 30
OPEN_FILE_LIMIT = 16384  # enough for 1,000 client connections plus as many upstream ones and files


class ProxyBenchError(Exception):
    """A server could not be started, or a download did not give what was expected."""


# ---------------------------------------------------------------------------------------------------
# Processes


def raise_open_file_limit():
    """preexec_fn: lifts the soft RLIMIT_NOFILE towards OPEN_FILE_LIMIT (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILE_LIMIT if hard == resource.RLIM_INFINITY else min(OPEN_FILE_LIMIT, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


_ports_handed_out = set()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (for servers that cannot bind
    port 0 and say which port they got), never the same one twice in this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def loopback_ipv6_available():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def read_tail(path, limit=2000):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def peak_rss_mib(pid):
    """The process's own RSS high-water mark (VmHWM), while it is still running."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # in kB
    raise ProxyBenchError(f"/proc/{pid}/status has no VmHWM line")


def cpu_seconds(pids):
    """The user and system time the processes `pids` have spent so far, all their threads included,
    in core-seconds."""
    ticks = 0
    for pid in pids:
        # The fields after the command name, which may itself hold spaces and parentheses.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def children_of(pid):
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class ServerProcess:
    """A long-running process with its output in a log file; stop() ends it with SIGTERM and waits."""

    def __init__(self, name, command, log_path):
        self.name = name
        self.command = command
        self.log_path = Path(log_path)
        self.process = None

    def start(self):
        with open(self.log_path, "ab") as log:
            log.write(f"$ {shlex.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            preexec_fn=raise_open_file_limit)

    @property
    def pid(self):
        return self.process.pid

    def _how_it_ended(self):
        status = self.process.returncode
        return f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with {status}"

    def check_running(self):
        if self.process.poll() is not None:
            raise ProxyBenchError(f"{self.name} {self._how_it_ended()}: {read_tail(self.log_path)}")

    def peak_rss_mib(self):
        """VmHWM: read while the process runs (a process that has ended has none)."""
        self.check_running()
        return peak_rss_mib(self.pid)

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is not None:  # say so: a failed request may have been the only sign
            print(f"  {self.name} had stopped by itself: it {self._how_it_ended()}; see {self.log_path}", flush=True)
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()  # it ignored SIGTERM for too long: its own process, by its id
            self.process.wait()

    def __enter__(self):
        try:
            self.start()
        except BaseException:  # started but never ready: __exit__ will not run, so stop it here
            self.stop()
            raise
        return self

    def __exit__(self, *exception):
        self.stop()


def wait_for_port(server, port, timeout=STARTUP_TIMEOUT_SECONDS):
    deadline = time.monotonic() + timeout
    while True:
        server.check_running()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ProxyBenchError(f"{server.name} does not accept connections on port {port}")
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------------
# Certificates


class TestCertificates:
    """A CA and a server certificate it signed for DNS:localhost and IP:127.0.0.1 (ECDSA P-256),
    generated in `folder` with the openssl command line tool."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.ca_pem = self.folder / "ca.pem"
        self.cert_pem = self.folder / "server.pem"
        self.key_pem = self.folder / "server.key"

    def generate(self, openssl):
        self.folder.mkdir(parents=True, exist_ok=True)
        ca_key = self.folder / "ca.key"
        request = self.folder / "server.csr"
        extensions = self.folder / "server.ext"
        extensions.write_text("basicConstraints = critical, CA:FALSE\n"
                              "keyUsage = critical, digitalSignature\n"
                              "extendedKeyUsage = serverAuth\n"
                              "subjectAltName = DNS:localhost, IP:127.0.0.1\n")
        new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        steps = [
            [openssl, "req", "-x509", *new_key, "-keyout", ca_key, "-out", self.ca_pem, "-days", "2",
             "-subj", "/CN=zoogate benchmark CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            [openssl, "req", "-new", *new_key, "-keyout", self.key_pem, "-out", request, "-subj", "/CN=localhost"],
            [openssl, "x509", "-req", "-in", request, "-CA", self.ca_pem, "-CAkey", ca_key,
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
             "-extfile", extensions, "-out", self.cert_pem],
        ]
        for step in steps:
            completed = subprocess.run([str(part) for part in step], capture_output=True, text=True)
            if completed.returncode != 0:
                raise ProxyBenchError(f"{shlex.join(map(str, step))} failed: {completed.stderr.strip()}")
        return self


# ---------------------------------------------------------------------------------------------------
# nginx


def file_sha256(path):
    """SHA-256 hex of a file, remembered next to it (keyed by size and modification time)."""
    path = Path(path)
    stat = path.stat()
    remembered = path.with_name(path.name + ".sha256")
    key = f"{stat.st_size} {stat.st_mtime_ns}"
    if remembered.exists():
        digest, _, remembered_key = remembered.read_text().strip().partition(" ")
        if remembered_key == key:
            return digest
    digest = hashlib.sha256()
    buffer = bytearray(16 * MIB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            digest.update(view[:count])
    remembered.write_text(f"{digest.hexdigest()} {key}\n")
    return digest.hexdigest()


class HubFile:
    """A file the origin serves the way the Hub serves an LFS file: `resolve` answers 302 to the CDN
    path with the file's digest and size in headers."""

    COMMIT = "5eed0f5a1e1d2c3b4a5968778695a4b3c2d1e0f9"  # X-Repo-Commit: any 40 hex digits

    def __init__(self, repo, name, path):
        self.repo = repo      # "bench/model"
        self.name = name      # as in the repository, and under /cdn/
        self.path = Path(path).resolve()
        self.size = self.path.stat().st_size
        self.sha256 = file_sha256(self.path)

    @property
    def resolve_path(self):
        return f"/{self.repo}/resolve/main/{self.name}"

    @property
    def cdn_path(self):
        return f"/cdn/{self.name}"


class Nginx(ServerProcess):
    """nginx with its own prefix folder: no daemon, 2 worker processes, logs and pid in the prefix."""

    def __init__(self, nginx, prefix, name):
        self.prefix = Path(prefix)
        self.port = None
        super().__init__(name, [nginx, "-p", f"{self.prefix}/", "-e", str(self.prefix / "error.log"),
                                "-c", str(self.prefix / "nginx.conf")], self.prefix / "nginx.out")

    def _write_config(self, server_block):
        shutil.rmtree(self.prefix, ignore_errors=True)
        (self.prefix / "temp").mkdir(parents=True)
        temp = self.prefix / "temp"
        # Running as root, nginx would hand its workers to `nobody`, who may not read the work folder.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.prefix / "nginx.conf").write_text(f"""\
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile {OPEN_FILE_LIMIT};
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log warn;
{user}
events {{
    worker_connections 4096;
}}

http {{
    default_type application/octet-stream;
    access_log {self.prefix}/access.log;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60s;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

{server_block}
}}
""")

    def start(self):
        super().start()
        wait_for_port(self, self.port)

    @classmethod
    def origin(cls, nginx, prefix, certificates, cdn_folder, files, rate=None):
        """The minimal Hub: `GET /{repo}/resolve/main/{name}` answers 302 to
        https://localhost:PORT/cdn/{name} with the Hub's headers; /cdn/ serves the files (with Range),
        at most `rate` bytes per second per connection when given (nginx's notation, as "125m")."""
        self = cls(nginx, prefix, "nginx origin")
        self.port = free_port()
        cdn_folder = Path(cdn_folder)
        cdn_folder.mkdir(parents=True, exist_ok=True)
        listens = [f"listen 127.0.0.1:{self.port} ssl;"]
        if loopback_ipv6_available():  # clients that try ::1 first for "localhost" find it too
            listens.append(f"listen [::1]:{self.port} ssl;")
        locations = []
        for file in files:
            link = cdn_folder / file.name
            link.unlink(missing_ok=True)
            link.symlink_to(file.path)
            locations.append(f"""\
        location = {file.resolve_path} {{
            add_header X-Linked-Etag '"{file.sha256}"' always;
            add_header X-Linked-Size {file.size} always;
            add_header X-Repo-Commit {HubFile.COMMIT} always;
            add_header ETag '"{file.sha256}"' always;
            return 302 https://localhost:{self.port}{file.cdn_path};
        }}""")
        self._write_config("""\
    server {
        %s
        ssl_certificate %s;
        ssl_certificate_key %s;
        location /cdn/ {
            alias %s/;%s
        }
%s
    }""" % ("\n        ".join(listens), certificates.cert_pem, certificates.key_pem, cdn_folder,
           f"\n            limit_rate {rate};" if rate else "", "\n".join(locations)))
        return self

    @classmethod
    def front(cls, nginx, prefix, origin_port, ca_pem, static_folder):
        """Plain HTTP on loopback: every path `proxy_pass`ed to the origin over verified TLS (proxy
        buffering as nginx has it by default), except /static/, served from `static_folder`."""
        self = cls(nginx, prefix, "nginx front")
        self.port = free_port()
        self._write_config(f"""\
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass https://127.0.0.1:{origin_port};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca_pem};
            # nginx checks the certificate's DNS names only, never its IP addresses: verify it as
            # localhost, a name it carries, while connecting to 127.0.0.1 as zoogate does.
            proxy_ssl_name localhost;
        }}
        location /static/ {{
            alias {Path(static_folder).resolve()}/;
        }}
    }}""")
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def workers(self):
        """The worker processes' ids (the master does not serve)."""
        self.check_running()
        return children_of(self.pid)

    def workers_peak_rss_mib(self):
        """Sum of the worker processes' VmHWM."""
        return sum(peak_rss_mib(worker) for worker in self.workers())


# ---------------------------------------------------------------------------------------------------
# zoogate


class Zoogate(ServerProcess):
    """`zoogate serve --config FILE` on ephemeral loopback ports; the hub and admin URLs come from the
    lines it prints once its listeners are bound."""

    HUB_LINE = re.compile(r"serving the Hub at (http://\S+)")
    ADMIN_LINE = re.compile(r"admin at (http://\S+)")
    EGRESS_LINE = re.compile(r"egress proxy at (http://\S+)")

    def __init__(self, zoogate, folder, config, name="zoogate"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = self.folder / "zoogate.yaml"
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
        self.hub_url = self.admin_url = self.egress_url = None
        super().__init__(name, [zoogate, "serve", "--config", str(self.config_path)], self.folder / "zoogate.out")

    def start(self):
        self.log_path.write_bytes(b"")
        super().start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while self.hub_url is None or self.admin_url is None:
            self.check_running()
            output = self.log_path.read_text(errors="replace")
            if hub := self.HUB_LINE.search(output):
                self.hub_url = hub.group(1)
            if admin := self.ADMIN_LINE.search(output):
                self.admin_url = admin.group(1)
            if egress := self.EGRESS_LINE.search(output):
                self.egress_url = egress.group(1)
            if time.monotonic() > deadline:
                raise ProxyBenchError(f"zoogate did not print its listeners' addresses: {read_tail(self.log_path)}")
            time.sleep(0.05)

    def metrics_text(self):
        self.check_running()
        status, _, body = get_small(self.admin_url + "/metrics")
        if status != 200:
            raise ProxyBenchError(f"zoogate's /metrics answered {status}")
        return body.decode()


def zoogate_config(folder, origin_port, ca_pem, cache_dir, **sections):
    """The benchmarks' zoogate configuration: loopback listeners on ephemeral ports, the origin as the
    Hub (localhost and 127.0.0.1 allowed as redirect targets), the test CA; `sections` adds top-level
    keys (pipeline: {...}), merged into these defaults where both are mappings."""
    config = {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "upstream": {"hub_url": f"https://127.0.0.1:{origin_port}", "ca_bundle": str(ca_pem),
                     "redirect_hosts": ["localhost", "127.0.0.1"]},
        "cache": {"dir": str(cache_dir)},
        "logging": {"access_log": str(Path(folder) / "access.log")},
        # zoogate connects to non-public addresses only for the Hub's own host and the hosts listed
        # here: the origin's CDN answers at localhost, a loopback address.
        "egress": {"allow_private_destinations": ["localhost"]},
    }
    for key, value in sections.items():
        merged = isinstance(value, dict) and isinstance(config.get(key), dict)
        config[key] = {**config[key], **value} if merged else value
    return config


def metric_sum(metrics_text, name):
    """Sum of every sample of `name` (all label sets) in Prometheus text; None if there is none."""
    total, found = 0.0, False
    for line in metrics_text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


# ---------------------------------------------------------------------------------------------------
# Clients


def _connection(url, ca_pem=None, timeout=600):
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        import ssl
        context = ssl.create_default_context(cafile=str(ca_pem) if ca_pem else None)
        return http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=timeout), target
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), target


def get_small(url):
    """(status, headers, body) of a small answer."""
    connection, target = _connection(url, timeout=30)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except (OSError, http.client.HTTPException) as error:
        raise ProxyBenchError(f"GET {url} failed: {error!r}") from error
    finally:
        connection.close()


def fetch(url, ca_pem=None, save_to=None):
    """Downloads `url` (no redirects followed) hashing the bytes as they arrive, and keeps them in
    `save_to` if given; returns the headers (names in lower case), the size and the SHA-256 hex of the
    body. Raises unless the answer is a complete 200."""
    connection, target = _connection(url, ca_pem)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        if response.status != 200:
            raise ProxyBenchError(f"GET {url} answered {response.status}: {response.read(500)!r}")
        digest, size = hashlib.sha256(), 0
        buffer = bytearray(4 * MIB)
        view = memoryview(buffer)
        with open(save_to or os.devnull, "wb") as output:
            while count := response.readinto(buffer):
                digest.update(view[:count])
                output.write(view[:count])
                size += count
        return {"headers": headers, "size": size, "sha256": digest.hexdigest()}
    except (OSError, http.client.HTTPException) as error:
        raise ProxyBenchError(f"GET {url} failed: {error!r}") from error
    finally:
        connection.close()


class _Download(asyncio.BufferedProtocol):
    """One GET over its own connection: the head is parsed, the body hashed as it arrives (SHA-256
    runs about twice as fast as comparing the bytes with a reference from Python)."""

    def __init__(self, request, tally):
        self.request = request
        self.tally = tally
        self.buffer = bytearray(128 * 1024)  # times 1,000 connections
        self.head = bytearray()
        self.status = None
        self.length = None
        self.received = 0
        self.digest = hashlib.sha256()
        self.error = None
        self.transport = None
        self.finished = asyncio.get_running_loop().create_future()

    # Connection state and the counts of connections open and answers in progress at once.
    def connection_made(self, transport):
        self.transport = transport
        self.tally.change("open", +1)

    def connection_lost(self, exception):
        self.tally.change("open", -1)
        if self.status is not None:
            self.tally.change("answering", -1)
        if not self.finished.done():
            self.error = self.error or f"connection closed after {self.received} body bytes ({exception})"
            self.finished.set_result(None)

    def send(self):
        self.tally.change("requested", +1)
        self.transport.write(self.request)

    def get_buffer(self, size_hint):
        return self.buffer

    def buffer_updated(self, count):
        data = memoryview(self.buffer)[:count]
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self._finish("answer head larger than 64 KiB")
                return
            self._parse_head(bytes(self.head[:end]))
            self.tally.change("answering", +1)
            data = memoryview(bytes(self.head[end + 4:]))
            self.head = None
        if data and not self.finished.done():
            self._body(data)

    def _parse_head(self, head):
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                self.length = int(value.strip())
        if self.length is None:
            self._finish("no Content-Length")
        elif self.length == 0:
            self._finish()

    def _body(self, data):
        self.digest.update(data)
        self.received += len(data)
        if self.received >= self.length:
            self._finish()

    def _finish(self, error=None):
        self.error = error
        if not self.finished.done():
            self.finished.set_result(None)
        self.transport.close()

    def outcome(self):
        if self.error is None and self.length is not None and self.received != self.length:
            self.error = f"{self.received} body bytes for a Content-Length of {self.length}"
        return {"status": self.status, "bytes": self.received, "error": self.error,
                "sha256": self.digest.hexdigest()}


class _Tally:
    """Current and peak counts of connections in each state."""

    def __init__(self):
        self.current = {"open": 0, "requested": 0, "answering": 0}
        self.peak = dict(self.current)

    def change(self, state, delta):
        self.current[state] += delta
        self.peak[state] = max(self.peak[state], self.current[state])


async def _fetch_many(host, port, target, count):
    loop = asyncio.get_running_loop()
    tally = _Tally()
    request = (f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: zoogate-bench\r\n"
               f"Connection: close\r\n\r\n").encode()
    downloads = [_Download(request, tally) for _ in range(count)]
    start = time.perf_counter()
    # Every connection is made before any request goes out, so that all `count` are open at once.
    connected = await asyncio.gather(*(loop.create_connection(lambda d=d: d, host, port) for d in downloads),
                                     return_exceptions=True)
    connect_seconds = time.perf_counter() - start
    failed = [str(result) for result in connected if isinstance(result, BaseException)]
    live = [d for d, result in zip(downloads, connected) if not isinstance(result, BaseException)]
    for download in live:
        download.send()
    await asyncio.gather(*(download.finished for download in live))
    total_seconds = time.perf_counter() - start
    outcomes = [download.outcome() for download in live] + [
        {"status": None, "bytes": 0, "error": f"connect: {reason}", "sha256": None} for reason in failed]
    return {"count": count, "connect_seconds": connect_seconds, "total_seconds": total_seconds,
            "peak": tally.peak, "outcomes": outcomes}


def summarize_downloads(report, expected_sha256):
    """How many downloads failed, and how: answers other than 200, transport errors (refused or
    reset connections, short bodies), and 200 answers whose bytes differ from the expected ones."""
    statuses, errors, mismatches = {}, [], 0
    for outcome in report["outcomes"]:
        statuses[str(outcome["status"])] = statuses.get(str(outcome["status"]), 0) + 1
        if outcome["error"]:
            errors.append(outcome["error"])
        elif outcome["status"] == 200 and outcome["sha256"] != expected_sha256:
            mismatches += 1
    failed = sum(1 for outcome in report["outcomes"]
                 if outcome["status"] != 200 or outcome["error"] or outcome["sha256"] != expected_sha256)
    return {"downloads": len(report["outcomes"]), "failed": failed, "statuses": statuses,
            "transport_errors": len(errors), "error_examples": sorted(set(errors))[:5],
            "byte_mismatches": mismatches}


class ConnectionSampler:
    """Samples, from /proc/net/tcp, how many established connections a local port has: the server's
    own view of how many clients it holds at once, independent of the client's counts."""

    def __init__(self, port, interval=0.1):
        self.port_hex = f"{port:04X}"
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _count(self):
        # The table is not read as one snapshot: a line can come twice while connections come and
        # go, so connections are counted by their address pair.
        connections = set()
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                fields = line.split(None, 4)
                # "sl: local_address rem_address st ...", addresses as 0100007F:PORT, st 01 = ESTABLISHED
                if fields[3] == "01" and fields[1].endswith(":" + self.port_hex):
                    connections.add((fields[1], fields[2]))
        return len(connections)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._count())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exception):
        self._stop.set()
        self._thread.join()


def fetch_many(url, count, log_path, timeout=900):
    """Runs `count` simultaneous downloads of `url` in a separate process (its open-file limit
    raised) and returns its report (the status, size and SHA-256 of every download, the peak counts
    of connections open and answers in progress at once) plus the server side's peak of established
    connections."""
    parts = urllib.parse.urlsplit(url)
    command = [sys.executable, str(Path(__file__).resolve()), "fetch-many", "--url", url, "--count", str(count)]
    with open(log_path, "ab") as log, ConnectionSampler(parts.port) as sampler:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        try:
            completed = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                       preexec_fn=raise_open_file_limit, timeout=timeout)
        except subprocess.TimeoutExpired as error:  # subprocess.run has killed it
            raise ProxyBenchError(f"{count} downloads of {url} took more than {timeout} s") from error
    if completed.returncode != 0:
        raise ProxyBenchError(f"the concurrent client exited with {completed.returncode}: {read_tail(log_path)}")
    report = json.loads(completed.stdout)
    report["server_established_peak"] = sampler.peak
    report["server_samples"] = sampler.samples
    return report


def main():
    parser = argparse.ArgumentParser(description="Concurrent download client of the proxy benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    many = commands.add_parser("fetch-many", help="COUNT simultaneous GETs of URL over as many connections; "
                                                  "prints a JSON report")
    many.add_argument("--url", required=True)
    many.add_argument("--count", type=int, required=True)
    options = parser.parse_args()
    parts = urllib.parse.urlsplit(options.url)
    if parts.scheme != "http":
        parser.error("fetch-many speaks plain HTTP/1.1 only")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    report = asyncio.run(_fetch_many(parts.hostname, parts.port, target, options.count))
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
