"""Signed manifests end to end: `zoogate keygen`, `sanitize --sign`, `sign` and `verify` on real PyTorch
files, and the signature and file digests checked without zoogate (openssl, and the OpenSSF
model-signing rules re-done here in a few lines).

Runs under Debian's /usr/bin/python3 (torch 1.13); CTest passes the zoogate binary as ZOOGATE_BIN.
"""
import base64
import collections
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import unittest
import zipfile

import torch
from cryptography.hazmat.primitives import serialization

EXIT_OK = 0
EXIT_TAMPERED = 4


def zoogate(*args):
    binary = os.environ.get("ZOOGATE_BIN")
    if not binary or not os.access(binary, os.X_OK):
        raise RuntimeError("set ZOOGATE_BIN to the zoogate executable (CTest does this)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def state_dict(order=1, up_shape=(8, 4)):
    """A small Llama-like state dict: tied embedding, a buffer, a view; `order` -1 reverses the keys."""
    torch.manual_seed(7)
    embed = torch.randn(16, 4)
    fused = torch.randn(12, 4)
    items = [
        ("model.embed_tokens.weight", embed),
        ("model.layers.0.mlp.up_proj.weight", torch.randn(*up_shape)),
        ("model.layers.0.mlp.down_proj.weight", torch.randn(4, 8)),
        ("model.layers.0.self_attn.q_proj.weight", fused[0:4]),
        ("model.layers.0.self_attn.k_proj.weight", fused[4:8]),
        ("model.layers.0.rotary_emb.inv_freq", torch.arange(2, dtype=torch.float16)),
        ("lm_head.weight", embed),
    ]
    return collections.OrderedDict(items[::order])


def read_bundle(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def statement_of(bundle):
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def sha256_file(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def record_data_range(path, record_name):
    """(offset, size) of a stored zip entry's data, from its local header."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(record_name)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(handle.read(2), "little") for _ in range(2))
    return info.header_offset + 30 + name_length + extra_length, info.file_size


class SignedManifest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="zoogate-manifest-")
        cls.private = os.path.join(cls.work, "zoogate.key")
        cls.public = os.path.join(cls.work, "zoogate.pub")
        run = zoogate("keygen", "--private", cls.private, "--public", cls.public)
        assert run.returncode == EXIT_OK, run.stderr
        cls.key_id = run.stdout.split()[-1]
        cls.config = cls.path("config.json")
        with open(cls.config, "w", encoding="utf-8") as handle:
            json.dump({"model_type": "llama", "hidden_size": 4}, handle)
        cls.served, cls.manifest = cls.sanitize_signed("model", state_dict())

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def path(cls, name):
        return os.path.join(cls.work, name)

    @classmethod
    def sanitize_signed(cls, name, state):
        source = cls.path(f"{name}.upstream.pt")
        torch.save(state, source)
        served, manifest = cls.path(f"{name}.pt"), cls.path(f"{name}.sig")
        run = zoogate("sanitize", source, "-o", served, "--sign", cls.private, "--manifest", manifest,
                      "--model-config", cls.config, "--json", "--report", cls.path(f"{name}.report.json"))
        assert run.returncode == EXIT_OK, run.stderr
        return served, manifest

    def verify(self, target, manifest=None):
        run = zoogate("verify", target, "--manifest", manifest or self.manifest, "--pubkey", self.public, "--json")
        self.assertIn(run.returncode, (EXIT_OK, EXIT_TAMPERED), run.stderr)
        return run.returncode, json.loads(run.stdout)

    def copy_served(self, name):
        copy = self.path(name)
        shutil.copyfile(self.served, copy)
        return copy

    def test_keygen_writes_an_owner_only_pkcs8_key_and_refuses_to_overwrite(self):
        self.assertEqual(stat.S_IMODE(os.stat(self.private).st_mode), 0o600)
        with open(self.private, encoding="ascii") as handle:
            self.assertTrue(handle.read().startswith("-----BEGIN PRIVATE KEY-----\n"))
        run = zoogate("keygen", "--private", self.private, "--public", self.path("other.pub"))
        self.assertEqual(run.returncode, 1)
        self.assertIn("--force", run.stderr)

    def test_untouched_file_verifies(self):
        code, outcome = self.verify(self.served)
        self.assertEqual(code, EXIT_OK, outcome)
        self.assertTrue(outcome["intact"])
        self.assertEqual(outcome["key_id"], self.key_id)
        self.assertEqual(outcome["tensors"], len(state_dict()))
        text = zoogate("verify", self.served, "--manifest", self.manifest, "--pubkey", self.public)
        self.assertEqual(text.returncode, EXIT_OK)
        self.assertIn("intact", text.stdout)

    def test_signature_verifies_with_the_openssl_tool_alone(self):
        envelope = read_bundle(self.manifest)["dsseEnvelope"]
        payload_type = envelope["payloadType"].encode()
        payload = base64.b64decode(envelope["payload"])
        pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
        with open(self.path("pae.bin"), "wb") as handle:
            handle.write(pae)
        with open(self.path("sig.der"), "wb") as handle:
            handle.write(base64.b64decode(envelope["signatures"][0]["sig"]))
        run = subprocess.run(["openssl", "dgst", "-sha256", "-verify", self.public, "-signature",
                              self.path("sig.der"), self.path("pae.bin")], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("Verified OK", run.stdout)
        # One changed byte of the payload and openssl refuses it too.
        with open(self.path("pae.bin"), "wb") as handle:
            handle.write(pae.replace(b'"verdict":"clean"', b'"verdict":"dirty"'))
        run = subprocess.run(["openssl", "dgst", "-sha256", "-verify", self.public, "-signature",
                              self.path("sig.der"), self.path("pae.bin")], capture_output=True, text=True)
        self.assertNotEqual(run.returncode, 0)

    def test_file_digests_check_by_the_openssf_model_signing_rules(self):
        bundle = read_bundle(self.manifest)
        statement = statement_of(bundle)
        self.assertEqual(statement["_type"], "https://in-toto.io/Statement/v1")
        self.assertEqual(statement["predicateType"], "https://model_signing/signature/v1.0")
        self.assertEqual(bundle["dsseEnvelope"]["payloadType"], "application/vnd.in-toto+json")
        resources = statement["predicate"]["resources"]
        self.assertEqual(resources, [{"name": ".", "algorithm": "sha256", "digest": sha256_file(self.served)}])
        root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
        self.assertEqual(statement["subject"], [{"name": "model.pt", "digest": {"sha256": root}}])
        # The key hint is what the model_signing tool computes from the public key: SHA-256 of its PEM.
        with open(self.public, "rb") as handle:
            pem = serialization.load_pem_public_key(handle.read()).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertEqual(bundle["verificationMaterial"]["publicKey"]["hint"], hashlib.sha256(pem).hexdigest())
        zoogate_part = statement["predicate"]["zoogate"]
        self.assertEqual(zoogate_part["type"], "https://zoogate.dev/manifest/v1")
        provenance = zoogate_part["files"][0]["provenance"]
        self.assertEqual(provenance["upstream_sha256"], sha256_file(self.path("model.upstream.pt")))
        self.assertEqual(provenance["verdict"], "clean")
        self.assertEqual(zoogate_part["files"][0]["architecture"]["config_sha256"], sha256_file(self.config))

    def test_tensor_names_cover_every_tensor_buffer_and_tied_weight(self):
        files = statement_of(read_bundle(self.manifest))["predicate"]["zoogate"]["files"]
        tensors = {t["name"]: t for t in files[0]["tensors"]}
        self.assertEqual(set(tensors), set(state_dict()))
        self.assertEqual(tensors["model.layers.0.rotary_emb.inv_freq"]["dtype"], "float16")
        self.assertEqual(tensors["lm_head.weight"]["sha256"], tensors["model.embed_tokens.weight"]["sha256"])
        key = tensors["model.layers.0.self_attn.k_proj.weight"]
        self.assertEqual((key["shape"], key["stride"], key["offset"]), ([4, 4], [4, 1], 16))
        expected = state_dict()["model.layers.0.self_attn.k_proj.weight"].contiguous().numpy().tobytes()
        self.assertEqual(key["sha256"], hashlib.sha256(expected).hexdigest())

    def test_one_flipped_bit_in_a_view_is_named(self):
        tampered = self.copy_served("flipped.pt")
        files = statement_of(read_bundle(self.manifest))["predicate"]["zoogate"]["files"]
        # k_proj shares its record with q_proj: flip the last byte of k_proj's 4x4 floats only.
        last = next(t for t in files[0]["tensors"] if t["name"] == "model.layers.0.self_attn.k_proj.weight")
        offset, _ = record_data_range(tampered, last["record"])
        with open(tampered, "r+b") as handle:
            handle.seek(offset + last["offset"] * 4 + 63)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 1]))
        code, outcome = self.verify(tampered)
        self.assertEqual(code, EXIT_TAMPERED)
        changed = {d["item"] for d in outcome["differences"] if d["item"].startswith("tensor ")}
        self.assertEqual(changed, {"tensor " + last["name"]}, outcome)
        text = zoogate("verify", tampered, "--manifest", self.manifest, "--pubkey", self.public)
        self.assertEqual(text.returncode, EXIT_TAMPERED)
        self.assertIn(f"tensor {last['name']}: sha256", text.stdout)

    def test_a_resaved_model_with_one_changed_value_names_that_tensor(self):
        state = torch.load(self.served)
        with torch.no_grad():
            state["model.layers.0.mlp.down_proj.weight"][3, 7] += 1.0
        tampered = self.path("resaved.pt")
        torch.save(state, tampered)
        code, outcome = self.verify(tampered)
        self.assertEqual(code, EXIT_TAMPERED)
        digests = {d["item"] for d in outcome["differences"] if d["item"].startswith("tensor ") and d["field"] == "sha256"}
        self.assertEqual(digests, {"tensor model.layers.0.mlp.down_proj.weight"}, outcome)

    def test_edited_manifest_and_another_key_fail(self):
        bundle = read_bundle(self.manifest)
        statement = statement_of(bundle)
        statement["predicate"]["zoogate"]["files"][0]["provenance"]["verdict"] = "disarmed"
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(
            json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()).decode()
        edited = self.path("edited.sig")
        with open(edited, "w", encoding="utf-8") as handle:
            json.dump(bundle, handle)
        code, outcome = self.verify(self.served, edited)
        self.assertEqual(code, EXIT_TAMPERED)
        self.assertEqual([(d["item"], d["field"]) for d in outcome["differences"]], [("manifest", "signature")])

        other_private, other_public = self.path("other.key"), self.path("other-key.pub")
        self.assertEqual(zoogate("keygen", "--private", other_private, "--public", other_public).returncode, 0)
        run = zoogate("verify", self.served, "--manifest", self.manifest, "--pubkey", other_public)
        self.assertEqual(run.returncode, EXIT_TAMPERED)
        self.assertIn("manifest: signature", run.stdout)

    def test_architecture_fingerprint_is_stable_across_resaves_and_changes_with_shapes(self):
        def fingerprint(manifest):
            files = statement_of(read_bundle(manifest))["predicate"]["zoogate"]["files"]
            return files[0]["architecture"]["fingerprint"]

        # Reversed keys: storages are numbered and written in another order, the file differs.
        reordered, reordered_manifest = self.sanitize_signed("reordered", state_dict(order=-1))
        self.assertNotEqual(sha256_file(reordered), sha256_file(self.served))
        self.assertEqual(fingerprint(reordered_manifest), fingerprint(self.manifest))
        _, reshaped_manifest = self.sanitize_signed("reshaped", state_dict(up_shape=(4, 8)))
        self.assertNotEqual(fingerprint(reshaped_manifest), fingerprint(self.manifest))

    def test_snapshot_folder_verifies_file_by_file(self):
        folder = self.path("snapshot")
        os.makedirs(os.path.join(folder, "tokenizer"))
        shutil.copyfile(self.served, os.path.join(folder, "model.pt"))
        shutil.copyfile(self.config, os.path.join(folder, "config.json"))
        with open(os.path.join(folder, "tokenizer", "vocab.txt"), "w", encoding="utf-8") as handle:
            handle.write("a\nb\n")
        manifest = os.path.join(folder, "model.sig")
        run = zoogate("sign", folder, "--key", self.private, "--manifest", manifest)
        self.assertEqual(run.returncode, EXIT_OK, run.stderr)
        code, outcome = self.verify(folder, manifest)
        self.assertEqual(code, EXIT_OK, outcome)
        self.assertEqual(outcome["files"], 3)

        with open(os.path.join(folder, "extra.py"), "w", encoding="utf-8") as handle:
            handle.write("import os\n")
        os.remove(os.path.join(folder, "tokenizer", "vocab.txt"))
        code, outcome = self.verify(folder, manifest)
        self.assertEqual(code, EXIT_TAMPERED)
        self.assertEqual(sorted((d["file"], d["field"]) for d in outcome["differences"]),
                         [("extra.py", "extra"), ("tokenizer/vocab.txt", "missing")])


if __name__ == "__main__":
    unittest.main()
