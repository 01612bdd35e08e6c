"""A fake Hugging Face Hub, written for the tests, that answers the way the real Hub does.

Why: zoogate sits between Hub clients and the Hub, and every point of the Hub protocol that clients
rely on (DESIGN.md section 5) has to be exercised on loopback without the real Hub. This module is a
small threaded HTTPS server that plays two hosts, as the real service does:

  * the Hub, at https://127.0.0.1:PORT (`.url`): the JSON API, `resolve` and `raw`;
  * the CDN, at https://localhost:PORT2 (`.cdn_url`), a different host name, so that clients and
    zoogate treat it as another origin (no Authorization across the redirect);
  * an "untrusted" CDN at https://localhost:PORT3, whose certificate comes from an unrelated CA;
    a fault (`Fault.untrusted_cdn()`) redirects one file there.

Repositories are plain Python data:

    FakeHub(ca, {
        "org/model": {"files": {"config.json": b"{}", "model.safetensors": data}},
        "datasets/org/data": {"files": {...}, "lfs": {"big.bin"}},
        "org/gated": {"files": {...}, "gated": True},              # token: FakeHub.TOKEN
        "org/old-name": {"renamed_to": "org/model"},
    })

Keys of a repository: `files` {path: bytes}; `lfs` (a set of paths, a bool, or a callable
(path, data) -> bool; default: binary suffixes, files with NUL bytes and files of 10 MiB or more);
`gated` (False, True, "auto" or "manual"); `token` (the one token that passes the gate); `xet`
(default True: LFS files are Xet-backed, with `xetHash` and the Xet headers); `branches` (names that
resolve to the one commit besides "main"); `renamed_to`.

What the Hub side answers (facts learnt from huggingface_hub and @huggingface/hub):
  GET  /api/{models,datasets,spaces}/{repo}[/revision/{rev}]  info with `sha` and `siblings`;
       `?blobs=true` adds blobId, size, lfs {sha256, size, pointerSize}; `expand=` keeps only the
       named fields (plus _id and id), as the real Hub does for @huggingface/hub's modelInfo.
  GET  /api/.../tree/{rev}[/{path}]?recursive=&expand=  cursor pagination, `Link: <absolute
       https URL>; rel="next"`, page size `tree_page_size`.
  POST /api/.../paths-info/{rev}  form (`paths=a&paths=b&expand=True`) or JSON body.
  GET  /api/.../xet-read-token/{rev}  a Xet token (zoogate must refuse to pass this on).
  HEAD/GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}
       regular file: 200 (206 with Range) with ETag = quoted git blob sha1 and X-Repo-Commit; gzip
       and chunked when the client accepts gzip and asks for the whole file (the real Hub compresses,
       which is why huggingface_hub sends `Accept-Encoding: identity` on its HEAD);
       LFS file: 302 to the CDN (absolute URL with a signed query), X-Repo-Commit, X-Linked-Etag
       (quoted sha256), X-Linked-Size, ETag, Xet headers and a body whose length is Content-Length;
       with `Accept: application/vnd.xet-fileinfo+json` a Xet-backed file answers 200 with a Xet
       file-info JSON instead, as the real Hub does for @huggingface/hub's fileDownloadInfo.
  Errors carry X-Error-Code / X-Error-Message and a JSON body: GatedRepo (401 without a token,
  403 with a token that is not granted), RepoNotFound (401 anonymous, 404 with a token: the real
  Hub does not reveal to anonymous clients whether a repository exists), RevisionNotFound,
  EntryNotFound (404 with X-Repo-Commit, which clients cache as "this file does not exist").
  A renamed repository answers every route with a relative 307 to the same route under the new name.

The CDN checks the signature and expiry of its query (403 AccessDenied otherwise), honours
`Range: bytes=a-b`, `bytes=a-`, `bytes=-n` (206 + Content-Range, 416 when unsatisfiable) and sends
`X-Cache: Miss from cloudfront` like the real one (`cdn_x_cache=False` leaves it out).

Observation for the tests: every request is logged with its headers (`requests()`), counted per
(host, path) (`request_count()`), and per file (`fetch_count()`, `resolve_count()`); failed TLS
handshakes are kept in `tls_failures`. Fault injection per (repo, path): see `Fault`.
"""
import base64
import binascii
import gzip
import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import ssl
import struct
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

from test_ca import TestCA

HUB = "hub"
CDN = "cdn"
UNTRUSTED_CDN = "cdn-untrusted"

# Git LFS pointer files name their spec by this URL; it is part of the file format.
LFS_SPEC_VERSION = "https://git-lfs.github.com/spec/v1"
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
BINARY_SUFFIXES = (".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib",
                   ".npy", ".npz", ".h5", ".hdf5", ".onnx", ".msgpack", ".gguf", ".tflite", ".zip",
                   ".tar", ".gz", ".7z", ".parquet", ".arrow", ".model", ".mar", ".keras", ".pb")
XET_FILEINFO_TYPE = "application/vnd.xet-fileinfo+json"
FIXED_DATE = "2024-05-01T12:00:00.000Z"
REPO_TYPE_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}
REPO_KEYS = {"files", "lfs", "gated", "token", "xet", "branches", "renamed_to"}
MAX_REQUEST_BODY = 1024 * 1024
JSON_CHUNK = 512  # chunked JSON goes out in several chunks, to exercise the client's decoder


class _Dropped(Exception):
    """Raised inside a handler once a fault has dropped the connection: nothing more is written."""


# ---------------------------------------------------------------------------------------------
# Repository data


def git_blob_sha1(data):
    """The git object id of a blob: what the Hub reports as `oid` and as ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256_hex, size):
    """The Git LFS pointer file that the git repository holds in place of an LFS file."""
    return f"version {LFS_SPEC_VERSION}\noid sha256:{sha256_hex}\nsize {size}\n".encode()


def parse_repo_key(key):
    """(type, repo id) of a repository key: "org/name" is a model, "datasets/org/name" a dataset,
    "spaces/org/name" a space."""
    first, _, rest = key.partition("/")
    if first in ("datasets", "spaces") and rest:
        return REPO_TYPE_PREFIXES[first], rest
    return "model", key


def default_lfs_rule(path, data):
    """What `git lfs track` setups on the Hub typically send to LFS: weights and archives by suffix,
    anything binary (NUL bytes) and anything large."""
    return (path.lower().endswith(BINARY_SUFFIXES) or len(data) >= LFS_SIZE_THRESHOLD
            or b"\0" in data[:8192])


@dataclass
class RepoFile:
    """One file of a fake repository, with every identifier the Hub reports for it."""
    path: str
    data: bytes
    lfs: bool
    xet: bool
    sha256: str = ""
    git_oid: str = ""        # blob id of what git stores: the pointer for LFS files
    pointer: bytes = b""     # LFS pointer (empty for regular files)
    xet_hash: str = ""       # 64 hex digits for Xet-backed LFS files

    def __post_init__(self):
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        if self.lfs:
            self.pointer = lfs_pointer(self.sha256, len(self.data))
            self.git_oid = git_blob_sha1(self.pointer)
            if self.xet:
                # Not the real Xet merkle hash (which needs the chunker): a stable 64-hex stand-in.
                self.xet_hash = hashlib.sha256(b"xet-file-hash\0" + self.data).hexdigest()
        else:
            self.git_oid = git_blob_sha1(self.data)

    @property
    def size(self):
        return len(self.data)

    @property
    def git_bytes(self):
        """What `raw` serves: the content for regular files, the pointer for LFS files."""
        return self.pointer if self.lfs else self.data

    def tree_entry(self, commit, expand):
        entry = {"type": "file", "oid": self.git_oid, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        if self.xet_hash:
            entry["xetHash"] = self.xet_hash
        if expand:
            entry["lastCommit"] = {"id": commit, "title": "Upload files", "date": FIXED_DATE}
            entry["securityFileStatus"] = {"status": "unscanned"}
        return entry


class Repo:
    """A repository's state, built from the Python data given to FakeHub (see the module docstring).

    `key` is how URLs name it: "org/name" for models, "datasets/org/name", "spaces/org/name"."""

    def __init__(self, key, spec):
        unknown = set(spec) - REPO_KEYS
        if unknown:
            raise ValueError(f"repository {key}: unknown keys {sorted(unknown)}")
        self.key = key
        self.type, self.repo_id = parse_repo_key(key)
        self.renamed_to = spec.get("renamed_to")
        gated = spec.get("gated", False)
        self.gated = "manual" if gated is True else gated
        self.token = spec.get("token", FakeHub.TOKEN)
        self.xet = bool(spec.get("xet", True))
        self.branches = {"main", "HEAD", *spec.get("branches", ())}
        rule = spec.get("lfs", default_lfs_rule)
        if isinstance(rule, bool):
            is_lfs = lambda path, data, value=rule: value  # noqa: E731
        elif callable(rule):
            is_lfs = rule
        else:
            paths = set(rule)
            is_lfs = lambda path, data: path in paths  # noqa: E731
        self.files = {}
        for path, data in sorted(spec.get("files", {}).items()):
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"repository {key}: {path} must be bytes")
            lfs = bool(is_lfs(path, bytes(data)))
            self.files[path] = RepoFile(path, bytes(data), lfs, lfs and self.xet)
        self.directories = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                self.directories.add("/".join(parts[:depth]))
        digest = hashlib.sha1(self.key.encode())
        for path, entry in self.files.items():
            digest.update(f"\0{path}\0{entry.git_oid}".encode())
        self.commit = digest.hexdigest()
        # The CDN names objects by a repository hash and the content's sha256, as the real one does.
        self.storage_id = hashlib.sha256(f"{self.type}/{self.repo_id}".encode()).hexdigest()

    @property
    def url_prefix(self):
        """The path prefix of resolve URLs: "" for models, "datasets/" or "spaces/" otherwise."""
        return "" if self.type == "model" else f"{self.type}s/"

    def resolve_revision(self, revision):
        """The commit a revision names, or None: branch names and the full commit sha."""
        if revision in self.branches or revision == self.commit:
            return self.commit
        return None

    def directory_entry(self, path, commit, expand):
        oid = hashlib.sha1(f"tree\0{self.commit}\0{path}".encode()).hexdigest()
        entry = {"type": "directory", "oid": oid, "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = {"id": commit, "title": "Upload files", "date": FIXED_DATE}
        return entry

    def listing(self, folder, recursive, expand):
        """Tree entries under `folder` ("" = the root), in path order, directories included."""
        prefix = folder + "/" if folder else ""
        names = [p for p in list(self.files) + list(self.directories) if p.startswith(prefix)]
        if not recursive:
            names = [p for p in names if "/" not in p[len(prefix):]]
        entries = []
        for name in sorted(names):
            if name in self.files:
                entries.append(self.files[name].tree_entry(self.commit, expand))
            else:
                entries.append(self.directory_entry(name, self.commit, expand))
        return entries

    def info(self, query):
        """The JSON of /api/{type}s/{repo}[/revision/{rev}]."""
        blobs = query.get("blobs", [""])[-1].lower() in ("1", "true")
        siblings = []
        for path, entry in self.files.items():
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(blobId=entry.git_oid, size=entry.size)
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size,
                                      "pointerSize": len(entry.pointer)}
                if entry.xet_hash:
                    sibling["xetHash"] = entry.xet_hash
            siblings.append(sibling)
        author = self.repo_id.split("/")[0] if "/" in self.repo_id else None
        info = {"_id": hashlib.sha1(self.key.encode()).hexdigest()[:24], "id": self.repo_id,
                "author": author, "sha": self.commit, "lastModified": FIXED_DATE,
                "createdAt": FIXED_DATE, "private": False, "disabled": False, "gated": self.gated,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(entry.size for entry in self.files.values())}
        if self.type == "model":
            info["modelId"] = self.repo_id
        expand = query.get("expand", []) + query.get("expand[]", [])
        if expand:
            info = {key: value for key, value in info.items() if key in {"_id", "id", *expand}}
        return info


# ---------------------------------------------------------------------------------------------
# Faults


@dataclass
class Fault:
    """One injected misbehaviour for one file; made with the class methods below and armed with
    `FakeHub.inject(repo, path, fault)`.

    `host` says where it happens: "hub" (the resolve answer), "cdn", or "auto" = where the file's
    bytes come from (the CDN for LFS files, the Hub for regular files). `count` is how many requests
    it affects before it disarms itself (None: all); `hits` counts the requests it affected. Body
    faults affect GET requests (ranged ones included); status faults affect HEAD too."""
    kind: str
    host: str = "auto"
    count: int = None
    status: int = 503
    after_bytes: int = None
    extra_bytes: int = 0
    chunk_bytes: int = 0
    interval: float = 0.0
    hits: int = 0

    @classmethod
    def reset(cls, after_bytes=None, **options):
        """Sends the headers and `after_bytes` bytes of the body (default: half), then resets the
        connection (TCP RST)."""
        return cls("reset", after_bytes=after_bytes, **options)

    @classmethod
    def lying_length(cls, extra_bytes=1024, **options):
        """Announces a Content-Length `extra_bytes` larger than the body, sends the body, closes."""
        return cls("lying_length", extra_bytes=extra_bytes, **options)

    @classmethod
    def wrong_digest(cls, **options):
        """The Hub's resolve answer names a wrong digest: X-Linked-Etag (and ETag) for LFS files,
        the ETag (git blob id) for regular files. The bytes themselves are right."""
        return cls("wrong_digest", host=HUB, **options)

    @classmethod
    def corrupt(cls, **options):
        """Serves the file with one byte flipped while every header stays right."""
        return cls("corrupt", **options)

    @classmethod
    def slow_drip(cls, chunk_bytes, interval, **options):
        """Sends the body `chunk_bytes` at a time, pausing `interval` seconds between chunks."""
        return cls("slow_drip", chunk_bytes=chunk_bytes, interval=interval, **options)

    @classmethod
    def status(cls, status=503, count=None, **options):
        """Answers `status` (a JSON error, as the real Hub's 5xx) `count` times, then normally."""
        return cls("status", status=status, count=count, **options)

    @classmethod
    def untrusted_cdn(cls, **options):
        """The Hub redirects this LFS file to the CDN host whose certificate an unrelated CA signed."""
        return cls("untrusted_cdn", host=HUB, **options)

    def where(self, entry):
        """The host this fault acts on for `entry`."""
        if self.host != "auto":
            return self.host
        return CDN if entry.lfs else HUB


BODY_FAULTS = {"reset", "lying_length", "corrupt", "slow_drip"}


# ---------------------------------------------------------------------------------------------
# Request log


@dataclass
class RecordedRequest:
    """One request as a server received it. `headers` maps lower-case names to values (the last
    one when a name repeats); `raw_headers` keeps them all, in order."""
    host: str
    method: str
    path: str
    query: str
    headers: dict
    raw_headers: list
    status: int = None
    repo: str = None
    file: str = None
    body: bytes = b""
    time: float = field(default_factory=time.time)


# ---------------------------------------------------------------------------------------------
# HTTP plumbing


def _parse_range(header, size):
    """(start, end) inclusive for a single-range `Range` header, "unsatisfiable", or None when the
    header is absent or is to be ignored (malformed, or several ranges: answered with 200)."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or (match.group(1) == "" and match.group(2) == ""):
        return None
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _accepts_gzip(headers):
    for token in headers.get("Accept-Encoding", "").split(","):
        name, _, params = token.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            quality = re.search(r"q\s*=\s*([0-9.]+)", params)
            return not quality or float(quality.group(1)) > 0
    return False


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection; every request goes to FakeHub._hub_request or FakeHub._cdn_request."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - the request log replaces stderr noise
        pass

    def version_string(self):
        return self.server_version

    def send_response(self, code, message=None):
        if getattr(self, "record", None) is not None:
            self.record.status = code
        super().send_response(code, message)

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
                if len(body) > MAX_REQUEST_BODY:
                    raise ValueError("request body too large")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(length) if length else b""

    def _dispatch(self):
        hub = self.server.hub
        split = urllib.parse.urlsplit(self.path)
        self.record = RecordedRequest(
            host=self.server.label, method=self.command, path=split.path, query=split.query,
            headers={name.lower(): value for name, value in self.headers.items()},
            raw_headers=list(self.headers.items()))
        self.is_head = self.command == "HEAD"
        # Logged on arrival, before any answer: a client that has its answer sees its request
        # counted. The status is filled in once sent.
        hub._log(self.record)
        try:
            self.record.body = self._read_body()
            if self.server.label == HUB:
                hub._hub_request(self, split)
            else:
                hub._cdn_request(self, split)
        except _Dropped:
            self.close_connection = True
        except (ConnectionError, ssl.SSLError, socket.timeout, BrokenPipeError):
            self.close_connection = True

    # Answer helpers ------------------------------------------------------------------------

    def send(self, status, headers=(), body=b"", content_type=None):
        """A complete answer with Content-Length; no body for HEAD."""
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not self.is_head and body:
            self.wfile.write(body)

    def send_chunked(self, status, headers, body, content_type=None):
        """An answer in Transfer-Encoding: chunked, in several chunks."""
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.is_head:
            return
        for offset in range(0, len(body), JSON_CHUNK):
            piece = body[offset:offset + JSON_CHUNK]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def send_error_json(self, status, error_code, message, headers=()):
        """The real Hub's error shape: X-Error-Code, X-Error-Message and {"error": message}."""
        extra = list(headers)
        if error_code:
            extra.append(("X-Error-Code", error_code))
        extra.append(("X-Error-Message", message))
        body = json.dumps({"error": message}).encode()
        self.send(status, extra, body, "application/json; charset=utf-8")

    def drop(self, reset):
        """Ends the connection mid-answer: TCP RST when `reset`, else an orderly close (FIN, no TLS
        close_notify). Raises _Dropped so that nothing more is written."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        time.sleep(0.05)  # let the bytes already written leave before the connection goes
        try:
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Dropped()

    def send_file_body(self, status, headers, body, fault, content_type):
        """Headers plus `body`, as faulted by a body fault (or None)."""
        kind = fault.kind if fault else None
        if kind == "corrupt" and body:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        announced = len(body) + (fault.extra_bytes if kind == "lying_length" else 0)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        if self.is_head:
            return
        if kind == "reset":
            cut = len(body) // 2 if fault.after_bytes is None else min(fault.after_bytes, len(body))
            self.wfile.write(body[:cut])
            self.drop(reset=True)
        if kind == "slow_drip":
            step = max(1, fault.chunk_bytes)
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset:offset + step])
                if offset + step < len(body):
                    time.sleep(fault.interval)
            return
        self.wfile.write(body)
        if kind == "lying_length":
            self.drop(reset=False)


class _TLSServer(http.server.ThreadingHTTPServer):
    """A threaded HTTPS server whose TLS handshakes happen in the connection's own thread, so that a
    client that never finishes one cannot stall the accept loop."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, family, context, hub, label):
        self.address_family = family
        self.context = context
        self.hub = hub
        self.label = label
        super().__init__(address, _Handler, bind_and_activate=False)
        try:
            if family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise

    def server_bind(self):
        # HTTPServer.server_bind would look up the host's FQDN, which can stall without a network.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        request.settimeout(self.hub.socket_timeout)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            self.hub._tls_failure(self.label, error)
            return
        self.hub._track(connection, True)
        try:
            self.RequestHandlerClass(connection, client_address, self)
        except ssl.SSLError as error:
            # With TLS 1.3 a client that refuses the certificate says so after the handshake.
            self.hub._tls_failure(self.label, error)
        except (ConnectionError, socket.timeout, OSError, ValueError):
            pass
        finally:
            self.hub._track(connection, False)
            try:
                connection.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        pass  # clients that go away are part of the tests


# ---------------------------------------------------------------------------------------------
# The fake Hub


class FakeHub:
    """The fake Hub and its CDN (see the module docstring). A context manager:

        with FakeHub(ca, repos, tree_page_size=2) as hub:
            hub.url, hub.cdn_url, hub.untrusted_cdn_url
            hub.inject("org/model", "model.bin", Fault.reset())
            hub.fetch_count("org/model", "model.bin")

    Options: `tree_page_size` (entries per /tree page), `gzip_json` (gzip JSON answers when the
    client accepts gzip), `chunked_json` (send JSON chunked), `compress_files` (gzip regular files
    on whole-file GETs that accept gzip), `cdn_x_cache` (X-Cache: Miss from cloudfront on the CDN),
    `url_lifetime` (seconds the signed CDN URLs are valid), `untrusted_ca` (a TestCA for the
    untrusted CDN; made in a temporary folder when not given). They are attributes too, and can be
    changed while the hub runs."""

    TOKEN = "hf_fakehub_granted_token"

    def __init__(self, ca, repos, *, tree_page_size=3, gzip_json=True, chunked_json=True,
                 compress_files=True, cdn_x_cache=True, url_lifetime=3600, untrusted_ca=None,
                 socket_timeout=30):
        self.ca = ca
        self.tree_page_size = tree_page_size
        self.gzip_json = gzip_json
        self.chunked_json = chunked_json
        self.compress_files = compress_files
        self.cdn_x_cache = cdn_x_cache
        self.url_lifetime = url_lifetime
        self.socket_timeout = socket_timeout
        self.untrusted_ca = untrusted_ca
        self._own_folder = None
        self._lock = threading.Lock()
        self._repos = {}
        for key, spec in repos.items():
            self.set_repo(key, spec)
        self._faults = {}
        self._log_entries = []
        self.tls_failures = []
        self._connections = set()
        self._servers = []
        self._threads = []
        self._secret = os.urandom(32)
        self.url = self.cdn_url = self.untrusted_cdn_url = None

    # Lifecycle -------------------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        if self.untrusted_ca is None:
            self._own_folder = tempfile.mkdtemp(prefix="fakehub-ca-")
            self.untrusted_ca = TestCA.other(self._own_folder)
        trusted = self._context(self.ca)
        untrusted = self._context(self.untrusted_ca)
        hub_port = self._serve(("127.0.0.1", 0), socket.AF_INET, trusted, HUB)
        cdn_port = self._serve_localhost(trusted, CDN)
        bad_port = self._serve_localhost(untrusted, UNTRUSTED_CDN)
        self.url = f"https://127.0.0.1:{hub_port}"
        self.cdn_url = f"https://localhost:{cdn_port}"
        self.untrusted_cdn_url = f"https://localhost:{bad_port}"

    def stop(self):
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        if self._own_folder:
            shutil.rmtree(self._own_folder, ignore_errors=True)
            self._own_folder = None

    @staticmethod
    def _context(ca):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca.cert_pem, ca.key_pem)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def _serve(self, address, family, context, label):
        server = _TLSServer(address, family, context, self, label)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name=f"fakehub-{label}", daemon=True)
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        return server.server_address[1]

    def _serve_localhost(self, context, label):
        """Listens on 127.0.0.1 and, where the machine has IPv6 loopback, on ::1 with the same port:
        "localhost" may resolve to either."""
        port = self._serve(("127.0.0.1", 0), socket.AF_INET, context, label)
        if socket.has_ipv6:
            try:
                self._serve(("::1", port), socket.AF_INET6, context, label)
            except OSError:
                pass
        return port

    # Configuration and inspection ----------------------------------------------------------

    def set_repo(self, key, spec):
        """Adds or replaces a repository (a new commit when its files change)."""
        repo = Repo(key, spec)
        with self._lock:
            self._repos[key] = repo
        return repo

    def repo(self, key):
        return self._repos[key]

    def file(self, repo, path):
        """The RepoFile (sha256, git_oid, size, xet_hash, pointer, lfs...) of one file."""
        return self._repos[repo].files[path]

    def commit(self, repo):
        return self._repos[repo].commit

    def upstream_config(self):
        """The `upstream` section of a zoogate config that points zoogate at this fake Hub."""
        return {"hub_url": self.url, "redirect_hosts": ["localhost"], "ca_bundle": self.ca.ca_pem}

    def inject(self, repo, path, fault):
        """Arms `fault` for one file; several faults on one file act in the order given."""
        if fault.kind == "untrusted_cdn" and not self._repos[repo].files[path].lfs:
            raise ValueError("untrusted_cdn needs an LFS file: only those go through the CDN")
        with self._lock:
            self._faults.setdefault((repo, path), []).append(fault)
        return fault

    def clear_faults(self):
        with self._lock:
            self._faults.clear()

    def requests(self, host=None, method=None, path=None):
        """The logged requests, oldest first, filtered by host ("hub", "cdn", "cdn-untrusted"),
        method and URL path (without the query)."""
        with self._lock:
            entries = list(self._log_entries)
        return [entry for entry in entries
                if (host is None or entry.host == host) and (method is None or entry.method == method)
                and (path is None or entry.path == path)]

    def request_count(self, host, path):
        return len(self.requests(host=host, path=path))

    def fetch_count(self, repo, path):
        """GET requests for the file's bytes where they are served: the CDNs for LFS files, the Hub's
        resolve for regular files (faulted ones included)."""
        lfs = self._repos[repo].files[path].lfs
        hosts = {CDN, UNTRUSTED_CDN} if lfs else {HUB}
        return sum(1 for entry in self.requests(method="GET")
                   if entry.host in hosts and entry.repo == repo and entry.file == path
                   and (lfs or "/resolve/" in entry.path))

    def resolve_count(self, repo, path, method=None):
        """HEAD and GET requests to the Hub's resolve route for one file."""
        return sum(1 for entry in self.requests(host=HUB, method=method)
                   if entry.repo == repo and entry.file == path and "/resolve/" in entry.path)

    def wait_until(self, predicate, timeout=5.0):
        """Polls `predicate()` until it holds (True) or `timeout` seconds pass (False): the servers
        learn some things after the client has moved on, such as a certificate refused after a
        TLS 1.3 handshake."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def reset_log(self):
        with self._lock:
            self._log_entries.clear()
            self.tls_failures.clear()

    # Internals shared with the handler ---------------------------------------------------------

    def _log(self, record):
        with self._lock:
            self._log_entries.append(record)

    def _tls_failure(self, label, error):
        with self._lock:
            self.tls_failures.append((label, f"{type(error).__name__}: {error}"))

    def _track(self, connection, add):
        with self._lock:
            (self._connections.add if add else self._connections.discard)(connection)

    def _take_fault(self, repo, path, host, kinds, method):
        """The first armed fault of `kinds` for this file on `host`, counted as used."""
        entry = self._repos[repo].files[path]
        with self._lock:
            for fault in self._faults.get((repo, path), []):
                if fault.kind not in kinds or fault.where(entry) != host:
                    continue
                if fault.kind in BODY_FAULTS and method != "GET":
                    continue
                if fault.count is not None and fault.hits >= fault.count:
                    continue
                fault.hits += 1
                return fault
        return None

    def _find_repo(self, segments):
        """(repo key, rest of the segments) for URL path segments that start with a repository
        name; unknown repositories are assumed to be "org/name"."""
        prefix = []
        if segments and segments[0] in ("datasets", "spaces"):
            prefix, segments = segments[:1], segments[1:]
        for width in (2, 1):
            if len(segments) >= width:
                key = "/".join(prefix + segments[:width])
                if key in self._repos:
                    return key, segments[width:]
        width = min(2, len(segments))
        return "/".join(prefix + segments[:width]), segments[width:]

    def _send_json(self, handler, value, headers=()):
        body = json.dumps(value).encode()
        headers = list(headers) + [("X-Request-Id", f"Root=1-{uuid.uuid4().hex[:24]}")]
        if self.gzip_json and _accepts_gzip(handler.headers):
            body = gzip.compress(body)
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        content_type = "application/json; charset=utf-8"
        if self.chunked_json:
            handler.send_chunked(200, headers, body, content_type)
        else:
            handler.send(200, headers, body, content_type)

    def _redirect_renamed(self, handler, repo, split, api):
        """A relative 307 to the same route under the repository's new name, query kept."""
        new_type, new_id = parse_repo_key(repo.renamed_to)
        old_head = (f"/api/{repo.type}s/" if api else "/" + repo.url_prefix) + repo.repo_id
        new_prefix = "" if new_type == "model" else f"{new_type}s/"
        new_head = (f"/api/{new_type}s/" if api else "/" + new_prefix) + new_id
        tail = split.path[len(old_head):] if split.path.startswith(old_head) else ""
        location = new_head + tail + (f"?{split.query}" if split.query else "")
        body = f"Temporary Redirect. Redirecting to {location}".encode()
        handler.send(307, [("Location", location)], body, "text/plain; charset=utf-8")

    def _gate(self, handler, repo):
        """True when the request may read the repository's files; else answers the error."""
        if not repo.gated:
            return True
        authorization = handler.headers.get("Authorization", "")
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if token and hmac.compare_digest(token, repo.token):
            return True
        if not token:
            handler.send_error_json(
                401, "GatedRepo",
                f"Access to {repo.type} {repo.repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.")
        else:
            handler.send_error_json(
                403, "GatedRepo",
                f"Access to {repo.type} {repo.repo_id} is restricted and you are not in the "
                "authorized list. Visit the repository page to ask for access.")
        return False

    def _repo_not_found(self, handler):
        status = 404 if handler.headers.get("Authorization") else 401
        handler.send_error_json(status, "RepoNotFound", "Repository not found")

    def _revision_not_found(self, handler, revision):
        handler.send_error_json(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    # The Hub host ----------------------------------------------------------------------------

    def _hub_request(self, handler, split):
        raw_segments = [s for s in split.path.split("/") if s != ""]
        segments = [urllib.parse.unquote(s) for s in raw_segments]
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        if segments[:1] == ["api"] and len(segments) >= 2 and segments[1] in REPO_TYPE_PREFIXES:
            kind = segments[1]
            key, rest = self._find_repo(([] if kind == "models" else [kind]) + segments[2:])
            self._api_request(handler, split, key, rest, query)
            return
        key, rest = self._find_repo(segments)
        if len(rest) >= 2 and rest[0] in ("resolve", "raw"):
            self._file_request(handler, split, key, rest[0], rest[1], "/".join(rest[2:]))
            return
        handler.send_error_json(404, None, "Sorry, we can't find the page you are looking for.")

    def _api_request(self, handler, split, key, rest, query):
        handler.record.repo = key
        repo = self._repos.get(key)
        if repo is None:
            self._repo_not_found(handler)
            return
        if repo.renamed_to:
            self._redirect_renamed(handler, repo, split, api=True)
            return
        route = rest[0] if rest else ""
        method = handler.command
        if route in ("", "revision") and method in ("GET", "HEAD"):
            revision = rest[1] if route == "revision" and len(rest) > 1 else "main"
            if repo.resolve_revision(revision) is None:
                self._revision_not_found(handler, revision)
                return
            self._send_json(handler, repo.info(query))
        elif route == "tree" and len(rest) >= 2 and method in ("GET", "HEAD"):
            self._tree(handler, split, repo, rest[1], "/".join(rest[2:]), query)
        elif route == "paths-info" and len(rest) == 2 and method == "POST":
            self._paths_info(handler, repo, rest[1])
        elif route in ("xet-read-token",) and len(rest) == 2 and method == "GET":
            if repo.resolve_revision(rest[1]) is None:
                self._revision_not_found(handler, rest[1])
            elif self._gate(handler, repo):
                token = f"xet_fakehub_{uuid.uuid4().hex}"
                expiry = int(time.time()) + 3600
                cas = f"{self.cdn_url}/cas"
                self._send_json(handler, {"accessToken": token, "casUrl": cas, "exp": expiry},
                                [("X-Xet-Cas-Url", cas), ("X-Xet-Access-Token", token),
                                 ("X-Xet-Token-Expiration", str(expiry))])
        else:
            handler.send_error_json(404, None, "Sorry, we can't find the page you are looking for.")

    def _tree(self, handler, split, repo, revision, folder, query):
        if repo.resolve_revision(revision) is None:
            self._revision_not_found(handler, revision)
            return
        folder = folder.strip("/")
        if folder and folder not in repo.directories:
            handler.send_error_json(404, "EntryNotFound", f"{folder} does not exist on \"{revision}\"",
                                    [("X-Repo-Commit", repo.commit)])
            return
        truthy = ("1", "true")
        recursive = query.get("recursive", [""])[-1].lower() in truthy
        expand = query.get("expand", [""])[-1].lower() in truthy
        entries = repo.listing(folder, recursive, expand)
        cursor = query.get("cursor", [""])[-1]
        try:
            start = int(base64.urlsafe_b64decode(cursor.encode() + b"==").decode()) if cursor else 0
        except (ValueError, binascii.Error):
            handler.send_error_json(400, None, "Invalid cursor")
            return
        page = entries[start:start + self.tree_page_size]
        headers = []
        if start + self.tree_page_size < len(entries):
            token = base64.urlsafe_b64encode(str(start + self.tree_page_size).encode())
            next_query = [(k, v) for k, v in urllib.parse.parse_qsl(split.query, keep_blank_values=True)
                          if k != "cursor"] + [("cursor", token.decode().rstrip("="))]
            next_url = f"{self.url}{split.path}?{urllib.parse.urlencode(next_query)}"
            headers.append(("Link", f'<{next_url}>; rel="next"'))
        self._send_json(handler, page, headers)

    def _paths_info(self, handler, repo, revision):
        if repo.resolve_revision(revision) is None:
            self._revision_not_found(handler, revision)
            return
        content_type = handler.headers.get("Content-Type", "")
        body = handler.record.body
        try:
            if "json" in content_type:
                request = json.loads(body or b"{}")
                paths = request.get("paths", [])
                expand = request.get("expand") in (True, "true", "True", "1", 1)
            else:
                form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
                paths = form.get("paths", []) + form.get("paths[]", [])
                expand = form.get("expand", [""])[-1].lower() in ("1", "true")
        except (ValueError, UnicodeDecodeError):
            handler.send_error_json(400, None, "Invalid request body")
            return
        if isinstance(paths, str):
            paths = [paths]
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in repo.files:
                entries.append(repo.files[path].tree_entry(repo.commit, expand))
            elif path in repo.directories:
                entries.append(repo.directory_entry(path, repo.commit, expand))
        self._send_json(handler, entries)

    def _file_request(self, handler, split, key, route, revision, path):
        handler.record.repo, handler.record.file = key, path
        repo = self._repos.get(key)
        if repo is None:
            self._repo_not_found(handler)
            return
        if repo.renamed_to:
            self._redirect_renamed(handler, repo, split, api=False)
            return
        if handler.command not in ("GET", "HEAD"):
            handler.send_error_json(405, None, "Method not allowed")
            return
        if repo.resolve_revision(revision) is None:
            self._revision_not_found(handler, revision)
            return
        if not self._gate(handler, repo):
            return
        entry = repo.files.get(path)
        if entry is None:
            handler.send_error_json(404, "EntryNotFound", f"{path} does not exist on \"{revision}\"",
                                    [("X-Repo-Commit", repo.commit)])
            return
        common = [("X-Repo-Commit", repo.commit), ("Accept-Ranges", "bytes"),
                  ("X-Request-Id", f"Root=1-{uuid.uuid4().hex[:24]}")]
        status_fault = self._take_fault(key, path, HUB, {"status"}, handler.command)
        if status_fault:
            handler.send_error_json(status_fault.status, None,
                                    f"Injected upstream error {status_fault.status}", common)
            return
        wrong = self._take_fault(key, path, HUB, {"wrong_digest"}, handler.command)
        if route == "raw":
            etag = git_blob_sha1(entry.git_bytes + b"!") if wrong else entry.git_oid
            self._serve_bytes(handler, entry.git_bytes, common + [("ETag", f'"{etag}"')],
                              "text/plain; charset=utf-8", None, compress=True)
            return
        if entry.lfs:
            self._lfs_answer(handler, repo, entry, common, wrong)
            return
        etag = git_blob_sha1(entry.data + b"!") if wrong else entry.git_oid
        fault = self._take_fault(key, path, HUB, BODY_FAULTS, handler.command)
        self._serve_bytes(handler, entry.data, common + [("ETag", f'"{etag}"')],
                          _content_type(path), fault, compress=True)

    def _lfs_answer(self, handler, repo, entry, common, wrong):
        sha = hashlib.sha256(entry.data + b"!").hexdigest() if wrong else entry.sha256
        headers = common + [("X-Linked-Size", str(entry.size)), ("X-Linked-Etag", f'"{sha}"'),
                            ("ETag", f'"{sha}"')]
        links = []
        if entry.xet_hash:
            refresh = f"/api/{repo.type}s/{repo.repo_id}/xet-read-token/{repo.commit}"
            reconstruction = f"{self.cdn_url}/cas/v1/reconstructions/{entry.xet_hash}"
            headers += [("X-Xet-Hash", entry.xet_hash), ("X-Xet-Refresh-Route", refresh)]
            links = [f'<{self.url}{refresh}>; rel="xet-auth"',
                     f'<{reconstruction}>; rel="xet-reconstruction-info"']
            headers.append(("Link", ", ".join(links)))
        if entry.xet_hash and XET_FILEINFO_TYPE in handler.headers.get("Accept", ""):
            info = {"hash": entry.xet_hash, "refreshUrl": f"{self.url}{refresh}",
                    "reconstructionUrl": reconstruction, "etag": sha, "size": entry.size}
            handler.send(200, headers + [("Vary", "Accept")], json.dumps(info).encode(),
                         XET_FILEINFO_TYPE)
            return
        untrusted = self._take_fault(repo.key, entry.path, HUB, {"untrusted_cdn"}, handler.command)
        location = self._signed_cdn_url(repo, entry, untrusted is not None)
        body = f"Found. Redirecting to {location}".encode()
        handler.send(302, headers + [("Location", location), ("Vary", "Accept")], body,
                     "text/plain; charset=utf-8")

    def _signed_cdn_url(self, repo, entry, untrusted):
        base = self.untrusted_cdn_url if untrusted else self.cdn_url
        object_path = f"/repos/{repo.storage_id[:2]}/{repo.storage_id[2:4]}/{repo.storage_id}/{entry.sha256}"
        expires = str(int(time.time()) + self.url_lifetime)
        name = entry.path.rsplit("/", 1)[-1]
        query = {"response-content-disposition":
                 f"inline; filename*=UTF-8''{urllib.parse.quote(name)}; filename=\"{name}\";",
                 "Expires": expires, "Signature": self._signature(object_path, expires),
                 "Key-Pair-Id": "KFAKEHUB0TEST"}
        return f"{base}{object_path}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"

    def _signature(self, object_path, expires):
        return hmac.new(self._secret, f"{object_path}\n{expires}".encode(), "sha256").hexdigest()

    def _serve_bytes(self, handler, data, headers, content_type, fault, compress=False):
        """200 or 206 (or 416) for `data`, honouring Range; gzip + chunked for whole-file answers to
        clients that accept gzip when `compress` and compress_files allow it."""
        span = _parse_range(handler.headers.get("Range"), len(data))
        if span == "unsatisfiable":
            handler.send(416, headers + [("Content-Range", f"bytes */{len(data)}")], b"",
                         content_type)
            return
        if span is None and compress and self.compress_files and fault is None \
                and _accepts_gzip(handler.headers) and data:
            etags = [(n, f"W/{v}") if n == "ETag" else (n, v) for n, v in headers]
            handler.send_chunked(200, etags + [("Content-Encoding", "gzip"),
                                               ("Vary", "Accept-Encoding")],
                                 gzip.compress(data), content_type)
            return
        if span is None:
            handler.send_file_body(200, headers, data, fault, content_type)
            return
        start, end = span
        handler.send_file_body(206, headers + [("Content-Range", f"bytes {start}-{end}/{len(data)}")],
                               data[start:end + 1], fault, content_type)

    # The CDN hosts ---------------------------------------------------------------------------

    def _cdn_request(self, handler, split):
        if split.path.startswith("/cas/"):
            handler.send_error_json(501, None, "the fake Hub does not implement Xet CAS "
                                    "reconstruction: Xet-aware clients must be turned off")
            return
        match = re.fullmatch(r"/repos/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})/([0-9a-f]{64})", split.path)
        if handler.command not in ("GET", "HEAD") or not match:
            _xml_error(handler, 404, "NoSuchKey", "The specified key does not exist.")
            return
        query = urllib.parse.parse_qs(split.query)
        expires = query.get("Expires", ["0"])[-1]
        signature = query.get("Signature", [""])[-1]
        if not expires.isdigit() or int(expires) < time.time() or not hmac.compare_digest(
                signature, self._signature(split.path, expires)):
            _xml_error(handler, 403, "AccessDenied", "Access denied: bad or expired signature.")
            return
        storage_id, sha = match.groups()
        repo = next((r for r in list(self._repos.values()) if r.storage_id == storage_id), None)
        entries = [e for e in repo.files.values() if e.lfs and e.sha256 == sha] if repo else []
        if not entries:
            _xml_error(handler, 404, "NoSuchKey", "The specified key does not exist.")
            return
        # Several paths may share the content: the first one with a fault names the file.
        faulted = [e for e in entries if self._faults.get((repo.key, e.path))]
        entry = (faulted or entries)[0]
        handler.record.repo, handler.record.file = repo.key, entry.path
        status_fault = self._take_fault(repo.key, entry.path, CDN, {"status"}, handler.command)
        if status_fault:
            _xml_error(handler, status_fault.status, "ServiceUnavailable", "Injected CDN error.")
            return
        disposition = query.get("response-content-disposition", [None])[-1]
        headers = [("ETag", f'"{entry.sha256}"'), ("Accept-Ranges", "bytes"),
                   ("Last-Modified", "Wed, 01 May 2024 12:00:00 GMT")]
        if disposition:
            headers.append(("Content-Disposition", disposition))
        if self.cdn_x_cache:
            headers.append(("X-Cache", "Miss from cloudfront"))
        fault = self._take_fault(repo.key, entry.path, CDN, BODY_FAULTS, handler.command)
        self._serve_bytes(handler, entry.data, headers, "application/octet-stream", fault)


def _xml_error(handler, status, code, message):
    """The object store's error shape (the CDN is not the Hub: no X-Error-Code)."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    handler.send(status, [], body, "application/xml")


def _content_type(path):
    """What the Hub sends for regular files: text for text, octet-stream otherwise."""
    if path.endswith(".json"):
        return "application/json; charset=utf-8"
    if path.endswith((".md", ".txt", ".py", ".yaml", ".yml", ".gitattributes", ".cfg", ".model")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"
