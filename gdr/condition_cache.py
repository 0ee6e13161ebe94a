"""Conditions computed once per (model folder, condition, measured audio) and cached as safetensors.

Two kinds of entry, one format: the null condition of a folder (``null_condition/``, read by
`gdr.backbone.AudioLDM2.from_pretrained`) and any other conditioning (``conditions/``). An entry records
a fingerprint of the text-stack files it was computed from and is reused unless those files are present
and changed, so a folder whose text encoders were deleted after caching keeps working. A damaged entry is
recomputed, never fatal; entries are written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch

from gdr import checks
from gdr.conditioning import Condition, Conditioning, ConditionSpec, NullConditionKind
from gdr.errors import ModelNotFoundError
from gdr.hub import WEIGHTED, how_to_get, weight_files
from gdr.text_stack import TEXT_STACK, TextStack, check_audio_branch

# What each null kind reads; "original" also reads language_model/config.json for the GPT-2 shape.
NEEDS = {"original": ("tokenizer_2", "text_encoder_2"), "diffusers": TEXT_STACK}


def _read_entry(path: Path, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """``(tensors, metadata)`` of the entry at `path`, or None when it is absent, stale or unreadable."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if fingerprint and fingerprint != meta.get("text_stack", ""):
            return None
        return load_file(str(path)), meta
    except Exception:  # a damaged cache entry is recomputed, not fatal
        return None


def _write_entry(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from gdr.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def _streams(condition: Condition, prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}gpt2": condition.gpt2, f"{prefix}t5": condition.t5, f"{prefix}t5_mask": condition.t5_mask}


def _condition(tensors: dict[str, torch.Tensor], kind: str, prefix: str = "") -> Condition:
    return Condition(tensors[f"{prefix}gpt2"], tensors[f"{prefix}t5"], tensors[f"{prefix}t5_mask"], kind)


def _files_fingerprint(folder: Path, subfolders: tuple[str, ...]) -> str:
    """Names, sizes and mtimes of the files in `subfolders` (and GPT-2's config), or "" when not all are there."""
    if not all((folder / sub).is_dir() for sub in subfolders):
        return ""
    files = [f for sub in subfolders for f in sorted((folder / sub).glob("*")) if f.is_file()]
    files.append(folder / "language_model" / "config.json")
    ident = [(f.parent.name, f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _fingerprint(folder: Path, kind: NullConditionKind) -> str:
    """The fingerprint of the files the `kind` null reads."""
    return _files_fingerprint(folder, NEEDS[kind])


def _check_text_stack(folder: Path, kind: NullConditionKind) -> None:
    """One line naming the first part of the text stack that `kind` needs and the folder lacks."""
    for sub in NEEDS[kind]:
        if sub in WEIGHTED:
            if not (folder / sub / WEIGHTED[sub][0]).is_file() or not weight_files(folder / sub, sub):
                raise ModelNotFoundError(f"model folder {folder} is incomplete: the {kind!r} null condition needs "
                                         f"{sub}/ (config and weights) once, to be cached; {how_to_get()}")
        elif not (folder / sub).is_dir():
            raise ModelNotFoundError(f"model folder {folder} is incomplete: the {kind!r} null condition needs "
                                     f"{sub}/ once, to be cached; {how_to_get()}")


def load_null_condition(source: str | Path, kind: NullConditionKind, cache_dir: Path) -> Condition:
    """The null condition of `source`, from the safetensors cache or computed once and cached.

    The cache key is the folder and kind; a cached entry is reused unless the text-stack files it was
    computed from are present and changed (a folder whose text encoders were deleted keeps working).
    """
    checks.choice("null_condition", kind, NEEDS)
    folder = Path(source)
    key = hashlib.sha256(f"{folder}|{kind}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "null_condition" / f"{key}.safetensors"
    fingerprint = _fingerprint(folder, kind)
    if (entry := _read_entry(path, fingerprint)) is not None:
        return _condition(entry[0], kind)
    _check_text_stack(folder, kind)
    cond = TextStack(folder).null(kind)
    _write_entry(path, _streams(cond), {"source": str(folder), "kind": kind, "text_stack": fingerprint})
    logging.getLogger(__name__).info("cached the %s null condition of %s in %s", kind, folder, path)
    return cond


class ConditionCache:
    """`Conditioning`s computed once per (model folder, spec, audio content) and cached as safetensors.

    The text stack is loaded on the first miss and dropped by `close` (it is not needed for sampling).
    An entry is reused unless the text-stack files it was computed from are present and changed.

    Args:
        folder: the pipeline folder; cache_dir: gdr's cache (entries go to ``conditions/``).
    """

    def __init__(self, folder: str | Path, cache_dir: str | Path):
        self.folder, self.dir = Path(folder), Path(cache_dir) / "conditions"
        self._stack: TextStack | None = None

    def _needs(self, spec: ConditionSpec) -> tuple[str, ...]:
        if not spec.conditioned:
            return NEEDS[spec.unconditional]
        return TEXT_STACK + (("feature_extractor",) if spec.audio == "measurement" else ())

    def path(self, spec: ConditionSpec, audio: torch.Tensor | None = None) -> Path:
        content = None
        if spec.conditioned and spec.audio == "measurement":
            content = hashlib.sha256(audio.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()
        ident = {"folder": str(self.folder), "spec": dataclasses.asdict(spec), "audio": content}
        return self.dir / f"{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]}.safetensors"

    def get(self, spec: ConditionSpec, audio: torch.Tensor | None = None) -> Conditioning:
        """The conditioning of `spec` (and the measurement `audio` ``(N,)`` at 16 kHz, for ``audio: measurement``)."""
        if not spec.conditioned:  # the null condition has its own cache, shared with `AudioLDM2.from_pretrained`
            return Conditioning(load_null_condition(self.folder, spec.unconditional, self.dir.parent))
        path = self.path(spec, audio)
        fingerprint = _files_fingerprint(self.folder, self._needs(spec))
        if (entry := _read_entry(path, fingerprint)) is not None:
            t, meta = entry
            uncond = _condition(t, meta["uncond_kind"], "uncond_") if "uncond_gpt2" in t else None
            return Conditioning(_condition(t, meta["kind"]), uncond, float(meta["cfg_scale"]))
        if spec.conditioned and spec.audio == "measurement":
            check_audio_branch(self.folder)
        for sub in self._needs(spec):
            if not (self.folder / sub).is_dir():
                raise ModelNotFoundError(f"model folder {self.folder} is incomplete: the condition "
                                         f"{spec.label()} needs {sub}/ once, to be cached; {how_to_get()}")
        if self._stack is None:
            self._stack = TextStack(self.folder)
        conditioning = self._stack.conditioning(spec, audio)
        tensors = _streams(conditioning.cond)
        meta = {"source": str(self.folder), "kind": conditioning.cond.kind, "cfg_scale": repr(conditioning.cfg_scale),
                "text_stack": fingerprint, "label": spec.label()}
        if conditioning.uncond is not None:
            tensors.update(_streams(conditioning.uncond, "uncond_"))
            meta["uncond_kind"] = conditioning.uncond.kind
        _write_entry(path, tensors, meta)
        return conditioning

    def close(self) -> None:
        """Free the text stack (CLAP, Flan-T5, GPT-2: about 1.5 GB for AudioLDM2)."""
        import gc

        self._stack = None
        gc.collect()
