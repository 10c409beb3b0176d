"""The run config as frozen dataclasses, generated from the one schema (``schema.DEFAULTS``).

One class per section (``RunConfig``, ``WorkersConfig``, ... ``FaultsConfig``) whose fields are the
section's keys, typed by their defaults, and ``Config`` holding one instance of each. Nothing here is
written twice: adding a key to the schema adds the field. Values are frozen all the way down (lists
become tuples, tables read-only mappings); ``to_dict`` gives back the resolved plain dict (lists and
dicts, JSON-able) that the results file and the run id are made of.

The open sections (``aggregator``, ``attack``) hold, beside their fixed keys, the rule's or the
attack's own options in ``options`` (``option_kwargs()`` gives them as plain keyword arguments).

    cfg = config.load("configs/paper-fig4-krum-f6.toml")      # a Config, validated
    cfg.run.steps, cfg.aggregator.placement                    # attribute access, read-only
    Server(setup, cfg.optimizer, cfg.aggregator)               # a module gets the sections it needs
    dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, steps=10))   # a new Config
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .schema import DEFAULTS, OPEN_SECTIONS


def freeze(value):
    """Lists to tuples and tables to read-only mappings, recursively (what a frozen field holds)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    return value


def thaw(value):
    """The inverse of ``freeze``: plain lists and dicts (JSON-able, as the resolved dict holds them)."""
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value


class Section:
    """Base of the generated section classes: the schema section's name and its plain-dict form."""

    SECTION: str = ""

    def to_dict(self) -> dict:
        """The section as the resolved dict holds it: its keys in schema order, then any options."""
        out = {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "options"}
        out.update(thaw(getattr(self, "options", {})))
        return out

    @classmethod
    def from_dict(cls, values: Mapping):
        """From a (resolved or partial) dict of this section: missing keys take their schema default;
        in an open section the other keys are its options, in a closed one they are an error."""
        if isinstance(values, cls):
            return values
        fixed = DEFAULTS[cls.SECTION]
        unknown = [k for k in (values or {}) if k not in fixed]
        if unknown and cls.SECTION not in OPEN_SECTIONS:
            raise TypeError(f"[{cls.SECTION}] has no key {unknown[0]!r} (keys: {', '.join(fixed)})")
        kwargs = {k: freeze((values or {}).get(k, v)) for k, v in fixed.items()}
        if cls.SECTION in OPEN_SECTIONS:
            kwargs["options"] = freeze({k: values[k] for k in unknown})
        return cls(**kwargs)


class OpenSection(Section):
    """A section whose keys beyond the schema's are options of the rule or attack it names."""

    def option_kwargs(self) -> dict:
        """The options as plain keyword arguments (``aggregators.make(name, n, f, **options)``)."""
        return thaw(self.options)


def _field_type(default) -> type:
    if isinstance(default, list):
        return tuple
    if isinstance(default, dict):
        return Mapping
    return type(default)   # bool, int, float, str


def _class_name(section: str) -> str:
    return "".join(part.title() for part in section.split("_")) + "Config"


def _section_class(section: str, keys: dict) -> type:
    fields = [(name, _field_type(default)) for name, default in keys.items()]
    base = OpenSection if section in OPEN_SECTIONS else Section
    if section in OPEN_SECTIONS:
        fields.append(("options", Mapping, dataclasses.field(default_factory=lambda: MappingProxyType({}))))
    cls = dataclasses.make_dataclass(_class_name(section), fields, bases=(base,), frozen=True,
                                     namespace={"SECTION": section, "__module__": __name__})
    cls.__doc__ = f"The [{section}] section (keys and defaults: krum_mpi.inputs.schema.DEFAULTS)."
    return cls


SECTIONS: dict = {section: _section_class(section, keys) for section, keys in DEFAULTS.items()}
# RunConfig, WorkersConfig, ...: importable by name (``from krum_mpi.inputs.typed import RunConfig``)
globals().update({cls.__name__: cls for cls in SECTIONS.values()})


class _ConfigBase:
    """Base of ``Config``: the whole resolved dict, and back."""

    def to_dict(self) -> dict:
        """The resolved config as a nested plain dict (for the results file, the run id, studies)."""
        return {section: getattr(self, section).to_dict() for section in SECTIONS}

    @classmethod
    def from_dict(cls, cfg: Mapping):
        """From a resolved dict (``config.validate``'s): every section, missing keys at their defaults."""
        unknown = [s for s in cfg if s not in SECTIONS]
        if unknown:
            raise TypeError(f"no config section [{unknown[0]}] (sections: {', '.join(SECTIONS)})")
        return cls(**{section: SECTIONS[section].from_dict(cfg.get(section, {})) for section in SECTIONS})


Config = dataclasses.make_dataclass(
    "Config", [(section, cls) for section, cls in SECTIONS.items()], bases=(_ConfigBase,), frozen=True,
    namespace={"__module__": __name__})
Config.__doc__ = "A validated run config: one frozen section object per schema section (cfg.run.steps)."


def section(name: str, values: Mapping | Section | None) -> Any:
    """The section object ``name`` from a section object or a (partial) dict of that section."""
    return SECTIONS[name].from_dict(values or {})


def replace(cfg, section_name: str, **changes):
    """A new Config with keys of one section changed (derived values are set before a Config is used)."""
    return dataclasses.replace(cfg, **{section_name: dataclasses.replace(getattr(cfg, section_name), **changes)})


__all__ = ["Config", "SECTIONS", "Section", "OpenSection", "section", "replace", "freeze", "thaw",
           *(cls.__name__ for cls in SECTIONS.values())]
