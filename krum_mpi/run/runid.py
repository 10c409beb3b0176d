"""What identifies a run: its resolved config, less the keys added after runs and studies already
existed while they hold their default, so that the ids of existing runs (their results files, their
study folders, their job scripts) stay valid."""
from __future__ import annotations

import hashlib

LATER_KEYS = (("model", "factory"), ("model", "kwargs"), ("model", "loss"), ("model", "augment"),
              ("model", "weight_decay"), ("data", "context"), ("data", "image_shape"),
              ("aggregator", "placement"), ("parallel", "model"),
              ("optimizer", "momentum_form"), ("data", "validation_fraction"),
              ("byzantine_ranks", "ranks"), ("byzantine_ranks", "behaviour"), ("byzantine_ranks", "scale"),
              ("byzantine_ranks", "sigma"), ("aggregator", "sharded_min_d"), ("aggregator", "replicas"))


def identity(cfg: dict, defaults: dict) -> dict:
    """The config without the LATER_KEYS that hold their default."""
    out = {section: dict(body) for section, body in cfg.items()}
    for section, key in LATER_KEYS:
        if section in out and key in out[section] and out[section][key] == defaults[section][key]:
            del out[section][key]
            if not out[section]:   # a section added later, all at its defaults: as if it did not exist
                del out[section]
    return out


def digest(canonical_json: str) -> str:
    """The run id: 12 hex digits of the SHA-256 of the identity's canonical JSON."""
    return hashlib.sha256(canonical_json.encode()).hexdigest()[:12]
