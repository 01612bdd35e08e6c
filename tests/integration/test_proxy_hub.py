"""zoogate in HF_ENDPOINT mode, end to end: real clients (curl, python3-requests, @huggingface/hub)
download through a real zoogate process from the fake Hub over TLS (DESIGN.md section 5).

Each class starts its own world (proxy_world.ProxyWorld); every check reads what a client really
received, and the metrics zoogate exports.
"""
import base64
import concurrent.futures
import hashlib
import json
import os
import subprocess
import tempfile
import time
import unittest

import requests

from fake_hub import Fault, FakeHub
from proxy_world import (DATASET, GATED, MODEL, RENAMED, ProxyWorld, flatten, load_weights_only, sha256,
                         state_dict, torch_bytes)
from support import zoogate_bin

HERE = os.path.dirname(os.path.abspath(__file__))


def curl(*args, timeout=120):
    """(status, headers dict with lowercase names, body bytes) of one curl run."""
    with tempfile.TemporaryDirectory() as folder:
        header_file = os.path.join(folder, "headers")
        body_file = os.path.join(folder, "body")
        completed = subprocess.run(["curl", "-sS", "-D", header_file, "-o", body_file, *args],
                                   capture_output=True, timeout=timeout)
        if completed.returncode != 0:
            raise AssertionError("curl failed: " + completed.stderr.decode(errors="replace"))
        with open(header_file, "rb") as handle:
            blocks = handle.read().decode("latin-1").strip().split("\r\n\r\n")
        lines = blocks[-1].split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        with open(body_file, "rb") as handle:
            return status, headers, handle.read()


def node_client(world, *args, token=None):
    command = ["node", os.path.join(HERE, "hub_client.mjs"), "--hub-url", world.zoogate.hub_url, *args]
    if token:
        command[4:4] = ["--token", token]
    return subprocess.run(command, capture_output=True, timeout=300, cwd=HERE)


class WorldTest(unittest.TestCase):
    """One ProxyWorld per test class, configured by `zoogate_config`."""

    zoogate_config = None

    @classmethod
    def setUpClass(cls):
        cls.world = ProxyWorld(zoogate_config=cls.zoogate_config)

    @classmethod
    def tearDownClass(cls):
        cls.world.close()


class Downloads(WorldTest):
    """curl and python3-requests download files; what they get is checked byte by byte."""

    # Long enough that no answer of the Hub expires between two requests of one test, however slow
    # the machine: the reuse is what test_hub_answers_are_reused_per_credentials checks.
    zoogate_config = {"upstream": {"resolution_ttl": "10m"}}

    def test_safetensors_arrive_byte_identical(self):
        status, headers, body = curl(self.world.url(MODEL, "model.safetensors"))
        self.assertEqual(status, 200)
        self.assertEqual(body, self.world.safetensors)
        self.assertEqual(headers["x-linked-etag"].strip('"'), sha256(self.world.safetensors))
        self.assertEqual(headers["x-zoogate-verdict"], "passed")
        self.assertEqual(headers["x-repo-commit"], self.world.hub.commit(MODEL))
        for name in headers:
            self.assertFalse(name.startswith("x-xet"), name)
        self.assertNotIn("location", headers)
        self.assertNotIn("content-encoding", headers)
        expected = base64.b64encode(hashlib.sha256(self.world.safetensors).digest()).decode()
        self.assertEqual(headers["repr-digest"], f"sha-256=:{expected}:")

    def test_checkpoint_is_rebuilt_and_loads_with_weights_only(self):
        status, headers, body = curl(self.world.url(MODEL, "pytorch_model.bin"))
        self.assertEqual(status, 200, body[:300])
        self.assertNotEqual(body, self.world.checkpoint)  # a brand-new file, never upstream's bytes
        self.assertEqual(headers["x-zoogate-verdict"], "clean")
        served = sha256(body)
        self.assertEqual(headers["etag"].strip('"'), served)
        self.assertEqual(headers["x-linked-etag"].strip('"'), served)
        self.assertEqual(int(headers["x-linked-size"]), len(body))
        self.assertEqual(headers["x-zoogate-upstream-sha256"], sha256(self.world.checkpoint))
        self.assertEqual(load_weights_only(body), flatten(self.world.weights))
        # HEAD describes the same bytes.
        head_status, head_headers, _ = curl("-I", self.world.url(MODEL, "pytorch_model.bin"))
        self.assertEqual(head_status, 200)
        self.assertEqual(head_headers["etag"], headers["etag"])
        self.assertEqual(head_headers["content-length"], str(len(body)))

    def test_signed_manifest_verifies_the_download(self):
        status, headers, body = curl(self.world.url(MODEL, "pytorch_model.bin"))
        self.assertEqual(status, 200)
        with tempfile.TemporaryDirectory() as folder:
            artifact = os.path.join(folder, "pytorch_model.bin")
            with open(artifact, "wb") as handle:
                handle.write(body)
            manifest_status, _, manifest = curl(self.world.zoogate.hub_url + headers["x-zoogate-manifest"])
            key_status, _, key = curl(self.world.zoogate.hub_url + "/zoogate/signing-key.pem")
            self.assertEqual((manifest_status, key_status), (200, 200))
            for name, data in (("manifest.json", manifest), ("key.pem", key)):
                with open(os.path.join(folder, name), "wb") as handle:
                    handle.write(data)
            verify = subprocess.run([zoogate_bin(), "verify", artifact, "--manifest",
                                     os.path.join(folder, "manifest.json"), "--pubkey",
                                     os.path.join(folder, "key.pem")], capture_output=True, timeout=120)
            self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
            with open(artifact, "r+b") as handle:  # one flipped byte anywhere is detected
                handle.seek(len(body) - 1)
                handle.write(bytes([body[-1] ^ 1]))
            tampered = subprocess.run([zoogate_bin(), "verify", artifact, "--manifest",
                                       os.path.join(folder, "manifest.json"), "--pubkey",
                                       os.path.join(folder, "key.pem")], capture_output=True, timeout=120)
            self.assertEqual(tampered.returncode, 4)

    def test_malicious_pickle_arrives_disarmed(self):
        response = requests.get(self.world.url(MODEL, "evil.bin"), timeout=120)
        self.assertIn(response.status_code, (200, 403), response.text[:300])
        if response.status_code == 200:
            self.assertEqual(response.headers["X-Zoogate-Verdict"], "disarmed")
            loaded = load_weights_only(response.content)
            self.assertEqual(loaded["weights.layers.0.weight"], state_dict(7, layers=1)["layers.0.weight"].tolist())
        else:
            self.assertEqual(response.headers["X-Error-Code"], "ZoogateBlocked")
            self.assertIn("os.system", response.headers["X-Error-Message"])
        self.assertFalse(self.world.payload_ran())
        self.assertGreaterEqual(self.world.zoogate.metric_sum("zoogate_verdicts_total", verdict="disarmed") +
                                self.world.zoogate.metric_sum("zoogate_verdicts_total", verdict="blocked"), 1)

    def test_range_resume_gives_identical_bytes(self):
        whole = requests.get(self.world.url(MODEL, "pytorch_model.bin"), timeout=120)
        self.assertEqual(whole.status_code, 200)
        half = len(whole.content) // 2
        first = requests.get(self.world.url(MODEL, "pytorch_model.bin"), headers={"Range": f"bytes=0-{half - 1}"},
                             timeout=120)
        rest = requests.get(self.world.url(MODEL, "pytorch_model.bin"), headers={"Range": f"bytes={half}-"},
                            timeout=120)
        self.assertEqual((first.status_code, rest.status_code), (206, 206))
        self.assertEqual(rest.headers["Content-Range"], f"bytes {half}-{len(whole.content) - 1}/{len(whole.content)}")
        self.assertEqual(first.content + rest.content, whole.content)
        probe = requests.get(self.world.url(MODEL, "model.safetensors"), headers={"Range": "bytes=0-0"}, timeout=60)
        self.assertEqual(probe.status_code, 206)
        self.assertEqual(probe.content, self.world.safetensors[:1])
        tail = requests.get(self.world.url(MODEL, "model.safetensors"), headers={"Range": "bytes=100-"}, timeout=60)
        self.assertEqual(tail.content, self.world.safetensors[100:])

    def test_small_files_kept_in_git(self):
        status, headers, body = curl(self.world.url(MODEL, "config.json"))
        self.assertEqual((status, body), (200, self.world.config_json))
        status, headers, body = curl(self.world.url(DATASET, "data.pkl"))
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(headers["x-zoogate-verdict"], "clean")
        self.assertNotEqual(body, self.world.small_checkpoint)

    def test_gated_repository_and_credentials(self):
        status, headers, _ = curl(self.world.url(GATED, "pytorch_model.bin"))
        self.assertEqual(status, 401)
        self.assertEqual(headers["x-error-code"], "GatedRepo")
        self.world.hub.reset_log()
        status, headers, body = curl("-H", f"Authorization: Bearer {FakeHub.TOKEN}",
                                     self.world.url(GATED, "pytorch_model.bin"))
        self.assertEqual(status, 200, body[:300])
        for request in self.world.hub.requests(host="cdn"):
            self.assertNotIn("authorization", {name.lower() for name in request.headers})
        self.assertTrue(any("authorization" in {name.lower() for name in request.headers}
                            for request in self.world.hub.requests(host="hub")))
        log = "\n".join(self.world.zoogate.log_lines())
        self.assertNotIn(FakeHub.TOKEN, log)

    def test_hub_answers_are_reused_per_credentials(self):
        """A file the cache holds, asked for again (HEAD then GET, as Hub clients do), is served with no
        request to the Hub; an answer given with credentials is never reused without them."""
        url = self.world.url(MODEL, "small.pt")
        first = requests.get(url, timeout=120)
        self.assertEqual(first.status_code, 200, first.text[:300])
        resolves = self.world.hub.resolve_count(MODEL, "small.pt")
        reused = self.world.zoogate.metric_sum("zoogate_upstream_resolutions_reused_total")
        head = requests.head(url, timeout=60)
        again = requests.get(url, timeout=120)
        self.assertEqual((head.status_code, again.status_code), (200, 200))
        self.assertEqual(head.headers["etag"], first.headers["etag"])
        self.assertEqual(again.content, first.content)
        self.assertEqual(self.world.hub.resolve_count(MODEL, "small.pt"), resolves)
        self.assertEqual(self.world.zoogate.metric_sum("zoogate_upstream_resolutions_reused_total"), reused + 2)

        gated = self.world.url(GATED, "pytorch_model.bin")
        with_token = requests.get(gated, headers={"Authorization": f"Bearer {FakeHub.TOKEN}"}, timeout=120)
        self.assertEqual(with_token.status_code, 200, with_token.text[:300])
        resolves = self.world.hub.resolve_count(GATED, "pytorch_model.bin")
        without = requests.get(gated, timeout=60)
        self.assertEqual(without.status_code, 401)
        self.assertEqual(without.headers["x-error-code"], "GatedRepo")
        self.assertGreater(self.world.hub.resolve_count(GATED, "pytorch_model.bin"), resolves)

    def test_renamed_repository_redirects_relatively(self):
        status, headers, _ = curl(self.world.url(RENAMED, "config.json"))
        self.assertEqual(status, 307)
        self.assertTrue(headers["location"].startswith("/org/model/"), headers["location"])
        status, _, body = curl("-L", self.world.url(RENAMED, "config.json"))
        self.assertEqual((status, body), (200, self.world.config_json))

    def test_xet_is_never_passed_on(self):
        response = requests.get(f"{self.world.zoogate.hub_url}/api/models/{MODEL}/xet-read-token/main", timeout=30)
        self.assertEqual(response.status_code, 403)
        # A client asking for Xet file info gets the file itself.
        response = requests.get(self.world.url(MODEL, "model.safetensors"),
                                headers={"Accept": "application/vnd.xet-fileinfo+json"}, timeout=60)
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, self.world.safetensors)

    def test_each_address_gets_its_variant_from_one_download(self):
        """Two client addresses (two MTD scopes) get two layout variants of one checkpoint: the second
        is made from the download kept for the first, not from a new one."""
        url = self.world.url(MODEL, "pytorch_model.bin")
        disarms = self.world.zoogate.metric_sum("zoogate_disarm_duration_seconds_count")
        status_a, headers_a, body_a = curl("--interface", "127.0.0.3", url)
        fetches_after_a = self.world.hub.fetch_count(MODEL, "pytorch_model.bin")
        status_b, headers_b, body_b = curl("--interface", "127.0.0.4", url)
        self.assertEqual((status_a, status_b), (200, 200))
        self.assertEqual(self.world.hub.fetch_count(MODEL, "pytorch_model.bin"), fetches_after_a)
        self.assertEqual(self.world.zoogate.metric_sum("zoogate_disarm_duration_seconds_count"), disarms + 2)
        self.assertNotEqual(body_a, body_b)
        self.assertNotEqual(headers_a["etag"], headers_b["etag"])
        self.assertEqual(headers_a["x-zoogate-upstream-sha256"], headers_b["x-zoogate-upstream-sha256"])
        for body in (body_a, body_b):
            self.assertEqual(load_weights_only(body), flatten(self.world.weights))

    def test_concurrent_cold_requests_fetch_and_disarm_once(self):
        path = "small.pt"
        url = self.world.url(MODEL, path)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(lambda _: requests.get(url, timeout=120), range(8)))
        self.assertEqual({response.status_code for response in bodies}, {200})
        self.assertEqual(len({response.content for response in bodies}), 1)
        self.assertEqual(self.world.hub.fetch_count(MODEL, path), 1)

    def test_metrics_after_downloads(self):
        requests.get(self.world.url(MODEL, "config.json"), timeout=30)
        zoogate = self.world.zoogate
        self.assertGreater(zoogate.metric_sum("zoogate_http_requests_total", listener="hub", route="resolve",
                                              code="2xx"), 0)
        self.assertGreater(zoogate.metric_sum("zoogate_client_bytes_sent_total"), 0)
        self.assertGreater(zoogate.metric_sum("zoogate_upstream_bytes_received_total"), 0)
        records = zoogate.access_log()
        self.assertTrue(any(record["target"] == "/org/model/resolve/main/config.json" for record in records))
        for record in records:
            self.assertRegex(record["request_id"], r"^[0-9a-f]{16}$")
        self.assertEqual(len(zoogate.events("listening")), 1)


class BehindALoadBalancer(WorldTest):
    """With trusted_proxies, a request from a trusted balancer is its X-Forwarded-For client's: that
    address is its MTD scope and the access log's client, and its X-Forwarded-Proto the scheme of the
    links; with trusted_user_header, the user the balancer names is its scope. Anybody else's headers
    are ignored."""

    BALANCER, OTHER = "127.0.0.5", "127.0.0.6"
    zoogate_config = {"trusted_proxies": [BALANCER], "trusted_user_header": "X-Forwarded-User"}

    def download(self, source, *forwarded_for, user=None, path="pytorch_model.bin", weights=None):
        """(ETag, SHA-256 of the body) of `path` downloaded from `source`, one X-Forwarded-For line per
        value and one X-Forwarded-User line per `user` (a name or a list); the body must load as
        `weights` (default: the world's checkpoint's)."""
        headers = [argument for value in forwarded_for for argument in ("-H", f"X-Forwarded-For: {value}")]
        for name in ([] if user is None else [user] if isinstance(user, str) else user):
            headers += ["-H", f"X-Forwarded-User: {name}"]
        status, answer, body = curl("--interface", source, *headers, self.world.url(MODEL, path))
        self.assertEqual(status, 200)
        self.assertEqual(load_weights_only(body), flatten(weights or self.world.weights))
        return answer["etag"], sha256(body)

    def logged(self, file_name, count):
        """The access log's lines for `file_name` (each test of the class asks for files of its own),
        once there are `count` of them: a line is written just after its answer has gone out."""
        def lines():
            return [record for record in self.world.zoogate.access_log() if record["target"].endswith("/" + file_name)]
        self.world.zoogate.wait_until(lambda: len(lines()) >= count)
        return lines()

    def test_the_forwarded_client_is_the_scope(self):
        client_a = self.download(self.BALANCER, "203.0.113.7")
        client_b = self.download(self.BALANCER, "203.0.113.8")
        balancer = self.download(self.BALANCER)
        self.assertEqual(len({client_a[0], client_b[0], balancer[0]}), 3)
        self.assertEqual(len({client_a[1], client_b[1], balancer[1]}), 3)
        # What a client wrote into the header itself, left of what the balancer appended, is not read;
        # several header lines count as one list.
        self.assertEqual(self.download(self.BALANCER, "198.51.100.1, 203.0.113.7"), client_a)
        self.assertEqual(self.download(self.BALANCER, "198.51.100.1", "203.0.113.7"), client_a)
        # A peer that is not trusted is its own client, whatever it forwards.
        other = self.download(self.OTHER, "203.0.113.7")
        self.assertEqual(self.download(self.OTHER), other)
        self.assertNotEqual(other[0], client_a[0])

        records = self.logged("pytorch_model.bin", 7)
        self.assertEqual(sorted((record["client"], record.get("peer", "")) for record in records),
                         sorted([("203.0.113.7", self.BALANCER)] * 3 + [("203.0.113.8", self.BALANCER),
                                                                        (self.BALANCER, ""), (self.OTHER, ""),
                                                                        (self.OTHER, "")]))

    def test_links_take_the_scheme_the_balancer_names(self):
        """A balancer that terminates TLS says so in X-Forwarded-Proto; the manifest link (public_url
        is not set) then sends the client back over https. Nobody else can change the scheme."""
        url = self.world.url(MODEL, "evil.bin")  # an artifact of its own: the other tests count theirs

        def manifest_link(source, *protos):
            headers = [argument for proto in protos for argument in ("-H", f"X-Forwarded-Proto: {proto}")]
            status, answer, _ = curl("--interface", source, *headers, url)
            self.assertEqual(status, 200)
            return answer["link"]

        host = self.world.zoogate.hub_url.removeprefix("http://")
        self.assertTrue(manifest_link(self.BALANCER, "https").startswith(f"<https://{host}/"))
        self.assertTrue(manifest_link(self.BALANCER).startswith(f"<http://{host}/"))
        self.assertTrue(manifest_link(self.BALANCER, "https", "https").startswith(f"<http://{host}/"))
        self.assertTrue(manifest_link(self.BALANCER, "gopher").startswith(f"<http://{host}/"))
        self.assertTrue(manifest_link(self.OTHER, "https").startswith(f"<http://{host}/"))

    def test_a_user_the_balancer_names_is_the_scope(self):
        small = {"path": "small.pt", "weights": state_dict(3, layers=1, width=8)}
        alice = self.download(self.BALANCER, "203.0.113.7", user="alice", **small)
        # The same user from another address gets the same variant; another user another one.
        self.assertEqual(self.download(self.BALANCER, "203.0.113.8", user="alice", **small), alice)
        bob = self.download(self.BALANCER, "203.0.113.7", user="bob", **small)
        address = self.download(self.BALANCER, "203.0.113.7", **small)
        self.assertEqual(len({alice[0], bob[0], address[0]}), 3)
        # A name that is no user name counts as none, and so do two names.
        self.assertEqual(self.download(self.BALANCER, "203.0.113.7", user="alice smith", **small), address)
        self.assertEqual(self.download(self.BALANCER, "203.0.113.7", user=["alice", "bob"], **small), address)
        # Nobody but a trusted proxy names users.
        self.assertEqual(self.download(self.OTHER, user="alice", **small), self.download(self.OTHER, **small))

        records = self.logged("small.pt", 8)
        self.assertEqual(sorted(record.get("user", "") for record in records),
                         ["", "", "", "", "", "alice", "alice", "bob"])


class Listings(WorldTest):
    """The API JSON describes the bytes zoogate serves, and never mentions Xet."""

    def walk_tree(self):
        url = f"{self.world.zoogate.hub_url}/api/models/{MODEL}/tree/main?recursive=true&expand=true"
        entries = []
        pages = 0
        while url:
            response = requests.get(url, timeout=120)
            self.assertEqual(response.status_code, 200, response.text[:300])
            self.assertNotIn("xetHash", response.text)
            entries += response.json()
            pages += 1
            url = response.links.get("next", {}).get("url")
            if url:
                self.assertTrue(url.startswith(self.world.zoogate.hub_url), url)
        self.assertGreater(pages, 1)  # the fake Hub pages by 3
        return {entry["path"]: entry for entry in entries}

    def test_tree_agrees_with_the_bytes_served(self):
        tree = self.walk_tree()
        body = requests.get(self.world.url(MODEL, "pytorch_model.bin"), timeout=120).content
        entry = tree["pytorch_model.bin"]
        self.assertEqual(entry["size"], len(body))
        self.assertEqual(entry["lfs"]["oid"], sha256(body))
        safetensors = tree["model.safetensors"]
        self.assertEqual(safetensors["lfs"]["oid"], sha256(self.world.safetensors))

    def test_paths_info_and_model_info(self):
        body = requests.get(self.world.url(MODEL, "pytorch_model.bin"), timeout=120).content
        response = requests.post(f"{self.world.zoogate.hub_url}/api/models/{MODEL}/paths-info/main",
                                 data={"paths": ["pytorch_model.bin", "config.json"], "expand": "True"}, timeout=120)
        self.assertEqual(response.status_code, 200, response.text[:300])
        self.assertNotIn("xetHash", response.text)
        info = {entry["path"]: entry for entry in response.json()}
        self.assertEqual(info["pytorch_model.bin"]["lfs"]["oid"], sha256(body))
        response = requests.get(f"{self.world.zoogate.hub_url}/api/models/{MODEL}/revision/main?blobs=true",
                                timeout=120)
        self.assertEqual(response.status_code, 200)
        siblings = {entry["rfilename"]: entry for entry in response.json()["siblings"]}
        self.assertEqual(siblings["pytorch_model.bin"]["lfs"]["sha256"], sha256(body))
        self.assertEqual(siblings["pytorch_model.bin"]["size"], len(body))


class HubClientJs(WorldTest):
    """@huggingface/hub with hubUrl pointed at zoogate: downloadFile and snapshotDownload."""

    def test_download_file(self):
        with tempfile.TemporaryDirectory() as folder:
            for path, check in (("model.safetensors", lambda data: self.assertEqual(data, self.world.safetensors)),
                                ("pytorch_model.bin",
                                 lambda data: self.assertEqual(load_weights_only(data), flatten(self.world.weights)))):
                target = os.path.join(folder, path)
                completed = node_client(self.world, "--repo", MODEL, "download", path, target)
                self.assertEqual(completed.returncode, 0, completed.stderr.decode(errors="replace"))
                with open(target, "rb") as handle:
                    check(handle.read())

    def test_snapshot_download(self):
        with tempfile.TemporaryDirectory() as folder:
            completed = node_client(self.world, "--repo", MODEL, "snapshot", folder)
            self.assertEqual(completed.returncode, 0, completed.stderr.decode(errors="replace"))
            snapshot = completed.stdout.decode().strip().splitlines()[-1]
            with open(os.path.join(snapshot, "model.safetensors"), "rb") as handle:
                self.assertEqual(handle.read(), self.world.safetensors)
            with open(os.path.join(snapshot, "pytorch_model.bin"), "rb") as handle:
                served = handle.read()
            self.assertEqual(load_weights_only(served), flatten(self.world.weights))
            direct = requests.get(self.world.url(MODEL, "pytorch_model.bin"), timeout=120).content
            self.assertEqual(served, direct)
        self.assertFalse(self.world.payload_ran())

    def test_blocked_or_disarmed_reason_reaches_the_client(self):
        with tempfile.TemporaryDirectory() as folder:
            completed = node_client(self.world, "--repo", MODEL, "download", "evil.bin", os.path.join(folder, "e"))
            if completed.returncode != 0:
                self.assertIn("os.system", completed.stderr.decode(errors="replace"))
            else:
                with open(os.path.join(folder, "e"), "rb") as handle:
                    load_weights_only(handle.read())
        self.assertFalse(self.world.payload_ran())


class Faults(WorldTest):
    """Upstream misbehaviour: the client gets an error, and nothing partial is cached or served."""

    # Every request asks the Hub (no reuse of its answers), so that a fault armed for a file acts on
    # the next request for it.
    zoogate_config = {"pipeline": {"client_wait": "2s", "retry_after": "1s"},
                      "upstream": {"read_timeout": "3s", "resolution_ttl": "0ms"}}

    def tearDown(self):
        self.world.hub.clear_faults()

    def assert_recovers(self, path, expected_check):
        """With the fault gone, the next download is complete and correct (nothing bad was kept)."""
        self.world.hub.clear_faults()
        response = requests.get(self.world.url(MODEL, path), timeout=120)
        self.assertEqual(response.status_code, 200, response.text[:300])
        expected_check(response.content)

    def upstream_errors(self, reason):
        return self.world.zoogate.metric_sum("zoogate_upstream_errors_total", reason=reason)

    def check_checkpoint(self, data):
        self.assertEqual(load_weights_only(data), flatten(self.world.weights))

    def test_reset_mid_body(self):
        before = self.world.zoogate.metric_sum("zoogate_upstream_errors_total")
        self.world.hub.inject(MODEL, "pytorch_model.bin", Fault.reset())
        response = requests.get(self.world.url(MODEL, "pytorch_model.bin"), timeout=120)
        self.assertEqual(response.status_code, 502)
        self.assertGreater(self.world.zoogate.metric_sum("zoogate_upstream_errors_total"), before)
        self.assert_recovers("pytorch_model.bin", self.check_checkpoint)

    def test_reset_while_streaming_safetensors(self):
        self.world.hub.inject(MODEL, "model.safetensors", Fault.reset())
        with self.assertRaises(requests.exceptions.RequestException):
            response = requests.get(self.world.url(MODEL, "model.safetensors"), timeout=60)
            if response.status_code == 200 and len(response.content) == len(self.world.safetensors):
                raise AssertionError("a broken download looked complete")
            raise requests.exceptions.ConnectionError(f"status {response.status_code}")
        self.assert_recovers("model.safetensors", lambda data: self.assertEqual(data, self.world.safetensors))

    def test_lying_content_length(self):
        self.world.hub.inject(MODEL, "evil.bin", Fault.lying_length())
        response = requests.get(self.world.url(MODEL, "evil.bin"), timeout=120)
        self.assertEqual(response.status_code, 502)
        self.assertGreater(self.world.zoogate.metric_sum("zoogate_upstream_errors_total"), 0)

    def test_wrong_digest(self):
        before = self.upstream_errors("digest_mismatch")
        self.world.hub.inject(MODEL, "small.pt", Fault.wrong_digest())
        response = requests.get(self.world.url(MODEL, "small.pt"), timeout=120)
        self.assertEqual(response.status_code, 502)
        self.assertIn("git blob id", response.headers["X-Error-Message"])
        self.assertGreater(self.upstream_errors("digest_mismatch"), before)
        self.world.hub.inject(MODEL, "model.safetensors", Fault.corrupt())
        response = requests.get(self.world.url(MODEL, "model.safetensors"), timeout=120)
        self.assertEqual(response.status_code, 502)
        self.assertIn("SHA-256", response.headers["X-Error-Message"])
        self.assert_recovers("small.pt", lambda data: load_weights_only(data))

    def test_slow_drip_holds_clients_with_retry_after(self):
        before = self.world.zoogate.metric_sum("zoogate_clients_held_total")
        fetches = self.world.hub.fetch_count(MODEL, "evil.bin")
        # evil.bin has about 17 KiB: 18 pieces of 1 KiB, 0.25 s apart, outlast pipeline.client_wait (2 s).
        self.world.hub.inject(MODEL, "evil.bin", Fault.slow_drip(chunk_bytes=1024, interval=0.25))
        response = requests.get(self.world.url(MODEL, "evil.bin"), timeout=120)
        self.assertEqual(response.status_code, 503)
        self.assertIn("Retry-After", response.headers)
        self.assertGreater(self.world.zoogate.metric_sum("zoogate_clients_held_total"), before)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = requests.get(self.world.url(MODEL, "evil.bin"), timeout=120)
            if response.status_code != 503:
                break
            time.sleep(float(response.headers["Retry-After"]))
        self.assertIn(response.status_code, (200, 403))
        self.assertEqual(self.world.hub.fetch_count(MODEL, "evil.bin"), fetches + 1)

    def test_stalled_upstream_times_out(self):
        before = self.upstream_errors("timeout")
        # 512 bytes, then silence far longer than upstream.read_timeout (3 s).
        self.world.hub.inject(MODEL, "model.safetensors", Fault.slow_drip(chunk_bytes=512, interval=30))
        started = time.monotonic()
        response = requests.get(self.world.url(MODEL, "model.safetensors"), timeout=60)
        self.assertEqual(response.status_code, 502)
        self.assertIn("timeout", response.headers["X-Error-Message"])
        self.assertLess(time.monotonic() - started, 20)
        self.assertGreater(self.upstream_errors("timeout"), before)
        self.assert_recovers("model.safetensors", lambda data: self.assertEqual(data, self.world.safetensors))

    def test_upstream_5xx(self):
        self.world.hub.inject(MODEL, "config.json", Fault.status(502, count=None, host="hub"))
        response = requests.get(self.world.url(MODEL, "config.json"), timeout=60)
        self.assertGreaterEqual(response.status_code, 500)
        self.assert_recovers("config.json", lambda data: self.assertEqual(data, self.world.config_json))

    def test_untrusted_certificate(self):
        before = self.upstream_errors("tls")
        self.world.hub.inject(MODEL, "model.safetensors", Fault.untrusted_cdn())
        response = requests.get(self.world.url(MODEL, "model.safetensors"), timeout=60)
        self.assertEqual(response.status_code, 502)
        self.assertIn("TLS", response.headers["X-Error-Message"])
        self.assertGreater(self.upstream_errors("tls"), before)
        self.assert_recovers("model.safetensors", lambda data: self.assertEqual(data, self.world.safetensors))


class ArrivingCheckpoint(WorldTest):
    """A cold PyTorch checkpoint is disarmed while it downloads: the disarm follows the archive's
    records as they arrive, and the central directory at the end confirms them."""

    zoogate_config = {"upstream": {"resolution_ttl": "0ms"}}

    def test_a_checkpoint_arriving_in_small_pieces_is_rebuilt_whole(self):
        # About 35 KiB in 2 KiB pieces, 20 ms apart: the disarm waits for each record as it comes.
        self.world.hub.inject(MODEL, "pytorch_model.bin", Fault.slow_drip(chunk_bytes=2048, interval=0.02))
        status, headers, body = curl(self.world.url(MODEL, "pytorch_model.bin"))
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(headers["x-zoogate-verdict"], "clean")
        self.assertEqual(headers["etag"].strip('"'), sha256(body))
        self.assertEqual(load_weights_only(body), flatten(self.world.weights))
        self.assertEqual(self.world.hub.fetch_count(MODEL, "pytorch_model.bin"), 1)
        self.assertEqual(self.world.zoogate.metric_sum("zoogate_ready_after_download_seconds_count"), 1)


class DirectIoSpool(WorldTest):
    """cache.spool_direct_io: a download reaches the spool, and the disarm reads it back, past the page
    cache, a whole block at a time."""

    zoogate_config = {"cache": {"spool_direct_io": True}, "upstream": {"resolution_ttl": "0ms"}}

    @classmethod
    def setUpClass(cls):
        # About 4 MiB: several of the spool's 1 MiB direct-I/O blocks and a partial last one.
        cls.large_weights = state_dict(4, layers=4, width=512)
        cls.large = torch_bytes(cls.large_weights)
        cls.world = ProxyWorld(zoogate_config=cls.zoogate_config, extra_lfs_files={"large.pt": cls.large})

    def test_a_checkpoint_of_several_blocks_is_rebuilt_whole(self):
        # In 100 KiB pieces, so that the disarm waits for blocks that are still being staged.
        self.world.hub.inject(MODEL, "large.pt", Fault.slow_drip(chunk_bytes=100 * 1024, interval=0.005))
        status, headers, body = curl(self.world.url(MODEL, "large.pt"))
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(headers["x-zoogate-verdict"], "clean")
        self.assertEqual(headers["etag"].strip('"'), sha256(body))
        self.assertEqual(load_weights_only(body), flatten(self.large_weights))
        self.assertEqual(self.world.hub.fetch_count(MODEL, "large.pt"), 1)
        # The kept download is the upstream file exactly: no padding of the last direct write is left.
        upstream = sha256(self.large)
        kept = os.path.join(self.world.zoogate.config["cache"]["dir"], "spool", upstream[:2], upstream, "data")
        with open(kept, "rb") as file:
            self.assertEqual(file.read(), self.large)

    def test_a_small_checkpoint_is_one_partial_block(self):
        status, headers, body = curl(self.world.url(MODEL, "pytorch_model.bin"))
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(load_weights_only(body), flatten(self.world.weights))


class StreamingFaults(WorldTest):
    """Files larger than pipeline.buffer_before_send go out before their digest can be checked, with
    the last piece held back until it is: a bad file must end short, without its last piece, so that
    every client sees a failed download."""

    # Every file here streams, in many pieces; every request asks the Hub, so armed faults act.
    zoogate_config = {"pipeline": {"buffer_before_send": "0B", "stream_piece_size": "16KiB"},
                      "upstream": {"resolution_ttl": "0ms"}}

    def tearDown(self):
        self.world.hub.clear_faults()

    def download(self, path):
        """(curl's exit status, the bytes it received) of one download of `path` through zoogate."""
        with tempfile.TemporaryDirectory() as folder:
            body_file = os.path.join(folder, "body")
            completed = subprocess.run(["curl", "-sS", "--fail", "-o", body_file, self.world.url(MODEL, path)],
                                       capture_output=True, timeout=120)
            received = b""
            if os.path.exists(body_file):
                with open(body_file, "rb") as handle:
                    received = handle.read()
            return completed.returncode, received

    def assert_whole(self):
        status, received = self.download("model.safetensors")
        self.assertEqual(status, 0)
        self.assertEqual(received, self.world.safetensors)

    def test_a_good_file_streams_whole(self):
        self.assertGreater(len(self.world.safetensors), 2 * 16 * 1024)  # more than two pieces
        self.assert_whole()

    def test_a_corrupt_file_ends_short_without_its_last_piece(self):
        before = self.world.zoogate.metric_sum("zoogate_upstream_errors_total", reason="digest_mismatch")
        self.world.hub.inject(MODEL, "model.safetensors", Fault.corrupt())
        status, received = self.download("model.safetensors")
        self.assertEqual(status, 18, received[:100])  # curl: the body ended before its Content-Length
        # Pieces before the last went out (their bytes are upstream's, flipped byte included); the
        # last one, at least 16 KiB minus what the file's size leaves of it, never did.
        last_piece_bytes = (len(self.world.safetensors) - 1) % (16 * 1024) + 1
        self.assertLessEqual(len(received), len(self.world.safetensors) - last_piece_bytes)
        self.assertGreater(self.world.zoogate.metric_sum("zoogate_upstream_errors_total", reason="digest_mismatch"),
                           before)
        self.world.hub.clear_faults()
        self.assert_whole()

    def test_a_reset_upstream_ends_the_download_short(self):
        # Late enough that the answer has begun: the client cannot get a 502 any more.
        self.world.hub.inject(MODEL, "model.safetensors", Fault.reset(after_bytes=len(self.world.safetensors) - 1000))
        status, received = self.download("model.safetensors")
        self.assertEqual(status, 18, received[:100])
        self.assertLess(len(received), len(self.world.safetensors))
        self.world.hub.clear_faults()
        self.assert_whole()


if __name__ == "__main__":
    unittest.main()
