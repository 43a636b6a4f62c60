"""Loading settings in layers, remembering which layer set each key:

the model's defaults < a user file < FRESHINDEX_* environment variables < flags (overrides)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from freshindex.errors import ConfigError
from freshindex.settings.model import (
    config_error,
    expand_env,
    file_shape,
    source_of,
)

ENV_PREFIX = "FRESHINDEX_"
FLAG_SOURCE = "flag"


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML composes nested nodes recursively: 2,000 nested brackets take seconds to end
    in a RecursionError. A config is a few levels deep, so deeper input is refused early."""

    max_depth = 16
    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {self.max_depth}", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str, where: str) -> Any:
    """YAML text (a SafeLoader: no Python object tags), or a ConfigError saying where."""
    try:
        return yaml.load(text, Loader=_DepthLimitedLoader)
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # ValueError: a 5,000-digit int
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"{where} is not valid YAML"
            + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""),
            hint="check indentation and brackets; nesting deeper than a few levels is refused",
        ) from None


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """A user file: a mapping of keys to values (an empty file is an empty mapping)."""
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{what} {path} cannot be read: {exc}", hint="give a UTF-8 YAML file"
        ) from None
    data = parse_yaml(text, f"{what} {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path} must hold a mapping of keys to values, got {type(data).__name__}",
            hint="e.g. 'table: docs' on the first line",
        )
    return data


# ------------------------------------------------------------------ layers


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``tree["a"]["b"] = value`` for ``"a.b"``; a scalar on the way is an error."""
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(
                f"cannot set {dotted!r}: {'.'.join(parts[: i + 1])} is not a section",
                hint=f"sections: {', '.join(k for k, v in tree.items() if isinstance(v, dict))}",
            )
    node[parts[-1]] = value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


_NOT_EXPANDED = ("api_key", "headers")


def _expand_strings(tree: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(tree, dict):
        # A secret stays a reference, resolved where it is used and never stored; headers
        # are sent as written (one may carry a token, and `config show` must not print it).
        return {
            k: v if k in _NOT_EXPANDED else _expand_strings(v, environ) for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [_expand_strings(v, environ) for v in tree]
    return expand_env(tree, environ) if isinstance(tree, str) else tree


def _lookup(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _env_value(var: str, raw: str, default: tuple[bool, Any]) -> Any:
    # A variable is text: kept as text where the setting is text (FRESHINDEX_TABLE=2024
    # names a table "2024"), read as a YAML value where it is a number, switch or list.
    known, value = default
    if known and (value is None or isinstance(value, str)):
        return raw
    return parse_yaml(raw, f"environment variable {var}")


def environment_layer(
    environ: Mapping[str, str],
    defaults: Mapping[str, Any],
    aliases: Mapping[str, str],
) -> dict[str, tuple[str, Any]]:
    """Dotted key -> (variable, value) from ``FRESHINDEX_<KEY>`` and
    ``FRESHINDEX_<SECTION>__<KEY>`` variables (and the older names in ``aliases``) whose
    first part is one of the model's keys; other FRESHINDEX_* variables are not settings."""
    found: dict[str, tuple[str, Any]] = {}
    for var, dotted in aliases.items():
        if environ.get(var):
            found[dotted] = (var, _env_value(var, environ[var], _lookup(defaults, dotted)))
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or not environ[var]:
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in defaults or (len(parts) == 1 and isinstance(defaults[parts[0]], dict)):
            continue
        dotted = ".".join(parts)
        found[dotted] = (var, _env_value(var, environ[var], _lookup(defaults, dotted)))
    return found


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A validated settings object and, per dotted key, the layer that set it: ``default``,
    a file path, ``env NAME`` or ``flag``."""

    value: Any
    sources: dict[str, str]

    def rows(self) -> list[dict[str, Any]]:
        """Every setting as it is written in a file, with where it came from."""
        return [
            {"key": key, "value": value, "source": source_of(key, self.sources)}
            for key, value in flatten(file_shape(self.value)).items()
        ]


def load_layers(
    model: type,
    *,
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any] | None,
    environ: Mapping[str, str],
    env_aliases: Mapping[str, str] = {},
    what: str = "config file",
) -> Loaded:
    """The model's defaults, then ``path``, then the environment, then dotted ``overrides``
    (None values are skipped: an unset flag does not clobber the file), validated."""
    defaults = file_shape(model())
    raw: dict[str, Any] = dict(defaults)
    sources: dict[str, str] = {}
    if path is not None:
        user_path = Path(path)
        # a top-level null keeps the default, as in earlier releases
        user = {k: v for k, v in read_yaml_mapping(user_path, what).items() if v is not None}
        user = _expand_strings(user, environ)
        raw = merge(raw, user)
        sources.update(dict.fromkeys(flatten(user), str(user_path)))
    for dotted, (var, value) in environment_layer(environ, defaults, env_aliases).items():
        set_dotted(raw, dotted, value)
        sources[dotted] = f"env {var}"
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(raw, str(dotted), value)
            sources[str(dotted)] = FLAG_SOURCE
    return Loaded(validate(model, raw, sources), sources)


def validate(model: type, raw: Any, sources: Mapping[str, str] | None = None) -> Any:
    """``raw`` (file form) as a ``model``, or a ConfigError naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"the configuration must be a mapping of keys to values, got {type(raw).__name__}",
            hint="e.g. 'table: docs' on the first line",
        )
    try:
        return model.__pydantic_validator__.validate_python(raw)
    except ValidationError as exc:
        raise config_error(exc, model, sources=sources) from None
