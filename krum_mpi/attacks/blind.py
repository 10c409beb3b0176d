"""``blind``: one Byzantine worker blinds the distance arithmetic, the others send a crafted vector.

One Byzantine row is the **blinding row**, ``magnitude`` in every coordinate: with ``blinder =
"first"`` (default) the first Byzantine worker's (the lowest Byzantine index in the omniscient
model, the first id of the Byzantine ranks in the colluding one), with "last" the last one's. A
row that large is finite, so a rule must treat it as a (very distant) vector, but the squared
norms and Gram products it enters overflow or swamp float32 arithmetic: a distance kernel that is
not exact can then rank every row as tied and hand the selection to the lowest index. The other
b - 1 Byzantine workers send the **crafted** vector, the same for all of them. Where every score
ties, the lowest index wins, so "last" leaves the lowest Byzantine index to a crafted row: the
selection goes to the attacker whenever that index is the lowest of all.
``scale`` (lambda, default 1): against Krum on spambase 0.1 to 100 select alike (docs/attacks.md).

``magnitude``:
  "auto" (default): the smallest power of two M with d * M^2 > 3.4028235e38 (the largest finite
      float32), so that a float32 sum of the row's d squares overflows to inf while the row (and,
      for d >= 4, every single square) stays finite. A power of two because its squares and their sums
      are exact until they overflow: the overflow is the only rounding event. d = 1622 (the
      spambase MLP): M = 2^59 = 5.8e17; d = 20,000: M = 2^57 = 1.4e17.
  a number: any finite value with 0 < |magnitude| <= 3.4028235e38 (e.g. 1e12 as in the issue).
  "nan": the row is NaN instead: the same run with a row that a rule can only exclude, to compare.
``crafted``:
  "negative-mean" (default): -scale * mu, mu the mean of the honest gradients the adversary knows.
  "zero": the zero vector.
  a number: that constant in every coordinate (e.g. -1000.0 as in the issue).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .base import Attack, check_real, honest_mean, repeat_rows

FLOAT32_MAX = float(np.finfo(np.float32).max)
# Values below this round to a finite float32 (at most FLOAT32_MAX): half an ulp above it.
FLOAT32_LIMIT = 2.0 ** 128 - 2.0 ** 103
MAGNITUDES = ("auto", "nan")
CRAFTED = ("negative-mean", "zero")
BLINDERS = ("first", "last")


def blinding_magnitude(d: int) -> float:
    """The smallest power of two M with d * M^2 > FLOAT32_MAX: a float32 sum of the d squares overflows."""
    if d < 1:
        raise ValueError(f"blind needs d >= 1 coordinates, got {d}")
    k = math.ceil(0.5 * math.log2(FLOAT32_MAX / d))
    while d * 4.0 ** k <= FLOAT32_MAX:       # log2 rounding: settle the exponent exactly
        k += 1
    while k > 0 and d * 4.0 ** (k - 1) > FLOAT32_MAX:
        k -= 1
    return 2.0 ** k


def _check_magnitude(value):
    if isinstance(value, str):
        if value not in MAGNITUDES:
            raise ValueError(f"magnitude must be {' or '.join(repr(m) for m in MAGNITUDES)} or a number "
                             f"with 0 < |magnitude| <= {FLOAT32_MAX:.8g}, got {value!r}")
        return value
    if isinstance(value, float) and value != value:
        raise ValueError('magnitude must be a finite number or the string "nan", got the float nan: '
                         'write magnitude = "nan" (on the command line --set \'attack.magnitude="nan"\')')
    magnitude = check_real("magnitude", value)
    if not 0.0 < abs(magnitude) < FLOAT32_LIMIT:
        raise ValueError(f"magnitude = {value!r} must satisfy 0 < |magnitude| <= {FLOAT32_MAX:.8g} "
                         "(the largest finite float32), or be 'auto' or 'nan'")
    return magnitude


def _check_crafted(value):
    if isinstance(value, str):
        if value not in CRAFTED:
            raise ValueError(f"crafted must be {' or '.join(repr(c) for c in CRAFTED)} or a number, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"crafted must be {' or '.join(repr(c) for c in CRAFTED)} or a number, got {value!r}")
    constant = check_real("crafted", value)
    if abs(constant) >= FLOAT32_LIMIT:
        raise ValueError(f"crafted = {value!r} is beyond float32 (|crafted| <= {FLOAT32_MAX:.8g})")
    return constant


class Blind(Attack):
    name = "blind"
    source = "blinding the distance arithmetic: one huge finite row plus crafted vectors (issue 12)"
    # scale 1: -mu stays within the honest spread of a minibatch gradient (see docs/attacks.md).
    defaults = {"magnitude": "auto", "crafted": "negative-mean", "scale": 1.0, "blinder": "first"}

    def _validate(self):
        if self.n_byzantine == 0:
            raise ValueError("blind needs n_byzantine >= 1 (its first Byzantine worker sends the blinding row): "
                             "set workers.byzantine")
        self.magnitude = _check_magnitude(self.params["magnitude"])
        self.crafted = _check_crafted(self.params["crafted"])
        self.scale = check_real("scale", self.params["scale"], low=0.0)
        self.blinder = self.params["blinder"]
        if self.blinder not in BLINDERS:
            raise ValueError(f"blinder must be {' or '.join(repr(b) for b in BLINDERS)}, got {self.blinder!r}")
        if self.magnitude == "nan":
            self.kind = "nonfinite"

    def blinding_value(self, d: int) -> float:
        """The value of every coordinate of the blinding row for d coordinates."""
        if self.magnitude == "auto":
            return blinding_magnitude(d)
        return float("nan") if self.magnitude == "nan" else self.magnitude

    def crafted_vector(self, xp, honest):
        """The vector rows 1..b-1 send, float64 (cast to float32 with the rest)."""
        d = honest.shape[1]
        if self.crafted == "negative-mean":
            return -self.scale * honest_mean(xp, honest)
        return xp.full(d, 0.0 if self.crafted == "zero" else self.crafted, dtype=xp.float64)

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        d = honest.shape[1]
        out = xp.empty((n_byzantine, d), dtype=xp.float32)
        if n_byzantine > 1:
            out[:] = repeat_rows(xp, self.crafted_vector(xp, honest), n_byzantine)
        out[self.blinding_row(n_byzantine)] = self.blinding_value(d)
        return out

    def blinding_row(self, n_byzantine: int) -> int:
        """Which of the n_byzantine crafted rows is the blinding one."""
        return 0 if self.blinder == "first" else n_byzantine - 1
