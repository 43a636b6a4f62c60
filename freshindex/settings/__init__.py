"""Settings machinery shared by the pipelines' ``Config`` (freshindex/config.py) and the query
plane's ``QueryConfig`` (query/config.py).

Sections are frozen pydantic dataclasses (``model``): attribute access,
``dataclasses.replace``, pickling and validation on every construction. Their defaults are
the only defaults; the shipped ``configs/*.yaml`` are rendered from them (``render``,
``freshindex config defaults``). A load (``layers``) stacks four layers and remembers which
one set each key:

    the model's defaults < a user file < FRESHINDEX_* environment variables < flags (overrides)

An environment reference is written one way only: ``${NAME}`` (``${NAME:-default}`` for plain
settings). A secret is nothing but such a reference, resolved where it is used.
"""

from freshindex.settings.layers import (
    ENV_PREFIX,
    FLAG_SOURCE,
    Loaded,
    environment_layer,
    flatten,
    load_layers,
    merge,
    parse_yaml,
    read_yaml_mapping,
    set_dotted,
    validate,
)
from freshindex.settings.model import (
    DEFAULT_SOURCE,
    Bool,
    Float,
    Int,
    Str,
    class_at,
    config_error,
    construction_args,
    expand_env,
    file_form_validator,
    file_keys,
    file_shape,
    secret_reference,
    secret_text,
    section,
    source_of,
)
from freshindex.settings.render import render_defaults

__all__ = [
    "DEFAULT_SOURCE",
    "ENV_PREFIX",
    "FLAG_SOURCE",
    "Bool",
    "Float",
    "Int",
    "Loaded",
    "Str",
    "class_at",
    "config_error",
    "construction_args",
    "environment_layer",
    "expand_env",
    "file_form_validator",
    "file_keys",
    "file_shape",
    "flatten",
    "load_layers",
    "merge",
    "parse_yaml",
    "read_yaml_mapping",
    "render_defaults",
    "secret_reference",
    "secret_text",
    "section",
    "set_dotted",
    "source_of",
    "validate",
]
