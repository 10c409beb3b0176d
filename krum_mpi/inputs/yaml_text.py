"""YAML for configs: safe types only, no aliases, no duplicate keys.

An alias (``*name``) lets a few lines stand for a structure of 10^9 elements ("billion laughs"):
PyYAML builds it as shared references, but anything that walks it (a repr in an error message, a
deep copy, a JSON dump) expands it. Configs never need aliases, so the composer refuses the first
one. A key given twice in one mapping is refused too (PyYAML keeps the last silently; TOML refuses).
"""
from __future__ import annotations

import yaml


class YAMLInputError(ValueError):
    """A YAML construct that configs refuse (the message is one line, without the file name)."""


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YAMLInputError(f"YAML alias *{event.anchor} at {_where(event.start_mark)}: aliases are not "
                                 "allowed in a config (write the value out)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_scalar(key_node)
                if key in seen:
                    text = key if len(key) <= 40 else key[:37] + "..."
                    raise YAMLInputError(f"duplicate key {text!r} at {_where(key_node.start_mark)} (first at "
                                         f"{_where(seen[key])}): give each key once")
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load(text: str):
    """The data of a YAML document: plain types only; YAMLInputError for an alias or a duplicate key,
    yaml.YAMLError for text that is not YAML."""
    return yaml.load(text, Loader=_StrictLoader)   # noqa: S506 (a SafeLoader subclass)
