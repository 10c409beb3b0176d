"""Write run configs as TOML (the standard library reads TOML but does not write it).

Run configs are tables of sections holding scalars and lists of scalars, which is all we write;
``dumps`` checks that ``tomllib`` reads back exactly what it was given.
"""
from __future__ import annotations

import json
import math
import tomllib

from ..errors import ConfigError


def literal(value) -> str:
    """A TOML literal for a scalar, a list of scalars or a table of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)             # shortest text that reads back to the same float
    if isinstance(value, str):
        return json.dumps(value)       # a TOML basic string: JSON's escapes are valid TOML escapes
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):        # an inline table (model.kwargs)
        return "{" + ", ".join(f"{_key(k)} = {literal(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML: use numbers, strings, "
                      "booleans or lists of them")


def dumps(cfg: dict, header: str = "") -> str:
    """A ``{section: {key: value}}`` dict as TOML text (sections in the order given)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, body in cfg.items():
        if not isinstance(body, dict):
            raise ConfigError(f"cannot write [{section}] = {body!r}: a run config holds tables of keys")
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        lines += [f"{_key(k)} = {literal(v)}" for k, v in body.items()]
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != cfg:
        raise ConfigError("the base run config does not survive a TOML round trip: use plain numbers, "
                          "strings, booleans and lists")
    return text


def _key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else json.dumps(key)
