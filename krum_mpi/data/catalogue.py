"""The shapes of the public sets, for planning a study on a machine that does not hold them.

``krum-mpi study plan`` builds every run's model to size it and to estimate the study's cost. A
cluster study names sets (HIGGS, SUSY, epsilon, CIFAR-10 ...) that the planning machine may not
have; without their shape those runs could not be sized, and the study's core-hour figure would
depend on which files happen to be present. ``planned_shape`` gives the shape such a set has once
``krum-mpi data download NAME`` and the ``data convert`` command it prints have made it (the file
names below are the ones those commands write). A run never uses this table: it reads the real file,
whose header is checked (store_checks.py).
"""
from __future__ import annotations

from pathlib import PurePath

# set: (file `data convert` writes, features, classes)
SHAPES = {
    "spambase": ("", 57, 2),
    "mnist": ("", 784, 10),
    "fashion-mnist": ("fashion-mnist.h5", 784, 10),
    "cifar10": ("cifar10.h5", 3 * 32 * 32, 10),
    "covtype": ("covtype.h5", 54, 2),
    "susy": ("susy.h5", 18, 2),
    "higgs": ("higgs.h5", 28, 2),
    "epsilon": ("epsilon.h5", 2000, 2),
}


def planned_shape(data_cfg: dict):
    """(set name, n_features, n_classes) of the public set a ``data`` section names (``spambase``,
    ``mnist``, or ``hdf5`` with a path whose file name is one of the converted files above); None for
    anything else (synthetic data needs no file, other files are unknown)."""
    name = data_cfg.get("name", "")
    if name in ("spambase", "mnist"):
        return (name, *SHAPES[name][1:])
    if name == "hdf5":
        file = PurePath(str(data_cfg.get("path", ""))).name
        for set_name, (converted, p, c) in SHAPES.items():
            if converted and file == converted:
                return set_name, p, c
    return None
