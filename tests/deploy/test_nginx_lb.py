"""The nginx load balancer for several zoogate replicas (deploy/nginx/zoogate-lb.conf).

- LoadBalancerConfigTest: the directives that matter are there (consistent hashing on the request
  URI, no buffering, long timeouts, retries only on error and timeout and only for idempotent
  methods, Range passed on), and `nginx -t` accepts the file inside a generated wrapper whose
  upstreams point at loopback ports, with a temporary prefix (no root needed).
- LoadBalancerBehaviourTest: a real nginx with that file in front of three small loopback HTTP
  servers standing in for replicas: one path always reaches one replica, paths spread over replicas,
  the Range header arrives unchanged; when a replica fails after it received a request, a GET is
  retried on another replica and a POST is not; when a replica is gone, its paths move to the others
  and the paths of the others stay where they were.
"""
import http.server
import os
import re
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.error
import urllib.request

from deploy_support import LB_CONFIG_FILE, free_port, lb_wrapper, make_workdir, nginx_command, read, run


def directives(text):
    """[(name, [arguments])] of every simple directive, comments dropped."""
    text = re.sub(r"#[^\n]*", "", text)
    found = []
    for statement in re.split(r"[;{}]", text):
        words = statement.split()
        if words:
            found.append((words[0], words[1:]))
    return found


class LoadBalancerConfigTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.directives = directives(read(LB_CONFIG_FILE))

    def values(self, name):
        return [arguments for directive, arguments in self.directives if directive == name]

    def test_consistent_hashing_on_the_request_uri(self):
        self.assertIn(["$request_uri", "consistent"], self.values("hash"))
        self.assertGreaterEqual(len(self.values("server")), 2, "several replicas")

    def test_streams_without_buffering(self):
        self.assertIn(["off"], self.values("proxy_buffering"))
        self.assertIn(["off"], self.values("proxy_request_buffering"))
        self.assertIn(["1.1"], self.values("proxy_http_version"))

    def test_long_timeouts(self):
        for name in ("proxy_read_timeout", "proxy_send_timeout"):
            (value,), = self.values(name)
            self.assertRegex(value, r"^\d+s$")
            self.assertGreaterEqual(int(value[:-1]), 600, f"{name} must allow long pauses of big downloads")

    def test_retries_only_on_error_and_timeout_for_idempotent_methods(self):
        (arguments,), = [self.values("proxy_next_upstream")]
        self.assertEqual(set(arguments), {"error", "timeout"})
        self.assertNotIn("non_idempotent", arguments)
        self.assertTrue(self.values("proxy_next_upstream_tries"))

    def test_passes_range(self):
        self.assertIn(["Range", "$http_range"], self.values("proxy_set_header"))
        self.assertIn(["If-Range", "$http_if_range"], self.values("proxy_set_header"))

    def test_nginx_accepts_it(self):
        prefix = make_workdir("nginx-t")
        config = lb_wrapper(prefix, [free_port() for _ in range(3)], free_port())
        result = run([*nginx_command(prefix, config), "-t", "-q"])
        self.assertEqual(result.returncode, 0, result.stderr)


class Replica(http.server.ThreadingHTTPServer):
    """A stand-in for one zoogate replica: answers with its name and the Range header it got. When
    `broken`, it reads each request and drops the connection without an answer, as a replica that
    dies in the middle of a request does."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name):
        self.name = name
        self.requests = 0
        self.broken = False
        self.connections = set()
        super().__init__(("127.0.0.1", 0), ReplicaHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self):
        return self.server_address[1]

    def stop(self):
        """Stops listening and drops every open connection (nginx keeps some alive)."""
        self.shutdown()
        self.server_close()
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ReplicaHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self):
        self.server.connections.discard(self.connection)
        super().finish()

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.requests += 1
        if self.server.broken:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = f"{self.server.name} range={self.headers.get('Range', '-')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass


class LoadBalancerBehaviourTest(unittest.TestCase):
    def setUp(self):
        self.replicas = [Replica(name) for name in ("a", "b", "c")]
        self.prefix = make_workdir("nginx")
        self.port = free_port()
        config = lb_wrapper(self.prefix, [replica.port for replica in self.replicas], self.port)
        self.log = open(os.path.join(self.prefix, "nginx.stderr"), "w")
        self.nginx = subprocess.Popen(nginx_command(self.prefix, config), stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.nginx.poll() is not None:
                    break
                time.sleep(0.05)
        else:
            self.fail("nginx did not start listening")
        self.assertIsNone(self.nginx.poll(), read(os.path.join(self.prefix, "nginx.stderr")))

    def tearDown(self):
        if self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        self.log.close()
        for replica in self.replicas:
            if replica.socket.fileno() != -1:
                replica.stop()

    def request(self, path, method="GET", headers=None, data=None):
        """(status, body text) through nginx."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method, headers=headers or {},
                                         data=data)
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def replica_of(self, path):
        status, body = self.request(path)
        self.assertEqual(status, 200, body)
        return body.split()[0]

    def test_one_path_one_replica_and_paths_spread(self):
        paths = [f"/org/model-{number}/resolve/main/pytorch_model.bin" for number in range(40)]
        owners = {path: self.replica_of(path) for path in paths}
        for path in paths[:10]:
            for _ in range(3):
                self.assertEqual(self.replica_of(path), owners[path], path)
        self.assertEqual(set(owners.values()), {"a", "b", "c"}, "40 paths should reach every replica")

    def test_range_arrives_unchanged(self):
        status, body = self.request("/org/model/resolve/main/model.safetensors", headers={"Range": "bytes=100-199"})
        self.assertEqual(status, 200)
        self.assertTrue(body.endswith("range=bytes=100-199"), body)

    def owners(self):
        paths = [f"/org/model-{number}/resolve/main/pytorch_model.bin" for number in range(40)]
        return {path: self.replica_of(path) for path in paths}

    def test_a_failing_replica_gets_get_retried_and_post_not(self):
        owners = self.owners()
        failing = self.replicas[0]
        orphans = [path for path, owner in owners.items() if owner == failing.name]
        self.assertGreaterEqual(len(orphans), 2)
        failing.broken = True
        others = sum(replica.requests for replica in self.replicas[1:])
        status, _ = self.request(orphans[0], method="POST", data=b"")
        self.assertEqual(status, 502, "the POST reached a replica and must not be repeated on another")
        self.assertEqual(sum(replica.requests for replica in self.replicas[1:]), others, "the POST was repeated")
        status, body = self.request(orphans[1])
        self.assertEqual(status, 200, f"the GET was not retried: {body}")
        self.assertNotEqual(body.split()[0], failing.name)

    def test_paths_of_a_gone_replica_move_and_others_stay(self):
        owners = self.owners()
        gone = self.replicas[0]
        gone.stop()
        for path, owner in owners.items():
            now = self.replica_of(path)
            if owner == gone.name:
                self.assertNotEqual(now, gone.name)
            else:
                self.assertEqual(now, owner, "paths of live replicas stay where they were")

if __name__ == "__main__":
    unittest.main()
