"""Self-check of the malicious corpus: the payloads are live, so the zoogate tests prove something.

Every sample that a naive loader opens (pickle.load, torch.load(weights_only=False), numpy.load with
allow_pickle, or the zip member a scanner-side tool would read) is loaded ORIGINAL, in a forked
subprocess whose working directory is a fresh temporary directory: its marker must appear. Samples
meant to fail after the payload must also raise; the others must load completely, with their benign
tensors where the metadata says and, for tampering samples, the attacker's values in place.
Samples that no standard loader opens carry either a proof offset (a payload pickle that must fire
when unpickled from there) or a note that says why they hold no payload at all.

This test does not need zoogate.
"""
import importlib.util
import os
import shutil
import unittest

import support
import make_malicious

MIN_TECHNIQUES = 40
# Loaders that read one archive member, not the checkpoint: the benign tensors are not in their result.
MEMBER_LOADERS = {"zip_member"}


class SamplesFire(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.workdir = support.make_workdir("fire")
        samples_dir = os.path.join(cls.workdir, "samples")
        cls.marker_dir = os.path.join(cls.workdir, "markers")
        os.makedirs(cls.marker_dir)
        index = support.run_generator("make_malicious.py", samples_dir, cls.marker_dir)
        cls.meta = {name: support.read_sidecar(samples_dir, file) for name, file in index.items()}
        jobs, cls.job_index = [], {}
        for name, meta in cls.meta.items():
            loader = cls.loader_for(meta)
            if loader is not None:
                cls.job_index[name] = len(jobs)
                probe_paths = [item["path"] for item in meta["benign"] + meta["tampered"]]
                jobs.append(support.naive_job(cls.workdir, name, os.path.join(samples_dir, meta["file"]),
                                              [loader], probe_paths))
        cls.results = support.run_naive_loader(jobs, cls.workdir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.workdir)

    @staticmethod
    def loader_for(meta):
        """The naive loader of a sample, or for container-only samples the proof-offset load."""
        if meta["naive"] is not None:
            return meta["naive"]
        if meta["proof_offset"] is not None:
            return {"loader": "pickle_at", "member": meta["proof_offset"]}
        return None

    def test_corpus_has_enough_distinct_techniques(self):
        techniques = {meta["technique"] for meta in self.meta.values()}
        self.assertGreaterEqual(len(techniques), MIN_TECHNIQUES)
        self.assertEqual(set(make_malicious.SAMPLES), set(self.meta))

    def test_every_group_has_a_ctest_entry(self):
        """CMakeLists.txt names one CTest entry per sample group; a new group must get one too."""
        with open(os.path.join(support.HERE, "CMakeLists.txt"), encoding="utf-8") as handle:
            groups_line = next(line for line in handle if "foreach(group Gadgets" in line)
        self.assertEqual({group.title() for group in make_malicious.GROUPS},
                         set(groups_line.split(")")[0].split()[1:]))

    def check_sample(self, name):
        meta = self.meta[name]
        self.assertTrue(meta["technique"] and meta["source"])
        if name not in self.job_index:
            self.assertTrue(meta["naive_note"], "a sample that nothing loads must say why")
            return
        result = self.results[self.job_index[name]]
        self.assertNotIn("crashed", result)
        error = result["errors"][0]
        if meta["requires"] and importlib.util.find_spec(meta["requires"]) is None:
            # The payload names a module this machine lacks: the load must fail on exactly that.
            self.assertIn("ModuleNotFoundError", error or "")
            return
        if meta["effect"] == "marker":
            self.assertTrue(os.path.exists(meta["marker"]), f"payload did not run; load said: {error}")
        if meta["naive"] is None:
            return
        if meta["naive_fails"]:
            self.assertIsNotNone(error, "this sample is meant to fail after its payload")
        else:
            self.assertIsNone(error)
        if meta["naive"]["loader"] not in MEMBER_LOADERS:
            self.check_probes(meta, result["probes"])

    def check_probes(self, meta, probes):
        """Benign tensors are where the metadata says; tampered ones carry the attacker's values."""
        expected = [item.get("expect", {"value": item.get("value")}) for item in meta["benign"]]
        expected += [item["attacker"] for item in meta["tampered"]]
        self.assertEqual(len(expected), len(probes))
        for item, want, got in zip(meta["benign"] + meta["tampered"], expected, probes):
            self.assertEqual(want, got, f"at {item['path']}")


def _add_sample_tests():
    for name in make_malicious.SAMPLES:
        setattr(SamplesFire, f"test_{name}", lambda self, name=name: self.check_sample(name))


_add_sample_tests()

if __name__ == "__main__":
    unittest.main()
