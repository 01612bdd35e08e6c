"""Metric names: the dashboard and the alert rules use only metrics zoogate exports.

- DocumentedMetricNamesTest: every zoogate_* series the rules and the dashboard query is a metric of
  docs/metrics.md (histograms through their _bucket, _sum and _count series), with label names the
  reference lists; and docs/metrics.md lists exactly the names proxy/metrics.cc registers.
- ExportedMetricNamesTest (needs ZOOGATE_BIN): starts a real zoogate (tests/integration's
  ZoogateProcess, loopback only), scrapes its admin listener's /metrics, and fails for every metric
  name, label or fixed label value the rules or the dashboard use that zoogate does not export; and
  checks docs/metrics.md against what zoogate exports (names, types, label names).
"""
import os
import re
import sys
import unittest
import urllib.request

from deploy_support import (HERE, HISTOGRAM_SUFFIXES, REPO, TARGET_LABELS, dashboard_expressions, documented_metrics,
                            make_workdir, metric_references, read, rule_expressions, sample_names)


def all_references():
    references = []
    for where, expr in rule_expressions() + dashboard_expressions():
        references.extend(metric_references(expr, where))
    return references


def simple_alternatives(value):
    """The values a regex matcher like "a|b|c" names, or None for a real regular expression."""
    if re.fullmatch(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*", value):
        return value.split("|")
    return None


def family_of(name, kinds):
    """The family a sample name belongs to: histograms export NAME_bucket, NAME_sum, NAME_count."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and kinds.get(name[:-len(suffix)]) == "histogram":
            return name[:-len(suffix)]
    return name


def parse_exposition(text):
    """({family: type} from # TYPE lines, {sample name: [label dicts]}) of the text format."""
    kinds, samples = {}, {}
    label = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            kinds[name] = kind
        elif line and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+(?:\s+\S+)?", line)
            if not match:
                raise AssertionError(f"bad metrics line: {line!r}")
            samples.setdefault(match.group(1), []).append(dict(label.findall(match.group(2) or "")))
    return kinds, samples


def check_references(references, samples):
    """Messages for every reference that the exported samples do not satisfy."""
    problems = []
    for reference in references:
        if reference.name not in samples:
            problems.append(f"{reference.name} is not exported ({reference.where})")
            continue
        label_sets = samples[reference.name]
        for name, operator, value in reference.matchers:
            if name in TARGET_LABELS or "$" in value:
                continue
            if not any(name in labels for labels in label_sets):
                problems.append(f"{reference.name} has no label {name} ({reference.where})")
                continue
            if operator == "=":
                wanted = [value]
            elif operator == "=~":
                wanted = simple_alternatives(value) or []
            else:
                wanted = []
            for one in wanted:
                if not any(labels.get(name) == one for labels in label_sets):
                    problems.append(f'{reference.name}{{{name}="{one}"}} is not exported ({reference.where})')
    return problems


class DocumentedMetricNamesTest(unittest.TestCase):
    def test_rules_and_dashboard_use_documented_metrics(self):
        families = documented_metrics()
        known = sample_names(families)
        kinds = {name: kind for name, (kind, _) in families.items()}
        references = all_references()
        self.assertGreater(len(references), 30)
        problems = []
        for reference in references:
            if reference.name not in known:
                problems.append(f"{reference.name} is not in docs/metrics.md ({reference.where})")
                continue
            labels = families[family_of(reference.name, kinds)][1]
            for name, _, _ in reference.matchers:
                if name not in TARGET_LABELS and name not in labels:
                    problems.append(f"{reference.name} has no documented label {name} ({reference.where})")
        self.assertFalse(problems, "\n".join(problems))

    def test_docs_list_what_the_source_registers(self):
        source = read(os.path.join(REPO, "proxy", "metrics.cc"))
        registered = set(re.findall(r'"(zoogate_[a-z0-9_]+)"', source))
        self.assertTrue(registered, "proxy/metrics.cc spells no metric name")
        documented = set(documented_metrics())
        self.assertEqual(documented - registered, set(), "docs/metrics.md lists metrics the source does not register")
        self.assertEqual(registered - documented, set(), "proxy/metrics.cc registers metrics docs/metrics.md lacks")

    def test_counters_end_in_total(self):
        for name, (kind, labels) in documented_metrics().items():
            self.assertEqual(kind == "counter", name.endswith("_total"), name)
            for label in labels:
                self.assertNotIn(label, ("url", "repo", "path", "client"), f"{name}: unbounded label {label}")


class ExportedMetricNamesTest(unittest.TestCase):
    """Against the real thing: what a freshly started zoogate serves on /metrics."""

    @classmethod
    def setUpClass(cls):
        sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "integration")))
        from zoogate_process import ZoogateProcess  # noqa: E402  (tests/integration's harness)

        workdir = make_workdir("metrics")
        # The upstream is a loopback port nobody listens on: nothing leaves the machine, and a
        # freshly started zoogate has every metric from its first scrape on (all label values too).
        config = {"upstream": {"hub_url": "https://127.0.0.1:9", "connect_timeout": "2s"}}
        with ZoogateProcess(workdir, config) as zoogate:
            with urllib.request.urlopen(zoogate.admin_url + "/metrics", timeout=10) as response:
                cls.status = response.status
                cls.content_type = response.headers.get("Content-Type", "")
                cls.text = response.read().decode()
        cls.kinds, cls.samples = parse_exposition(cls.text)

    def test_scrape_is_prometheus_text(self):
        self.assertEqual(self.status, 200)
        self.assertIn("text/plain", self.content_type)
        self.assertTrue(self.kinds)

    def test_rules_and_dashboard_use_exported_names_and_labels(self):
        problems = check_references(all_references(), self.samples)
        self.assertFalse(problems, "the rules or the dashboard use what zoogate does not export:\n" + "\n".join(problems))

    def test_docs_match_what_zoogate_exports(self):
        exported = {name: kind for name, kind in self.kinds.items() if name.startswith("zoogate_")}
        documented = documented_metrics()
        self.assertEqual(set(documented), set(exported), "docs/metrics.md and /metrics disagree on the names")
        for name, (kind, labels) in documented.items():
            self.assertEqual(exported[name], kind, f"{name}: documented as {kind}")
            sample = name + "_count" if kind == "histogram" else name
            exported_labels = set().union(*[set(one) for one in self.samples.get(sample, [{}])])
            self.assertEqual(exported_labels, set(labels), f"{name}: labels")


if __name__ == "__main__":
    unittest.main()
