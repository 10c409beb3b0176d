"""Expand a study spec into runs, check every run's config, estimate what the study costs.

A run is the base config plus that run's ``--set`` overrides, launched on ``ranks`` MPI ranks. Its id
is a short hash of its resolved config and its ranks (and nodes, when given), so the same run gets
the same id (and the same results file) whatever the spec around it, and finished runs are found
again when a study grows.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import asdict, dataclass, field

import tomli_w

from .. import config
from ..errors import ConfigError, KrumMPIError
from .spec import Spec, excluded


@dataclass
class Run:
    id: str
    ranks: int
    nodes: int
    gpus: int
    time: str
    group: int
    needs_gpu: bool          # run.device or workers.device is "gpu" (SLURM then asks for GPUs)
    overrides: list          # ["aggregator.name=krum", ...]: exactly what `krum-mpi run --set` gets
    labels: dict             # {swept key: value}: what tells this run apart in tables
    config: dict = field(repr=False, default_factory=dict)   # the resolved run config
    n_params: int | None = None                               # model size, when the data is readable
    flops: float | None = None   # forward flops of one sample, counted for PyTorch models (else 2 d)


@dataclass
class Plan:
    spec: Spec
    runs: list
    invalid: list            # ["run 3 (aggregator.name=krum ...): message", ...]
    notes: list
    base_text: str
    base_name: str

    def check(self) -> None:
        """Raise ConfigError if any run is invalid (the caller prints ``invalid`` first)."""
        if self.invalid:
            total = len(self.runs) + len(self.invalid)
            raise ConfigError(f"{len(self.invalid)} of {total} runs of study {self.spec.name} have invalid "
                              "configs (listed above): fix the base or the sweep, or exclude them")

    def to_dict(self) -> dict:
        """What study.json keeps: enough to run, submit and report without the spec."""
        return {"name": self.spec.name, "spec": str(self.spec.path), "description": self.spec.description,
                "base": self.base_name, "base_source": self.spec.base_source,
                "runs": [{k: v for k, v in asdict(r).items() if k not in ("config", "n_params", "flops")}
                         for r in self.runs]}


def override(key: str, value) -> str:
    """``key=value`` such that ``config.parse_value`` reads back ``value`` (bare words stay bare)."""
    if isinstance(value, str) and value == value.strip() and value and config.parse_value(value) == value:
        return f"{key}={value}"
    return f"{key}={toml_literal(value)}"


def toml_literal(value) -> str:
    """A TOML literal of a scalar, or of a list on one line (``--set`` reads it back as written)."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    try:
        return tomli_w.dumps({"v": value}).partition(" = ")[2].strip()
    except TypeError:
        raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML: use numbers, strings, "
                          "booleans or lists of them") from None


def toml_text(cfg: dict, header: str) -> str:
    """A run config as TOML text, with ``header`` as comment lines on top."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    try:
        return comments + "\n" + tomli_w.dumps(cfg)
    except TypeError as exc:
        raise ConfigError(f"the base run config cannot be written as TOML ({exc}): use numbers, strings, "
                          "booleans and lists of them") from None


def run_id(cfg: dict, ranks: int, nodes: int) -> str:
    key = {"config": config.identity(cfg), "ranks": ranks}
    if nodes:
        key["nodes"] = nodes
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def part_overrides(part) -> list:
    """The ``--set`` overrides every run of ``part`` starts with: its base, and its name as run.name."""
    sets = [override(k, v) for k, v in part.base.items()]
    if part.name and "run.name" not in part.base:
        sets.append(override("run.name", part.name))
    return sets


def make_plan(spec: Spec, check_models: bool = True) -> Plan:
    """Every run of the spec (of every part), each config validated; bad runs are collected, not raised."""
    base_text = toml_text(spec.base, header=f"Base run config of study {spec.name} (from {spec.base_source}).")
    base_name = f"base-{hashlib.sha256(base_text.encode()).hexdigest()[:8]}.toml"
    runs, invalid, notes, seen, n_excluded = [], [], [], {}, 0
    dims = _Dims() if check_models else None
    index = -1
    for part in spec.parts:
        first = part_overrides(part)
        for assignment in part.combinations():
            index += 1
            launch = dict(part.launch)
            launch.update({k[len("launch."):]: v for k, v in assignment.items() if k.startswith("launch.")})
            sets = first + [override(k, v) for k, v in assignment.items() if not k.startswith("launch.")]
            raw = config.apply_overrides(spec.base, sets)
            defaults_and_raw = {s: {**config.DEFAULTS[s], **raw.get(s, {})} for s in config.DEFAULTS}
            if excluded(part.exclude, defaults_and_raw, launch):   # before validating: skip what is not wanted
                n_excluded += 1
                continue
            labels = ({"part": part.name} if part.name else {}) | assignment
            what = f"run {index} (" + (" ".join(f"{k}={v}" for k, v in labels.items()) or "base") + ")"
            try:
                cfg = config.validate(raw)
                n_params, flops = dims.size(cfg, notes) if dims is not None else (None, None)
            except ConfigError as exc:
                invalid.append(f"{what}: {' '.join(str(exc).split())}")
                continue
            if excluded(part.exclude, cfg, launch):   # again on the resolved config (defaults filled in)
                n_excluded += 1
                continue
            run = Run(id=run_id(cfg, launch["ranks"], launch["nodes"]), ranks=launch["ranks"],
                      nodes=launch["nodes"], gpus=launch["gpus"], time=launch["time"], group=launch["group"],
                      needs_gpu="gpu" in (cfg["run"]["device"], cfg["workers"]["device"]),
                      overrides=sets, labels=labels, config=cfg, n_params=n_params, flops=flops)
            if run.id in seen:
                notes.append(f"{what} is the same run as {seen[run.id]} (same resolved config and ranks): kept once")
                continue
            seen[run.id] = what
            runs.append(run)
    if not runs and not invalid:
        raise ConfigError(f"{spec.path}: study {spec.name} has no runs: its [[exclude]] rules drop "
                          f"all {n_excluded} combinations")
    if n_excluded:
        notes.append(f"{n_excluded} combinations excluded by [[exclude]]")
    return Plan(spec=spec, runs=runs, invalid=invalid, notes=notes, base_text=base_text, base_name=base_name)


def select_runs(runs: list, parts=(), limit: int = 0) -> list:
    """The runs of the named parts (all when none is named), at most ``limit`` of them (0: all)."""
    known = {r["labels"].get("part", "") for r in runs}
    for name in parts:
        if name not in known:
            raise ConfigError(f"no part {name!r} in this study: its parts are "
                              f"{', '.join(sorted(k for k in known if k)) or 'none (it has no [parts])'}")
    chosen = [r for r in runs if not parts or r["labels"].get("part", "") in parts]
    if limit < 0:
        raise ConfigError(f"--limit {limit} must be >= 0 (0: no limit)")
    return chosen[:limit] if limit else chosen


class _Dims:
    """Data dimensions per data section (read once), to build each run's model as the run will."""

    def __init__(self):
        self.cache = {}     # data section -> (features, classes) or None
        self.models = {}    # (model section, dims) -> (parameters, forward flops)

    def get(self, data_cfg: dict, notes: list):
        key = json.dumps(data_cfg, sort_keys=True)
        if key not in self.cache:
            from ..data import open_dataset

            try:
                ds = open_dataset(data_cfg, seed=0)
                self.cache[key] = (ds.n_features, ds.n_classes)
            except KrumMPIError as exc:
                from ..data.catalogue import planned_shape

                known = planned_shape(data_cfg)   # a public set not downloaded here: its published shape
                self.cache[key] = known[1:] if known else None
                what = (f"sized from the published shape of {known[0]} ({known[1]} features, {known[2]} "
                        "classes)") if known else "not checked"
                notes.append(f"data {data_cfg['name']!r} not readable here, so models of runs using it are "
                             f"{what}: {' '.join(str(exc).split())}")
        return self.cache[key]

    def size(self, cfg: dict, notes: list):
        """(parameters, forward flops of one sample or None) of the run's model; ConfigError if the
        model does not fit the data (as the run would). (None, None) when it cannot be built here."""
        dims = self.get(cfg["data"], notes)
        if dims is None:
            return None, None
        from .. import models

        # a study for a cluster may hold PyTorch cells that this machine cannot build: a note, as for data
        if cfg["model"]["name"] not in models.NUMPY_MODELS and importlib.util.find_spec("torch") is None:
            note = (f"PyTorch is not installed here, so the {cfg['model']['name']} models are not checked "
                    "(pip install 'krum-mpi[torch]' where they run)")
            if note not in notes:
                notes.append(note)
            return None, None
        key = json.dumps([cfg["model"], dims], sort_keys=True)
        if key not in self.models:
            model = models.make(cfg["model"], *dims)
            self.models[key] = (model.n_params, forward_flops(model))
        return self.models[key]


def forward_flops(model) -> float | None:
    """Forward flops of one sample of a PyTorch model, counted by torch on a zero input; None for the
    NumPy models, whose dense layers cost 2 d (a convolution reuses each weight at every position:
    LeNet-5 costs 13.5 d, ResNet-20 300 d, a multiply-add counted as 2) and for inputs the counter
    cannot make."""
    module = getattr(model, "module", None)
    if module is None or getattr(model, "kind", None) not in ("image", "flat"):
        return None
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shape = model.input_shape if model.kind == "image" else (next(module.parameters()).shape[-1],)
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            module(torch.zeros((1, *shape)))
    except (RuntimeError, ValueError, TypeError):
        return None
    return float(counter.get_total_flops()) or None


# ---------------------------------------------------------------------------------------------
# A rough cost model, to size a study before running it (not a benchmark). Constants were fitted
# by eye to runs on a 2-core machine (MLPs on spambase and MNIST, 20-200 workers, 1-2 ranks; e.g.
# spambase n = 20 on 2 ranks: 8.7 ms/step; Krum n = 200: 97 ms/step); expect a factor 2 either way.
STARTUP_S = 3.0              # interpreter, imports, data loading, MPI start
STEP_OVERHEAD_S = 3e-3       # Python, collectives and bookkeeping per step
WORKER_OVERHEAD_S = 0.4e-3   # per worker gradient, beyond its flops
FLOPS = 1e10                 # sustained flop/s of the gradient and distance kernels
EVAL_FLOPS = 2e9             # evaluation (whole test set at once, less efficient here)
GATHER_BYTES_S = 2e9         # gather bandwidth into rank 0
PAIR_OVERHEAD_S = 2e-6       # per worker pair in distance-based rules
EVAL_SAMPLES = 2000          # test set size assumed for evaluation


def estimate_seconds(run: Run) -> float | None:
    """Wall seconds of one run by the cost model above; None when the model size is unknown."""
    if run.n_params is None:
        return None
    cfg, d = run.config, run.n_params
    forward = run.flops or 2 * d        # a gradient costs about 3 forward passes
    n, batch, steps = cfg["workers"]["n"], cfg["workers"]["batch_size"], cfg["run"]["steps"]
    compute = math.ceil(n / run.ranks) * (WORKER_OVERHEAD_S + 3 * batch * forward / FLOPS)
    gather = n * d * 4 / GATHER_BYTES_S
    if "krum" in cfg["aggregator"]["name"]:   # pairwise distances: n^2 d
        aggregate = n * n * (2 * d / FLOPS + PAIR_OVERHEAD_S)
    else:
        aggregate = 2 * n * d / FLOPS
    evaluate = EVAL_SAMPLES * forward / EVAL_FLOPS / cfg["run"]["eval_every"]
    return STARTUP_S + steps * (STEP_OVERHEAD_S + compute + gather + aggregate + evaluate)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_table(plan: Plan) -> str:
    """The runs, one line each: id, ranks, the swept values, steps, estimated time; then totals."""
    keys = []
    for run in plan.runs:
        keys += [k for k in run.labels if k not in keys and not k.startswith("launch.")]
    head = ["#", "id", "ranks"] + (["nodes"] if any(r.nodes for r in plan.runs) else []) + keys + ["steps", "est"]
    rows = []
    for i, run in enumerate(plan.runs):
        row = [str(i), run.id, str(run.ranks)] + ([str(run.nodes or "-")] if "nodes" in head else [])
        row += [_cell(run.labels.get(k, "")) for k in keys]
        est = estimate_seconds(run)
        row += [str(run.config["run"]["steps"]), "?" if est is None else "~" + format_duration(est)]
        rows.append(row)
    widths = [max(len(r[j]) for r in [head] + rows) for j in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    known = [(estimate_seconds(r), r.ranks) for r in plan.runs]
    total = sum(s * ranks for s, ranks in known if s is not None)
    unknown = sum(s is None for s, _ in known)
    lines.append(f"{len(plan.runs)} runs, configs checked; rough cost {core_hours(total)} core-hours of rank time"
                 + (f" for the {len(plan.runs) - unknown} runs estimated ({unknown} not)" if unknown else ""))
    return "\n".join(lines)


def core_hours(seconds: float) -> str:
    """Rank-seconds as core-hours to 3 significant digits (the cost model is good to a factor 2):
    1.91, 48.2, 12,900. The one figure docs quote for a study."""
    hours = float(f"{seconds / 3600:.3g}")
    if hours <= 0:
        return "0"
    return f"{hours:,.{max(0, 2 - math.floor(math.log10(hours)))}f}"


def _cell(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
