"""Progress of long work (training steps, downloads, conversions, studies, benchmarks), one line.

On a terminal the line is redrawn in place (carriage return); otherwise (a log file, a pipe: every
rank's output under mpiexec or srun) a full line is printed every ``KRUM_MPI_PROGRESS_EVERY``
seconds (default 5) and once at the end. ``KRUM_MPI_PROGRESS`` = ``bar``, ``log`` or ``off``
overrides the choice (``bar`` for a terminal behind mpiexec, whose ranks never see a terminal).
Quiet runs (``--quiet``) show nothing. No dependency beyond the standard library.

    bar = Progress(500, "train", unit="step")
    for done in range(500):
        ...
        bar.update(done + 1, loss=0.41, acc=0.91)
    bar.close()
"""
from __future__ import annotations

import math
import os
import sys
import time

MODES = ("bar", "log", "off")


def choose_mode(stream, quiet: bool = False) -> str:
    if quiet:
        return "off"
    forced = os.environ.get("KRUM_MPI_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def byte_scale(value: float):
    """(divisor, name) for a byte count: decimal MB or GB, as download sizes are quoted."""
    return (1e9, "GB") if value >= 1e9 else (1e6, "MB")


class Progress:
    """Progress of ``total`` units of work (None: unknown), shown on ``stream`` (stdout)."""

    def __init__(self, total, label: str, unit: str = "step", quiet: bool = False, stream=None,
                 start: int = 0, every_s: float | None = None):
        self.stream = stream or sys.stdout
        self.mode = choose_mode(self.stream, quiet)
        self.total, self.label, self.unit = total, label, unit
        self.start_done = self.done = start
        self.every_s = every_s if every_s is not None else float(os.environ.get("KRUM_MPI_PROGRESS_EVERY", "5"))
        self.t0 = time.monotonic()
        self.last_shown = self.t0
        self.fields: dict = {}
        self.shown_any = False

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else float("nan")
        if self.unit == "B":
            scale, name = byte_scale(self.total or self.done)
            amount = f"{self.done / scale:.1f}/{self.total / scale:.1f} {name}" if self.total \
                else f"{self.done / scale:.1f} {name}"
            speed = f"{rate / 1e6:.1f} MB/s"
        else:
            amount = f"{self.done}/{self.total} {self.unit}s" if self.total else f"{self.done} {self.unit}s"
            speed = f"{rate:.3g} {self.unit}/s"
        if self.total:
            amount += f" ({100 * self.done / self.total:.1f}%)"
        parts = [f"{self.label}: {amount}"]
        if math.isfinite(rate):
            parts.append(speed)
        for name, value in self.fields.items():
            if isinstance(value, float):
                if math.isfinite(value):
                    parts.append(f"{name} {value:.4g}")
            elif value is not None:
                parts.append(f"{name} {value}")
        if self.total and math.isfinite(rate) and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        return "  ".join(parts)

    def update(self, done, **fields) -> None:
        self.done = done
        for name, value in fields.items():
            if value is not None and not (isinstance(value, float) and not math.isfinite(value)):
                self.fields[name] = value   # keep the last known value (accuracy is measured now and then)
        if self.mode == "off":
            return
        now = time.monotonic()
        interval = 0.2 if self.mode == "bar" else self.every_s
        if now - self.last_shown < interval:
            return
        self.last_shown = now
        self._show()

    def _show(self, end: bool = False) -> None:
        text = self.line()
        if self.mode == "bar":
            self.stream.write("\r" + text + "\033[K" + ("\n" if end else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown_any = True

    def close(self) -> None:
        """The final line (on a terminal: ends the bar)."""
        if self.mode != "off":
            self._show(end=True)
