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
