import pytest

from freshindex.config import load_config
from freshindex.embedding import cpu_flags, resolve_dtype
from freshindex.errors import ConfigError


def test_defaults_load_from_the_committed_yaml():
    cfg = load_config(environ={})
    assert cfg.table == "docs"
    assert cfg.embedding.model == "all-MiniLM-L6-v2"
    assert cfg.chunking.max_tokens <= 254
    assert cfg.ingest.sync == "full"


def test_environment_then_flags_override(tmp_path):
    user = tmp_path / "c.yaml"
    user.write_text("table: fromfile\nchunking:\n  max_tokens: 100\n")
    cfg = load_config(user, environ={"FRESHINDEX_TABLE": "fromenv", "FRESHINDEX_DB": "/x"})
    assert (cfg.table, cfg.db, cfg.chunking.max_tokens) == ("fromenv", "/x", 100)
    cfg = load_config(user, overrides={"table": "fromflag", "chunking.max_tokens": None})
    assert cfg.table == "fromflag"
    assert cfg.chunking.max_tokens == 100  # an unset flag does not clobber the file


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"ingest.sync": "mirror"}, "ingest.sync"),
        ({"chunking.overlap_tokens": 500}, "overlap_tokens"),
        ({"table": "runs"}, "reserved"),
        ({"table": "bad name;"}, "invalid"),
        ({"embedding.batch_size": 0}, "batch_size"),
        ({"nonsense": 1}, "unknown config keys"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=overrides, environ={})


def test_fingerprint_tracks_settings_that_change_chunks():
    base = load_config(environ={})
    assert base.fingerprint() == load_config(environ={}).fingerprint()
    other = load_config(overrides={"chunking.max_tokens": 120}, environ={})
    assert other.fingerprint() != base.fingerprint()
    same = load_config(overrides={"embedding.batch_size": 64}, environ={})
    assert same.fingerprint() == base.fingerprint()  # batch size does not change vectors


def test_auto_precision_is_bfloat16_only_where_the_cpu_has_it(tmp_path):
    assert resolve_dtype("auto", "cpu", {"avx2", "amx_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", "cpu", {"avx2", "avx512f", "avx512_bf16"}) == "bfloat16"
    assert resolve_dtype("auto", "cpu", {"avx2", "avx512f"}) == "float32"
    assert resolve_dtype("auto", "cuda:0", {"amx_bf16"}) == "float32"
    assert resolve_dtype("float32", "cpu", {"amx_bf16"}) == "float32"
    assert resolve_dtype("bfloat16", "cpu", set()) == "bfloat16"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx512_bf16 amx_tile\n")
    assert {"avx512_bf16", "amx_tile"} <= cpu_flags(str(cpuinfo))
    assert cpu_flags(str(tmp_path / "missing")) == set()
    # the default, and the environment variable that pins it
    assert load_config(environ={}).embedding.dtype == "auto"
    env = {"FRESHINDEX_EMBEDDING_DTYPE": "float32"}
    assert load_config(environ=env).embedding.dtype == "float32"
    with pytest.raises(ConfigError, match=r"embedding\.dtype must be one of"):
        load_config(environ={"FRESHINDEX_EMBEDDING_DTYPE": "fp16"})


# Computed by the hand-written loader of earlier releases (before the settings model): the
# same settings must hash the same, or every existing table would re-embed everything.
PINNED_FINGERPRINTS = {
    "defaults": ("4b3f21056e916382", "ca59d3e559a9e95c"),
    "changed": ("f70629a28d7f51d4", "89f9054d5de95418"),
}


def test_fingerprints_of_the_same_settings_are_those_of_earlier_releases():
    from freshindex.config import Config
    from freshindex.transforms.parse import failure_fingerprint

    changed = {"chunking.max_tokens": 128, "embedding.model": "x", "parsing.max_file_mb": 10}
    for name, cfg in [
        ("defaults", load_config(environ={})),
        ("defaults", Config()),
        ("changed", load_config(overrides=changed, environ={})),
    ]:
        assert (cfg.fingerprint(), failure_fingerprint(cfg)) == PINNED_FINGERPRINTS[name]


def test_the_shipped_files_are_the_models_defaults():
    """configs/*.yaml are rendered from the model (`freshindex config defaults [--query]`):
    a default changed in the code and not in the file, or the reverse, fails here."""
    from freshindex.config import CONFIGS_DIR, DEFAULT_CONFIG, Config, default_yaml
    from freshindex.query.config import (
        DEFAULT_QUERY_CONFIG,
        QueryConfig,
        default_query_yaml,
        load_query_config,
    )

    assert DEFAULT_CONFIG.read_text(encoding="utf-8") == default_yaml()
    assert DEFAULT_QUERY_CONFIG.read_text(encoding="utf-8") == default_query_yaml()
    assert {p.name for p in CONFIGS_DIR.glob("*.yaml")} == {"default.yaml", "query.yaml"}
    # and read back, each file is exactly the defaults
    assert load_config(DEFAULT_CONFIG, environ={}) == Config()
    assert load_query_config(DEFAULT_QUERY_CONFIG, environ={}) == QueryConfig()
