"""The comparator networks of the order kernel (krum_mpi/native/order_networks.h) are what their
generator writes, and they sort: the header is regenerated and compared byte for byte, and each
network is run on every 0/1 input (a comparator network that sorts all of them sorts everything)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "scripts" / "gen_order_networks.py"
HEADER = ROOT / "krum_mpi" / "native" / "order_networks.h"


def generator():
    spec = importlib.util.spec_from_file_location("gen_order_networks", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_header_is_what_the_generator_writes():
    out = subprocess.run([sys.executable, str(GENERATOR)], capture_output=True, check=True).stdout
    assert out == HEADER.read_bytes(), ("order_networks.h differs from its generator: "
                                        "python scripts/gen_order_networks.py > krum_mpi/native/order_networks.h")


def header_networks():
    """{macro name: [(i, j), ...]} as the committed header spells them."""
    text = HEADER.read_text()
    found = {}
    for name, body in re.findall(r"#define (\w+) \\\n((?:.*\\\n)*.*)\n", text):
        found[name] = [(int(i), int(j)) for i, j in re.findall(r"CX\(r(\d+), r(\d+)\)", body)]
    return found


def run(pairs, values):
    """values (cases, size) through the comparators, lane by lane as the kernel does."""
    v = values.copy()
    for i, j in pairs:
        lo, hi = np.minimum(v[:, i], v[:, j]), np.maximum(v[:, i], v[:, j])
        v[:, i], v[:, j] = lo, hi
    return v


def all_zero_one(size):
    return ((np.arange(2**size)[:, None] >> np.arange(size)) & 1).astype(np.int8)


@pytest.mark.parametrize("size", [8, 16])
def test_sorting_networks_sort_every_zero_one_input(size):
    networks = header_networks()
    assert networks[f"SORT{size}"] == generator().odd_even_merge_sort(size)
    out = run(networks[f"SORT{size}"], all_zero_one(size))
    assert (np.diff(out, axis=1) >= 0).all()
    assert (out.sum(axis=1) == all_zero_one(size).sum(axis=1)).all()


@pytest.mark.parametrize("size", [8, 16])
def test_half_cleaners_sort_every_bitonic_zero_one_input(size):
    # CLEANB finishes a bitonic merge; the bitonic 0/1 sequences are 0^x 1^a 0^b and 1^x 0^a 1^b
    bitonic = []
    for a in range(size + 1):
        for b in range(size + 1 - a):
            x = size - a - b
            bitonic.append(np.r_[np.zeros(x), np.ones(a), np.zeros(b)])
            bitonic.append(np.r_[np.ones(x), np.zeros(a), np.ones(b)])
    networks = header_networks()
    assert networks[f"CLEAN{size}"] == generator().half_cleaners(size)
    out = run(networks[f"CLEAN{size}"], np.array(bitonic, dtype=np.int8))
    assert (np.diff(out, axis=1) >= 0).all()
