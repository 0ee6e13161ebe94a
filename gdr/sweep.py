"""Sweeps: a grid of recipes (degradation x guidance x strength x steps ...) expanded into work items.

A sweep is the base config plus ``sweep.grid``: dotted config keys mapped to lists of values, e.g.

    sweep:
      grid:
        degradation: [{name: lowpass, params: {cutoff_hz: 4000}}, {name: noise, params: {snr_db: 10}}]
        guidance.name: [dps, mpgd, latent_pull]
        guidance.scale: [0.5, 1.0]
        sampler.steps: [20]
        condition.text: ["", a man speaking]

The grid is their Cartesian product; a plain run is a grid of one. Each (clip, recipe, seed) and each
(clip, task, baseline) is one `Item` with a key that hashes the clip's content and the item's resolved
config, so a restarted sweep skips what is done and shards split the same list the same way.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from gdr.errors import ConfigError

GRID_KEYS = ("degradation", "degradation.name", "degradation.params", "degradation.seed", "guidance",
             "guidance.name", "guidance.scale", "guidance.schedule", "guidance.start_scale", "guidance.params",
             "guidance.schedule_path",
             "sampler.steps", "sampler.eta", "sampler.scheduler", "sampler.domain", "sampler.return_denoised",
             "condition", "condition.text", "condition.negative_text", "condition.cfg_scale", "condition.audio",
             "condition.unconditional")


def _set(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree[part]
    if isinstance(tree.get(parts[-1]), dict) and isinstance(value, dict) and len(parts) == 1:
        tree[parts[-1]] = {**tree[parts[-1]], **value}
    else:
        tree[parts[-1]] = value


def expand_grid(base: dict, grid: dict) -> list[dict]:
    """Recipes (dicts with keys degradation, guidance, sampler) for every combination in `grid`."""
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"sweep.grid: unknown key(s) {', '.join(unknown)}; known: {', '.join(GRID_KEYS)}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key} must be a non-empty list, got {values!r}")
    recipes = []
    for combo in itertools.product(*grid.values()):
        recipe = copy.deepcopy(base)
        for key, value in zip(grid, combo):
            _set(recipe, key, copy.deepcopy(value))
        recipes.append(recipe)
    return recipes


def stable_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def task_label(degradation: dict) -> str:
    """A short, readable name of a degradation config, used in file names and tables."""
    params = degradation.get("params") or {}
    if degradation["name"] == "compose":
        return "+".join(task_label({"name": op["name"], "params": {k: v for k, v in op.items() if k != "name"}})
                        for op in params.get("ops", []))
    inner = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{degradation['name']}({inner})" if inner else degradation["name"]


def recipe_label(recipe: dict) -> str:
    """``dps s=0.5 cosine 20st`` style label of a recipe (what the report compares): the guidance, the steps, sampler
    settings away from their defaults (``waveform``, ``ddpm``, ``eta=1``) and a condition other than the default."""
    g, s = recipe["guidance"], recipe["sampler"]
    label = f"{g['name']} s={g['scale']:g}"
    if g.get("schedule_path"):
        path = Path(g["schedule_path"]).resolve()
        # scripts/train.py always writes schedule.safetensors: its folder is what names it
        label = f"{g['name']} {LEARNED}{path.parent.name if path.stem == 'schedule' else path.stem}"
    elif g.get("schedule", "constant") != "constant":
        label += f" {g['schedule']}"
    if g.get("params"):
        label += " " + ",".join(f"{k}={v}" for k, v in sorted(g["params"].items()))
    label = f"{label} {s['steps']}st"
    # Sampler settings away from the defaults, so that a sweep over them gives each recipe its own name (and wav).
    for key, default, text in (("domain", "mel", "{}"), ("scheduler", "ddim", "{}"), ("eta", 0.0, "eta={:g}")):
        if s.get(key, default) != default:
            label += " " + text.format(s[key])
    lora = recipe.get("context", {}).get("lora_name")  # set by evaluate for the methods that run the UNet
    if lora:
        label += f" lora:{lora}"
    condition = condition_label(recipe)
    return label if condition == DEFAULT_CONDITION else f"{label} {condition}"


DEFAULT_CONDITION = "null:original"
LEARNED = "learned:"  # a learned schedule's strength in a label: ``learned:<schedule file stem, or its folder for schedule.safetensors>``


def split_strength(label: str, guidance: str) -> tuple[str, str] | None:
    """A `recipe_label` of guidance method `guidance` split at its strength: ``("s=0.5", " cosine 20st")`` or
    ``("learned:dps_bwe", " 20st")``; the rest is everything else (schedule shape, parameters, steps, sampler
    settings, condition). None for a name that is not such a label (a baseline). A schedule file whose stem has
    a space is not recognised as learned (its stem runs into the rest)."""
    prefix = f"{guidance} "
    if not label.startswith(prefix):
        return None
    token, space, rest = label[len(prefix):].partition(" ")
    if not token.startswith(("s=", LEARNED)):
        return None
    return token, space + rest


def condition_label(recipe: dict) -> str:
    """Which condition a recipe samples with (`gdr.conditioning.ConditionSpec.label`), e.g. ``"rain" w=3.5``."""
    from gdr.conditioning import ConditionSpec

    return ConditionSpec.from_dict(recipe.get("condition")).label()


@dataclass
class Item:
    """One unit of work. ``kind`` is ``"baseline"`` or ``"method"``."""

    kind: str
    clip: str
    clip_hash: str
    task: str
    method: str  # baseline name or recipe label
    recipe: dict
    seed: int | None = None
    key: str = field(default="")

    @property
    def output(self) -> str:
        """The name of the item's wav: the method, and ``_seed<k>`` for a seeded item."""
        return self.method if self.seed is None else f"{self.method}_seed{self.seed}"

    def __post_init__(self):
        if not self.key:
            self.key = stable_hash({"kind": self.kind, "clip": self.clip_hash, "task": self.recipe["degradation"],
                                    "method": self.method if self.kind == "baseline" else self.recipe,
                                    "seed": self.seed, "context": self.recipe.get("context")})
