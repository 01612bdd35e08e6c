"""`zoogate sanitize` on the malicious corpus (tests/fixtures/make_malicious.py).

For every sample, zoogate must either block it (exit 3, no output file at all, not even a partial
one, report verdict "blocked" with a reason; `scan` exits 3) or disarm it (exit 0, verdict
"disarmed", every finding named with a reason; `scan` exits 2). Samples whose metadata cites a
design rule that requires blocking must be blocked.

A disarmed output is then opened the naive way -- unrestricted torch.load, pickle.load or
numpy.load(allow_pickle=True), and every zip member or stacked pickle through pickle.load -- in a
forked subprocess whose working directory is a temporary directory: no marker may appear, the
output must load, the benign tensors listed in the sample's metadata must still be there with their
values, tampered weights must keep their original values, and no byte of the payload (its marker
path) may remain in the file.

One test class per sample group (GadgetsSamples, HiddenSamples, ...), one CTest entry each.
"""
import concurrent.futures
import os
import shutil
import unittest
import zipfile

import support
import make_malicious

FINDING_KINDS = {"forbidden_global", "forbidden_call", "forbidden_build", "forbidden_persistent_id"}


def setUpModule():
    global WORKDIR, SAMPLES_DIR, MARKER_DIR, INDEX
    support.zoogate_bin()
    WORKDIR = support.make_workdir("malicious")
    SAMPLES_DIR = os.path.join(WORKDIR, "samples")
    MARKER_DIR = os.path.join(WORKDIR, "markers")
    os.makedirs(MARKER_DIR)
    INDEX = support.run_generator("make_malicious.py", SAMPLES_DIR, MARKER_DIR)


def tearDownModule():
    shutil.rmtree(WORKDIR)


def output_loaders(path):
    """How naive code opens this output (chosen by its bytes), then every pickle inside it."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"\x93NUMPY"):
        primary = "numpy"
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            npz = all(name.endswith(".npy") for name in archive.namelist())
        primary = "numpy" if npz else "torch"
    else:
        primary = "pickle_stream"
    return [{"loader": primary}, {"loader": "every_pickle"}]


def contents_of(path):
    """The file's bytes, plus every zip member's inflated bytes (where a payload could hide)."""
    with open(path, "rb") as handle:
        blobs = [handle.read()]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            blobs += [archive.read(name) for name in archive.namelist()]
    return blobs


class Outcome:
    """What zoogate did with one sample, and what loading its output naively did."""

    def __init__(self, name):
        self.meta = support.read_sidecar(SAMPLES_DIR, INDEX[name])
        self.source = os.path.join(SAMPLES_DIR, INDEX[name])
        self.outdir = os.path.join(WORKDIR, "out", name)
        os.makedirs(self.outdir)
        report_path = os.path.join(WORKDIR, "reports", name + ".json")
        os.makedirs(os.path.dirname(report_path), exist_ok=True)
        self.sanitized = support.Sanitized(self.source, os.path.join(self.outdir, INDEX[name]),
                                           report_path)
        self.scan_exit = support.scan_exit_code(self.source)
        self.naive = None

    def naive_job(self):
        if self.sanitized.returncode != 0 or not os.path.exists(self.sanitized.output):
            return None
        items = self.meta["benign"] + self.meta["tampered"]
        return support.naive_job(WORKDIR, self.meta["name"], self.sanitized.output,
                                 output_loaders(self.sanitized.output), [i["path"] for i in items])


class MaliciousChecks:
    """Test bodies shared by the per-group classes that _add_group_classes() creates."""

    NAMES = ()

    @classmethod
    def setUpClass(cls):
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            cls.outcomes = dict(zip(cls.NAMES, pool.map(Outcome, cls.NAMES)))
        jobs = {name: outcome.naive_job() for name, outcome in cls.outcomes.items()}
        jobs = {name: job for name, job in jobs.items() if job is not None}
        results = support.run_naive_loader(list(jobs.values()), WORKDIR) if jobs else []
        for name, result in zip(jobs, results):
            cls.outcomes[name].naive = result

    def test_no_marker_anywhere(self):
        self.assertEqual([], os.listdir(MARKER_DIR))

    def check_sample(self, name):
        outcome = self.outcomes[name]
        sanitized, meta = outcome.sanitized, outcome.meta
        self.assertIn(sanitized.returncode, (0, 3), sanitized.describe())
        self.assertIsNotNone(sanitized.report, sanitized.report_error)
        if meta["must_block"]:
            self.assertEqual(3, sanitized.returncode,
                             f"must block ({meta['must_block']}); {sanitized.describe()}")
        if sanitized.returncode == 3:
            self.check_blocked(outcome)
        else:
            self.check_disarmed(outcome)

    def check_blocked(self, outcome):
        report = outcome.sanitized.report
        self.assertEqual([], os.listdir(outcome.outdir), "a blocked file leaves no output behind")
        self.assertEqual("blocked", report.get("verdict"))
        reasons = [report.get("error", {}).get("message")]
        reasons += [f.get("reason") for f in report.get("findings", []) if f.get("action") == "block"]
        self.assertTrue(any(reasons), f"a block must say why: {report}")
        self.assertEqual(3, outcome.scan_exit, "scan must agree with sanitize")

    def check_disarmed(self, outcome):
        report, output = outcome.sanitized.report, outcome.sanitized.output
        self.assertEqual("disarmed", report.get("verdict"), report)
        self.assertTrue(report.get("findings"), "a disarmed file must list what was removed")
        for finding in report["findings"]:
            self.assertIn(finding.get("kind"), FINDING_KINDS, finding)
            self.assertIn(finding.get("action"), ("disarm", "block"), finding)
            self.assertTrue(finding.get("reason") and finding.get("construct"), finding)
        self.assertEqual(2, outcome.scan_exit, "scan must agree with sanitize")
        self.assertTrue(os.path.isfile(output))
        self.check_naive_load(outcome)
        marker = outcome.meta["marker"].encode()
        self.assertFalse(any(marker in blob for blob in contents_of(output)),
                         "the payload's bytes are still in the output")

    def check_naive_load(self, outcome):
        meta, result = outcome.meta, outcome.naive
        self.assertNotIn("crashed", result)
        self.assertFalse(os.path.exists(meta["marker"]), "the disarmed output ran the payload")
        self.assertIsNone(result["errors"][0], "a disarmed output must load")
        probes = iter(result["probes"])
        for item in meta["benign"]:
            self.assertEqual(item.get("expect", {"value": item.get("value")}), next(probes),
                             f"benign value at {item['path']}")
        for item in meta["tampered"]:
            found = next(probes)
            if "missing" not in found:
                self.assertEqual(item["original"], found, f"tampered weights at {item['path']}")


def _add_group_classes():
    for group, members in make_malicious.GROUPS.items():
        class_name = f"{group.title()}Samples"
        methods = {"NAMES": tuple(members)}
        for name in members:
            methods[f"test_{name}"] = lambda self, name=name: self.check_sample(name)
        globals()[class_name] = type(class_name, (MaliciousChecks, unittest.TestCase), methods)


_add_group_classes()

if __name__ == "__main__":
    unittest.main()
