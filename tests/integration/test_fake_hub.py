"""Self-check of the test-side world, without zoogate: real clients talk straight to the fake Hub.

Why: the proxy tests trust the fake Hub (fake_hub.py) to answer as the real Hub does and its
certificates (test_ca.py) to be right. Before zoogate is put between them, curl, python3-requests
and @huggingface/hub (hub_client.mjs, the version pinned in package-lock.json) download from the
fake Hub directly here: listings with pagination, LFS redirects to the CDN, Range, the gated 401,
the renamed 307, the Xet hints and every injected fault. A failure here is a fault of the test
harness, not of zoogate.

Every client is told to trust the test CA explicitly (requests: verify=, curl: --cacert, Node:
NODE_EXTRA_CA_CERTS) and ignores the environment's proxy and CA settings.
"""
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.parse

import requests

from fake_hub import FakeHub, Fault, git_blob_sha1
from test_ca import TestCA

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_CLIENT = os.path.join(HERE, "hub_client.mjs")
PAGE_SIZE = 3
CLIENT_TIMEOUT = 120


def _random_bytes(seed, size):
    return random.Random(seed).randbytes(size)


CONFIG = json.dumps({"architectures": ["TinyModel"], "hidden_size": 8}, indent=2).encode()
MODEL_FILES = {
    "config.json": CONFIG,
    "README.md": b"# A tiny model\n\nMade up for zoogate's tests.\n" * 20,
    "model.safetensors": _random_bytes(1, 300_000),
    "pytorch_model.bin": _random_bytes(2, 120_001),
    "tokenizer/vocab.txt": b"\n".join(b"token%d" % index for index in range(500)),
    "tokenizer/merges.txt": b"a b\nc d\n",
    "nested/deep/weights.bin": _random_bytes(3, 4097),
}
REPOS = {
    "org/model": {"files": MODEL_FILES},
    "org/plain-lfs": {"files": {"config.json": CONFIG, "model.bin": _random_bytes(4, 70_000)},
                      "xet": False},
    "datasets/org/data": {"files": {"README.md": b"# Data\n", "data/train.parquet": _random_bytes(5, 5000)}},
    "org/gated": {"files": {"config.json": CONFIG, "weights.bin": _random_bytes(6, 9000)}, "gated": True},
    "org/old-name": {"renamed_to": "org/model"},
}
LFS_PATHS = {"model.safetensors", "pytorch_model.bin", "nested/deep/weights.bin"}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class FakeHubCase(unittest.TestCase):
    """One CA, one unrelated CA and one fake Hub per test class; faults and logs reset per test."""

    @classmethod
    def setUpClass(cls):
        cls.folder = tempfile.mkdtemp(prefix="zoogate-fakehub-")
        cls.ca = TestCA(os.path.join(cls.folder, "ca"))
        cls.other_ca = TestCA.other(cls.folder)
        cls.hub = FakeHub(cls.ca, REPOS, tree_page_size=PAGE_SIZE, untrusted_ca=cls.other_ca)
        cls.hub.start()

    @classmethod
    def tearDownClass(cls):
        cls.hub.stop()
        shutil.rmtree(cls.folder, ignore_errors=True)

    def setUp(self):
        self.hub.clear_faults()
        self.hub.reset_log()
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify=
        self.session.verify = self.ca.ca_pem
        self.addCleanup(self.session.close)
        self.workdir = tempfile.mkdtemp(dir=self.folder)

    def get(self, path, **options):
        return self.session.get(self.hub.url + path, timeout=30, **options)

    def head(self, path, **options):
        return self.session.head(self.hub.url + path, timeout=30, **options)

    def file(self, path, repo="org/model"):
        return self.hub.file(repo, path)


class Certificates(FakeHubCase):
    def openssl_verify(self, ca_pem, cert_pem):
        return subprocess.run(["openssl", "verify", "-CAfile", ca_pem, cert_pem],
                              capture_output=True, timeout=30).returncode

    def test_server_certificate_chains_to_the_ca_only(self):
        self.assertEqual(self.openssl_verify(self.ca.ca_pem, self.ca.cert_pem), 0)
        self.assertNotEqual(self.openssl_verify(self.other_ca.ca_pem, self.ca.cert_pem), 0)
        self.assertNotEqual(self.openssl_verify(self.ca.ca_pem, self.other_ca.cert_pem), 0)

    def test_server_certificate_names(self):
        text = subprocess.run(["openssl", "x509", "-in", self.ca.cert_pem, "-noout", "-ext",
                               "subjectAltName"], capture_output=True, text=True, timeout=30).stdout
        for name in ("DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1"):
            self.assertIn(name, text)

    def test_hub_and_cdn_are_different_hosts(self):
        self.assertTrue(self.hub.url.startswith("https://127.0.0.1:"))
        self.assertTrue(self.hub.cdn_url.startswith("https://localhost:"))


class ApiWithRequests(FakeHubCase):
    """The JSON API, as huggingface_hub's requests would use it."""

    def test_model_info_names_the_commit_and_siblings(self):
        info = self.get("/api/models/org/model").json()
        self.assertEqual(info["id"], "org/model")
        self.assertEqual(info["sha"], self.hub.commit("org/model"))
        self.assertRegex(info["sha"], r"^[0-9a-f]{40}$")
        self.assertEqual({s["rfilename"] for s in info["siblings"]}, set(MODEL_FILES))
        self.assertNotIn("lfs", info["siblings"][0])
        by_revision = self.get(f"/api/models/org/model/revision/{info['sha']}").json()
        self.assertEqual(by_revision["sha"], info["sha"])
        self.assertEqual(self.get("/api/models/org/model/revision/main").json()["sha"], info["sha"])

    def test_model_info_blobs(self):
        info = self.get("/api/models/org/model", params={"blobs": "true"}).json()
        for sibling in info["siblings"]:
            entry = self.file(sibling["rfilename"])
            self.assertEqual(sibling["size"], len(MODEL_FILES[entry.path]))
            self.assertEqual(sibling["blobId"], entry.git_oid)
            if entry.path in LFS_PATHS:
                self.assertEqual(sibling["lfs"], {"sha256": sha256(entry.data), "size": entry.size,
                                                  "pointerSize": len(entry.pointer)})
                self.assertRegex(sibling["xetHash"], r"^[0-9a-f]{64}$")
            else:
                self.assertEqual(sibling["blobId"], git_blob_sha1(entry.data))
                self.assertNotIn("lfs", sibling)
                self.assertNotIn("xetHash", sibling)

    def test_expand_keeps_only_the_named_fields(self):
        info = self.get("/api/models/org/model/revision/main",
                        params=[("expand", "sha"), ("expand", "private")]).json()
        self.assertEqual(set(info), {"_id", "id", "sha", "private"})

    def test_unknown_revision(self):
        answer = self.get("/api/models/org/model/revision/v9")
        self.assertEqual(answer.status_code, 404)
        self.assertEqual(answer.headers["X-Error-Code"], "RevisionNotFound")

    def test_tree_pagination_follows_absolute_links(self):
        url = self.hub.url + "/api/models/org/model/tree/main?recursive=true&expand=false"
        entries, pages = [], 0
        while url:
            answer = self.session.get(url, timeout=30)
            self.assertEqual(answer.status_code, 200)
            page = answer.json()
            self.assertLessEqual(len(page), PAGE_SIZE)
            entries += page
            pages += 1
            link = answer.headers.get("Link")
            if link:
                self.assertRegex(link, r'^<https://127\.0\.0\.1:\d+/api/models/org/model/tree/main\?'
                                       r'[^>]*cursor=[^>]*>; rel="next"$')
                self.assertIn("recursive=true", link)
            url = answer.links.get("next", {}).get("url")
        files = {e["path"]: e for e in entries if e["type"] == "file"}
        directories = {e["path"] for e in entries if e["type"] == "directory"}
        self.assertEqual(set(files), set(MODEL_FILES))
        self.assertEqual(directories, {"tokenizer", "nested", "nested/deep"})
        self.assertEqual(pages, -(-len(entries) // PAGE_SIZE))
        self.assertGreater(pages, 2)
        for path, entry in files.items():
            self.assertEqual(entry["size"], len(MODEL_FILES[path]))
            self.assertEqual(entry["oid"], self.file(path).git_oid)
            if path in LFS_PATHS:
                self.assertEqual(entry["lfs"]["oid"], sha256(MODEL_FILES[path]))
                self.assertEqual(entry["lfs"]["size"], len(MODEL_FILES[path]))
                self.assertEqual(entry["xetHash"], self.file(path).xet_hash)
            else:
                self.assertNotIn("lfs", entry)
                self.assertNotIn("xetHash", entry)

    def test_tree_folders(self):
        top = self.get("/api/models/org/model/tree/main").json()
        self.assertEqual(len(top), PAGE_SIZE)  # first page only
        folder = self.get("/api/models/org/model/tree/main/tokenizer").json()
        self.assertEqual({e["path"] for e in folder}, {"tokenizer/vocab.txt", "tokenizer/merges.txt"})
        missing = self.get("/api/models/org/model/tree/main/nope")
        self.assertEqual((missing.status_code, missing.headers["X-Error-Code"]), (404, "EntryNotFound"))
        expanded = self.get("/api/models/org/model/tree/main/tokenizer", params={"expand": "true"}).json()
        self.assertEqual(expanded[0]["lastCommit"]["id"], self.hub.commit("org/model"))

    def test_paths_info_form_and_json(self):
        url = self.hub.url + "/api/models/org/model/paths-info/main"
        # huggingface_hub posts a form, @huggingface/hub posts JSON.
        form = self.session.post(url, data={"paths": ["model.safetensors", "tokenizer", "nope"],
                                            "expand": True}, timeout=30).json()
        body = self.session.post(url, json={"paths": ["model.safetensors", "tokenizer", "nope"],
                                            "expand": True}, timeout=30).json()
        self.assertEqual(form, body)
        self.assertEqual([e["path"] for e in form], ["model.safetensors", "tokenizer"])
        self.assertEqual(form[0]["lfs"]["oid"], sha256(MODEL_FILES["model.safetensors"]))
        self.assertEqual(form[0]["xetHash"], self.file("model.safetensors").xet_hash)
        self.assertEqual(form[0]["lastCommit"]["id"], self.hub.commit("org/model"))
        self.assertEqual(form[1]["type"], "directory")

    def test_json_is_gzipped_and_chunked_when_accepted(self):
        answer = self.get("/api/models/org/model", stream=True, headers={"Accept-Encoding": "gzip"})
        self.assertEqual(answer.headers["Content-Encoding"], "gzip")
        self.assertEqual(answer.headers["Transfer-Encoding"], "chunked")
        self.assertNotIn("Content-Length", answer.headers)
        raw = answer.raw.read(decode_content=False)
        self.assertEqual(json.loads(gzip.decompress(raw))["id"], "org/model")
        plain = self.get("/api/models/org/model", headers={"Accept-Encoding": "identity"})
        self.assertNotIn("Content-Encoding", plain.headers)
        self.hub.chunked_json = False
        try:
            fixed = self.get("/api/models/org/model", headers={"Accept-Encoding": "identity"})
            self.assertEqual(int(fixed.headers["Content-Length"]), len(fixed.content))
        finally:
            self.hub.chunked_json = True

    def test_xet_read_token(self):
        answer = self.get(f"/api/models/org/model/xet-read-token/{self.hub.commit('org/model')}")
        self.assertEqual(answer.status_code, 200)
        self.assertTrue(answer.headers["X-Xet-Cas-Url"].startswith(self.hub.cdn_url))
        self.assertIn("accessToken", answer.json())

    def test_not_found(self):
        missing = self.get("/org/model/resolve/main/nope.bin")
        self.assertEqual(missing.status_code, 404)
        self.assertEqual(missing.headers["X-Error-Code"], "EntryNotFound")
        self.assertEqual(missing.headers["X-Repo-Commit"], self.hub.commit("org/model"))
        anonymous = self.get("/api/models/org/missing")
        self.assertEqual((anonymous.status_code, anonymous.headers["X-Error-Code"]), (401, "RepoNotFound"))
        signed_in = self.get("/org/missing/resolve/main/x", headers={"Authorization": f"Bearer {FakeHub.TOKEN}"})
        self.assertEqual((signed_in.status_code, signed_in.headers["X-Error-Code"]), (404, "RepoNotFound"))
        self.assertIn("X-Error-Message", signed_in.headers)

    def test_datasets_prefix(self):
        info = self.get("/api/datasets/org/data").json()
        self.assertEqual(info["id"], "org/data")
        self.assertNotIn("modelId", info)
        self.assertEqual(self.get("/datasets/org/data/resolve/main/README.md").content, b"# Data\n")
        data = self.get("/datasets/org/data/resolve/main/data/train.parquet")
        self.assertEqual(data.content, self.hub.file("datasets/org/data", "data/train.parquet").data)
        self.assertEqual(self.get("/api/models/org/data").status_code, 401)  # not a model

    def test_revision_by_commit(self):
        commit = self.hub.commit("org/model")
        answer = self.get(f"/org/model/resolve/{commit}/config.json")
        self.assertEqual((answer.status_code, answer.content), (200, CONFIG))
        self.assertEqual(len(self.get(f"/api/models/org/model/tree/{commit}/tokenizer").json()), 2)
        self.assertEqual(self.get("/org/model/resolve/0123456789abcdef0123456789abcdef01234567/config.json")
                         .headers["X-Error-Code"], "RevisionNotFound")


class ResolveWithRequests(FakeHubCase):
    """resolve and the CDN, as requests (and so huggingface_hub) sees them."""

    def test_regular_file(self):
        entry = self.file("config.json")
        answer = self.get("/org/model/resolve/main/config.json", headers={"Accept-Encoding": "identity"})
        self.assertEqual((answer.status_code, answer.content), (200, CONFIG))
        self.assertEqual(answer.headers["ETag"], f'"{entry.git_oid}"')
        self.assertEqual(answer.headers["X-Repo-Commit"], self.hub.commit("org/model"))
        self.assertEqual(int(answer.headers["Content-Length"]), len(CONFIG))
        self.assertNotIn("X-Linked-Etag", answer.headers)
        head = self.head("/org/model/resolve/main/config.json", headers={"Accept-Encoding": "identity"})
        self.assertEqual(head.headers["ETag"], answer.headers["ETag"])
        self.assertEqual(int(head.headers["Content-Length"]), len(CONFIG))
        compressed = self.get("/org/model/resolve/main/config.json", stream=True,
                              headers={"Accept-Encoding": "gzip"})
        self.assertEqual(compressed.headers["Content-Encoding"], "gzip")
        self.assertEqual(compressed.headers["ETag"], f'W/"{entry.git_oid}"')
        self.assertEqual(gzip.decompress(compressed.raw.read(decode_content=False)), CONFIG)
        ranged = self.get("/org/model/resolve/main/config.json", headers={"Range": "bytes=2-5"})
        self.assertEqual((ranged.status_code, ranged.content), (206, CONFIG[2:6]))
        self.assertEqual(ranged.headers["Content-Range"], f"bytes 2-5/{len(CONFIG)}")
        self.assertNotIn("Content-Encoding", ranged.headers)

    def test_lfs_redirect(self):
        entry = self.file("model.safetensors")
        for method in ("GET", "HEAD"):
            answer = self.session.request(method, self.hub.url + "/org/model/resolve/main/model.safetensors",
                                          allow_redirects=False, timeout=30)
            self.assertEqual(answer.status_code, 302)
            location = urllib.parse.urlsplit(answer.headers["Location"])
            self.assertEqual(f"{location.scheme}://{location.netloc}", self.hub.cdn_url)
            self.assertIn("Signature=", location.query)
            self.assertEqual(answer.headers["X-Linked-Etag"], f'"{entry.sha256}"')
            self.assertEqual(answer.headers["X-Linked-Size"], str(entry.size))
            self.assertEqual(answer.headers["ETag"], f'"{entry.sha256}"')
            self.assertEqual(answer.headers["X-Repo-Commit"], self.hub.commit("org/model"))
            self.assertEqual(answer.headers["X-Xet-Hash"], entry.xet_hash)
            self.assertTrue(answer.headers["X-Xet-Refresh-Route"].startswith("/api/models/org/model/xet-read-token/"))
            self.assertIn("xet-auth", answer.links)
            self.assertIn("xet-reconstruction-info", answer.links)
            length = int(answer.headers["Content-Length"])
            self.assertLess(length, entry.size)
            if method == "GET":
                self.assertEqual(length, len(answer.content))
        self.assertEqual(self.hub.resolve_count("org/model", "model.safetensors"), 2)
        self.assertEqual(self.hub.fetch_count("org/model", "model.safetensors"), 0)

    def test_lfs_bytes_through_the_redirect_without_authorization(self):
        token = {"Authorization": f"Bearer {FakeHub.TOKEN}"}
        answer = self.get("/org/model/resolve/main/model.safetensors", headers=token)
        self.assertEqual(answer.content, MODEL_FILES["model.safetensors"])
        self.assertEqual([r.status_code for r in answer.history], [302])
        self.assertEqual(answer.headers["ETag"], f'"{sha256(answer.content)}"')
        self.assertEqual(self.hub.fetch_count("org/model", "model.safetensors"), 1)
        (hub_request,) = self.hub.requests(host="hub")
        (cdn_request,) = self.hub.requests(host="cdn")
        self.assertEqual(hub_request.headers["authorization"], token["Authorization"])
        self.assertNotIn("authorization", cdn_request.headers)

    def test_cdn_ranges(self):
        data = MODEL_FILES["model.safetensors"]
        location = self.get("/org/model/resolve/main/model.safetensors", allow_redirects=False).headers["Location"]
        cases = {"bytes=0-0": (0, 0), "bytes=10-19": (10, 19), "bytes=299990-": (299990, len(data) - 1),
                 "bytes=-16": (len(data) - 16, len(data) - 1), "bytes=5-999999": (5, len(data) - 1)}
        for header, (start, end) in cases.items():
            answer = self.session.get(location, headers={"Range": header}, timeout=30)
            self.assertEqual(answer.status_code, 206, header)
            self.assertEqual(answer.headers["Content-Range"], f"bytes {start}-{end}/{len(data)}")
            self.assertEqual(answer.content, data[start:end + 1])
        past = self.session.get(location, headers={"Range": f"bytes={len(data)}-"}, timeout=30)
        self.assertEqual((past.status_code, past.headers["Content-Range"]), (416, f"bytes */{len(data)}"))
        whole = self.session.get(location, timeout=30)
        self.assertEqual((whole.status_code, whole.content), (200, data))
        self.assertEqual(whole.headers["Accept-Ranges"], "bytes")

    def test_cdn_checks_its_signature(self):
        location = self.get("/org/model/resolve/main/model.safetensors", allow_redirects=False).headers["Location"]
        forged = re.sub(r"Signature=[0-9a-f]+", "Signature=" + "0" * 64, location)
        later = re.sub(r"Expires=(\d+)", lambda m: f"Expires={int(m.group(1)) + 1}", location)
        bare = location.split("?")[0]
        for url in (forged, later, bare):
            self.assertEqual(self.session.get(url, timeout=30).status_code, 403)
        self.assertEqual(self.session.get(location, timeout=30).status_code, 200)

    def test_repository_without_xet(self):
        answer = self.get("/org/plain-lfs/resolve/main/model.bin", allow_redirects=False,
                          headers={"Accept": "application/vnd.xet-fileinfo+json, */*"})
        self.assertEqual(answer.status_code, 302)
        self.assertNotIn("X-Xet-Hash", answer.headers)
        self.assertNotIn("Link", answer.headers)
        tree = self.get("/api/models/org/plain-lfs/tree/main").json()
        self.assertFalse(any("xetHash" in entry for entry in tree))
        self.assertTrue(any("lfs" in entry for entry in tree))

    def test_xet_file_info_on_request(self):
        entry = self.file("model.safetensors")
        accept = {"Accept": "application/vnd.xet-fileinfo+json, */*", "Range": "bytes=0-0"}
        answer = self.get("/org/model/resolve/main/model.safetensors", headers=accept, allow_redirects=False)
        self.assertEqual(answer.status_code, 200)
        self.assertEqual(answer.headers["Content-Type"], "application/vnd.xet-fileinfo+json")
        self.assertEqual(answer.json()["hash"], entry.xet_hash)
        self.assertEqual(answer.headers["X-Linked-Size"], str(entry.size))
        regular = self.get("/org/model/resolve/main/config.json", headers=accept)
        self.assertEqual((regular.status_code, regular.content), (206, CONFIG[:1]))

    def test_gated_repository(self):
        anonymous = self.get("/org/gated/resolve/main/weights.bin")
        self.assertEqual(anonymous.status_code, 401)
        self.assertEqual(anonymous.headers["X-Error-Code"], "GatedRepo")
        self.assertIn("restricted", anonymous.headers["X-Error-Message"])
        refused = self.get("/org/gated/resolve/main/weights.bin", headers={"Authorization": "Bearer hf_nope"})
        self.assertEqual((refused.status_code, refused.headers["X-Error-Code"]), (403, "GatedRepo"))
        granted = self.get("/org/gated/resolve/main/weights.bin",
                           headers={"Authorization": f"Bearer {FakeHub.TOKEN}"})
        self.assertEqual(granted.content, self.hub.file("org/gated", "weights.bin").data)
        self.assertFalse(any("authorization" in r.headers for r in self.hub.requests(host="cdn")))
        self.assertEqual(self.get("/api/models/org/gated").json()["gated"], "manual")

    def test_renamed_repository(self):
        answer = self.get("/org/old-name/resolve/main/config.json", allow_redirects=False)
        self.assertEqual((answer.status_code, answer.headers["Location"]),
                         (307, "/org/model/resolve/main/config.json"))
        api = self.get("/api/models/org/old-name/tree/main?recursive=true", allow_redirects=False)
        self.assertEqual((api.status_code, api.headers["Location"]),
                         (307, "/api/models/org/model/tree/main?recursive=true"))
        self.assertEqual(self.get("/api/models/org/old-name", allow_redirects=False).headers["Location"],
                         "/api/models/org/model")
        followed = self.get("/org/old-name/resolve/main/model.safetensors")
        self.assertEqual([r.status_code for r in followed.history], [307, 302])
        self.assertEqual(followed.content, MODEL_FILES["model.safetensors"])

    def test_request_log_counts(self):
        self.get("/api/models/org/model")
        self.get("/api/models/org/model")
        self.assertEqual(self.hub.request_count("hub", "/api/models/org/model"), 2)
        self.assertEqual(self.hub.requests(host="hub")[0].headers["user-agent"][:15], "python-requests")


class FaultsWithRequests(FakeHubCase):
    """Every injected fault, seen by a plain requests download."""

    LFS = "model.safetensors"

    def download(self, path, **options):
        return self.get(f"/org/model/resolve/main/{path}", **options)

    def test_status_with_count_then_recovery(self):
        self.hub.inject("org/model", self.LFS, Fault.status(503, count=2))
        self.assertEqual(self.download(self.LFS).status_code, 503)
        self.assertEqual(self.download(self.LFS).status_code, 503)
        self.assertEqual(self.download(self.LFS).content, MODEL_FILES[self.LFS])
        self.assertEqual(self.hub.fetch_count("org/model", self.LFS), 3)
        self.assertEqual(self.hub.resolve_count("org/model", self.LFS), 3)
        self.hub.inject("org/model", "config.json", Fault.status(500, count=1))
        failed = self.download("config.json")
        self.assertEqual(failed.status_code, 500)
        self.assertIn("X-Error-Message", failed.headers)
        self.assertEqual(self.download("config.json").content, CONFIG)
        self.hub.inject("org/model", "README.md", Fault.status(502, host="hub", count=1))
        self.assertEqual(self.download("README.md").status_code, 502)

    def assert_incomplete(self, path):
        """The download fails or comes out short. Debian's requests (urllib3 1.26) does not enforce
        Content-Length and takes a reset or an early close for the end of the body: huggingface_hub
        notices only through its own size check, so both outcomes are what a client sees."""
        try:
            answer = self.download(path)
        except requests.exceptions.RequestException:
            return
        self.assertLess(len(answer.content), len(MODEL_FILES[path]))

    def test_reset_mid_body(self):
        fault = self.hub.inject("org/model", self.LFS, Fault.reset(after_bytes=1000, count=1))
        self.assert_incomplete(self.LFS)
        self.assertEqual(fault.hits, 1)
        self.assertEqual(self.download(self.LFS).content, MODEL_FILES[self.LFS])
        self.hub.inject("org/model", "README.md", Fault.reset())
        self.assert_incomplete("README.md")

    def test_lying_content_length(self):
        self.hub.inject("org/model", self.LFS, Fault.lying_length(extra_bytes=4096))
        answer = self.download(self.LFS)
        self.assertEqual(int(answer.headers["Content-Length"]), len(MODEL_FILES[self.LFS]) + 4096)
        self.assertEqual(answer.content, MODEL_FILES[self.LFS])  # all there is, and no error

    def test_wrong_digest(self):
        self.hub.inject("org/model", self.LFS, Fault.wrong_digest())
        answer = self.download(self.LFS)
        self.assertEqual(answer.content, MODEL_FILES[self.LFS])
        claimed = answer.history[0].headers["X-Linked-Etag"].strip('"')
        self.assertNotEqual(claimed, sha256(answer.content))
        self.hub.inject("org/model", "config.json", Fault.wrong_digest())
        regular = self.download("config.json")
        self.assertNotEqual(regular.headers["ETag"].strip('W/"'), git_blob_sha1(CONFIG))

    def test_corrupt_body(self):
        self.hub.inject("org/model", self.LFS, Fault.corrupt())
        answer = self.download(self.LFS)
        self.assertEqual(len(answer.content), len(MODEL_FILES[self.LFS]))
        self.assertNotEqual(sha256(answer.content), answer.history[0].headers["X-Linked-Etag"].strip('"'))

    def test_slow_drip(self):
        path = "nested/deep/weights.bin"
        self.hub.inject("org/model", path, Fault.slow_drip(chunk_bytes=1024, interval=0.15))
        started = time.monotonic()
        answer = self.download(path)
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual(answer.content, MODEL_FILES[path])

    def test_untrusted_cdn_certificate(self):
        self.hub.inject("org/model", self.LFS, Fault.untrusted_cdn())
        with self.assertRaises(requests.exceptions.SSLError):
            self.download(self.LFS)
        self.assertTrue(self.hub.wait_until(
            lambda: any(label == "cdn-untrusted" for label, _ in self.hub.tls_failures)))
        location = self.download(self.LFS, allow_redirects=False).headers["Location"]
        self.assertTrue(location.startswith(self.hub.untrusted_cdn_url))
        trusting_other = self.session.get(location, verify=self.other_ca.ca_pem, timeout=30)
        self.assertEqual(trusting_other.content, MODEL_FILES[self.LFS])
        with self.assertRaises(ValueError):
            self.hub.inject("org/model", "config.json", Fault.untrusted_cdn())


class Curl(FakeHubCase):
    """curl with --cacert, as a user scripting downloads would."""

    def curl(self, *args, check=True):
        completed = subprocess.run(["curl", "-sS", "--noproxy", "*", "--cacert", self.ca.ca_pem, *args],
                                   capture_output=True, timeout=CLIENT_TIMEOUT)
        if check and completed.returncode != 0:
            self.fail(f"curl {args} exited {completed.returncode}: {completed.stderr.decode()}")
        return completed

    def headers_of(self, dump):
        """The last header block of a `curl -D` dump, as a dict with lower-case names."""
        block = re.split(r"\r?\n\r?\n", dump.strip())[-1]
        lines = block.splitlines()
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def test_download_regular_and_lfs(self):
        for path in ("config.json", "model.safetensors", "nested/deep/weights.bin"):
            out = os.path.join(self.workdir, "out")
            self.curl("-f", "-L", "-o", out, f"{self.hub.url}/org/model/resolve/main/{path}")
            with open(out, "rb") as handle:
                self.assertEqual(handle.read(), MODEL_FILES[path], path)

    def test_head_shows_the_redirect(self):
        status, headers = self.headers_of(self.curl("-I", f"{self.hub.url}/org/model/resolve/main/model.safetensors").stdout.decode())
        self.assertEqual(status, 302)
        self.assertTrue(headers["location"].startswith(self.hub.cdn_url + "/repos/"))
        self.assertEqual(headers["x-linked-etag"], f'"{sha256(MODEL_FILES["model.safetensors"])}"')

    def test_range_and_compressed(self):
        ranged = self.curl("-f", "-L", "-r", "10-19", f"{self.hub.url}/org/model/resolve/main/model.safetensors")
        self.assertEqual(ranged.stdout, MODEL_FILES["model.safetensors"][10:20])
        probe = self.curl("-f", "-L", "-r", "0-0", "-D", "-", "-o", os.devnull,
                          f"{self.hub.url}/org/model/resolve/main/model.safetensors").stdout.decode()
        status, headers = self.headers_of(probe)
        self.assertEqual((status, headers["content-range"]),
                         (206, f"bytes 0-0/{len(MODEL_FILES['model.safetensors'])}"))
        compressed = self.curl("-f", "--compressed", "-D", os.path.join(self.workdir, "h"),
                               f"{self.hub.url}/org/model/resolve/main/README.md")
        self.assertEqual(compressed.stdout, MODEL_FILES["README.md"])
        with open(os.path.join(self.workdir, "h"), encoding="ascii") as handle:
            self.assertIn("content-encoding: gzip", handle.read().lower())

    def test_gated_and_renamed(self):
        refused = self.curl("-f", f"{self.hub.url}/org/gated/resolve/main/config.json", check=False)
        self.assertEqual(refused.returncode, 22)  # -f: HTTP status >= 400
        granted = self.curl("-f", "-L", "-H", f"Authorization: Bearer {FakeHub.TOKEN}",
                            f"{self.hub.url}/org/gated/resolve/main/weights.bin")
        self.assertEqual(granted.stdout, self.hub.file("org/gated", "weights.bin").data)
        self.assertFalse(any("authorization" in r.headers for r in self.hub.requests(host="cdn")))
        renamed = self.curl("-f", "-L", f"{self.hub.url}/org/old-name/resolve/main/config.json")
        self.assertEqual(renamed.stdout, CONFIG)

    def test_tree_pagination(self):
        url, paths = f"{self.hub.url}/api/models/org/model/tree/main?recursive=1", []
        while url:
            dump = os.path.join(self.workdir, "headers")
            body = self.curl("-f", "--compressed", "-D", dump, url).stdout
            paths += [entry["path"] for entry in json.loads(body)]
            with open(dump, encoding="ascii") as handle:
                match = re.search(r'^link: <([^>]+)>; rel="next"', handle.read(), re.I | re.M)
            url = match.group(1) if match else None
        self.assertEqual(len(paths), len(MODEL_FILES) + 3)
        self.assertLessEqual(set(MODEL_FILES), set(paths))

    def test_reset_and_lying_length(self):
        url = f"{self.hub.url}/org/model/resolve/main/model.safetensors"
        self.hub.inject("org/model", "model.safetensors", Fault.reset(after_bytes=1000, count=1))
        self.assertEqual(self.curl("-f", "-L", "-o", os.devnull, url, check=False).returncode, 56)
        self.hub.inject("org/model", "model.safetensors", Fault.lying_length(count=1))
        self.assertEqual(self.curl("-f", "-L", "-o", os.devnull, url, check=False).returncode, 18)
        self.assertEqual(self.curl("-f", "-L", url).stdout, MODEL_FILES["model.safetensors"])

    def test_untrusted_cdn(self):
        self.hub.inject("org/model", "model.safetensors", Fault.untrusted_cdn())
        failed = self.curl("-f", "-L", f"{self.hub.url}/org/model/resolve/main/model.safetensors", check=False)
        self.assertEqual(failed.returncode, 60)  # peer certificate cannot be authenticated


class NodeHubClient(FakeHubCase):
    """@huggingface/hub (hub_client.mjs) straight against the fake Hub."""

    @classmethod
    def setUpClass(cls):
        if not shutil.which("node"):
            raise RuntimeError("node is missing: scripts/install-deps.sh test installs it")
        if not os.path.isdir(os.path.join(HERE, "node_modules", "@huggingface", "hub")):
            raise RuntimeError("@huggingface/hub is not installed: run `npm ci --prefix tests/integration` "
                               "(scripts/install-deps.sh test does)")
        super().setUpClass()

    def node(self, *args, repo="org/model", check=True):
        environment = {key: value for key, value in os.environ.items()
                       if not key.lower().endswith("_proxy")}
        environment["NODE_EXTRA_CA_CERTS"] = self.ca.ca_pem
        completed = subprocess.run(["node", NODE_CLIENT, "--hub-url", self.hub.url, "--repo", repo, *args],
                                   capture_output=True, text=True, env=environment, cwd=self.workdir,
                                   timeout=CLIENT_TIMEOUT)
        if check and completed.returncode != 0:
            self.fail(f"hub_client {args} exited {completed.returncode}: {completed.stderr}")
        return completed

    def read(self, path):
        with open(path, "rb") as handle:
            return handle.read()

    def test_download_regular_file(self):
        out = os.path.join(self.workdir, "config.json")
        self.node("download", "config.json", out)
        self.assertEqual(self.read(out), CONFIG)

    def test_download_lfs_file_from_a_repository_without_xet(self):
        out = os.path.join(self.workdir, "model.bin")
        self.node("download", "model.bin", out, repo="org/plain-lfs")
        self.assertEqual(self.read(out), self.hub.file("org/plain-lfs", "model.bin").data)
        self.assertGreater(self.hub.fetch_count("org/plain-lfs", "model.bin"), 0)

    def test_xet_backed_file_info_is_what_zoogate_must_hide(self):
        info = json.loads(self.node("info", "model.safetensors").stdout)
        self.assertEqual(info["xet"], {"hash": self.file("model.safetensors").xet_hash})
        self.assertEqual(info["size"], len(MODEL_FILES["model.safetensors"]))
        (request,) = self.hub.requests(host="hub")
        self.assertIn("application/vnd.xet-fileinfo+json", request.headers["accept"])
        self.assertEqual(request.headers["range"], "bytes=0-0")
        regular = json.loads(self.node("info", "config.json").stdout)
        self.assertEqual((regular["size"], regular["etag"], regular["xet"]),
                         (len(CONFIG), f'"{self.file("config.json").git_oid}"', None))

    def test_download_lfs_file_with_xet_off(self):
        out = os.path.join(self.workdir, "model.safetensors")
        self.node("--no-xet", "download", "model.safetensors", out)
        self.assertEqual(self.read(out), MODEL_FILES["model.safetensors"])

    def test_list_follows_pagination(self):
        entries = json.loads(self.node("list").stdout)
        self.assertEqual({e["path"] for e in entries if e["type"] == "file"}, set(MODEL_FILES))
        pages = self.hub.request_count("hub", "/api/models/org/model/tree/main")
        self.assertEqual(pages, -(-len(entries) // PAGE_SIZE))

    def test_snapshot(self):
        cache = os.path.join(self.workdir, "cache")
        folder = self.node("--no-xet", "snapshot", cache).stdout.strip().splitlines()[-1]
        self.assertTrue(folder.endswith(self.hub.commit("org/model")))
        for path, data in MODEL_FILES.items():
            self.assertEqual(self.read(os.path.join(folder, path)), data, path)
        self.assertTrue(self.hub.requests(host="hub", method="POST"))  # paths-info per file
        dataset = self.node("--no-xet", "snapshot", cache, repo="datasets/org/data").stdout.strip().splitlines()[-1]
        self.assertEqual(self.read(os.path.join(dataset, "data/train.parquet")),
                         self.hub.file("datasets/org/data", "data/train.parquet").data)

    def test_gated_needs_the_token(self):
        out = os.path.join(self.workdir, "weights.bin")
        refused = self.node("download", "weights.bin", out, repo="org/gated", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("restricted", refused.stderr)
        self.node("--token", FakeHub.TOKEN, "--no-xet", "download", "weights.bin", out, repo="org/gated")
        self.assertEqual(self.read(out), self.hub.file("org/gated", "weights.bin").data)

    def test_renamed_repository_and_commit_revision(self):
        out = os.path.join(self.workdir, "config.json")
        self.node("download", "config.json", out, repo="org/old-name")
        self.assertEqual(self.read(out), CONFIG)
        self.node("--revision", self.hub.commit("org/model"), "--no-xet", "download", "model.safetensors", out)
        self.assertEqual(self.read(out), MODEL_FILES["model.safetensors"])

    def test_cloudfront_answer_makes_the_client_reuse_the_cdn_url(self):
        # fileDownloadInfo keeps the CDN URL when the CDN says "X-Cache: ... cloudfront", and the
        # download then goes there directly, with the user's token: a real client's behaviour that
        # the fake Hub must reproduce (zoogate must never let a client see a CDN URL).
        out = os.path.join(self.workdir, "model.bin")
        self.node("--token", FakeHub.TOKEN, "download", "model.bin", out, repo="org/plain-lfs")
        self.assertEqual(self.read(out), self.hub.file("org/plain-lfs", "model.bin").data)
        probe, download = self.hub.requests(host="cdn")
        self.assertEqual(probe.headers["range"], "bytes=0-0")
        self.assertNotIn("authorization", probe.headers)
        self.assertEqual(download.headers["authorization"], f"Bearer {FakeHub.TOKEN}")
        self.assertEqual(len(self.hub.requests(host="hub")), 1)

    def test_failures_exit_non_zero_with_the_message(self):
        self.hub.inject("org/model", "model.safetensors", Fault.reset(after_bytes=100))
        out = os.path.join(self.workdir, "model.safetensors")
        reset = self.node("--no-xet", "download", "model.safetensors", out, check=False)
        self.assertNotEqual(reset.returncode, 0)
        self.assertIn("hub_client:", reset.stderr)
        missing = self.node("download", "nope.bin", out, check=False)
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("not found", missing.stderr)


if __name__ == "__main__":
    unittest.main()
