"""docker-compose.yml and the Dockerfile cannot run here (no Docker): these checks catch what
drifts when the code changes under them: a renamed flag, a package the image does not copy,
a mount of a folder that is gone, a lock that would pull a CUDA build of torch."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from freshindex.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def freshindex_services(compose) -> dict[str, dict]:
    """The services that run the freshindex image (through the x-freshindex anchor)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == "freshindex:latest"
    }


def argv_of(service: dict) -> list[str]:
    """The freshindex arguments a service runs: the image's ENTRYPOINT is `freshindex`."""
    entrypoint = service.get("entrypoint") or ["freshindex"]
    assert entrypoint[0] == "freshindex"
    return [*entrypoint[1:], *service.get("command", [])]


def test_every_freshindex_service_runs_a_command_the_cli_accepts(compose):
    services = freshindex_services(compose)
    assert {"stream", "reindex", "publish"} <= set(services)
    parser = build_parser()
    for name, service in services.items():
        argv = argv_of(service)
        if not argv:  # the `cli` tool service: arguments come from `docker compose run`
            continue
        args, unknown = parser.parse_known_args(argv)
        if getattr(args, "beam", False):  # `ingest` passes the flags it lacks on to Beam
            unknown = beam_unknown(unknown)
        assert unknown == [], f"{name}: flags neither the CLI nor Beam knows: {unknown}"
        assert callable(args.func), name


def beam_unknown(flags: list[str]) -> list[str]:
    """The flags that no PipelineOptions class (Beam's, FreshIndexOptions) accepts, parsed
    by the parser Beam itself builds for ``get_all_options``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from freshindex.pipelines.options import FreshIndexOptions

    assert FreshIndexOptions  # registered with Beam's parser by being imported
    parsers = []
    PipelineOptions(flags).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(flags)
    return unknown


def test_the_stream_service_uses_the_topics_that_the_topics_job_creates(compose):
    created = set(re.findall(r"--topic (\S+)", compose["services"]["topics"]["command"][0]))
    args, _ = build_parser().parse_known_args(argv_of(compose["services"]["stream"]))
    assert set(args.topics) | {args.dead_letter_topic} == created
    publish, _ = build_parser().parse_known_args(argv_of(compose["services"]["publish"]))
    assert publish.topic in args.topics


def test_services_share_one_index_and_reach_kafka_inside_the_network(compose):
    for name, service in freshindex_services(compose).items():
        env = service["environment"]
        assert env["FRESHINDEX_DB"].startswith("/data/"), name
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092", name
        assert "index:/data" in service["volumes"], name
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), f"{name} mounts {source}, which is missing"
    listeners = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in listeners.split(",")


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        tuple(line.split(None, 1))
        for line in lines
        if line and not line.startswith("#") and " " in line
    ]


def test_the_image_copies_every_package_that_pyproject_installs():
    copied = set()
    for instruction, rest in dockerfile_instructions():
        if instruction == "COPY":
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
                copied.add(source)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    mapped = setuptools["package-dir"]

    def folder(package: str) -> str:
        """The top folder a package is built from: its nearest mapped ancestor's, or its own."""
        parts = package.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in mapped:
                return mapped[".".join(parts[:n])].split("/")[0]
        return parts[0]

    folders = {folder(name) for name in setuptools["packages"]}
    assert {"freshindex", "schemas", "transforms", "pipelines", "query", "configs"} <= folders
    assert folders <= copied, f"not copied into the image: {folders - copied}"
    assert "requirements.lock" in copied


def test_the_image_installs_the_cpu_torch_from_the_lock_without_resolving():
    runs = [rest for instruction, rest in dockerfile_instructions() if instruction == "RUN"]
    lock_install = [r for r in runs if "requirements.lock" in r]
    assert lock_install and all("--no-deps" in r for r in lock_install)
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    torch = [line for line in lock if line.startswith("torch==")]
    assert torch and all(line.endswith("+cpu") for line in torch)
    assert not [line for line in lock if line.startswith(("nvidia-", "torchvision"))]
    entrypoint = [
        rest for instruction, rest in dockerfile_instructions() if instruction == "ENTRYPOINT"
    ]
    assert entrypoint == ['["freshindex"]']


# ---------------------------------------------------------------- observability (issue 17)

OBSERVABILITY = ROOT / "deploy" / "observability"
METRIC_TOKEN = re.compile(r"\bfreshindex_[a-z_]+\b")


def _exprs(node) -> list[str]:
    """Every ``expr`` string anywhere in a parsed dashboard or rules file."""
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_the_dashboard_and_the_alert_rules_use_only_metrics_the_code_exports():
    import json

    from freshindex.observability.metrics import METRIC_NAMES

    dashboard = json.loads((OBSERVABILITY / "grafana/dashboards/freshindex.json").read_text())
    rules = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
    exprs = _exprs(dashboard) + _exprs(rules)
    assert len(_exprs(dashboard)) >= 19 and len(_exprs(rules)) >= 5
    used = {m for e in exprs for m in METRIC_TOKEN.findall(e)}
    assert used and used <= METRIC_NAMES, sorted(used - METRIC_NAMES)

    # every metric family the code exports is on the dashboard
    def family(name: str) -> str:
        return name.removesuffix("_total").removesuffix("_bucket")

    families = {family(n) for n in used}
    exported = {n for n in METRIC_NAMES if not n.endswith(("_created", "_count", "_sum"))}
    missing = {n for n in exported if family(n) not in families}
    assert not missing, sorted(missing)
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]


def test_prometheus_scrapes_serve_and_the_stream_and_grafana_is_provisioned(compose):
    prometheus = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: target
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    services = compose["services"]
    for job, target in targets.items():
        host = target.split(":")[0]
        assert host in services, (job, host)
    stream_argv = argv_of(services["stream"])
    assert (
        targets["freshindex-stream"].split(":")[1]
        == stream_argv[stream_argv.index("--metrics-port") + 1]
    )
    serve_argv = argv_of(services["serve"])
    assert targets["freshindex-serve"].split(":")[1] == serve_argv[serve_argv.index("--port") + 1]
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    for name in ("serve", "prometheus", "grafana", "pushgateway"):
        assert services[name]["profiles"] == ["observability"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            host_path = volume.split(":")[0]
            assert (ROOT / host_path).exists(), host_path
    datasource = yaml.safe_load(
        (OBSERVABILITY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
