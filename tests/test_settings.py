"""The settings model (freshindex.settings): layers and where each value came from, the one
syntax of environment references, typed errors, and the sections' life as dataclasses
(replace, pickle: Beam ships them to workers)."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from freshindex.cli import main
from freshindex.config import (
    ChunkingConfig,
    Config,
    MaintenanceConfig,
    ParsingConfig,
    StreamingConfig,
    explain_config,
    load_config,
)
from freshindex.errors import ConfigError
from freshindex.query.config import (
    ApiConfig,
    GatewayConfig,
    ProviderConfig,
    QueryConfig,
    explain_query_config,
    load_query_config,
)
from freshindex.settings import file_shape, validate


def test_each_layer_overrides_the_last_and_says_so(tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("table: fromfile\nchunking:\n  max_tokens: 100\n  overlap_tokens: 8\n")
    env = {"FRESHINDEX_TABLE": "fromenv", "FRESHINDEX_CHUNKING__MAX_TOKENS": "128"}
    loaded = explain_config(user, {"chunking.overlap_tokens": 4, "db": None}, env)
    cfg = loaded.value
    assert (cfg.table, cfg.chunking.max_tokens, cfg.chunking.overlap_tokens) == ("fromenv", 128, 4)
    sources = {row["key"]: row["source"] for row in loaded.rows()}
    assert sources["table"] == "env FRESHINDEX_TABLE"
    assert sources["chunking.max_tokens"] == "env FRESHINDEX_CHUNKING__MAX_TOKENS"
    assert sources["chunking.overlap_tokens"] == "flag"
    assert sources["chunking.section_titles"] == "default"
    assert sources["db"] == "default"  # a None override is a flag not given
    file_only = explain_config(user, environ={})
    assert {r["key"]: r["source"] for r in file_only.rows()}["table"] == str(user)


def test_environment_values_are_converted_to_the_settings_type():
    env = {
        "FRESHINDEX_TABLE": "2024",  # text where the setting is text
        "FRESHINDEX_EMBEDDING__BATCH_SIZE": "64",
        "FRESHINDEX_EMBEDDING__NORMALIZE": "false",
        "FRESHINDEX_MAINTENANCE__KEEP_ALL_HOURS": "1.5",
        "FRESHINDEX_STREAM__ALLOWED_URI_PREFIXES": "[s3://b/docs]",
        "FRESHINDEX_QUERY_CONFIG": "not a setting of the pipelines",
        "FRESHINDEX_FAULT_STREAM_CRASH": "",
    }
    cfg = load_config(environ=env)
    assert cfg.table == "2024" and cfg.embedding.batch_size == 64
    assert cfg.embedding.normalize is False and cfg.maintenance.keep_all_hours == 1.5
    assert cfg.stream.allowed_uri_prefixes == ("s3://b/docs/",)
    # the older names still work; the FRESHINDEX_<SECTION>__<KEY> form wins over them
    assert load_config(environ={"FRESHINDEX_EMBEDDING_DTYPE": "float32"}).embedding.dtype == (
        "float32"
    )
    both = {"FRESHINDEX_EMBEDDING_DTYPE": "float32", "FRESHINDEX_EMBEDDING__DTYPE": "bfloat16"}
    assert load_config(environ=both).embedding.dtype == "bfloat16"
    kafka = load_config(environ={"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert kafka.stream.bootstrap_servers == "k1:9092,k2:9092"


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"FRESHINDEX_CHUNKING__MAX_TOKENS": "many"}, "chunking.max_tokens must be int, got str"),
        ({"FRESHINDEX_CHUNKING__MAX_TOKENS": "many"}, "from env FRESHINDEX_CHUNKING__MAX_TOKENS"),
        ({"FRESHINDEX_CHUNKING__MAX_TOKENZ": "128"}, "unknown keys in chunking: ['max_tokenz']"),
        ({"FRESHINDEX_DB__PATH": "/x"}, "db is not a section"),
        ({"FRESHINDEX_PARSING__TIMEOUT_S": "[1"}, "FRESHINDEX_PARSING__TIMEOUT_S is not valid"),
    ],
)
def test_a_bad_environment_variable_is_named(environ, says):
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    assert says in str(info.value)


def test_errors_name_the_key_the_type_and_the_file(tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("parsing:\n  timeout_s: soon\n")
    with pytest.raises(ConfigError) as info:
        load_config(user, environ={})
    assert "parsing.timeout_s must be float, got str 'soon'" in str(info.value)
    assert f"(from {user})" in str(info.value)
    assert "numbers without quotes" in str(info.value)  # the hint stays
    with pytest.raises(ConfigError, match=r"retrieval\.k must be int"):
        load_query_config(overrides={"retrieval.k": "ten"}, environ={})
    with pytest.raises(ConfigError, match=r"unknown keys in gateway\.providers\.llm: \['apikey'\]"):
        load_query_config(overrides={"gateway.providers.llm.apikey": "x"}, environ={})


def test_sections_are_validated_when_built_in_code_too():
    assert ParsingConfig(max_file_mb=1).max_file_mb == 1
    with pytest.raises(ConfigError, match=r"parsing\.max_file_mb must be positive"):
        ParsingConfig(max_file_mb=0)
    with pytest.raises(ConfigError, match=r"maintenance\.keep_versions must be int"):
        MaintenanceConfig(keep_versions="20")
    with pytest.raises(ConfigError, match=r"chunking\.overlap_tokens"):
        dataclasses.replace(ChunkingConfig(), overlap_tokens=500)
    assert dataclasses.replace(Config(), table="papers").table == "papers"


def test_settings_pickle_hash_and_round_trip_through_their_file_form():
    cfg = load_config(overrides={"stream.allowed_uri_prefixes": ["s3://b/d"]}, environ={})
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert hash(cfg) == hash(pickle.loads(pickle.dumps(cfg)))
    qcfg = load_query_config(environ={})
    assert pickle.loads(pickle.dumps(qcfg)) == qcfg
    assert validate(Config, file_shape(cfg)) == cfg
    assert validate(QueryConfig, file_shape(qcfg)) == qcfg
    assert cfg.to_dict()["stream"]["allowed_uri_prefixes"] == ["s3://b/d/"]  # plain lists
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.table = "other"


def test_stream_defaults_live_in_the_stream_section():
    stream = load_config(environ={}).stream
    assert (stream.batch_interval_s, stream.max_batch_messages) == (0.5, 500)
    assert stream.group_id_for("papers") == "freshindex-papers"
    assert (stream.start_offset, stream.dead_letter_topic) == ("earliest", None)
    with pytest.raises(ConfigError, match="no placeholder but"):
        StreamingConfig(group_id="g-{topic}")
    with pytest.raises(ConfigError, match=r"stream\.max_batch_messages"):
        load_config(overrides={"stream.max_batch_messages": 0}, environ={})


# ------------------------------------------------------------------ environment references


def test_secrets_are_references_written_one_way(tmp_path):
    qcfg = load_query_config(
        overrides={"api.api_key": "${SERVE_KEY}", "gateway.providers.llm.api_key": "${LLM}"},
        environ={"LLM": "sk-live"},
    )
    assert qcfg.api.api_key_env == "SERVE_KEY"
    llm = qcfg.gateway.providers["llm"]
    assert llm.api_key_env == "LLM" and llm.api_key({"LLM": "sk-live"}) == "sk-live"
    for written, says in [
        ("sk-live", "a secret is never written in a config file"),
        ("env:LLM", "a secret is never written in a config file"),
        ({"env": "LLM"}, "a secret is never written in a config file"),
        ("${LLM:-sk-live}", "a secret is never written in a config file"),
    ]:
        with pytest.raises(ConfigError, match=says) as info:
            load_query_config(overrides={"gateway.providers.llm.api_key": written}, environ={})
        assert "api_key: ${NAME}" in info.value.hint
    old = tmp_path / "old.yaml"
    old.write_text("api:\n  api_key_env: SERVE_KEY\n")
    with pytest.raises(ConfigError, match=r"api\.api_key_env is no longer read") as info:
        load_query_config(old, environ={})
    assert "api_key: ${SERVE_KEY}" in info.value.hint
    # in code, the attribute keeps its name
    assert ApiConfig(api_key_env="K").api_key_env == "K"
    assert ProviderConfig(name="p", kind="extractive").api_key_env is None


def test_plain_settings_may_read_the_environment_in_the_same_syntax(tmp_path):
    user = tmp_path / "q.yaml"
    user.write_text(
        "gateway:\n  providers:\n    llm:\n      base_url: ${LLM_URL}\n"
        "      model: ${LLM_MODEL:-small}\n  cache:\n    path: ${CACHE_DIR:-/tmp}/gw.sqlite\n"
    )
    qcfg = load_query_config(user, environ={"LLM_URL": "http://h:1/v1"})
    llm = qcfg.gateway.providers["llm"]
    assert (llm.base_url, llm.model, llm.configured) == ("http://h:1/v1", "small", True)
    assert qcfg.gateway.cache_path == "/tmp/gw.sqlite"
    # a file with other keys keeps the shipped providers and merges into them
    assert set(qcfg.gateway.providers) == {"extractive", "llm"}
    assert llm.api_key_env == "FRESHINDEX_LLM_API_KEY"


def test_query_settings_take_the_environment_like_the_pipelines():
    env = {"FRESHINDEX_RETRIEVAL__K": "9", "FRESHINDEX_GATEWAY__CACHE__ENABLED": "false"}
    loaded = explain_query_config(environ=env)
    assert loaded.value.retrieval.k == 9 and loaded.value.gateway.cache_enabled is False
    sources = {r["key"]: r["source"] for r in loaded.rows()}
    assert sources["gateway.cache.enabled"] == "env FRESHINDEX_GATEWAY__CACHE__ENABLED"
    assert GatewayConfig().providers["llm"].configured is False  # nothing read at import


# ------------------------------------------------------------------ freshindex config


def test_config_show_prints_values_and_their_sources_never_a_secret(tmp_path, capsys, monkeypatch):
    user = tmp_path / "c.yaml"
    user.write_text("ingest:\n  sync: append\n")
    query = tmp_path / "q.yaml"
    query.write_text("api:\n  api_key: ${SERVE_KEY}\n")
    monkeypatch.setenv("SERVE_KEY", "top-secret-value")
    monkeypatch.setenv("FRESHINDEX_LLM_API_KEY", "another-secret-value")
    monkeypatch.setenv("FRESHINDEX_CHUNKING__MAX_TOKENS", "128")
    argv = ["config", "show", "--config", str(user), "--query-config", str(query)]
    assert main([*argv, "--table", "papers", "--json"]) == 0
    out = capsys.readouterr().out
    assert "secret-value" not in out
    shown = {plane: {r["key"]: r for r in rows} for plane, rows in json.loads(out).items()}
    pipelines, q = shown["pipelines"], shown["query"]
    assert pipelines["ingest.sync"] == {
        "key": "ingest.sync",
        "value": "append",
        "source": str(user),
    }
    assert pipelines["table"]["source"] == "flag"
    assert pipelines["chunking.max_tokens"]["source"] == "env FRESHINDEX_CHUNKING__MAX_TOKENS"
    assert pipelines["embedding.model"]["source"] == "default"
    assert q["api.api_key"] == {"key": "api.api_key", "value": "${SERVE_KEY}", "source": str(query)}
    assert q["gateway.providers.llm.api_key"]["value"] == "${FRESHINDEX_LLM_API_KEY}"
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "secret-value" not in text
    assert any(
        line.split()[:3] == ["ingest.sync", "append", str(user)] for line in text.splitlines()
    )


def test_config_show_reports_a_bad_setting_as_an_error(tmp_path, capsys):
    user = tmp_path / "c.yaml"
    user.write_text("chunking:\n  max_tokens: '128'\n")
    assert main(["config", "show", "--config", str(user)]) == 2
    assert "chunking.max_tokens must be int" in capsys.readouterr().err


def test_config_defaults_prints_the_shipped_files(capsys):
    from freshindex.config import DEFAULT_CONFIG
    from freshindex.query.config import DEFAULT_QUERY_CONFIG

    assert main(["config", "defaults"]) == 0
    assert capsys.readouterr().out == DEFAULT_CONFIG.read_text(encoding="utf-8")
    assert main(["config", "defaults", "--query"]) == 0
    assert capsys.readouterr().out == DEFAULT_QUERY_CONFIG.read_text(encoding="utf-8")
