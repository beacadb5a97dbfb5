"""Nix expression text for JSON-like values, escaped the way the Nix parser reads them.

`model-pull prefetch` prints a declaration that is pasted into a NixOS configuration: every
string (repo names, glob patterns, engine arguments) must come back from the Nix parser as the
same string. Escapes follow the Nix manual ("String literals"): `\\`, `"` and `${` are escaped,
and newline, carriage return and tab are written `\\n`, `\\r`, `\\t`. Attribute names that are not
plain identifiers (or are keywords) are quoted. Floats are written with a decimal point, which
Nix's float syntax requires (`1e-05` is `1.0e-05`); negative numbers are parenthesised, so a
list reads them as numbers. NaN and infinities have no Nix literal: ValueError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
_KEYWORDS = frozenset({"if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or"})
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def string(text: str) -> str:
    """A Nix string literal whose value is `text`."""
    if "\0" in text:
        raise ValueError("a Nix string cannot hold a NUL character")
    out = []
    for i, char in enumerate(text):
        if char == "$" and text[i + 1 : i + 2] == "{":
            out.append("\\$")
        else:
            out.append(_ESCAPES.get(char, char))
    return '"' + "".join(out) + '"'


def attr_name(name: str) -> str:
    return name if _IDENTIFIER.fullmatch(name) and name not in _KEYWORDS else string(name)


def _number(value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no Nix literal")
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        text = mantissa + e + exponent
    else:
        text = str(value)
    return f"({text})" if text.startswith("-") else text


def expr(value: Any, indent: str = "") -> str:
    """`value` (None, bool, int, float, str, a sequence, a mapping with string keys) as Nix;
    mappings span several lines, indented by two spaces a level."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return string(value)
    if isinstance(value, Mapping):
        if not value:
            return "{ }"
        inner = indent + "  "
        lines = [f"{inner}{attr_name(str(k))} = {expr(v, inner)};" for k, v in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{indent}}}"
    if isinstance(value, Sequence):
        if not value:
            return "[ ]"
        return "[ " + " ".join(expr(v, indent) for v in value) + " ]"
    raise ValueError(f"{type(value).__name__} has no Nix literal")
