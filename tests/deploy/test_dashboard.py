"""The Grafana dashboard (deploy/grafana/zoogate-dashboard.json).

It is valid JSON with unique panel ids and a layout that fits Grafana's 24-column grid without
overlaps; every panel queries the data source variable; every query is valid PromQL (each one, with
Grafana's variables filled in, checked by `promtool check rules` as a recording rule); histogram
quantiles read _bucket series by `le`; and every metric family of docs/metrics.md has a panel.
"""
import json
import os
import unittest

import yaml

from deploy_support import (DASHBOARD_FILE, dashboard_expressions, documented_metrics, grafana_to_promql, make_workdir,
                            metric_references, read, run, tool)

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dashboard = json.loads(read(DASHBOARD_FILE))
        cls.panels = list(all_panels(cls.dashboard["panels"]))

    def test_identity(self):
        self.assertEqual(self.dashboard["uid"], "zoogate")
        self.assertTrue(self.dashboard["title"])
        self.assertIn("zoogate", self.dashboard["tags"])
        self.assertNotIn("id", self.dashboard, "an exported id would clash on import")

    def test_panel_ids_are_unique(self):
        ids = [panel["id"] for panel in self.panels]
        self.assertEqual(len(ids), len(set(ids)))

    def test_layout_fits_the_grid_without_overlaps(self):
        boxes = []
        for panel in self.panels:
            box = panel["gridPos"]
            self.assertGreaterEqual(box["x"], 0)
            self.assertLessEqual(box["x"] + box["w"], 24, panel["title"])
            self.assertGreater(box["h"], 0)
            for other_title, other in boxes:
                apart = (box["x"] + box["w"] <= other["x"] or other["x"] + other["w"] <= box["x"] or
                         box["y"] + box["h"] <= other["y"] or other["y"] + other["h"] <= box["y"])
                self.assertTrue(apart, f"panels '{panel['title']}' and '{other_title}' overlap")
            boxes.append((panel["title"], box))

    def test_panels_use_the_data_source_variable(self):
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        for name in ("job", "instance"):
            self.assertIn(name, variables)
        for panel in self.panels:
            if panel["type"] == "row":
                continue
            self.assertTrue(panel.get("targets"), f"panel '{panel['title']}' has no query")
            self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
            for target in panel["targets"]:
                self.assertTrue(target.get("expr"), panel["title"])
                self.assertIn('job=~"$job"', target["expr"], f"panel '{panel['title']}' ignores the job variable")

    def test_queries_are_valid_promql(self):
        expressions = dashboard_expressions()
        self.assertGreater(len(expressions), 20)
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"zoogate_dashboard:query_{number}", "expr": grafana_to_promql(expr)}
            for number, (_, expr) in enumerate(expressions)]}]}
        path = os.path.join(make_workdir("dashboard"), "dashboard-queries.yml")
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(rules, handle)
        result = run([tool("promtool"), "check", "rules", path])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_histogram_quantiles_read_buckets_by_le(self):
        for where, expr in dashboard_expressions():
            if "histogram_quantile" in expr:
                self.assertIn("_bucket{", expr, where)
                self.assertRegex(expr, r"by \([^)]*\ble\)", where)

    def test_every_documented_metric_has_a_panel(self):
        used = set()
        for where, expr in dashboard_expressions():
            for reference in metric_references(expr, where):
                name = reference.name
                for suffix in HISTOGRAM_SUFFIXES:
                    if name.endswith(suffix) and name[:-len(suffix)] in documented_metrics():
                        name = name[:-len(suffix)]
                used.add(name)
        missing = set(documented_metrics()) - used
        self.assertFalse(missing, f"docs/metrics.md lists metrics no panel shows: {sorted(missing)}")

    def test_the_required_panels_exist(self):
        titles = " | ".join(panel["title"].lower() for panel in self.panels)
        for words in ("status class", "bytes", "upstream latency", "verdicts", "disarm duration", "variation duration",
                      "cache", "in flight", "denials"):
            self.assertIn(words, titles)


if __name__ == "__main__":
    unittest.main()
