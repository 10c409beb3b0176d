"""The one config schema: every key a run config may hold, its default, its choices and its bounds
(``config`` validates against it and documents the keys in docs/config.md)."""

# ---------------------------------------------------------------------------------------------
# Defaults: every key a run config may hold, with its default. Comments say units and choices.
DEFAULTS: dict = {
    "run": {
        "steps": 500,            # synchronous SGD steps
        "seed": 0,               # every random draw derives from it (recorded in the results)
        "eval_every": 10,        # evaluate test accuracy every K steps (and at the last step)
        "device": "auto",        # aggregation device on rank 0: auto | cpu | gpu
        "name": "",              # free label, stored with the results
        "checkpoint_every": 0,   # steps between results flushes / checkpoints (0: every eval)
        "gather_deadline_s": 0.0,  # > 0: rank 0 waits at most this long for each rank's gradients
        "watchdog_s": 900.0,     # > 0: end the run (checkpoint kept) after this long without a step; 0: off
    },
    "workers": {
        "n": 20,                 # logical workers, spread over the MPI ranks
        "byzantine": 0,          # ACTUAL number of Byzantine workers
        "batch_size": 3,         # minibatch per worker per step
        "device": "cpu",         # where workers compute gradients: cpu | gpu
    },
    "data": {
        "name": "spambase",      # spambase | mnist | synthetic | hdf5 | text
        "path": "",              # file or folder; "" = default location (KRUM_MPI_DATA or cache)
        "test_fraction": 0.2,    # held-out part, for datasets without a test split
        "split": "iid",          # iid | dirichlet | gamma (heterogeneity across workers)
        "alpha": 1.0,            # Dirichlet concentration (split = dirichlet)
        "gamma": 1.0,            # IID fraction of each worker's data (split = gamma)
        "generator": "teacher",  # synthetic: teacher | mixture
        "n_train": 100_000,      # synthetic: training samples
        "n_test": 2_000,         # synthetic: test samples
        "n_features": 20,        # synthetic: features
        "n_classes": 2,          # synthetic: classes
        "noise": 0.0,            # synthetic: label noise / class overlap
        "standardize": True,     # standardise features with training statistics
        "max_train": 0,          # cap on training samples used (0: all)
        "validation_fraction": 0.0,  # share of the training rows held out for validation (0: none)
        "context": 64,           # text: characters per window (the character model's context)
        "image_shape": [],       # synthetic: [channels, height, width] makes image rows (n_features = product)
    },
    "model": {
        "name": "mlp",           # logistic | softmax | mlp (NumPy) | mnist-cnn | lenet5 | resnet20 |
                                 # char-transformer | torch (PyTorch: pip install 'krum-mpi[torch]')
        "hidden": [20, 20],      # MLP hidden widths
        "factory": "",           # name = torch: "package.module:function" or "path/to/file.py:function"
        "kwargs": {},            # PyTorch models: extra keyword arguments of the builder
        "loss": "cross-entropy",  # PyTorch models: cross-entropy | nll | mse | multi-margin
        "augment": "auto",       # PyTorch image models: auto (the zoo recipe) | none | crop-flip
        "weight_decay": 0.0,     # L2 coefficient: each worker adds weight_decay * theta to its gradient
    },
    "optimizer": {
        "lr": 0.05,              # SGD learning rate
        "momentum": 0.0,         # momentum coefficient beta (0: plain SGD)
        "momentum_form": "heavy-ball",  # heavy-ball (m <- beta m + g) | ema (m <- beta m + (1 - beta) g)
        "momentum_at": "server",  # server (on the aggregate) | worker (each worker sends momentum)
    },
    "aggregator": {
        "name": "average",       # see krum_mpi.aggregators.names()
        "f": -1,                 # declared f given to the rule; -1: workers.byzantine
        "placement": "gather",   # gather (rank 0 holds every row) | sharded | per-shard (docs/sharded.md)
        "sharded_min_d": 35_000,   # placement = sharded below this d: the gather's exchange (docs/sharded.md)
        "replicas": 1,           # sharded: ranks holding each coordinate block (odd); receivers take the
                                 # majority, so (replicas - 1) / 2 lying ranks per block change nothing
    },
    "attack": {
        "name": "none",          # see krum_mpi.attacks.names()
        "adversary": "omniscient",  # omniscient (crafted at the gather) | colluding (Byzantine ranks)
    },
    "parallel": {
        "model": 1,              # ranks per model group: the MLP split over p ranks (docs/sharded.md)
    },
    "byzantine_ranks": {         # MPI ranks that lie in what they send (docs/sharded.md "Byzantine ranks")
        "ranks": [],             # world ranks, never 0
        "behaviour": "none",     # none | corrupt-activations | lie-distances | corrupt-block
        "scale": -4.0,           # corrupt-activations, corrupt-block: each value x sent becomes scale * x ...
        "sigma": 1.0,            # ... + sigma * N(0, 1), drawn from the run seed
    },
    "faults": {                  # injected faults, to test the reliability paths (docs/reliability.md)
        "slow_rank": -1,         # this MPI rank sleeps before sending its gradients ...
        "slow_from": 0,          # ... at steps slow_from <= step < slow_until
        "slow_until": 0,
        "slow_delay_s": 0.0,     # ... for this long
    },
}

OPEN_SECTIONS = ("aggregator", "attack")

CHOICES = {
    "run.device": ("auto", "cpu", "gpu"),
    "workers.device": ("cpu", "gpu"),
    "data.name": ("spambase", "mnist", "synthetic", "hdf5", "text"),
    "data.split": ("iid", "dirichlet", "gamma"),
    "data.generator": ("teacher", "mixture"),
    "model.name": ("logistic", "softmax", "mlp", "mnist-cnn", "lenet5", "resnet20", "char-transformer", "torch"),
    "model.loss": ("cross-entropy", "nll", "mse", "multi-margin"),
    "model.augment": ("auto", "none", "crop-flip"),
    "optimizer.momentum_at": ("server", "worker"),
    "optimizer.momentum_form": ("heavy-ball", "ema"),
    "attack.adversary": ("omniscient", "colluding"),
    "aggregator.placement": ("gather", "sharded", "per-shard"),
    "byzantine_ranks.behaviour": ("none", "lie-distances", "corrupt-activations", "corrupt-block"),
}

INT64_MAX = (1 << 63) - 1   # every integer key is stored as int64 (results attributes, index arrays)
MAX_LIST = 256              # entries of a list key (model.hidden: layers; each layer costs a Python loop pass)
# (minimum, maximum) for numbers; None = unbounded
BOUNDS = {
    "run.steps": (1, None),
    "run.seed": (0, INT64_MAX),
    "run.eval_every": (1, None),
    "run.checkpoint_every": (0, None),
    "workers.n": (1, None),
    "workers.byzantine": (0, None),
    "workers.batch_size": (1, None),
    "data.test_fraction": (0.0, 1.0),
    "data.validation_fraction": (0.0, 1.0),
    "data.alpha": (0.0, None),
    "data.gamma": (0.0, 1.0),
    "data.n_train": (1, None),
    "data.n_test": (1, None),
    "data.n_features": (1, None),
    "data.n_classes": (2, None),
    "data.noise": (0.0, 1.0),
    "data.max_train": (0, None),
    "data.context": (1, None),
    "optimizer.lr": (0.0, None),
    "model.weight_decay": (0.0, None),
    "optimizer.momentum": (0.0, 1.0),
    "aggregator.f": (-1, None),
    "aggregator.sharded_min_d": (0, None),
    "run.gather_deadline_s": (0.0, None),
    "run.watchdog_s": (0.0, None),
    "parallel.model": (1, None),
    "aggregator.replicas": (1, None),
    "byzantine_ranks.sigma": (0.0, None),
    "faults.slow_rank": (-1, None),
    "faults.slow_from": (0, None),
    "faults.slow_until": (0, None),
    "faults.slow_delay_s": (0.0, None),
}
STRICTLY_POSITIVE = {"optimizer.lr", "data.alpha", "data.test_fraction"}
