"""The shipped ``configs/*.yaml``: a model's defaults rendered as a commented YAML file, with
the sections' docstrings and the fields' descriptions as comments."""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from freshindex.settings.model import class_at, file_shape


def _comment(text: str, indent: str) -> list[str]:
    lines: list[str] = []
    for paragraph in textwrap.dedent(text).strip().split("\n\n"):
        if lines:
            lines.append(f"{indent}#")
        lines += textwrap.wrap(
            " ".join(paragraph.split()),
            width=90 - len(indent),
            initial_indent=f"{indent}# ",
            subsequent_indent=f"{indent}# ",
        )
    return lines


def _field_docs(cls: type) -> dict[str, str]:
    docs = {name: f.description for name, f in cls.__pydantic_fields__.items() if f.description}
    return {**docs, **getattr(cls, "FILE_DOCS", {})}


def render_defaults(model: type, header: str) -> str:
    """The model's defaults as a commented YAML file: ``configs/*.yaml`` are this text
    (``freshindex config defaults``), so they cannot drift from the code."""
    lines = _comment(header, "")
    data = file_shape(model())
    top_docs = _field_docs(model)
    for key, value in data.items():
        lines.append("")
        cls = class_at(model, (key,))
        if cls is not None:
            if cls.__doc__:
                lines += _comment(cls.__doc__, "")
            lines.append(f"{key}:")
            docs = _field_docs(cls)
            for sub, sub_value in value.items():
                if sub in docs:
                    lines += _comment(docs[sub], "  ")
                lines += _yaml_lines({sub: sub_value}, "  ")
        else:
            if key in top_docs:
                lines += _comment(top_docs[key], "")
            lines += _yaml_lines({key: value}, "")
    return "\n".join(lines) + "\n"


def _yaml_lines(item: dict[str, Any], indent: str) -> list[str]:
    ((key, value),) = item.items()
    flow = yaml.safe_dump(
        value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=float("inf")
    )
    line = f"{key}: {flow.removesuffix(chr(10)).removesuffix('...').strip()}"
    if len(indent + line) <= 88:
        return [indent + line]
    # too long for a line: block style outside, flow style for the innermost collections
    children = value.values() if isinstance(value, dict) else value
    nested = any(isinstance(v, (dict, list)) for v in children)
    text = yaml.safe_dump(
        item,
        sort_keys=False,
        default_flow_style=None if nested else False,
        allow_unicode=True,
        width=88,
    )
    return [indent + line for line in text.rstrip("\n").split("\n")]
