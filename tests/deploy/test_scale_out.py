"""Scale-out (DESIGN.md section 7, docs/operations.md "Several replicas behind a load balancer"): three
real `zoogate serve` processes sharing one cache folder, one MTD secret and one signing key, behind a
real nginx running deploy/nginx/zoogate-lb.conf (rendered for loopback ports by
deploy_support.lb_wrapper, not copied), in front of the fake Hub of the integration tests over TLS.
Everything listens on loopback; zoogate on port 0.

50 client threads (python3-requests, one connection pool each) download the same files at once: a
PyTorch checkpoint whose pickle carries a code-execution payload (zoogate disarms it), three
safetensors shards of about 1 MiB (passed through, and streamed: buffer_before_send is below their
size; named so that each replica's share of the hash ring holds one) and a small config.json. The CDN sends the checkpoint slowly, so that the artifact stays cold for longer than
pipeline.client_wait: clients are held with 503 + Retry-After, and honour it. A client behaves like
huggingface_hub: it retries on connection errors and 5xx, and resumes a cut download with a Range
request (If-Range: the ETag of its first answer). A download counts as completed when it has the
length its answer announced; every completed download must equal the expected bytes. In every
scenario the running replicas publish the one signing key they were given, and the checkpoint's
signed manifest verifies the served bytes (`zoogate verify`).

- BalancedDownloadsTest: nobody is stopped. Every client gets identical bytes per file (the
  safetensors and config.json exactly upstream's, the checkpoint a disarmed rebuild that loads with
  torch.load(weights_only=True) into the original tensors and whose ETag is its SHA-256); every
  request for one path reached one replica (consistent hashing); the CDN served the checkpoint
  once (FakeHub.fetch_count), and over the three replicas it was fetched once
  (zoogate_upstream_fetches_total), disarmed once (zoogate_disarm_duration_seconds_count and
  zoogate_verdicts_total{verdict="disarmed"}); clients were held (zoogate_clients_held_total).
- ReplicaKilledTest: while the replica that the checkpoint's path hashes to is downloading it from
  the CDN (its zoogate_artifacts_in_progress is 1), it gets SIGKILL. nginx retries the requests that
  had no answer yet on the next replica (proxy_next_upstream), clients retry and resume the rest.
  Every client still completes with correct bytes. Bound: the checkpoint is fetched from the CDN at
  most twice. The killed replica's fetch dies unfinished with its process (its fill lock goes with
  it, nothing was published), so one more fetch is unavoidable; consistent hashing sends every
  request for the path to one successor, whose in-process job map joins all of them into that one
  fetch, so a third would be a bug. The survivors disarm it exactly once.
- ReplicaDrainedTest: the same, with SIGTERM: the replica drains (closes its listeners and finishes
  the requests in flight, the fill included), and exits 0. Bound: one CDN fetch. The drained
  replica's fill completes and is published in the shared cache; the successor that gets the path
  must wait for it on the shared fill lock rather than download the file again (docs/operations.md:
  "a fill lock in the shared folder makes one replica fetch and rebuild each artifact while the
  others wait for its result"). The survivors disarm it at most once (zero when they find the
  drained replica's entry).
- ClientsBehindTheBalancerTest: the replicas trust nginx (trusted_proxies), which passes the client's
  address in X-Forwarded-For: two clients on two loopback addresses get two layout variants of the
  checkpoint (their MTD scopes are their own addresses, not nginx's), made from one CDN fetch, and
  the replicas' access logs name each client, with nginx as the peer.
- SharedCacheWithoutBalancerTest: the clients go straight to the three replicas in turn, as the
  Kubernetes Service alone would spread them (docs/operations.md: "the shared cache still guarantees
  one fetch per artifact"): identical bytes from all three, one CDN fetch, one disarm.

The payload's marker file must never appear. Run with ZOOGATE_BIN set (CTest does it):

    cd tests/deploy && ZOOGATE_BIN=/path/to/zoogate /usr/bin/python3 -m unittest -v test_scale_out
"""
import collections
import concurrent.futures
import hashlib
import os
import re
import signal
import sys
import threading
import time
import unittest

import requests

from deploy_support import REPO, NginxProcess, make_workdir, read, run, zoogate_bin

sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from fake_hub import Fault, FakeHub  # noqa: E402
from proxy_world import _Payload, flatten, load_weights_only, safetensors_bytes, state_dict, torch_bytes  # noqa: E402
from test_ca import TestCA  # noqa: E402
from zoogate_process import ZoogateProcess  # noqa: E402

MODEL = "org/model"
PICKLE = "pytorch_model.bin"
CONFIG = "config.json"
# Safetensors shards: one per replica, named so that each replica's path hash owns one (see
# ScaleOutWorld.name_shards), so that the replica stopped is streaming one of them.
SHARD_CANDIDATES = [f"model-{number:05d}-of-00099.safetensors" for number in range(1, 100)]
REPLICAS = 3
CLIENTS = 50
# How long one client may take for one file, retries included, before the test calls it stuck.
FILE_DEADLINE_SECONDS = 60
# The CDN sends the checkpoint (about 1 MiB) in 64 KiB pieces 0.2 s apart: about 3.2 s per fetch,
# longer than client_wait, so clients are held, and long enough to stop a replica in the middle.
PICKLE_DRIP = {"chunk_bytes": 64 * 1024, "interval": 0.2}
# When the replica filling it is stopped: this long after the CDN began sending it.
STOP_AFTER_SECONDS = 1.0
# The shards (about 1 MiB each) in 64 KiB pieces 0.1 s apart (about 1.6 s): zoogate streams them in
# pieces (pipeline.buffer_before_send is below their size), so the replica stopped is in the middle
# of sending some of them and its clients resume with Range on another replica.
SHARD_DRIP = {"chunk_bytes": 64 * 1024, "interval": 0.1}
SHARD_WIDTH = 512
# The replicas believe nginx's X-Forwarded-For (it connects to them from 127.0.0.1).
ZOOGATE_SETTINGS = {"pipeline": {"client_wait": "1s", "retry_after": "1s", "buffer_before_send": "64KiB"},
                    "worker_threads": 2, "trusted_proxies": ["127.0.0.1"]}


class Download:
    """One client's download of one file: the bytes, the headers of the answer that began them, and
    what happened on the way (for failure messages)."""

    def __init__(self, path):
        self.path = path
        self.data = None
        self.headers = None
        self.events = []
        self.error = None

    def __repr__(self):
        return f"{self.path}: error={self.error!r} events={self.events[-12:]!r}"


def download(session, base_url, path, deadline):
    """Downloads `path` of MODEL the way huggingface_hub does: retries on connection errors and 5xx
    (after Retry-After when the answer has one), and resumes a cut body with Range + If-Range. The
    download completes when the bytes reach the length announced (Content-Length of the 200, or the
    total of the 206's Content-Range). Never raises: Download.error says what went wrong."""
    result = Download(path)
    url = f"{base_url}/{MODEL}/resolve/main/{path}"
    data = bytearray()
    etag = total = None
    while True:
        if time.monotonic() > deadline:
            result.error = f"not complete after {FILE_DEADLINE_SECONDS} s ({len(data)} of {total} bytes)"
            return result
        headers = {"Accept-Encoding": "identity"}
        if data and etag:
            headers.update({"Range": f"bytes={len(data)}-", "If-Range": etag})
        try:
            response = session.get(url, headers=headers, stream=True, timeout=(5, 30))
        except requests.RequestException as error:
            result.events.append(("request failed", type(error).__name__))
            time.sleep(0.2)
            continue
        with response:
            status = response.status_code
            if status >= 500:
                retry_after = response.headers.get("Retry-After")
                result.events.append((status, response.headers.get("X-Error-Code"), retry_after))
                try:
                    response.content  # noqa: B018 - read the error body, keep the connection usable
                except requests.RequestException:
                    pass
                time.sleep(float(retry_after) if retry_after else 0.5)
                continue
            if status == 200:
                data = bytearray()
                etag = response.headers.get("ETag")
                total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
                result.headers = dict(response.headers)
            elif status == 206 and data:
                content_range = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers.get("Content-Range", ""))
                if not content_range or int(content_range.group(1)) != len(data) or \
                        (total is not None and int(content_range.group(3)) != total):
                    result.error = (f"a resume from {len(data)} of {total} got Content-Range "
                                    f"{response.headers.get('Content-Range')!r}")
                    return result
                total = int(content_range.group(3))
                result.events.append(("resumed", len(data)))
            else:
                result.error = f"answer {status}: {response.headers.get('X-Error-Message') or response.text[:300]}"
                return result
            try:
                for chunk in response.iter_content(64 * 1024):
                    data += chunk
            except requests.RequestException as error:
                result.events.append(("body cut", type(error).__name__, len(data)))
                continue
        if total is None or len(data) == total:
            result.data = bytes(data)
            return result
        if len(data) > total:
            result.error = f"{len(data)} bytes received, more than the {total} announced"
            return result
        # urllib3 1.26 does not enforce Content-Length: a short body ends without an exception.
        result.events.append(("short body", len(data), total))


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class ScaleOutWorld:
    """The fake Hub, three zoogate replicas sharing one cache folder, nginx in front of them."""

    def __init__(self, name):
        self.folder = make_workdir(f"scale-out-{name}")
        self.marker = os.path.join(self.folder, "payload-ran")
        self.ca = TestCA(os.path.join(self.folder, "ca"))
        self.weights = state_dict(11, layers=4, width=256)
        self.checkpoint = torch_bytes({"weights": self.weights, "extra": _Payload(self.marker)})
        self.config_json = b'{"model_type": "test", "hidden_size": 256}'
        self.shards = {}
        self.files = [PICKLE, CONFIG]
        self.hub = FakeHub(self.ca, {MODEL: {"files": {CONFIG: self.config_json}}})
        self.replicas = []
        self.nginx = None
        self.started_at = None
        self.hub.start()
        try:
            self._start_replicas()
            self.nginx = NginxProcess(os.path.join(self.folder, "nginx"),
                                      [self.port_of(replica) for replica in self.replicas],
                                      access_log=os.path.join(self.folder, "nginx", "access.log"))
            os.makedirs(self.nginx.prefix, exist_ok=True)
            self.nginx.start()
            self.shards = {path: safetensors_bytes(state_dict(20 + number, layers=1, width=SHARD_WIDTH))
                           for number, path in enumerate(self.name_shards())}
        except BaseException:
            self.close()
            raise
        self.files = [PICKLE, *self.shards, CONFIG]
        files = {PICKLE: self.checkpoint, CONFIG: self.config_json, **self.shards}
        self.hub.set_repo(MODEL, {"files": files, "lfs": {PICKLE, *self.shards}})
        self.hub.inject(MODEL, PICKLE, Fault.slow_drip(**PICKLE_DRIP))
        for path in self.shards:
            self.hub.inject(MODEL, path, Fault.slow_drip(**SHARD_DRIP))

    def name_shards(self):
        """One shard name per replica: candidate paths are asked of nginx (HEAD; the Hub does not have
        them yet, zoogate relays its 404) in batches until its access log shows each replica owning one."""
        owner_of = {}
        for batch in range(0, len(SHARD_CANDIDATES), 6):
            for name in SHARD_CANDIDATES[batch:batch + 6]:
                response = requests.head(f"{self.nginx.url}/{MODEL}/resolve/main/{name}", timeout=30)
                if response.status_code != 404:
                    raise RuntimeError(f"probing {name} through nginx answered {response.status_code}")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # nginx logs a request just after answering it
                owner_of = {uri.rsplit("/", 1)[1]: addresses[-1] for uri, _status, addresses, _ in self.nginx_log()}
                if len(owner_of) == min(batch + 6, len(SHARD_CANDIDATES)):
                    break
                time.sleep(0.02)
            chosen = {}
            for name in SHARD_CANDIDATES:
                if name in owner_of:
                    chosen.setdefault(owner_of[name], name)
            if len(chosen) == REPLICAS:
                return sorted(chosen.values())
        raise RuntimeError(f"nginx sent {len(SHARD_CANDIDATES)} paths to only {set(owner_of.values())}")

    def _start_replicas(self):
        """One MTD secret and one signing key, made once and named in every replica's configuration
        (mtd.secret_file, mtd.signing_key_file), as docs/operations.md asks of replicas sharing a cache."""
        secrets = os.path.join(self.folder, "secrets")
        os.makedirs(secrets)
        secret_file = os.path.join(secrets, "mtd-secret")
        with open(secret_file, "wb") as handle:
            handle.write(os.urandom(32))
        key_file = os.path.join(secrets, "signing-key.pem")
        self.public_key_file = os.path.join(secrets, "signing-key.pub.pem")
        made = run([zoogate_bin(), "keygen", "--private", key_file, "--public", self.public_key_file])
        if made.returncode != 0:
            raise RuntimeError(f"zoogate keygen failed: {made.stderr}")
        config = {"upstream": {**self.hub.upstream_config(), "retries": 1, "read_timeout": "10s",
                               "connect_timeout": "5s"},
                  "egress": {"allow_private_destinations": ["localhost"]},
                  "cache": {"dir": os.path.join(self.folder, "shared-cache")},
                  "mtd": {"secret_file": secret_file, "signing_key_file": key_file},
                  **ZOOGATE_SETTINGS}
        for number in range(1, REPLICAS + 1):
            replica = ZoogateProcess(os.path.join(self.folder, f"replica-{number}"), config, binary=zoogate_bin())
            self.replicas.append(replica)
            replica.start()

    @staticmethod
    def port_of(replica):
        return int(replica.hub_url.rsplit(":", 1)[1].split("/")[0])

    def close(self):
        if self.nginx:
            self.nginx.stop()
        for replica in self.replicas:
            replica.stop()
        self.hub.stop()

    # Clients ---------------------------------------------------------------------------------

    def run_clients(self, base_urls, while_running=None):
        """CLIENTS threads at once, each with its own connection pool, each downloading every file in
        self.files (each starting at a different file, so that every file is being downloaded at once);
        client i talks to base_urls[i % len(base_urls)]. `while_running()` runs in this thread while
        they do. Returns [[Download per file] per client]."""
        start = threading.Barrier(CLIENTS + 1)
        self.started_at = time.time()

        def client(number):
            session = requests.Session()
            try:
                start.wait(30)
                order = self.files[number % len(self.files):] + self.files[:number % len(self.files)]
                if number % 2 == 0:  # half of them ask for the checkpoint first: 25+ cold requests at once
                    order = [PICKLE] + [path for path in order if path != PICKLE]
                return [download(session, base_urls[number % len(base_urls)], path,
                                 time.monotonic() + FILE_DEADLINE_SECONDS) for path in order]
            finally:
                session.close()

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, number) for number in range(CLIENTS)]
            start.wait(30)
            background = None
            try:
                if while_running:
                    background = while_running()
            finally:
                results = [future.result() for future in futures]
        return results, background

    # What the replicas say -------------------------------------------------------------------

    def metric_total(self, name, replicas=None, **labels):
        """The sum of a metric over replicas (default: every running one)."""
        replicas = [replica for replica in (replicas or self.replicas) if replica.running]
        return sum(replica.metric_sum(name, **labels) for replica in replicas)

    def nginx_log(self):
        """[(request_uri, status, [upstream addresses], [upstream statuses])] from nginx's access log."""
        entries = []
        for line in read(self.nginx.access_log).splitlines():
            match = re.fullmatch(r'\S+ \S+ (\S+) (\d+) \d+ "([^"]*)" "([^"]*)"', line)
            if match:
                # Several attempts are listed with ", " (" : " after an internal redirect).
                entries.append((match.group(1), int(match.group(2)), re.split(r",\s*|\s+:\s+", match.group(3)),
                                re.split(r",\s*|\s+:\s+", match.group(4))))
        return entries

    def diagnostics(self, stopped_at=None):
        """What the replicas, the CDN and nginx saw, for failure messages: each replica's events
        (listening, draining, artifact_failed, ...) and its answers for the checkpoint, the times of
        the CDN's GETs of the checkpoint (seconds after the clients started; after the stop when
        given), and nginx's last errors."""
        parts = []
        for number, replica in enumerate(self.replicas, 1):
            events = [line for line in replica.log_lines() if '"event"' in line or not line.startswith("{")]
            answers = collections.Counter((entry.get("status"), entry.get("cache"), entry.get("verdict"))
                                          for entry in replica.access_log()
                                          if entry.get("target", "").endswith("/" + PICKLE))
            metrics = {name: replica.metric_sum(name) for name in
                       ("zoogate_upstream_fetches_total", "zoogate_disarm_duration_seconds_count",
                        "zoogate_clients_held_total")} if replica.running else "not running"
            parts.append(f"replica-{number} (port {self.port_of(replica)}): {metrics}\n"
                         f"  answers for {PICKLE} (status, cache, verdict): {dict(answers)}\n  "
                         + "\n  ".join(events[-8:]))
        origin = stopped_at or self.started_at or 0
        times = [round(entry.time - origin, 2) for entry in self.hub.requests(host="cdn", method="GET")
                 if entry.file == PICKLE]
        parts.append(f"CDN GETs of {PICKLE} at {times} s after the {'stop' if stopped_at else 'start'}")
        parts.append("nginx: " + "\n".join(self.nginx.log_text().splitlines()[-3:]))
        return "\n".join(parts)

    def owner_of_the_fill(self, timeout=20):
        """The replica whose zoogate_artifacts_in_progress is 1 (the one filling the checkpoint)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [replica for replica in self.replicas
                    if replica.metric("zoogate_artifacts_in_progress") >= 1]
            if busy:
                return busy
            time.sleep(0.05)
        return []


class ScaleOutCase(unittest.TestCase):
    """The checks every scenario shares."""

    world = None

    def tearDown(self):
        if self.world:
            self.world.close()

    def start_world(self):
        self.world = ScaleOutWorld(self.id().rsplit(".", 1)[-1])
        return self.world

    def check_downloads(self, results):
        """Every client completed every file, and every completed file is right; returns the served
        checkpoint."""
        world = self.world
        failed = [(number, download) for number, downloads in enumerate(results) for download in downloads
                  if download.error]
        self.assertFalse(failed, f"{len(failed)} downloads failed, e.g. {failed[:5]}\n{world.diagnostics()}")
        by_path = {path: [] for path in world.files}
        for downloads in results:
            self.assertEqual(sorted(download.path for download in downloads), sorted(world.files))
            for download in downloads:
                by_path[download.path].append(download)
        for path, expected in [(CONFIG, world.config_json), *world.shards.items()]:
            wrong = [download for download in by_path[path] if download.data != expected]
            self.assertFalse(wrong, f"{len(wrong)} of {CLIENTS} clients got wrong bytes for {path}: "
                                    f"lengths {[len(download.data) for download in wrong[:5]]}, expected "
                                    f"{len(expected)}; {wrong[:3]}")
        checkpoints = {download.data for download in by_path[PICKLE]}
        self.assertEqual(len(checkpoints), 1,
                         f"clients got {len(checkpoints)} different checkpoints: sizes "
                         f"{sorted(len(data) for data in checkpoints)}\n{world.diagnostics()}")
        served = checkpoints.pop()
        self.assertNotEqual(served, world.checkpoint, "upstream's pickle was served unchanged")
        for download in by_path[PICKLE]:
            self.assertEqual(download.headers.get("X-Zoogate-Verdict"), "disarmed", download.headers)
            self.assertEqual(download.headers.get("ETag", "").strip('"'), sha256(served), download.headers)
        self.assertEqual(load_weights_only(served), {f"weights.{name}": value
                                                     for name, value in flatten(world.weights).items()})
        self.assertFalse(os.path.exists(world.marker), "the payload ran")
        self.check_signed(served, by_path[PICKLE][0].headers)
        return served

    def check_signed(self, served, headers):
        """Every running replica publishes the one signing key given to all of them, and the checkpoint's
        signed manifest verifies the served bytes with it (`zoogate verify`)."""
        world = self.world
        expected_key = read(world.public_key_file).strip()
        for replica in world.replicas:
            if replica.running:
                response = requests.get(replica.hub_url + "/zoogate/signing-key.pem", timeout=30)
                self.assertEqual((response.status_code, response.text.strip()), (200, expected_key), replica.hub_url)
        manifest = requests.get(world.nginx.url + headers["X-Zoogate-Manifest"], timeout=30)
        self.assertEqual(manifest.status_code, 200, manifest.text[:300])
        folder = make_workdir("scale-out-verify")
        artifact = os.path.join(folder, PICKLE)
        with open(artifact, "wb") as handle:
            handle.write(served)
        with open(os.path.join(folder, "manifest.json"), "wb") as handle:
            handle.write(manifest.content)
        verified = run([zoogate_bin(), "verify", artifact, "--manifest", os.path.join(folder, "manifest.json"),
                        "--pubkey", world.public_key_file])
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)

    def held_clients(self, results):
        return sum(1 for downloads in results for download in downloads for event in download.events
                   if event[0] == 503 and event[1] == "ZoogatePending")

    def stop_the_owner_mid_fill(self, how):
        """Waits until one replica is fetching the checkpoint from the CDN, then sends it `how`; returns
        (that replica, the time of the stop, CDN GETs of the checkpoint until then)."""
        world = self.world
        busy = world.owner_of_the_fill()
        self.assertEqual(len(busy), 1, f"expected one replica filling the checkpoint, found {len(busy)}\n"
                                       f"{world.diagnostics()}")
        owner = busy[0]
        self.assertTrue(world.hub.wait_until(lambda: world.hub.fetch_count(MODEL, PICKLE) >= 1, timeout=10))
        time.sleep(STOP_AFTER_SECONDS)  # in the middle of the slow CDN download
        self.assertEqual(owner.metric("zoogate_artifacts_in_progress"), 1,
                         "the fill ended before the replica could be stopped: the test would not test anything")
        fetches = world.hub.fetch_count(MODEL, PICKLE)
        stopped_at = time.time()
        owner.process.send_signal(how)
        return owner, stopped_at, fetches

    @staticmethod
    def cut_bodies(results):
        """Downloads whose answer ended short or broke off after its header, and that went on."""
        return [download for downloads in results for download in downloads
                if any(event[0] in ("short body", "body cut") for event in download.events)]

    def retried_by_nginx(self):
        """Requests nginx sent to more than one replica."""
        return [entry for entry in self.world.nginx_log() if len(entry[2]) > 1]


class BalancedDownloadsTest(ScaleOutCase):
    def test_fifty_clients_identical_bytes_one_fetch_one_disarm(self):
        world = self.start_world()
        results, _ = world.run_clients([world.nginx.url])
        self.check_downloads(results)
        # Consistent hashing: every request for one path reached the same replica.
        for path in world.files:
            addresses = {entry[2][-1] for entry in world.nginx_log() if entry[0].endswith("/" + path)}
            self.assertEqual(len(addresses), 1, f"{path} reached {addresses}")
        fetches = world.hub.fetch_count(MODEL, PICKLE)
        self.assertEqual(fetches, 1, f"the CDN served the checkpoint {fetches} times\n{world.diagnostics()}")
        self.assertEqual(world.metric_total("zoogate_upstream_fetches_total"), 1, world.diagnostics())
        self.assertEqual(world.metric_total("zoogate_disarm_duration_seconds_count"), 1, world.diagnostics())
        self.assertEqual(world.metric_total("zoogate_verdicts_total", verdict="disarmed"), 1, world.diagnostics())
        self.assertGreater(world.metric_total("zoogate_clients_held_total"), 0, "nobody was held with Retry-After")
        self.assertGreater(self.held_clients(results), 0)


class ReplicaKilledTest(ScaleOutCase):
    def test_sigkill_of_the_filling_replica(self):
        world = self.start_world()
        results, (owner, stopped_at, fetches_before) = world.run_clients(
            [world.nginx.url], while_running=lambda: self.stop_the_owner_mid_fill(signal.SIGKILL))
        self.assertEqual(owner.process.wait(10), -signal.SIGKILL)
        self.check_downloads(results)
        self.assertTrue(self.retried_by_nginx(), "nginx retried nothing on another replica")
        self.assertTrue(self.cut_bodies(results), "no stream was cut by the kill: the test did not test resuming")
        fetches = world.hub.fetch_count(MODEL, PICKLE)
        self.assertLessEqual(fetches, 2, f"the CDN served the checkpoint {fetches} times ({fetches_before} before "
                                         f"the kill); bound: the killed replica's unfinished fetch + one\n"
                                         f"{world.diagnostics(stopped_at)}")
        self.assertEqual(world.metric_total("zoogate_disarm_duration_seconds_count"), 1,
                         f"the survivors must disarm the checkpoint exactly once\n{world.diagnostics(stopped_at)}")
        self.assertEqual(world.metric_total("zoogate_verdicts_total", verdict="disarmed"), 1)


class ReplicaDrainedTest(ScaleOutCase):
    def test_sigterm_of_the_filling_replica(self):
        world = self.start_world()
        results, (owner, stopped_at, fetches_before) = world.run_clients(
            [world.nginx.url], while_running=lambda: self.stop_the_owner_mid_fill(signal.SIGTERM))
        self.assertEqual(owner.process.wait(40), 0, "a drained replica exits 0")
        self.check_downloads(results)
        cut = self.cut_bodies(results)
        self.assertFalse(cut, f"a draining replica finishes the answers it started, yet {len(cut)} were cut: "
                              f"{cut[:3]}")
        survivors = [replica for replica in world.replicas if replica is not owner]
        disarms = world.metric_total("zoogate_disarm_duration_seconds_count", survivors)
        self.assertLessEqual(disarms, 1, f"the survivors disarmed the checkpoint {disarms} times\n"
                                         f"{world.diagnostics(stopped_at)}")
        fetches = world.hub.fetch_count(MODEL, PICKLE)
        self.assertEqual(fetches, 1, f"the CDN served the checkpoint {fetches} times ({fetches_before} before the "
                                     f"SIGTERM): the drained replica's fill should complete within the drain and "
                                     f"the next replica wait for it on the shared fill lock\n"
                                     f"{world.diagnostics(stopped_at)}")


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """Connections from one local address: a client on its own loopback address."""

    def __init__(self, source_address):
        self.source_address = source_address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, source_address=(self.source_address, 0), **kwargs)


class ClientsBehindTheBalancerTest(ScaleOutCase):
    def test_each_client_address_gets_its_own_variant(self):
        world = self.start_world()
        clients = ["127.0.0.3", "127.0.0.4"]
        downloads = {}
        for address in clients:
            with requests.Session() as session:
                session.mount("http://", SourceAddressAdapter(address))
                downloads[address] = download(session, world.nginx.url, PICKLE,
                                              time.monotonic() + FILE_DEADLINE_SECONDS)
        for address, result in downloads.items():
            self.assertIsNone(result.error, f"{address}: {result}\n{world.diagnostics()}")
            self.assertEqual(result.headers.get("ETag", "").strip('"'), sha256(result.data))
            self.assertEqual(load_weights_only(result.data), {f"weights.{name}": value
                                                              for name, value in flatten(world.weights).items()})
        self.assertNotEqual(sha256(downloads[clients[0]].data), sha256(downloads[clients[1]].data))
        self.assertEqual(world.hub.fetch_count(MODEL, PICKLE), 1, world.diagnostics())
        self.assertFalse(os.path.exists(world.marker), "the payload ran")

        def served_to():
            return {(record["client"], record.get("peer")) for replica in world.replicas
                    for record in replica.access_log()
                    if record["target"].endswith("/" + PICKLE) and record["status"] == 200}

        expected = {(address, "127.0.0.1") for address in clients}
        # A line is written just after its answer has gone out.
        world.replicas[0].wait_until(lambda: served_to() == expected)
        self.assertEqual(served_to(), expected)


class SharedCacheWithoutBalancerTest(ScaleOutCase):
    def test_clients_spread_over_replicas_share_one_fetch(self):
        world = self.start_world()
        results, _ = world.run_clients([replica.hub_url for replica in world.replicas])
        self.check_downloads(results)
        self.assertEqual(world.metric_total("zoogate_disarm_duration_seconds_count"), 1, world.diagnostics())
        self.assertEqual(world.metric_total("zoogate_verdicts_total", verdict="disarmed"), 1)
        fetches = world.hub.fetch_count(MODEL, PICKLE)
        self.assertEqual(fetches, 1, f"the CDN served the checkpoint {fetches} times to replicas sharing one "
                                     f"cache\n{world.diagnostics()}")


if __name__ == "__main__":
    unittest.main()
