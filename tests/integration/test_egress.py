"""zoogate as the corporate egress proxy, end to end (DESIGN.md section 6, docs/egress.md).

Real processes on loopback, ports chosen by the system, certificates made at test time:

  * `Interception`: curl (`-x`, `--cacert`) and python3-requests (`HTTPS_PROXY`,
    `REQUESTS_CA_BUNDLE`) download from the fake Hub through zoogate's TLS interception; the fake
    Hub's name is intercepted by a config rule and trusted upstream through `upstream.ca_bundle`.
    The same class checks the blind tunnel, policy denials, loopback refusals, CONNECT/SNI/Host
    disagreement, an upstream with an untrusted certificate, request smuggling sent raw over a
    socket, hop-by-hop headers, and the egress metrics.
  * `ProxyAuthentication`: `egress.auth` with a hash from `zoogate passwd-hash`; 407 without or with
    wrong credentials.
  * `NonLoopbackDestinations`: destinations that are not loopback (10.0.0.1, 169.254.169.254, fd00::1,
    ::ffff:10.0.0.1, names resolving to them) are only ever tried inside a network namespace that
    the test makes with nothing but a loopback device (`unshare -n -m`): the addresses are put on
    that namespace's `lo`, names come from a hosts file bind-mounted over /etc/hosts there, and
    zoogate and the client both run inside it. Nothing can leave the machine even if zoogate
    forgot a check: the namespace has no route anywhere else.

Outside the namespace every test talks to 127.0.0.1/::1 only, and names only hosts that need no DNS
(IP literals and "localhost"); a name zoogate would have to look up in DNS is only used inside the
namespace.
"""
import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from fake_hub import FakeHub
from proxy_world import (MODEL, flatten, load_weights_only, malicious_checkpoint, safetensors_bytes, sha256,
                         state_dict, torch_bytes)
from support import PYTHON, zoogate_bin
from test_ca import TestCA
from zoogate_process import ZoogateProcess

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 30
PASSWORD = "correct horse battery staple"
USER = "alice"


# ---------------------------------------------------------------------------------------------
# Raw HTTP over sockets: what a client sends is exactly what the test wrote.


class RawResponse:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.header_list = headers
        self.headers = {name.lower(): value for name, value in headers}
        self.body = body

    def __repr__(self):
        return f"<{self.status} {self.reason} {self.headers} {self.body[:200]!r}>"


def read_response(sock, bodyless=False):
    """One HTTP/1.1 response from `sock`; None when the connection ends (or resets) before a
    complete header arrives. `bodyless`: the answer to a CONNECT (a 2xx has no body)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            # The answer to a CONNECT is read byte by byte: what follows it belongs to the tunnel.
            chunk = sock.recv(1 if bodyless else 65536)
            if not chunk:
                return None
            data += chunk
    except (ConnectionError, ssl.SSLError, socket.timeout):
        return None
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
    if not version.startswith("HTTP/1."):
        raise AssertionError(f"not an HTTP response: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    response = RawResponse(int(status), reason, headers, b"")
    if bodyless and 200 <= response.status < 300:
        return response
    length = response.headers.get("content-length")
    body = rest
    try:
        if length is not None:
            while len(body) < int(length):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            body = body[:int(length)]
        elif "chunked" in response.headers.get("transfer-encoding", ""):
            while not body.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
    except (ConnectionError, ssl.SSLError, socket.timeout):
        pass
    response.body = body
    return response


def connection_closed(sock, wait=5.0):
    """True when the peer closes (or resets) `sock` within `wait` seconds without sending a byte."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
        return True
    except ssl.SSLError as error:
        return "EOF" in str(error) or "closed" in str(error).lower()
    except socket.timeout:
        return False


def address_of(url):
    """(host, port) of http://HOST:PORT or http://[V6]:PORT."""
    match = re.fullmatch(r"https?://(?:\[([^\]]+)\]|([^:/]+)):(\d+)/?", url)
    return (match.group(1) or match.group(2)), int(match.group(3))


def open_proxy(proxy_url):
    return socket.create_connection(address_of(proxy_url), timeout=TIMEOUT)


def send_raw(proxy_url, data):
    """Sends `data` as the first bytes of a new proxy connection; the answer (None if none)."""
    with open_proxy(proxy_url) as sock:
        sock.sendall(data)
        return read_response(sock)


def connect(proxy_url, target, headers=()):
    """(socket, answer) after `CONNECT target`; the socket is the tunnel when the answer is 2xx."""
    sock = open_proxy(proxy_url)
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    request += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    sock.sendall(request.encode("latin-1"))
    return sock, read_response(sock, bodyless=True)


def tls_context(cafile=None):
    """A client context that verifies against `cafile` only; None: verifies nothing."""
    if cafile is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def proxy_env(**extra):
    """The environment of a client process: no proxy settings but the ones given."""
    env = {name: value for name, value in os.environ.items()
           if name.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle",
                                   "curl_ca_bundle", "ssl_cert_file")}
    env.update(extra)
    return env


def curl(*args, env=None, timeout=120):
    """(exit code, status, headers, body, stderr) of one curl run."""
    with tempfile.TemporaryDirectory() as folder:
        header_file = os.path.join(folder, "headers")
        body_file = os.path.join(folder, "body")
        completed = subprocess.run(["curl", "-sS", "--noproxy", "", "-D", header_file, "-o", body_file, *args],
                                   capture_output=True, timeout=timeout, env=env or proxy_env())
        status, headers, body = None, {}, b""
        if os.path.exists(header_file):
            with open(header_file, "rb") as handle:
                blocks = [block for block in handle.read().decode("latin-1").split("\r\n\r\n") if block.strip()]
            if blocks:
                lines = blocks[-1].split("\r\n")
                status = int(lines[0].split()[1])
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
        if os.path.exists(body_file):
            with open(body_file, "rb") as handle:
                body = handle.read()
        return completed.returncode, status, headers, body, completed.stderr.decode(errors="replace")


REQUESTS_CLIENT = r"""
import json, sys, requests
response = requests.get(sys.argv[1], timeout=120)
with open(sys.argv[2], "wb") as handle:
    handle.write(response.content)
print(json.dumps({"status": response.status_code, "headers": dict(response.headers)}))
"""


def requests_get(url, proxy_url, ca_bundle):
    """python3-requests in its own process, configured only by HTTPS_PROXY and REQUESTS_CA_BUNDLE:
    (status, headers, body)."""
    with tempfile.TemporaryDirectory() as folder:
        body_file = os.path.join(folder, "body")
        completed = subprocess.run([PYTHON, "-c", REQUESTS_CLIENT, url, body_file], capture_output=True,
                                   timeout=180, env=proxy_env(HTTPS_PROXY=proxy_url, REQUESTS_CA_BUNDLE=ca_bundle))
        if completed.returncode != 0:
            raise AssertionError("requests failed: " + completed.stderr.decode(errors="replace")[-3000:])
        answer = json.loads(completed.stdout)
        with open(body_file, "rb") as handle:
            return answer["status"], {k.lower(): v for k, v in answer["headers"].items()}, handle.read()


class Listener:
    """A TCP server on one address that counts connections and the bytes it received; it greets
    every connection with `greeting`. Stands for a service zoogate must not hand clients to."""

    def __init__(self, host, port=0, greeting=b"hello from the listener\n"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.connections = 0
        self.received = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection):
        with connection:
            try:
                connection.sendall(self.greeting)
                connection.settimeout(10)
                while True:
                    data = connection.recv(65536)
                    if not data:
                        return
                    with self.lock:
                        self.received += data
            except OSError:
                return

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# The world: test CA, fake Hub, interception CA, zoogate with an egress listener.


def metric_snapshot(zoogate):
    """The egress-related counters, as {short name: value}."""
    samples = zoogate.metrics()

    def total(name, **labels):
        wanted = set(labels.items())
        return sum(value for (metric, sample), value in samples.items() if metric == name and wanted <= set(sample))

    snapshot = {
        "tunnels": total("zoogate_egress_tunnels_total"),
        "interceptions": total("zoogate_egress_interceptions_total"),
        "cache_hits": total("zoogate_certificate_cache_hits_total"),
        "minted": total("zoogate_certificates_minted_total"),
    }
    for reason in ("policy", "address", "auth", "mismatch", "upstream_tls", "parse"):
        snapshot[f"denied_{reason}"] = total("zoogate_egress_denials_total", reason=reason)
    return snapshot


def delta(before, after):
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


class EgressWorld:
    """Test CA, fake Hub (hub on 127.0.0.1, CDN on localhost), zoogate's interception CA made with
    `zoogate ca init`, a few loopback listeners, and zoogate with these egress rules:

      intercept  127.0.0.1 : hub port        (the fake Hub's name)
      intercept  localhost : untrusted CDN port  (its certificate comes from an unrelated CA)
      tunnel     localhost : CDN port
      tunnel     127.0.0.1, 127.0.0.2, ::1, ::ffff:127.0.0.1 : listener port   (to show the refusal)
      anything else: denied

    Loopback is allowed only for the fake Hub's own names: `localhost` through
    egress.allow_private_destinations (the CDN the Hub redirects to), the Hub's 127.0.0.1 through
    upstream.hub_url."""

    def __init__(self, egress=None):
        self.folder = tempfile.mkdtemp(prefix="zoogate-egress-")
        self.marker = os.path.join(self.folder, "payload-ran")
        self.ca = TestCA(os.path.join(self.folder, "ca"))
        self.weights = state_dict(1)
        self.checkpoint = torch_bytes(self.weights)
        self.safetensors = safetensors_bytes(state_dict(2))
        self.config_json = json.dumps({"model_type": "test", "hidden_size": 64}).encode()
        files = {"config.json": self.config_json, "pytorch_model.bin": self.checkpoint,
                 "model.safetensors": self.safetensors, "evil.bin": malicious_checkpoint(self.marker)}
        self.hub = FakeHub(self.ca, {MODEL: {"files": files,
                                             "lfs": {"pytorch_model.bin", "model.safetensors", "evil.bin"}}})
        self.hub.start()
        self.zoogate = None
        self.listeners = []
        try:
            self.interception_ca = os.path.join(self.folder, "interception-ca")
            completed = subprocess.run([zoogate_bin(), "ca", "init", "--dir", self.interception_ca],
                                       capture_output=True, timeout=60)
            if completed.returncode != 0:
                raise RuntimeError("zoogate ca init failed: " + completed.stderr.decode(errors="replace"))
            self.interception_ca_pem = os.path.join(self.interception_ca, "ca.pem")
            self.hub_host, self.hub_port = address_of(self.hub.url)
            self.cdn_port = address_of(self.hub.cdn_url)[1]
            self.untrusted_port = address_of(self.hub.untrusted_cdn_url)[1]
            # The targets of the loopback refusals: real services, so that a refusal cannot be
            # mistaken for a failed connection.
            first = Listener("127.0.0.1")
            self.listener_port = first.port
            self.listeners = [first, Listener("127.0.0.2", self.listener_port), Listener("::1", self.listener_port)]
            config = {
                "upstream": {**self.hub.upstream_config(), "retries": 1, "read_timeout": "10s",
                             "connect_timeout": "5s"},
                "egress": {
                    "listen": "127.0.0.1:0",
                    "ca_cert": self.interception_ca_pem,
                    "ca_key": os.path.join(self.interception_ca, "ca.key"),
                    "rules": [
                        {"hosts": [self.hub_host], "ports": [self.hub_port], "action": "intercept"},
                        {"hosts": ["localhost"], "ports": [self.untrusted_port], "action": "intercept"},
                        {"hosts": ["localhost"], "ports": [self.cdn_port], "action": "tunnel"},
                        {"hosts": ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"],
                         "ports": [self.listener_port], "action": "tunnel"},
                    ],
                    "allow_private_destinations": ["localhost"],
                    **(egress or {}),
                },
            }
            self.zoogate = ZoogateProcess(os.path.join(self.folder, "zoogate"), config, binary=zoogate_bin())
            self.zoogate.start()
        except BaseException:
            self.close()
            raise

    @property
    def proxy(self):
        return self.zoogate.egress_url

    @property
    def hub_authority(self):
        return f"{self.hub_host}:{self.hub_port}"

    def hub_file_url(self, path):
        """The URL a client asks for when it believes it talks to the Hub itself."""
        return f"{self.hub.url}/{MODEL}/resolve/main/{path}"

    def close(self):
        for listener in self.listeners:
            listener.close()
        try:
            if self.zoogate:
                self.zoogate.stop()
        finally:
            self.hub.stop()
            shutil.rmtree(self.folder, ignore_errors=True)

    def payload_ran(self):
        return os.path.exists(self.marker)

    def metrics(self):
        return metric_snapshot(self.zoogate)

    def intercepted(self, headers=(), context=None, server_hostname=None):
        """A TLS connection to the fake Hub through zoogate's interception, verified against the
        interception CA unless `context` says otherwise."""
        sock, answer = connect(self.proxy, self.hub_authority, headers)
        if answer is None or answer.status != 200:
            sock.close()
            raise AssertionError(f"CONNECT {self.hub_authority} answered {answer!r}")
        context = context or tls_context(self.interception_ca_pem)
        return context.wrap_socket(sock, server_hostname=server_hostname or self.hub_host)


# ---------------------------------------------------------------------------------------------
# Interception, tunnel, denials, strict parsing


class Interception(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.world = EgressWorld()

    @classmethod
    def tearDownClass(cls):
        cls.world.close()

    def hub_get(self, path):
        """What HF_ENDPOINT mode serves for `path` (the same client address, so the same variant)."""
        code, status, headers, body, stderr = curl(f"{self.world.zoogate.hub_url}/{MODEL}/resolve/main/{path}")
        self.assertEqual((code, status), (0, 200), stderr)
        return body

    def curl_through(self, path, *extra):
        return curl("-x", self.world.proxy, "--cacert", self.world.interception_ca_pem,
                    self.world.hub_file_url(path), *extra)

    # Downloads through interception ---------------------------------------------------------

    def test_curl_downloads_through_interception(self):
        before = self.world.metrics()
        code, status, headers, body, stderr = self.curl_through("pytorch_model.bin")
        self.assertEqual((code, status), (0, 200), stderr + repr(body[:300]))
        self.assertEqual(headers.get("x-zoogate-verdict"), "clean")
        self.assertNotEqual(body, self.world.checkpoint)  # rebuilt by zoogate, never upstream's bytes
        self.assertEqual(load_weights_only(body), flatten(self.world.weights))
        self.assertEqual(body, self.hub_get("pytorch_model.bin"))
        code, status, headers, body, stderr = self.curl_through("model.safetensors")
        self.assertEqual((code, status), (0, 200), stderr)
        self.assertEqual(body, self.world.safetensors)
        code, status, headers, body, stderr = self.curl_through("evil.bin")
        self.assertEqual(code, 0, stderr)
        self.assertIn(status, (200, 403), body[:300])
        if status == 200:
            self.assertEqual(headers.get("x-zoogate-verdict"), "disarmed")
            self.assertEqual(load_weights_only(body)["weights.layers.0.weight"],
                             state_dict(7, layers=1)["layers.0.weight"].tolist())
            self.assertEqual(body, self.hub_get("evil.bin"))
        self.assertFalse(self.world.payload_ran())
        change = delta(before, self.world.metrics())
        self.assertGreaterEqual(change.get("interceptions", 0), 3, change)
        self.assertEqual(change.get("tunnels", 0), 0, change)

    def test_curl_sees_a_leaf_signed_by_the_interception_ca(self):
        # Trusting only the fake Hub's own CA, curl must refuse what zoogate presents.
        code, status, _, _, stderr = curl("-x", self.world.proxy, "--cacert", self.world.ca.ca_pem,
                                          self.world.hub_file_url("config.json"))
        self.assertEqual(code, 60, stderr)  # CURLE_PEER_FAILED_VERIFICATION
        with self.world.intercepted() as tls:
            certificate = tls.getpeercert()
        issuer = dict(pair[0] for pair in certificate["issuer"])
        self.assertEqual(issuer["commonName"], "zoogate interception CA")
        self.assertIn(("IP Address", self.world.hub_host), certificate["subjectAltName"])

    def test_requests_downloads_through_interception(self):
        url = self.world.hub_file_url("pytorch_model.bin")
        status, headers, body = requests_get(url, self.world.proxy, self.world.interception_ca_pem)
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(load_weights_only(body), flatten(self.world.weights))
        self.assertEqual(body, self.hub_get("pytorch_model.bin"))
        status, headers, body = requests_get(self.world.hub_file_url("model.safetensors"), self.world.proxy,
                                             self.world.interception_ca_pem)
        self.assertEqual(status, 200)
        self.assertEqual(body, self.world.safetensors)
        self.assertEqual(headers.get("x-linked-etag", "").strip('"'), sha256(self.world.safetensors))
        status, headers, body = requests_get(self.world.hub_file_url("evil.bin"), self.world.proxy,
                                             self.world.interception_ca_pem)
        self.assertIn(status, (200, 403))
        if status == 200:
            load_weights_only(body)
        self.assertFalse(self.world.payload_ran())

    def test_links_in_intercepted_answers_point_back_at_the_intercepted_origin(self):
        # A client that asked https://HUB/... through the proxy must be sent on to https://HUB/...:
        # an http:// link would make it leave TLS (and the proxy's interception) behind.
        code, status, headers, body, stderr = curl(
            "-x", self.world.proxy, "--cacert", self.world.interception_ca_pem,
            f"{self.world.hub.url}/api/models/{MODEL}/tree/main?recursive=true")
        self.assertEqual((code, status), (0, 200), stderr)
        link = headers.get("link", "")
        self.assertIn('rel="next"', link)  # the fake Hub pages by 3
        target = re.search(r"<([^>]+)>", link).group(1)
        self.assertTrue(target.startswith(self.world.hub.url + "/"), link)

    # Tunnel ---------------------------------------------------------------------------------

    def test_tunnelled_host_shows_the_real_certificate(self):
        before = self.world.metrics()
        target = f"localhost:{self.world.cdn_port}"
        sock, answer = connect(self.world.proxy, target)
        self.assertEqual(answer.status, 200, answer)
        self.assertEqual(answer.body, b"")
        with tls_context(self.world.ca.ca_pem).wrap_socket(sock, server_hostname="localhost") as tls:
            certificate = tls.getpeercert()
            issuer = dict(pair[0] for pair in certificate["issuer"])
            self.assertEqual(issuer["commonName"], "zoogate test CA")  # the fake Hub's own, not zoogate's
            tls.sendall(f"GET /tunnel-probe HTTP/1.1\r\nHost: {target}\r\nX-Probe: 1\r\n"
                        f"Connection: close\r\n\r\n".encode())
            response = read_response(tls)
        self.assertIsNotNone(response)
        seen = self.world.hub.requests(host="cdn", path="/tunnel-probe")
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0].headers.get("x-probe"), "1")  # relayed untouched
        # curl: trusting the fake Hub's CA works, trusting only zoogate's does not.
        code, status, _, _, stderr = curl("-x", self.world.proxy, "--cacert", self.world.ca.ca_pem,
                                          f"https://{target}/tunnel-curl")
        self.assertEqual(code, 0, stderr)
        self.assertIsNotNone(status)
        code, _, _, _, stderr = curl("-x", self.world.proxy, "--cacert", self.world.interception_ca_pem,
                                     f"https://{target}/tunnel-curl")
        self.assertEqual(code, 60, stderr)
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("tunnels", 0), 3, change)
        self.assertEqual(change.get("interceptions", 0), 0, change)
        self.assertEqual(change.get("minted", 0), 0, change)

    # Denials --------------------------------------------------------------------------------

    def test_denied_destination_gets_403(self):
        before = self.world.metrics()
        for target in (f"localhost:{self.world.hub_port}",  # a name with no rule for that port
                       f"127.0.0.1:{self.world.cdn_port}",  # the tunnel rule names localhost, not the address
                       f"[::1]:{self.world.hub_port}"):
            sock, answer = connect(self.world.proxy, target)
            sock.close()
            self.assertEqual(answer.status, 403, (target, answer))
            self.assertEqual(answer.headers.get("x-error-code"), "ZoogateEgressDenied")
        # Plain-HTTP absolute-form requests are never forwarded either.
        answer = send_raw(self.world.proxy, f"GET http://{self.world.hub_authority}/{MODEL}/resolve/main/config.json "
                                            f"HTTP/1.1\r\nHost: {self.world.hub_authority}\r\n\r\n".encode())
        self.assertEqual(answer.status, 403, answer)
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("denied_policy", 0), 4, change)
        self.assertEqual(change.get("tunnels", 0), 0, change)

    def test_loopback_destinations_are_refused_when_not_allowed(self):
        before = self.world.metrics()
        port = self.world.listener_port
        for target, address in ((f"127.0.0.1:{port}", "127.0.0.1"), (f"127.0.0.2:{port}", "127.0.0.2"),
                                (f"[::1]:{port}", "::1"), (f"[::ffff:127.0.0.1]:{port}", "127.0.0.1")):
            sock, answer = connect(self.world.proxy, target)
            with sock:
                self.assertIn(answer.status, (403, 502), (target, answer))
                self.assertIn("loopback address", answer.headers.get("x-error-message", ""), (target, answer))
                self.assertIn(address, answer.headers.get("x-error-message", ""), (target, answer))
                # Nothing the client sends next reaches the service.
                try:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                except OSError:
                    pass
                self.assertTrue(connection_closed(sock), target)
        time.sleep(0.2)
        for listener in self.world.listeners:
            self.assertEqual(listener.received, b"", listener.sock.getsockname())
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("denied_address", 0), 4, change)
        self.assertEqual(change.get("tunnels", 0), 0, change)

    def test_connect_targets_that_are_not_host_and_port_are_refused(self):
        before = self.world.metrics()
        # Numeric forms getaddrinfo would read as 127.0.0.1, a wildcard, a missing port, userinfo.
        for target in ("127.1:443", "2130706433:443", "0x7f.0.0.1:443", "*.example:443", "localhost",
                       f"user@localhost:{self.world.cdn_port}", f"localhost:{self.world.cdn_port}/x"):
            sock, answer = connect(self.world.proxy, target)
            sock.close()
            self.assertIsNotNone(answer, target)
            self.assertIn(answer.status, (400, 403), (target, answer))
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("tunnels", 0), 0, change)
        self.assertEqual(change.get("interceptions", 0), 0, change)

    def test_untrusted_upstream_gets_502_and_no_certificate(self):
        before = self.world.metrics()
        sock, answer = connect(self.world.proxy, f"localhost:{self.world.untrusted_port}")
        sock.close()
        self.assertEqual(answer.status, 502, answer)
        self.assertIn("TLS", answer.headers.get("x-error-message", ""), answer)
        self.assertTrue(self.world.hub.wait_until(
            lambda: any(label == "cdn-untrusted" for label, _ in self.world.hub.tls_failures)))
        # curl sees the 502 as a failed CONNECT, never a certificate.
        code, _, _, _, stderr = curl("-x", self.world.proxy, "--cacert", self.world.interception_ca_pem,
                                     f"https://localhost:{self.world.untrusted_port}/x")
        self.assertEqual(code, 56, stderr)  # CURLE_RECV_ERROR: the proxy answered CONNECT with an error
        self.assertIn("502", stderr)
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("minted", 0), 0, change)
        self.assertEqual(change.get("cache_hits", 0), 0, change)
        self.assertEqual(change.get("interceptions", 0), 0, change)
        self.assertEqual(change.get("denied_upstream_tls", 0), 2, change)

    # CONNECT target, TLS server name and Host must agree --------------------------------------

    def test_server_name_other_than_the_connect_target_is_refused(self):
        before = self.world.metrics()
        requests_before = len(self.world.hub.requests(host="hub"))
        sock, answer = connect(self.world.proxy, self.world.hub_authority)
        self.assertEqual(answer.status, 200)
        try:
            tls = tls_context(None).wrap_socket(sock, server_hostname="evil.example")
        except (ssl.SSLError, ConnectionError):
            tls = None  # refused during the handshake: as good
        if tls is not None:
            with tls:
                try:
                    tls.sendall(f"GET /{MODEL}/resolve/main/config.json HTTP/1.1\r\n"
                                f"Host: {self.world.hub_authority}\r\n\r\n".encode())
                except OSError:
                    pass
                self.assertIsNone(read_response(tls))
        else:
            sock.close()
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("denied_mismatch", 0), 1, change)
        self.assertEqual(change.get("interceptions", 0), 0, change)
        self.assertEqual(len(self.world.hub.requests(host="hub")), requests_before)

    def test_host_header_other_than_the_connect_target_is_refused(self):
        before = self.world.metrics()
        requests_before = len(self.world.hub.requests(host="hub"))
        for host in ("evil.example", "localhost", f"evil.example:{self.world.hub_port}",
                     f"{self.world.hub_host}:{self.world.cdn_port}", None):
            with self.world.intercepted() as tls:
                header = f"Host: {host}\r\n" if host is not None else ""
                tls.sendall(f"GET /{MODEL}/resolve/main/config.json HTTP/1.1\r\n{header}\r\n".encode())
                response = read_response(tls)
            self.assertIsNotNone(response, host)
            self.assertEqual(response.status, 400, (host, response))
        self.assertEqual(self.world.hub.requests(host="hub")[requests_before:], [])  # nothing went upstream
        # The right Host on the same kind of connection works.
        with self.world.intercepted() as tls:
            tls.sendall(f"GET /{MODEL}/resolve/main/config.json HTTP/1.1\r\nHost: {self.world.hub_authority}\r\n"
                        f"Connection: close\r\n\r\n".encode())
            response = read_response(tls)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.body, self.world.config_json)
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("denied_mismatch", 0), 5, change)

    # Strict parsing -------------------------------------------------------------------------

    SMUGGLING = {
        "content-length with transfer-encoding":
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "transfer-encoding with content-length":
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "two different content-lengths": "Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "a content-length list": "Content-Length: 4, 5\r\n\r\nabcde",
        "control character in a value": "X-Test: a\x01b\r\n\r\n",
        "NUL in a value": "X-Test: a\x00b\r\n\r\n",
        "space in a field name": "X Test: a\r\n\r\n",
        "space before the colon": "Content-Length : 4\r\n\r\nabcd",
        "oversized header": "X-Big: " + "a" * (20 * 1024) + "\r\n\r\n",
    }

    def test_request_smuggling_on_the_proxy_listener_gets_400(self):
        before = self.world.metrics()
        for name, tail in self.SMUGGLING.items():
            authority = self.world.hub_authority
            for request_line in (f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n",
                                 f"POST http://{authority}/api/models/{MODEL}/paths-info/main HTTP/1.1\r\n"
                                 f"Host: {authority}\r\n"):
                answer = send_raw(self.world.proxy, (request_line + tail).encode("latin-1"))
                self.assertIsNotNone(answer, name)
                self.assertEqual(answer.status, 400, (name, request_line.split()[0], answer))
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("denied_parse", 0), 2 * len(self.SMUGGLING), change)
        self.assertEqual(change.get("interceptions", 0), 0, change)

    def test_request_smuggling_inside_the_interception_gets_400(self):
        requests_before = len(self.world.hub.requests(host="hub"))
        for name, tail in self.SMUGGLING.items():
            with self.world.intercepted() as tls:
                tls.sendall((f"POST /api/models/{MODEL}/paths-info/main HTTP/1.1\r\n"
                             f"Host: {self.world.hub_authority}\r\n{tail}").encode("latin-1"))
                # A second request behind it: a smuggled one, if zoogate read the body differently.
                try:
                    tls.sendall(f"GET /{MODEL}/resolve/main/config.json HTTP/1.1\r\n"
                                f"Host: {self.world.hub_authority}\r\n\r\n".encode())
                except OSError:
                    pass
                response = read_response(tls)
                self.assertIsNotNone(response, name)
                self.assertEqual(response.status, 400, (name, response))
                self.assertTrue(connection_closed(tls), name)
        self.assertEqual(self.world.hub.requests(host="hub")[requests_before:], [])

    def test_hop_by_hop_headers_are_not_passed_on(self):
        self.world.hub.reset_log()
        with self.world.intercepted() as tls:
            tls.sendall((f"GET /{MODEL}/resolve/main/config.json HTTP/1.1\r\n"
                         f"Host: {self.world.hub_authority}\r\n"
                         "Connection: X-Hop-Secret, close\r\n"
                         "X-Hop-Secret: listed-in-connection\r\n"
                         "Keep-Alive: timeout=5\r\n"
                         "Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n"
                         "Proxy-Connection: keep-alive\r\n"
                         "TE: trailers\r\n"
                         "Trailer: X-Checksum\r\n"
                         "Upgrade: h2c\r\n"
                         "\r\n").encode())
            response = read_response(tls)
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.body, self.world.config_json)
        for name in response.headers:
            self.assertFalse(name.startswith("proxy-"), name)
            self.assertNotIn(name, ("keep-alive", "upgrade", "te", "trailer"))
        # The Hub's answer naming the file may be reused from an earlier test; its bytes are always asked
        # for (at the commit it names).
        seen = [request for request in self.world.hub.requests(host="hub")
                if request.repo == MODEL and request.file == "config.json"]
        self.assertTrue(seen)
        for request in seen:
            names = {name.lower() for name, _ in request.raw_headers}
            for hop in ("x-hop-secret", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
                        "upgrade"):
                self.assertNotIn(hop, names, request.raw_headers)
            self.assertNotIn("x-hop-secret", request.headers.get("connection", "").lower())

    # Metrics --------------------------------------------------------------------------------

    def test_metrics_after_scenarios(self):
        before = self.world.metrics()
        for _ in range(2):  # the second interception of the same name reuses its leaf
            code, status, _, body, stderr = self.curl_through("config.json")
            self.assertEqual((code, status, body), (0, 200, self.world.config_json), stderr)
        sock, answer = connect(self.world.proxy, f"localhost:{self.world.cdn_port}")
        sock.close()
        self.assertEqual(answer.status, 200)
        sock, answer = connect(self.world.proxy, f"localhost:{self.world.hub_port}")
        sock.close()
        self.assertEqual(answer.status, 403)
        sock, answer = connect(self.world.proxy, f"127.0.0.1:{self.world.listener_port}")
        sock.close()
        self.assertIn(answer.status, (403, 502))
        with self.world.intercepted() as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
            self.assertEqual(read_response(tls).status, 400)
        self.assertEqual(send_raw(self.world.proxy, b"CONNECT x:1 HTTP/1.1\r\nContent-Length: 1\r\n"
                                                    b"Content-Length: 2\r\n\r\n").status, 400)
        self.assertEqual(self.world.zoogate.wait_until(
            lambda: self.world.metrics()["tunnels"] > before["tunnels"]), True)
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("interceptions", 0), 3, change)
        # One leaf for 127.0.0.1, minted by an earlier test or by this one's first interception; every
        # other interception is a cache hit.
        self.assertLessEqual(change.get("minted", 0), 1, change)
        self.assertEqual(change.get("minted", 0) + change.get("cache_hits", 0), 3, change)
        self.assertGreaterEqual(change.get("cache_hits", 0), 2, change)
        self.assertEqual(change.get("tunnels", 0), 1, change)
        self.assertEqual(change.get("denied_policy", 0), 1, change)
        self.assertEqual(change.get("denied_address", 0), 1, change)
        self.assertEqual(change.get("denied_mismatch", 0), 1, change)
        self.assertEqual(change.get("denied_parse", 0), 1, change)
        text = self.world.zoogate.admin_get("/metrics")[1].decode()
        for reason in ("policy", "address", "auth", "mismatch", "upstream_tls", "parse"):
            self.assertIn(f'zoogate_egress_denials_total{{reason="{reason}"}}', text)


# ---------------------------------------------------------------------------------------------
# Proxy authentication


def password_hash(password):
    completed = subprocess.run([zoogate_bin(), "passwd-hash"], input=(password + "\n").encode(),
                               capture_output=True, timeout=60)
    if completed.returncode != 0:
        raise RuntimeError("zoogate passwd-hash failed: " + completed.stderr.decode(errors="replace"))
    line = completed.stdout.decode().strip().splitlines()[-1]
    return line.split()[-1].strip('"')


class ProxyAuthentication(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.hash = password_hash(PASSWORD)
        cls.world = EgressWorld(egress={"auth": {"realm": "zoogate-test", "users": {USER: cls.hash}}})

    @classmethod
    def tearDownClass(cls):
        cls.world.close()

    def test_password_hash_format(self):
        self.assertRegex(self.hash, r"^scrypt\$32768\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
        with open(self.world.zoogate.config_path, encoding="utf-8") as handle:
            self.assertNotIn(PASSWORD, handle.read())

    def test_missing_or_wrong_credentials_get_407(self):
        before = self.world.metrics()
        cases = {"none": (), "wrong password": (("Proxy-Authorization", basic(USER, "wrong")),),
                 "unknown user": (("Proxy-Authorization", basic("mallory", PASSWORD)),),
                 "not basic": (("Proxy-Authorization", f"Bearer {PASSWORD}"),),
                 "no colon": (("Proxy-Authorization", "Basic " + base64.b64encode(USER.encode()).decode()),),
                 "bad base64": (("Proxy-Authorization", "Basic !!!!"),),
                 "password prefix": (("Proxy-Authorization", basic(USER, PASSWORD[:-1])),),
                 "authorization instead": (("Authorization", basic(USER, PASSWORD)),)}
        for name, headers in cases.items():
            sock, answer = connect(self.world.proxy, self.world.hub_authority, headers)
            sock.close()
            self.assertEqual(answer.status, 407, (name, answer))
            self.assertEqual(answer.headers.get("proxy-authenticate"), 'Basic realm="zoogate-test"', name)
        # Denied hosts and plain HTTP are asked for credentials too, before anything else.
        sock, answer = connect(self.world.proxy, f"localhost:{self.world.hub_port}")
        sock.close()
        self.assertEqual(answer.status, 407)
        code, status, _, _, stderr = curl("-x", self.world.proxy, "--cacert", self.world.interception_ca_pem,
                                          self.world.hub_file_url("config.json"))
        self.assertNotEqual(code, 0)
        self.assertIn("407", stderr)
        code, status, _, _, stderr = curl("-x", self.world.proxy, "--proxy-user", f"{USER}:nope", "--cacert",
                                          self.world.interception_ca_pem, self.world.hub_file_url("config.json"))
        self.assertNotEqual(code, 0)
        self.assertIn("407", stderr)
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("denied_auth", 0), len(cases) + 3, change)
        self.assertEqual(change.get("interceptions", 0), 0, change)
        log = self.world.zoogate.stderr_text()
        self.assertNotIn(PASSWORD, log)

    def test_unknown_user_takes_as_long_as_a_wrong_password(self):
        # Checking a password costs a scrypt run (about 0.1 s); refusing an unknown user at once
        # would tell a client which user names exist.
        def seconds(user):
            start = time.monotonic()
            sock, answer = connect(self.world.proxy, self.world.hub_authority,
                                   (("Proxy-Authorization", basic(user, "not the password")),))
            sock.close()
            self.assertEqual(answer.status, 407)
            return time.monotonic() - start

        known = sorted(seconds(USER) for _ in range(5))[2]
        unknown = sorted(seconds("mallory") for _ in range(5))[2]
        self.assertGreater(known, 0.01)  # scrypt with N=32768 really ran
        self.assertGreater(unknown, known / 3, (known, unknown))

    def test_right_credentials_download(self):
        before = self.world.metrics()
        code, status, headers, body, stderr = curl("-x", self.world.proxy, "--proxy-user", f"{USER}:{PASSWORD}",
                                                   "--cacert", self.world.interception_ca_pem,
                                                   self.world.hub_file_url("pytorch_model.bin"))
        self.assertEqual((code, status), (0, 200), stderr)
        self.assertEqual(load_weights_only(body), flatten(self.world.weights))
        proxy = self.world.proxy.replace("http://", f"http://{USER}:{PASSWORD.replace(' ', '%20')}@")
        status, headers, body = requests_get(self.world.hub_file_url("model.safetensors"), proxy,
                                             self.world.interception_ca_pem)
        self.assertEqual(status, 200)
        self.assertEqual(body, self.world.safetensors)
        change = delta(before, self.world.metrics())
        self.assertEqual(change.get("interceptions", 0), 2, change)
        self.assertEqual(change.get("denied_auth", 0), 0, change)
        users = {entry.get("user") for entry in self.world.zoogate.access_log() if entry.get("listener") == "egress"}
        self.assertIn(USER, users)
        self.assertNotIn(PASSWORD, self.world.zoogate.stderr_text())


# ---------------------------------------------------------------------------------------------
# Non-loopback destinations, inside a network namespace with nothing but loopback

# Addresses put on the namespace's lo (each with a listener on it), and names for its /etc/hosts.
NAMESPACE_ADDRESSES = ["10.0.0.1", "10.0.0.2", "169.254.169.254", "fd00::1", "fd00:ec2::254", "64:ff9b::a9fe:a9fe"]
NAMESPACE_HOSTS = {"internal.test": "10.0.0.1", "mirror.test": "10.0.0.2", "metadata.test": "169.254.169.254",
                   "loopback.test": "127.0.0.1", "intercepted.test": "10.0.0.1",
                   "v6-private.test": "fd00::1"}
LISTEN_PORT = 8443
CLOSED_PORT = 8444


def namespace_probes():
    """(name, CONNECT target) pairs run inside the namespace, in order."""
    port = LISTEN_PORT
    return [
        ("private v4", f"10.0.0.1:{port}"),
        ("private v4, closed port", f"10.0.0.1:{CLOSED_PORT}"),
        ("metadata", f"169.254.169.254:{port}"),
        ("private v6", f"[fd00::1]:{port}"),
        ("metadata v6", f"[fd00:ec2::254]:{port}"),
        ("v4-mapped private", f"[::ffff:10.0.0.1]:{port}"),
        ("v4-mapped metadata", f"[::ffff:169.254.169.254]:{port}"),
        ("nat64 metadata", f"[64:ff9b::a9fe:a9fe]:{port}"),
        ("name to private", f"internal.test:{port}"),
        ("name to private v6", f"v6-private.test:{port}"),
        ("name to loopback", f"loopback.test:{port}"),
        ("allowed name to metadata", f"metadata.test:{port}"),
        ("allowed private mirror", f"mirror.test:{port}"),
        ("intercepted name to private", f"intercepted.test:{port}"),
        ("intercepted name to private, closed port", f"intercepted.test:{CLOSED_PORT}"),
        ("denied name", f"denied.example:{port}"),
    ]


def namespace_main(spec_path):
    """Runs inside `unshare -n -m`: sets the namespace up, starts listeners and zoogate, sends the
    probes and prints what happened as JSON. Refuses to run anywhere but in a namespace whose only
    network device is lo."""
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, check=True).stdout.decode()
    devices = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line.strip()]
    if devices != ["lo"]:
        raise SystemExit(f"refusing to run: this network namespace has devices {devices}, not just lo")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "--bind", spec["hosts_file"], "/etc/hosts"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in NAMESPACE_ADDRESSES:
        prefix = "128" if ":" in address else "32"
        subprocess.run(["ip", "addr", "add", f"{address}/{prefix}", "dev", "lo"], check=True)
    listeners = {}
    for address in NAMESPACE_ADDRESSES + ["127.0.0.1"]:
        listeners[address] = Listener(address, LISTEN_PORT, greeting=f"hello from {address}\n".encode())
    zoogate = ZoogateProcess(spec["workdir"], spec["config"], binary=spec["binary"])
    zoogate.start()
    results = {}
    try:
        for name, target in namespace_probes():
            sock, answer = connect(zoogate.egress_url, target)
            relayed = b""
            with sock:
                if answer is not None and answer.status == 200:
                    sock.settimeout(2)
                    try:
                        sock.sendall(b"client bytes\n")
                        relayed = sock.recv(100)
                    except OSError:
                        pass
            results[name] = {"target": target, "status": answer.status if answer else None,
                             "headers": answer.headers if answer else {}, "relayed": relayed.decode("latin-1")}
        time.sleep(0.3)
        output = {"probes": results, "metrics": metric_snapshot(zoogate),
                  "listeners": {address: {"connections": listener.connections,
                                          "received": listener.received.decode("latin-1")}
                                for address, listener in listeners.items()}}
    finally:
        zoogate.stop()
    print(json.dumps(output))


class NonLoopbackDestinations(unittest.TestCase):
    """Private, link-local, metadata and IPv4-in-IPv6 destinations, and names that resolve to them,
    tried only inside a network namespace with nothing but lo (see the module docstring)."""

    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="zoogate-egress-ns-")
        if not shutil.which("unshare") or not shutil.which("ip"):
            raise RuntimeError("these tests need unshare(1) and ip(8) (util-linux, iproute2) and root")
        hosts_file = os.path.join(cls.folder, "hosts")
        with open(hosts_file, "w", encoding="ascii") as handle:
            handle.write("127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
            for name, address in NAMESPACE_HOSTS.items():
                handle.write(f"{address} {name}\n")
        interception_ca = os.path.join(cls.folder, "interception-ca")
        subprocess.run([zoogate_bin(), "ca", "init", "--dir", interception_ca], check=True, capture_output=True,
                       timeout=60)
        config = {
            # Never contacted: the Hub these tests would reach does not matter.
            "upstream": {"hub_url": "https://127.0.0.1:9", "connect_timeout": "2s", "retries": 0},
            "egress": {
                "listen": "127.0.0.1:0",
                "ca_cert": os.path.join(interception_ca, "ca.pem"),
                "ca_key": os.path.join(interception_ca, "ca.key"),
                "rules": [{"hosts": ["denied.example"], "action": "deny"},
                          {"hosts": ["intercepted.test"], "action": "intercept"},
                          {"hosts": ["*"], "action": "tunnel"}],
                # Metadata addresses are refused whatever this says.
                "allow_private_destinations": ["mirror.test", "metadata.test"],
            },
        }
        spec_path = os.path.join(cls.folder, "spec.json")
        with open(spec_path, "w", encoding="utf-8") as handle:
            json.dump({"hosts_file": hosts_file, "workdir": os.path.join(cls.folder, "zoogate"), "config": config,
                       "binary": zoogate_bin()}, handle)
        script = (f"import sys; sys.path.insert(0, {HERE!r}); import test_egress; "
                  f"test_egress.namespace_main({spec_path!r})")
        completed = subprocess.run(["unshare", "--net", "--mount", PYTHON, "-c", script], capture_output=True,
                                   timeout=120, cwd=HERE)
        if completed.returncode != 0:
            raise RuntimeError("the namespace run failed: " + completed.stderr.decode(errors="replace")[-4000:])
        cls.output = json.loads(completed.stdout.decode().strip().splitlines()[-1])
        cls.probes = cls.output["probes"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.folder, ignore_errors=True)

    def assert_refused(self, name, words):
        probe = self.probes[name]
        self.assertIn(probe["status"], (403, 502), probe)
        message = probe["headers"].get("x-error-message", "")
        for word in words:
            self.assertIn(word, message, probe)
        self.assertEqual(probe["relayed"], "", probe)

    def test_the_namespace_works(self):
        # The positive control: an allowed private host is reached, so refusals below are decisions,
        # not connections that could not be made.
        probe = self.probes["allowed private mirror"]
        self.assertEqual(probe["status"], 200, probe)
        self.assertEqual(probe["relayed"], "hello from 10.0.0.2\n")
        self.assertEqual(self.output["listeners"]["10.0.0.2"]["received"], "client bytes\n")

    def test_private_and_link_local_addresses_are_refused(self):
        self.assert_refused("private v4", ["10.0.0.1", "private address"])
        self.assert_refused("private v6", ["fd00::1", "private address"])
        self.assert_refused("v4-mapped private", ["10.0.0.1", "private address", "IPv4-mapped"])
        self.assert_refused("name to private", ["internal.test", "10.0.0.1", "private address"])
        self.assert_refused("name to private v6", ["v6-private.test", "fd00::1", "private address"])
        self.assert_refused("name to loopback", ["loopback.test", "127.0.0.1", "loopback address"])

    def test_metadata_addresses_are_refused_even_when_allowed(self):
        for name in ("metadata", "metadata v6", "v4-mapped metadata", "nat64 metadata", "allowed name to metadata"):
            self.assert_refused(name, ["cloud-metadata address"])

    def test_interception_of_a_private_address_is_refused_without_a_certificate(self):
        self.assert_refused("intercepted name to private", ["10.0.0.1", "private address"])
        self.assertEqual(self.output["metrics"]["minted"], 0)
        self.assertEqual(self.output["metrics"]["interceptions"], 0)

    def test_refusal_does_not_reveal_whether_a_port_is_open(self):
        # A proxy that connects first and checks afterwards answers "cannot connect" for a closed
        # port and "private address" for an open one: a port scanner for the internal network.
        for open_name, closed_name in (("private v4", "private v4, closed port"),
                                       ("intercepted name to private", "intercepted name to private, closed port")):
            open_port = self.probes[open_name]
            closed_port = self.probes[closed_name]
            self.assertEqual(closed_port["status"], open_port["status"], (open_port, closed_port))
            self.assertIn("private address", closed_port["headers"].get("x-error-message", ""), closed_port)
            self.assertEqual(closed_port["headers"].get("x-error-message", "").replace(str(CLOSED_PORT), "PORT"),
                             open_port["headers"].get("x-error-message", "").replace(str(LISTEN_PORT), "PORT"))

    def test_refused_addresses_see_no_connection_attempt(self):
        # Every address is judged before zoogate connects: a refused one gets no packet at all.
        for address, seen in self.output["listeners"].items():
            if address != "10.0.0.2":
                self.assertEqual(seen["connections"], 0, address)

    def test_refused_destinations_get_nothing_from_the_client(self):
        for address, seen in self.output["listeners"].items():
            if address != "10.0.0.2":
                self.assertEqual(seen["received"], "", address)

    def test_denied_name_gets_403(self):
        probe = self.probes["denied name"]
        self.assertEqual(probe["status"], 403, probe)
        self.assertEqual(probe["headers"].get("x-error-code"), "ZoogateEgressDenied")

    def test_denial_metrics_by_reason(self):
        metrics = self.output["metrics"]
        refused = [name for name in self.probes if name not in ("allowed private mirror", "denied name")]
        self.assertEqual(metrics["denied_address"], len(refused), metrics)
        self.assertEqual(metrics["denied_policy"], 1, metrics)
        self.assertEqual(metrics["tunnels"], 1, metrics)
        self.assertEqual(metrics["denied_upstream_tls"], 0, metrics)


if __name__ == "__main__":
    unittest.main()
