"""Guidance strength per sampling step, registered by name, and the file format of a learned schedule.

A schedule maps the step index ``i`` of ``n`` (0 = the noisiest step), and the step's diffusion time
``level = t / num_train_timesteps`` in [0, 1], to a strength. Methods read it as their step size (dps, mpgd),
pull weight (latent_pull), blend (inpaint) or data weight (diffpir).

A learned schedule is a safetensors file (`save_schedule` / `load_schedule`) in one of two parametrisations:

* ``steps``: one strength per sampling step (``values``, noisiest first), a `Table`; defined for the step count
  it was learned at (another count is interpolated over the step index, with a warning from evaluate);
* ``knots``: strengths at ``K`` knots evenly spaced in diffusion time (``values``, ``levels``), a `Knots`,
  linearly interpolated over the noise level, so it is defined at any step count.

Its metadata says what it was learned for (method, steps, degradation, condition, scheduler, eta, the training
file list's fingerprint), so evaluate can refuse or warn when it is used for something else.
"""

from __future__ import annotations

import json
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
    """Base class; subclasses implement ``forward(i, n, level=None) -> float`` (``level``: the step's t / T)."""

    step_free = False  # defined over the noise level, so meaningful at any step count

    def values(self, n: int, levels: list[float] | None = None) -> list[float]:
        """The strength at each of `n` steps (``levels``: each step's t / T, needed by `Knots`)."""
        return [float(self(i, n, None if levels is None else levels[i])) for i in range(n)]


@SCHEDULES.register("constant")
class Constant(Schedule):
    """``scale`` at every step."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        checks.number("schedule constant: scale", scale, low=0)
        self.scale = float(scale)

    def forward(self, i: int, n: int, level: float | None = None) -> float:
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

    def forward(self, i: int, n: int, level: float | None = None) -> float:
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


def strengths(kind: str, values: list[float] | torch.Tensor) -> torch.Tensor:
    """`values` as a float32 ``(K,)`` tensor of strengths, K >= 1, each finite and >= 0 (else `ConfigError`)."""
    values = torch.as_tensor(values, dtype=torch.float32).flatten()
    if values.numel() == 0:
        raise ConfigError(f"schedule '{kind}' needs at least one value")
    for value in values.tolist():
        checks.number(f"schedule {kind}: strength", value, low=0)
    return values


@SCHEDULES.register("table")
class Table(Schedule):
    """Explicit per-step values (``values``), linearly interpolated when ``n`` differs from their count."""

    def __init__(self, values: list[float] | torch.Tensor):
        super().__init__()
        self.register_buffer("table", strengths("table", values))

    def forward(self, i: int, n: int, level: float | None = None) -> float:
        if self.table.numel() == 1 or n == 1:
            return float(self.table[0])
        pos = i / (n - 1) * (self.table.numel() - 1)
        lo = min(int(pos), self.table.numel() - 2)
        w = pos - lo
        return float((1 - w) * self.table[lo] + w * self.table[lo + 1])


def interpolate_knots(values: torch.Tensor, level: float) -> torch.Tensor:
    """Linear interpolation of knot strengths ``values`` ``(K,)``, evenly spaced over diffusion time [0, 1]
    (``values[0]`` at t = 0, the clean end), at ``level``; a 0-dim tensor that keeps the graph to `values`."""
    k = values.numel()
    if k == 1:
        return values[0]
    pos = min(max(float(level), 0.0), 1.0) * (k - 1)
    lo = min(int(pos), k - 2)
    w = pos - lo
    return (1 - w) * values[lo] + w * values[lo + 1]


@SCHEDULES.register("knots")
class Knots(Schedule):
    """Strengths at ``K`` knots evenly spaced in diffusion time t / T (``values[0]`` at t = 0), interpolated
    linearly over the step's noise level: step-count free (a learned ``knots`` schedule, `load_schedule`)."""

    step_free = True

    def __init__(self, values: list[float] | torch.Tensor):
        super().__init__()
        self.register_buffer("knots", strengths("knots", values))

    def forward(self, i: int, n: int, level: float | None = None) -> float:
        if level is None:
            raise ConfigError("schedule 'knots' is defined over the noise level; the sampler passes it")
        return float(interpolate_knots(self.knots, level))


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
PARAMETRISATIONS = ("steps", "knots")


def save_schedule(path: str | os.PathLike, values: torch.Tensor, *, method: str, steps: int,
                  parametrisation: str = "steps", provenance: dict | None = None) -> Path:
    """Write learned strengths to a safetensors file with what they were learned for.

    Args:
        values: ``(steps,)`` per-step strengths (``parametrisation="steps"``) or ``(K,)`` knot strengths over
            diffusion time t / T in [0, 1] (``"knots"``, `Knots`).
        method, steps: the guidance method and the step count of the training runs.
        provenance: anything else worth knowing (degradation, condition, scheduler, eta, the fingerprint of
            the training file list); each value is stored as JSON text.
    """
    from safetensors.torch import save_file

    checks.choice("schedule parametrisation", parametrisation, PARAMETRISATIONS)
    metadata = {"format": "gdr-schedule", "method": method, "steps": str(steps), "parametrisation": parametrisation}
    metadata.update({k: json.dumps(v, sort_keys=True) for k, v in (provenance or {}).items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"values": values.detach().float().cpu().contiguous()}, str(tmp), metadata=metadata)
    return path


def load_schedule(path: str | os.PathLike, method: str | None = None) -> Schedule:
    """The schedule in `save_schedule`'s file (`Table` or `Knots`), with its metadata as ``.provenance``
    (a dict, JSON values decoded). `method` must match the one it was learned for."""
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
    kind = meta.get("parametrisation", "steps")
    if kind not in PARAMETRISATIONS:
        raise ConfigError(f"schedule {path}: unknown parametrisation {kind!r} (known: {', '.join(PARAMETRISATIONS)})")
    schedule = Knots(values) if kind == "knots" else Table(values)
    schedule.provenance = {k: _decoded(v) for k, v in meta.items()}
    return schedule


def _decoded(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def schedule_warnings(schedule: Schedule, path: str, degradation: dict, steps: int) -> list[str]:
    """What is off about using the learned `schedule` (from `path`) on task `degradation` at `steps` steps:
    another task, or another step count for a per-step schedule (it is then interpolated over the step index)."""
    meta = getattr(schedule, "provenance", {})
    warnings = []
    learned_task = meta.get("degradation")
    if isinstance(learned_task, dict) and _task(learned_task) != _task(degradation):
        warnings.append(f"schedule {path} was learned for {_task(learned_task)}, used on {_task(degradation)}")
    learned_steps = meta.get("steps")
    if not schedule.step_free and learned_steps is not None and int(learned_steps) != steps:
        warnings.append(f"schedule {path} has one strength per step for {learned_steps} steps, used at {steps} "
                        "(interpolated over the step index; learn a knots schedule to use it at any step count)")
    return warnings


def _task(degradation: dict) -> str:
    """A degradation spec as comparable text: name and parameters, whichever of the two spellings it uses
    (training's ``{name, cutoff_hz}`` or evaluation's ``{name, params: {cutoff_hz}}``); seeds are ignored."""
    params = {**{k: v for k, v in degradation.items() if k not in ("name", "params", "seed")},
              **(degradation.get("params") or {})}
    inner = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{degradation.get('name', 'identity')}({inner})"
