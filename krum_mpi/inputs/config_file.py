"""Read a config file (TOML or YAML) into a dict, safely and with one-line errors.

The path is examined with ``os.stat`` before it is opened (a directory, FIFO or device says what it
is, and a FIFO never blocks); the file is read up to MAX_CONFIG_BYTES; a UTF-8 byte order mark is
skipped; YAML is read without aliases or duplicate keys (``yaml_text``).
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from ..errors import ConfigError
from . import files
from .show import one_line, show

MAX_CONFIG_BYTES = 1 << 20


def read(path) -> dict:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict, safely: the path is
    examined before it is opened (a FIFO or device is never opened), YAML aliases and duplicate keys
    are refused, a UTF-8 byte order mark is skipped."""
    path = Path(path)
    problem = files.regular_file_problem(path)
    if problem:
        what = "give the path of" if problem.startswith("not found") else "a config is"
        raise ConfigError(f"config file {one_line(str(path), 200)} {problem}: {what} a .toml or .yaml file")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB: a config is a short text file")
    try:
        text = data.decode("utf-8-sig")   # -sig: a leading byte order mark (Windows editors) is skipped
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}): "
                          "a config is a .toml or .yaml text file") from None
    raw = _parse_yaml(path, text) if path.suffix in (".yaml", ".yml") else _parse_toml(path, text)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a table of sections like [run], [workers]")
    return raw


def _parse_toml(path, text):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {one_line(exc, 300)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None


def _parse_yaml(path, text):
    try:
        import yaml

        from . import yaml_text
    except ImportError:
        raise ConfigError(f"{path}: YAML needs PyYAML (pip install pyyaml), or write the config as TOML") from None
    try:
        return yaml_text.load(text)
    except yaml_text.YAMLInputError as exc:
        raise ConfigError(f"{path}: {one_line(exc, 300)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {one_line(exc, 300)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
