"""The Prometheus alert rules (deploy/prometheus/zoogate-rules.yml).

- `promtool check rules` accepts them and `promtool test rules` passes their unit tests
  (zoogate-rules.test.yml), with Debian's promtool (package prometheus).
- Every alert has a severity and a summary and description, a unit test where it fires and one where
  it stays quiet, and a paragraph in docs/operations.md.
"""
import os
import unittest

import yaml

from deploy_support import REPO, RULES_FILE, RULES_TEST_FILE, read, run, tool

SEVERITIES = {"critical", "warning", "info"}


def alerts():
    rules = yaml.safe_load(read(RULES_FILE))
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


class PromtoolTest(unittest.TestCase):
    def test_check_rules(self):
        result = run([tool("promtool"), "check", "rules", RULES_FILE])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout + result.stderr)

    def test_rule_unit_tests(self):
        # Rule files in the test file are relative to it.
        result = run([tool("promtool"), "test", "rules", os.path.basename(RULES_TEST_FILE)],
                     cwd=os.path.dirname(RULES_TEST_FILE))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("SUCCESS", result.stdout + result.stderr)


class RuleContentTest(unittest.TestCase):
    def test_alerts_are_labelled_and_explained(self):
        names = [rule["alert"] for rule in alerts()]
        self.assertEqual(len(names), len(set(names)), "alert names are unique")
        for rule in alerts():
            self.assertRegex(rule["alert"], r"^Zoogate[A-Z][A-Za-z0-9]+$")
            self.assertIn(rule.get("labels", {}).get("severity"), SEVERITIES, rule["alert"])
            for annotation in ("summary", "description"):
                self.assertTrue(rule.get("annotations", {}).get(annotation), f"{rule['alert']}: no {annotation}")

    def test_the_required_alerts_exist(self):
        names = {rule["alert"] for rule in alerts()}
        for name in ("ZoogateDown", "ZoogateHigh5xxRatio", "ZoogateUpstreamErrors", "ZoogateUpstreamDigestMismatch",
                     "ZoogateBlockedSpike", "ZoogateCacheVolumeNearFull", "ZoogateCacheEvictionStorm",
                     "ZoogateDisarmSlow", "ZoogateClientsHeld"):
            self.assertIn(name, names)

    def test_every_alert_is_unit_tested_both_ways(self):
        tests = yaml.safe_load(read(RULES_TEST_FILE))
        self.assertEqual(tests["rule_files"], [os.path.basename(RULES_FILE)])
        fires, quiet = set(), set()
        for case in tests["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
        for rule in alerts():
            self.assertIn(rule["alert"], fires, f"no unit test where {rule['alert']} fires")
            self.assertIn(rule["alert"], quiet, f"no unit test where {rule['alert']} stays quiet")

    def test_every_alert_is_documented(self):
        operations = read(os.path.join(REPO, "docs", "operations.md"))
        for rule in alerts():
            self.assertIn(f"`{rule['alert']}`", operations, f"docs/operations.md does not explain {rule['alert']}")


if __name__ == "__main__":
    unittest.main()
