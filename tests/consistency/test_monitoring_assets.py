"""The shipped alert rules and dashboard only name metrics the daemons export.

``promtool check rules`` and ``promtool test rules`` (the ``alerts`` nox session) prove
the rules parse and fire when they should; these tests tie them, their unit tests and
the Grafana dashboard to the code, and check the dashboard's PromQL with promtool.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Final

from pgcm_testkit.process import require_binary

ROOT: Final = Path(__file__).parents[2]
RULES: Final = ROOT / "deploy/prometheus/pgcm-alerts.yml"
RULE_TESTS: Final = ROOT / "deploy/prometheus/pgcm-alerts.test.yml"
DASHBOARD: Final = ROOT / "deploy/grafana/pgcm-dashboard.json"
_METRIC: Final = re.compile(r"\bpgcm_[a-z0-9_]+\b")
# Grafana fills these in; promtool needs a literal duration.
_GRAFANA_VARIABLES: Final = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", ())]


def test_every_metric_the_rules_their_tests_and_the_dashboard_name_is_exported(
    code_metrics: frozenset[str],
) -> None:
    named = {
        path.name: set(_METRIC.findall(path.read_text())) for path in (RULES, RULE_TESTS, DASHBOARD)
    }
    assert all(named.values())  # each file names pgcm metrics: the check is not vacuous
    missing = {name: sorted(m - code_metrics) for name, m in named.items() if m - code_metrics}
    assert missing == {}


def test_every_alert_has_a_severity_a_summary_and_a_unit_test() -> None:
    blocks = RULES.read_text().split("- alert: ")[1:]
    alerts = {block.split()[0]: block for block in blocks}
    assert len(alerts) >= 5
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert sorted(set(alerts) - tested) == []
    for name, block in alerts.items():
        assert re.search(r"severity: (critical|warning)\b", block), name
        assert "summary:" in block, name


def test_every_dashboard_panel_uses_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert "datasource" in variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = []
    for number, query in enumerate(_dashboard_queries()):
        expr = query
        for variable, value in _GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"pgcm:dashboard_query:{number}", "expr": expr})
    # JSON is YAML: promtool reads the queries as recording rules and parses each one.
    check = tmp_path / "dashboard-queries.yml"
    check.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(check)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
