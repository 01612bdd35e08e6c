"""Fidelity of `zoogate sanitize` on benign checkpoints (DESIGN 3, "Fidelity").

For every benign fixture (tests/fixtures/make_benign.py): sanitize exits 0 with verdict clean and a
report that describes input and output correctly; the output loads the way the original does --
torch.load(weights_only=True) when the original allows it (and mmap=True where this PyTorch has it),
otherwise the test's own restricted loader, which admits exactly the globals the content needs; the
numpy loaders for .npy and .npz -- and equals the original in keys, order, types, dtypes, shapes,
strides, offsets, storage sharing, values bit for bit, requires_grad, Parameter-ness and every
non-tensor value. Sanitizing twice gives the same bytes, and `scan` of the original exits 0.

Test classes group the fixtures by loader (TorchFidelity, NumpyFidelity), one CTest entry each.
"""
import inspect
import os
import pickle
import shutil
import unittest

import numpy
import torch

import support
import compare
import fixture_common
import make_benign
import restricted_loader

HAS_MMAP = "mmap" in inspect.signature(torch.load).parameters
OUTPUT_CONTAINER = {"torch-legacy": "torch-zip"}  # legacy checkpoints are rebuilt as zips
OUTPUT_MAGIC = {"torch-zip": b"PK\x03\x04", "npz": b"PK\x03\x04", "npy": b"\x93NUMPY",
                "pickle": b"\x80\x02"}  # DESIGN 3: zoogate writes protocol-2 pickles


def setUpModule():
    global WORKDIR, FIXTURES_DIR, INDEX
    support.zoogate_bin()
    WORKDIR = support.make_workdir("fidelity")
    FIXTURES_DIR = os.path.join(WORKDIR, "fixtures")
    INDEX = support.run_generator("make_benign.py", FIXTURES_DIR)


def tearDownModule():
    shutil.rmtree(WORKDIR)


def load_numpy_file(path):
    loaded = numpy.load(path, allow_pickle=False)
    if isinstance(loaded, numpy.lib.npyio.NpzFile):
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    return loaded


class FidelityChecks:
    """Test bodies shared by the per-group classes that _add_group_classes() creates."""

    def sanitize(self, name, tag):
        meta = self.meta(name)
        outdir = os.path.join(WORKDIR, tag, name)
        os.makedirs(outdir)
        return support.Sanitized(self.source(name), os.path.join(outdir, meta["file"]),
                                 os.path.join(outdir, "report.json"))

    def meta(self, name):
        return support.read_sidecar(FIXTURES_DIR, INDEX[name])

    def source(self, name):
        return os.path.join(FIXTURES_DIR, INDEX[name])

    def check_fidelity(self, name):
        meta = self.meta(name)
        result = self.sanitize(name, "once")
        self.assertEqual(0, result.returncode, result.describe())
        self.check_report(result, meta, self.source(name))
        reference, candidate = self.load_pair(meta, self.source(name), result.output)
        self.assertEqual([], compare.differences(reference, candidate))
        if HAS_MMAP and meta["kind"] == "torch" and meta["weights_only"]:
            mapped = torch.load(result.output, weights_only=True, mmap=True)
            self.assertEqual([], compare.differences(reference, mapped))

    def check_report(self, result, meta, source):
        report = result.report
        self.assertIsNotNone(report, result.report_error)
        self.assertEqual("clean", report.get("verdict"), report)
        self.assertEqual(meta["container"], report.get("container"))
        self.assertEqual([], report.get("findings"))
        self.assertEqual({"sha256": fixture_common.sha256_file(source), "size": os.path.getsize(source)},
                         {key: report.get("input", {}).get(key) for key in ("sha256", "size")})
        output = report.get("output", {})
        self.assertEqual(fixture_common.sha256_file(result.output), output.get("sha256"))
        self.assertEqual(os.path.getsize(result.output), output.get("size"))
        expected_format = OUTPUT_CONTAINER.get(meta["container"], meta["container"])
        self.assertEqual(expected_format, output.get("format"))
        with open(result.output, "rb") as handle:
            self.assertEqual(OUTPUT_MAGIC[expected_format], handle.read(len(OUTPUT_MAGIC[expected_format])))

    def load_pair(self, meta, source, output):
        """(original, output) loaded the same way; the original is our own file, so loading it
        without restrictions is safe and gives PyTorch's reference semantics."""
        kind = meta["kind"]
        if kind == "torch":
            self.assertEqual(meta["weights_only"], self.loads_weights_only(source))
            reference = torch.load(source, weights_only=meta["weights_only"])
            if meta["weights_only"]:
                return reference, torch.load(output, weights_only=True)
            allowed = restricted_loader.expected_globals(reference)
            return reference, restricted_loader.load_torch_zip(output, allowed)
        if kind == "numpy_pickle":
            with open(source, "rb") as handle:
                reference = pickle.load(handle)
            allowed = restricted_loader.expected_globals(reference)
            return reference, restricted_loader.load_pickle(output, allowed)
        return load_numpy_file(source), load_numpy_file(output)

    @staticmethod
    def loads_weights_only(path):
        """Whether PyTorch's own weights_only loader opens `path` (keeps the sidecars honest)."""
        try:
            torch.load(path, weights_only=True)
            return True
        except (RuntimeError, pickle.UnpicklingError):
            return False

    def check_deterministic(self, name):
        first, second = self.sanitize(name, "first"), self.sanitize(name, "second")
        self.assertEqual((0, 0), (first.returncode, second.returncode), first.describe())
        with open(first.output, "rb") as one, open(second.output, "rb") as two:
            self.assertTrue(one.read() == two.read(), "two runs on the same input gave different bytes")

    def check_scan(self, name):
        self.assertEqual(0, support.scan_exit_code(self.source(name)))


def _add_group_classes():
    groups = {"Torch": [], "Numpy": []}
    for name, fixture in make_benign.FIXTURES.items():
        groups["Torch" if fixture.kind == "torch" else "Numpy"].append(name)
    for group, names in groups.items():
        methods = {}
        for name in names:
            methods[f"test_{name}"] = lambda self, name=name: self.check_fidelity(name)
            methods[f"test_{name}_deterministic"] = lambda self, name=name: self.check_deterministic(name)
            methods[f"test_{name}_scan"] = lambda self, name=name: self.check_scan(name)
        globals()[f"{group}Fidelity"] = type(f"{group}Fidelity", (FidelityChecks, unittest.TestCase),
                                              methods)


_add_group_classes()

if __name__ == "__main__":
    unittest.main()
