"""The world the proxy tests run in: a test CA, a fake Hub with model repositories, and zoogate.

Why: every proxy test needs the same few repositories (a clean PyTorch checkpoint, a pickle with a
harmless code-execution payload, a safetensors file, small git-kept files, a gated and a renamed
repository), generated at test time with the real PyTorch, and a zoogate process pointed at the fake
Hub over TLS. `ProxyWorld` builds them once per test class.

Malicious samples only create a marker file when loaded naively; the tests check that the marker
never appears.
"""
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile

import torch

from fake_hub import FakeHub
from support import CHILD_ENV, PYTHON, zoogate_bin
from test_ca import TestCA
from zoogate_process import ZoogateProcess

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "org/model"
GATED = "org/gated"
RENAMED = "org/old-name"
DATASET = "datasets/org/data"


def torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def state_dict(seed, layers=2, width=64):
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(layers):
        weights[f"layers.{layer}.weight"] = torch.randn(width, width, generator=generator)
        weights[f"layers.{layer}.bias"] = torch.randn(width, generator=generator)
    return weights


class _Payload:
    """Pickles to a call of os.system that creates the marker file: the classic pickle attack,
    harmless here."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(marker):
    """A PyTorch checkpoint whose pickle also carries the payload next to real tensors."""
    return torch_bytes({"weights": state_dict(7, layers=1), "extra": _Payload(marker)})


def safetensors_bytes(tensors):
    """The safetensors format written by hand (the package is not in Debian): 8-byte header length,
    JSON header, then the tensors' bytes."""
    header = {}
    data = b""
    for name, tensor in tensors.items():
        raw = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def load_weights_only(data):
    """torch.load(weights_only=True) in a child interpreter (a loader that ran something would not
    harm the test process); returns the state as {name: list} for comparison."""
    script = ("import io,sys,torch,json\n"
              "obj=torch.load(io.BytesIO(sys.stdin.buffer.read()),weights_only=True)\n"
              "def walk(o,p=''):\n"
              "  if isinstance(o,torch.Tensor): return {p: o.tolist()}\n"
              "  out={}\n"
              "  if isinstance(o,dict):\n"
              "    for k,v in o.items(): out.update(walk(v,p+'.'+str(k) if p else str(k)))\n"
              "  return out\n"
              "print(json.dumps(walk(obj)))\n")
    completed = subprocess.run([PYTHON, "-c", script], input=data, capture_output=True, env=CHILD_ENV,
                               timeout=300)
    if completed.returncode != 0:
        raise AssertionError("torch.load(weights_only=True) failed: " + completed.stderr.decode(errors="replace"))
    return json.loads(completed.stdout)


def flatten(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.tolist()}
    out = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


class ProxyWorld:
    """CA, fake Hub and one zoogate process (see the module docstring)."""

    def __init__(self, zoogate_config=None, hub_options=None, extra_lfs_files=None):
        self.folder = tempfile.mkdtemp(prefix="zoogate-proxy-")
        self.marker = os.path.join(self.folder, "payload-ran")
        self.ca = TestCA(os.path.join(self.folder, "ca"))
        self.weights = state_dict(1)
        self.checkpoint = torch_bytes(self.weights)
        self.small_checkpoint = torch_bytes(state_dict(3, layers=1, width=8))
        self.malicious = malicious_checkpoint(self.marker)
        self.safetensors = safetensors_bytes(state_dict(2))
        self.config_json = json.dumps({"model_type": "test", "hidden_size": 64}).encode()
        files = {
            "config.json": self.config_json,
            "pytorch_model.bin": self.checkpoint,
            "model.safetensors": self.safetensors,
            "evil.bin": self.malicious,
            "small.pt": self.small_checkpoint,
            "sub/README.md": b"# a model\n",
            **(extra_lfs_files or {}),
        }
        self.repos = {
            MODEL: {"files": files,
                    "lfs": {"pytorch_model.bin", "model.safetensors", "evil.bin", *(extra_lfs_files or {})}},
            GATED: {"files": {"pytorch_model.bin": self.checkpoint}, "gated": True},
            RENAMED: {"renamed_to": MODEL},
            DATASET: {"files": {"data.pkl": self.small_checkpoint}},
        }
        self.hub = FakeHub(self.ca, self.repos, **(hub_options or {}))
        self.hub.start()
        config = {"upstream": {**self.hub.upstream_config(), "retries": 1, "read_timeout": "5s",
                               "connect_timeout": "5s"},
                  "egress": {"allow_private_destinations": ["localhost"]}}
        for key, value in (zoogate_config or {}).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        self.zoogate = ZoogateProcess(os.path.join(self.folder, "zoogate"), config, binary=zoogate_bin())
        self.zoogate.start()

    def url(self, repo, path, revision="main"):
        return f"{self.zoogate.hub_url}/{repo}/resolve/{revision}/{path}"

    def close(self):
        try:
            self.zoogate.stop()
        finally:
            self.hub.stop()
            shutil.rmtree(self.folder, ignore_errors=True)

    def payload_ran(self):
        return os.path.exists(self.marker)
