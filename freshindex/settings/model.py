"""Settings sections as frozen pydantic dataclasses: field types, validation with errors that
name the dotted key, environment references, and the file form of a section.

Sections stay dataclasses (not pydantic models) so that ``dataclasses.replace``,
``dataclasses.asdict`` and pickling (Beam ships settings to its workers) work as on any
frozen dataclass, and every construction is validated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import ArgsKwargs, PydanticCustomError

from freshindex.errors import ConfigError

DEFAULT_SOURCE = "default"


def _finite_number(value: Any) -> float | int:
    # A number as written: an int stays an int, so hashes of settings (the parse-failure
    # fingerprint) are those of earlier releases. Never a bool, never nan or inf.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("float_type", "Input should be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return value


# Field types of every section. Strict: a quoted "16" in a file is refused with the key's
# name rather than silently converted (environment variables are converted on their way in).
Int = StrictInt
Bool = StrictBool
Str = StrictStr
Float = Annotated[float, PlainValidator(_finite_number)]

_SECTION_CONFIG = ConfigDict(extra="forbid")


def section(key: str) -> Callable[[type], type]:
    """Make ``cls`` a frozen, validated settings section named ``key`` in error messages.

    A direct construction (``ParsingConfig(max_file_mb=1)``, ``dataclasses.replace``) raises
    ``ConfigError`` like a load does.
    """

    def wrap(cls: type) -> type:
        cls = pydantic_dataclass(frozen=True, config=_SECTION_CONFIG)(cls)
        init = cls.__init__

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise config_error(exc, type(self), prefix=key) from None

        __init__.__doc__ = init.__doc__
        cls.__init__ = __init__
        return cls

    return wrap


def construction_args(data: Any) -> dict[str, Any] | None:
    """The mapping a before-validator reshapes, or None when the section is built from
    keyword arguments (in code), which already use the attribute names."""
    return dict(data) if isinstance(data, Mapping) and not isinstance(data, ArgsKwargs) else None


def file_form_validator(reshape: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """A section's before-validator: ``reshape`` turns a copy of the file form (a mapping) into
    the attribute names; a construction from keyword arguments passes untouched.

    Example::

        @file_form_validator
        def _from_file(raw):
            raw["api_key_env"] = secret_reference("api.api_key", raw.pop("api_key", None))
            return raw
    """

    def validate(cls: type, data: Any) -> Any:
        raw = construction_args(data)
        return data if raw is None else reshape(raw)

    return model_validator(mode="before")(classmethod(validate))


# ------------------------------------------------------------------ environment references

_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_SECRET_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from the environment (an empty variable is unset)."""
    env = os.environ if environ is None else environ
    return _ENV_REF.sub(lambda m: env.get(m["name"]) or (m["default"] or ""), value)


def secret_reference(key: str, value: Any) -> str | None:
    """The variable name in a secret setting ``${NAME}``; anything else is refused."""
    if value is None:
        return None
    match = _SECRET_REF.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"{key}: a secret is never written in a config file, only the environment "
            f"variable that holds it, got {_show_secret(value)}",
            hint=f"write {key.rsplit('.', 1)[-1]}: ${{NAME}} and export NAME "
            "(not api_key_env, env:NAME or {env: NAME})",
        )
    return match["name"]


def secret_text(name: str | None) -> str | None:
    """How a secret setting is written and shown: its reference, never its value."""
    return None if name is None else f"${{{name}}}"


def _show_secret(value: Any) -> str:
    if isinstance(value, str):
        return "a literal value" if value.strip() else "an empty string"
    return type(value).__name__


# ------------------------------------------------------------------ errors

_EXPECTED = {
    "int_type": "int",
    "int_parsing": "int",
    "int_from_float": "int",
    "float_type": "float",
    "float_parsing": "float",
    "bool_type": "bool",
    "bool_parsing": "bool",
    "string_type": "str",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "dict_type": "a mapping of keys to values",
    "dataclass_type": "a mapping of keys to values",
    "dataclass_args_type": "a mapping of keys to values",
}
_UNKNOWN = ("unexpected_keyword_argument", "invalid_key", "extra_forbidden")


def _show(value: Any) -> str:
    try:
        return repr(value)[:60]
    except ValueError:  # an int past Python's digit limit
        return "(too long to show)"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _where(path: str, sources: Mapping[str, str] | None) -> str:
    source = source_of(path, sources or {})
    return "" if source == DEFAULT_SOURCE else f" (from {source})"


def config_error(
    exc: ValidationError,
    root: type,
    *,
    prefix: str = "",
    sources: Mapping[str, str] | None = None,
) -> ConfigError:
    """One ConfigError for a ValidationError: the dotted key, the expected type, the value,
    and the layer (file, environment variable, flag) that set it."""
    errors = exc.errors(include_url=False)
    unknown = [e for e in errors if e["type"] in _UNKNOWN]
    if unknown:
        parent = tuple(unknown[0]["loc"][:-1])
        keys = sorted((e["loc"][-1] for e in unknown if tuple(e["loc"][:-1]) == parent), key=str)
        where = _dotted((prefix, *parent) if prefix else parent)
        known = sorted(file_keys(class_at(root, parent)))
        what = f"unknown keys in {where}" if where else "unknown config keys"
        return ConfigError(f"{what}: {keys}", hint=f"known keys: {known}")
    first = errors[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    loc = tuple(first["loc"])
    path = _dotted((prefix, *loc) if prefix else loc) or "the configuration"
    where = _where(path, sources)
    value = first.get("input")
    if isinstance(value, ArgsKwargs):
        value = value.kwargs
    if first["type"] == "finite_number":
        return ConfigError(f"{path} must be a finite number, got {_show(value)}{where}")
    if first["type"] in _EXPECTED:
        expected = _EXPECTED[first["type"]]
        hint = "numbers without quotes; true/false for switches"
        if expected.startswith("a mapping"):
            name = path.rsplit(".", 1)[-1]
            hint = f"e.g. '{name}:' then indented 'key: value' lines"
        return ConfigError(
            f"{path} must be {expected}, got {type(value).__name__} {_show(value)}{where}",
            hint=hint,
        )
    if first["type"] == "missing_argument":
        return ConfigError(f"{path} is required{where}")
    message = str(cause) if cause is not None else first["msg"]
    return ConfigError(f"{path}: {message}{where}")


# ------------------------------------------------------------------ model introspection


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> X; ``Annotated[X, ...]`` -> X."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def class_at(root: type, loc: tuple[Any, ...]) -> type | None:
    """The section class at a validation location (``("gateway", "providers", "llm")``)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if dataclasses.is_dataclass(current):
            field = current.__pydantic_fields__.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) in (tuple, list):
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and dataclasses.is_dataclass(current) else None


def file_keys(cls: type | None) -> list[str]:
    """The keys a section takes in a file (a section may shape its file form, see
    ``file_shape``)."""
    if cls is None:
        return []
    return list(getattr(cls, "FILE_KEYS", None) or [f.name for f in dataclasses.fields(cls)])


def file_shape(value: Any) -> Any:
    """Settings as they are written in a file: plain mappings, lists and scalars. A section
    with a ``to_file`` classmethod reshapes its own mapping (e.g. secrets as references)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: file_shape(getattr(value, f.name)) for f in dataclasses.fields(value)}
        to_file = getattr(type(value), "to_file", None)
        return to_file(out) if to_file else out
    if isinstance(value, (list, tuple)):
        return [file_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: file_shape(v) for k, v in value.items()}
    return value


def source_of(dotted: str, sources: Mapping[str, str]) -> str:
    """The layer that set a key, or a section above it."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        source = sources.get(".".join(parts[:n]))
        if source is not None:
            return source
    return DEFAULT_SOURCE
