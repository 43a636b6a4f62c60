"""A real Prometheus (Debian's ``prometheus`` package) scrapes ``freshindex serve``'s
``/metrics`` and loads the shipped alert rules (deploy/observability/alerts.yml).

``promtool check rules`` validates the rules' syntax; a Prometheus server on loopback
scrapes a uvicorn-served app over the query kit's fixture index (FAKE embedder), so the
metrics the dashboard and the alerts read are asserted as Prometheus itself stores them.
The binaries come from Debian (``apt-get install prometheus``; scripts/system_deps does it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from freshindex.query.api import create_app
from freshindex.query.config import load_query_config
from freshindex.query.service import QueryService
from freshindex.testing import copy_index
from tests import serving

OBSERVABILITY = Path(__file__).resolve().parent.parent / "deploy" / "observability"
ALERTS = OBSERVABILITY / "alerts.yml"

pytestmark = pytest.mark.slow


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is missing: apt-get install prometheus (scripts/system_deps does it)",
            pytrace=False,
        )
    return found


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def test_promtool_accepts_the_alert_rules():
    result = subprocess.run(
        [_binary("promtool"), "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


@pytest.fixture
def served(tmp_path):
    """The port of ``freshindex serve``'s app (uvicorn, loopback) over a fixture copy."""
    cfg = copy_index("fake-hash", tmp_path / "index")
    qcfg = load_query_config(overrides={"gateway.cache.enabled": False}, environ={})
    with serving.served(create_app(QueryService(cfg, qcfg), environ={})) as port:
        yield port


def test_prometheus_scrapes_serve_and_loads_the_alert_rules(served, tmp_path):
    for mode in ("vector", "fts", "hybrid"):  # a query of each mode: the latency histogram
        body = json.dumps({"query": "pool timeout", "mode": mode}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{served}/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "freshindex-serve",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{served}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = serving.free_port()
    process = subprocess.Popen(
        [
            _binary("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict]:
        return _get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))["data"]["result"]

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                counts = query("freshindex_query_duration_seconds_count")
                up = query('up{job="freshindex-serve"}')
                if counts and up and up[0]["value"][1] == "1":
                    break
            except OSError:
                pass  # not listening yet
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        modes = {r["metric"]["mode"]: float(r["value"][1]) for r in counts}
        assert {"vector", "fts", "hybrid"} <= set(modes) and all(v >= 1 for v in modes.values())
        requests = query('sum(freshindex_http_requests_total{route="search"})')
        assert requests and float(requests[0]["value"][1]) >= 3
        groups = _get(f"{api}/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        shipped = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
        assert sorted(r["name"] for r in rules) == sorted(r["alert"] for r in shipped)
        deadline = time.monotonic() + 30
        while any(r.get("health") != "ok" for r in rules):  # evaluated without error
            assert time.monotonic() < deadline, [(r["name"], r.get("lastError")) for r in rules]
            time.sleep(0.5)
            rules = [r for g in _get(f"{api}/rules")["data"]["groups"] for r in g["rules"]]
    finally:
        process.terminate()
        process.wait(timeout=30)
