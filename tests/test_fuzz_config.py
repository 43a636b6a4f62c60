"""Property-based fuzzing of the settings loaders: any YAML file, override or environment
that hypothesis builds gives a valid ``Config`` (or ``QueryConfig``) or a ``ConfigError``,
never another exception, and quickly.

The inputs mix the real keys (so values of the wrong type, range or shape reach every
section's validation) with arbitrary keys, values, nesting and raw bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshindex.config import SECTIONS, Config, load_config
from freshindex.errors import ConfigError
from freshindex.query.config import QueryConfig, load_query_config

# a generous bound: one load reads two small YAML files; a hang or a blow-up is the bug
FUZZ = settings(
    max_examples=300,
    deadline=dt.timedelta(seconds=2),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SECTION_KEYS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}
# the settings model's field types (freshindex.settings) -> the type an error names
SCALAR_TYPES = {"Int": "int", "Float": "float", "Bool": "bool", "Str": "str"}
DOTTED_KEYS = ["db", "table"] + [f"{s}.{k}" for s, keys in SECTION_KEYS.items() for k in keys]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-5, max_value=300),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["16", "1e3", "nan", "inf", "yes", "full", "auto", "docs", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)


@st.composite
def sections(draw, name: str):
    keys = draw(st.lists(st.sampled_from(SECTION_KEYS[name]), max_size=4, unique=True))
    out = {k: draw(values) for k in keys}
    if draw(st.booleans()):
        out[draw(st.text(max_size=8))] = draw(values)
    return out


@st.composite
def documents(draw):
    """A YAML document: mostly config-shaped, sometimes anything at all."""
    shape = draw(st.sampled_from(["config", "config", "config", "any"]))
    if shape == "any":
        return draw(values)
    doc: dict = {}
    for name in draw(st.lists(st.sampled_from(list(SECTION_KEYS)), max_size=3, unique=True)):
        doc[name] = draw(st.one_of(sections(name), values))
    for key in draw(st.lists(st.sampled_from(["db", "table"]), max_size=2, unique=True)):
        doc[key] = draw(values)
    if draw(st.booleans()):
        doc[draw(st.text(max_size=8))] = draw(values)
    return doc


file_texts = st.one_of(
    documents().map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=200),  # arbitrary text: YAML syntax errors, scalars, tabs
    st.sampled_from(
        [
            "[" * 2000,  # deep nesting
            "a: &a [1]\nb: *a\n",
            "embedding: {batch_size: !!python/object:os.system ls}",
            "chunking:\n  max_tokens: 1e400\n",
            "table: [docs]\n",
            "maintenance: 7\n",
            "- 1\n- 2\n",
            "{1: 2}",
            "ingest: {sync: full, sync: append}",
        ]
    ),
)
file_bytes = st.one_of(file_texts.map(lambda t: t.encode()), st.binary(max_size=64))
overrides = st.dictionaries(
    st.one_of(st.sampled_from(DOTTED_KEYS), st.text(max_size=12)), values, max_size=4
)
environs = st.dictionaries(
    st.sampled_from(
        [
            "FRESHINDEX_DB",
            "FRESHINDEX_TABLE",
            "FRESHINDEX_EMBEDDING_DTYPE",
            "FRESHINDEX_EMBEDDING__BATCH_SIZE",
            "FRESHINDEX_CHUNKING__MAX_TOKENS",
            "FRESHINDEX_INGEST__NAMESPACE",
            "FRESHINDEX_STREAM__ALLOWED_URI_PREFIXES",
            "FRESHINDEX_MAINTENANCE__NOPE",
            "FRESHINDEX_CHUNKING",
            "KAFKA_BOOTSTRAP_SERVERS",
            "UNRELATED",
        ]
    ),
    st.one_of(st.text(max_size=12), st.sampled_from(["128", "[1, 2]", "{a: 1}", "true", "1e400"])),
    max_size=3,
)


def load_or_config_error(path, overrides, environ) -> Config | None:
    try:
        cfg = load_config(path, overrides=overrides, environ=environ)
    except ConfigError as exc:
        assert str(exc)  # a message a user can read
        assert "Traceback" not in str(exc)
        return None
    assert isinstance(cfg, Config)
    return cfg


def assert_well_typed(cfg: Config) -> None:
    """A Config that loaded holds values of its declared types, finite numbers."""
    assert isinstance(cfg.db, str) and isinstance(cfg.table, str)
    for name in SECTION_KEYS:
        section = getattr(cfg, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            expected = {
                "Int": int,
                "Float": (int, float),
                "Bool": bool,
                "Str": str,
                "Str | None": (str, type(None)),
                "tuple[Str, ...]": tuple,
                "dict[Str, list[Str]]": dict,  # access.rules: glob -> labels
            }[f.type]
            assert isinstance(value, expected), (name, f.name, value)
            assert not (isinstance(value, bool) and f.type != "Bool"), (name, f.name, value)
            if isinstance(value, float):
                assert math.isfinite(value), (name, f.name, value)


@FUZZ
@given(content=file_bytes, overrides=overrides, environ=environs)
def test_any_file_override_and_environment_gives_a_config_or_a_config_error(
    tmp_path, content, overrides, environ
):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    cfg = load_or_config_error(path, overrides, environ)
    if cfg is not None:
        assert_well_typed(cfg)


@FUZZ
@given(section=st.sampled_from(list(SECTION_KEYS)), data=st.data())
def test_a_wrong_type_names_the_key_and_the_expected_type(section, data):
    cls = SECTIONS[section]
    scalar = [f for f in dataclasses.fields(cls) if f.type in SCALAR_TYPES]
    if not scalar:
        return
    field = data.draw(st.sampled_from(scalar))
    type_name = SCALAR_TYPES[field.type]
    wrong = {
        "int": st.one_of(st.text(max_size=5), st.floats(), st.booleans(), st.lists(st.integers())),
        "float": st.one_of(st.text(max_size=5), st.booleans(), st.just([1.0])),
        "bool": st.one_of(st.text(max_size=5), st.integers(), st.floats()),
        "str": st.one_of(st.integers(), st.floats(), st.booleans(), st.just(["x"])),
    }[type_name]  # not None: a None override means "flag not given" and is ignored
    value = data.draw(wrong)
    with pytest.raises(ConfigError) as info:
        load_config(overrides={f"{section}.{field.name}": value}, environ={})
    assert f"{section}.{field.name}" in str(info.value)
    assert f"must be {type_name}" in str(info.value)


def test_the_fuzzer_reaches_valid_configs_too():
    """Guard against a fuzz suite that only ever exercises the error path."""
    cfg = load_config(
        overrides={"chunking.max_tokens": 128, "maintenance.keep_all_hours": 2}, environ={}
    )
    assert cfg.chunking.max_tokens == 128 and cfg.maintenance.keep_all_hours == 2.0
    assert_well_typed(cfg)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("chunking:\n  max_tokens: '128'\n", "chunking.max_tokens must be int"),
        ("ingest: [full]\n", "ingest must be a mapping"),
        ("- db\n", "must hold a mapping"),
        ("table: [docs]\n", "table must be str"),
        ("maintenance:\n  keep_all_hours: .nan\n", "maintenance.keep_all_hours must be a finite"),
        ("chunking: {max_tokens: 1\n", "is not valid YAML"),
        ("[" * 2000, "is not valid YAML"),
        ("{1: 2, x: 3}", "unknown config keys"),
    ],
)
def test_bad_files_are_config_errors_that_say_what_is_wrong(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert says in str(info.value)


def test_an_override_below_a_scalar_and_an_unreadable_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="db is not a section"):
        load_config(overrides={"db.path": "x"}, environ={})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path, environ={})  # a folder
    (tmp_path / "latin1.yaml").write_bytes(b"table: caf\xe9\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "latin1.yaml", environ={})


QUERY_KEYS = [
    "retrieval.k",
    "retrieval.mode",
    "retrieval.weights",
    "context.max_tokens",
    "extractive.min_support",
    "gateway.cache",
    "gateway.cache.ttl_hours",
    "gateway.providers",
    "gateway.providers.llm",
    "gateway.providers.llm.api_key",
    "gateway.providers.llm.capabilities",
    "gateway.routes",
    "gateway.default_route",
    "gateway.prices",
    "agent.trace_dir",
    "api.api_key",
    "api.port",
]


@FUZZ
@given(
    content=file_bytes,
    overrides=st.dictionaries(st.sampled_from(QUERY_KEYS), values, max_size=3),
    environ=st.dictionaries(
        st.sampled_from(["FRESHINDEX_RETRIEVAL__K", "FRESHINDEX_LLM_BASE_URL", "X"]),
        st.text(max_size=8),
        max_size=2,
    ),
)
def test_any_query_file_override_and_environment_gives_a_config_or_a_config_error(
    tmp_path, content, overrides, environ
):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    try:
        qcfg = load_query_config(path, overrides=overrides, environ=environ)
    except ConfigError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    assert isinstance(qcfg, QueryConfig)
