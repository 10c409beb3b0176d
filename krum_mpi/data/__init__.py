"""Datasets for krum-mpi: find, load, shard, batch.

    ds = open_dataset(cfg.data, seed=cfg.run.seed)
    shard = ds.shard(worker, n_workers)          # this worker's part of the training set
    X, y = shard.batch(step, batch_size)         # float32 (b, p), int64 (b,): same seed, same batch
    X_test, y_test = ds.test_set()

``data.name`` picks the source: ``spambase`` (UCI CSV), ``mnist`` (IDX gzip), ``synthetic`` (generated
on the fly, any size), ``hdf5`` (the on-disk format of ``krum_mpi.data.store``, read row by row) or
``text`` (character windows of a text file, for the character-level language model).
"""
from __future__ import annotations

from ..errors import DataError
from .base import ArrayDataset, Dataset, Shard
from .paths import data_dir


def open_dataset(data_cfg, seed: int = 0) -> Dataset:
    """The dataset described by a ``data`` config section: the run's (inputs.typed.DataConfig) or a
    dict of some of its keys (the others at their defaults). Raises DataError (one line)."""
    from ..inputs import typed

    cfg = typed.section("data", data_cfg)
    name = cfg.name
    if name == "spambase":
        from . import spambase as module
    elif name == "mnist":
        from . import mnist as module
    elif name == "synthetic":
        from . import synthetic as module
    elif name == "hdf5":
        from . import store as module
    elif name == "text":
        from . import text as module
    else:
        raise DataError(f"unknown data.name {name!r}: use spambase, mnist, synthetic, hdf5 or text")
    from .validation import with_validation
    ds = with_validation(module.load(cfg, seed), cfg.validation_fraction, seed)
    # the rows the workers are sharded from (after test and validation rows are taken out), so that a
    # report can state epochs = samples drawn / training rows for every source alike
    ds.provenance = {**ds.provenance, "train_rows": int(ds.n_train)}
    return ds


__all__ = ["open_dataset", "data_dir", "Dataset", "ArrayDataset", "Shard", "DataError"]
