"""Guidance strength per sampling step, registered by name, and the file format of a learned schedule.

A schedule maps the step index ``i`` of ``n`` (0 = the noisiest step) to a strength. Methods read
it as their step size (dps, mpgd), pull weight (latent_pull), blend (inpaint) or data weight (diffpir).
A learned schedule is a safetensors file: `save_schedule` writes the per-step strengths (``values``, one per
sampling step, noisiest first) with metadata (method, steps); `load_schedule` returns a `Table`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from gdr import checks
from gdr.atomic import atomic_path
from gdr.errors import ConfigError
from gdr.registry import Registry

SCHEDULES = Registry("schedule")


class Schedule(nn.Module):
    """Base class; subclasses implement ``forward(i, n) -> float``."""

    def values(self, n: int) -> list[float]:
        return [float(self(i, n)) for i in range(n)]


@SCHEDULES.register("constant")
class Constant(Schedule):
    """``scale`` at every step."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        checks.number("schedule constant: scale", scale, low=0)
        self.scale = float(scale)

    def forward(self, i: int, n: int) -> float:
        return self.scale


class _Ramp(Schedule):
    """From ``start`` at the first (noisiest) step to ``end`` at the last, along ``shape(frac)`` in [0, 1]."""

    def __init__(self, start: float = 0.0, end: float = 1.0):
        super().__init__()
        for value in (start, end):
            checks.number(f"schedule {type(self).__name__.lower()}: strength", value, low=0)
        self.start, self.end = float(start), float(end)

    @staticmethod
    def shape(frac: float) -> float:
        return frac

    def forward(self, i: int, n: int) -> float:
        return self.start + (self.end - self.start) * self.shape(i / max(n - 1, 1))


@SCHEDULES.register("linear")
class Linear(_Ramp):
    """Linear ramp from ``start`` to ``end``."""


@SCHEDULES.register("cosine")
class Cosine(_Ramp):
    """Half-cosine ramp from ``start`` to ``end``: slow at both ends."""

    @staticmethod
    def shape(frac: float) -> float:
        return 0.5 * (1 - math.cos(math.pi * frac))


@SCHEDULES.register("table")
class Table(Schedule):
    """Explicit per-step values (``values``), linearly interpolated when ``n`` differs from their count."""

    def __init__(self, values: list[float] | torch.Tensor):
        super().__init__()
        values = torch.as_tensor(values, dtype=torch.float32).flatten()
        if values.numel() == 0:
            raise ConfigError("schedule 'table' needs at least one value")
        for value in values.tolist():
            checks.number("schedule table: strength", value, low=0)
        self.register_buffer("table", values)

    def forward(self, i: int, n: int) -> float:
        if self.table.numel() == 1 or n == 1:
            return float(self.table[0])
        pos = i / (n - 1) * (self.table.numel() - 1)
        lo = min(int(pos), self.table.numel() - 2)
        w = pos - lo
        return float((1 - w) * self.table[lo] + w * self.table[lo + 1])


def build_schedule(spec: dict | str | float) -> Schedule:
    """``0.5`` (constant), ``"cosine"`` or ``{"name": "linear", "start": 0, "end": 1}`` -> schedule."""
    if isinstance(spec, (int, float)):
        return Constant(float(spec))
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    return SCHEDULES.build(spec.pop("name", "constant"), **spec)


def schedule_for(guidance: dict) -> Schedule:
    """The strength schedule a guidance config asks for (`gdr.config.GuidanceConfig` as a dict): a learned
    file (``schedule_path``), or ``schedule`` with ``scale`` (and ``start_scale`` for ramps)."""
    if guidance.get("schedule_path"):
        return load_schedule(guidance["schedule_path"], method=guidance["name"])
    if guidance.get("schedule", "constant") == "constant":
        return Constant(guidance["scale"])
    return build_schedule({"name": guidance["schedule"], "start": guidance.get("start_scale") or 0.0,
                           "end": guidance["scale"]})


# ------------------------------------------------------------------------------------------ file format
def save_schedule(path: str | os.PathLike, values: torch.Tensor, *, method: str, steps: int) -> Path:
    """Write per-step strengths ``(steps,)`` to a safetensors file with their method and step count."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"values": values.detach().float().cpu().contiguous()}, str(tmp),
                  metadata={"method": method, "steps": str(steps), "format": "gdr-schedule"})
    return path


def load_schedule(path: str | os.PathLike, method: str | None = None) -> Table:
    """A `Table` schedule from `save_schedule`'s file; `method` must match the one it was trained for."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"schedule file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            values = f.get_tensor("values")
    except Exception as exc:
        raise ConfigError(f"schedule file {path} is not a gdr schedule ({str(exc).splitlines()[0]})") from None
    if method is not None and meta.get("method") not in (None, method):
        raise ConfigError(f"schedule {path} was learned for {meta.get('method')!r}, not {method!r}")
    return Table(values)
