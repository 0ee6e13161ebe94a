"""Fréchet audio distance per method over a whole run: optional, and only with weights the user supplies.

FAD (Kilgour et al. 2019, arXiv 1812.08466) is the Fréchet distance between Gaussian fits of two sets of
embeddings: ``||mu_r - mu_e||^2 + Tr(S_r + S_e - 2 (S_r S_e)^(1/2))``. Here the embedding is PANN Cnn14 at
16 kHz (Kong et al. 2020; the 2048-d clip embedding, the "FD" of AudioLDM's evaluation), computed by the
``frechet_audio_distance`` package (``pip install -e '.[fad]'``; its 0.1.x line is the one that installs beside
numpy 2) from a checkpoint the user downloads once. That package downloads the checkpoint itself when it is
absent; gdr checks that it is there first, so nothing is ever fetched at run time. Without the package or the
weights the report says FAD was not computed, one line on stderr says how to get them, and the run goes on.

Sets, per task and method: the reference is the run's clean inputs (one per clip), the evaluation set that
method's outputs on the task (clips x seeds). One embedding per clip: the literature uses hundreds of clips,
so with a handful the number only ranks methods on this run; the report gives the counts.

The Fréchet distance is computed exactly in the span of the embeddings (`frechet_distance`), not with a
``d x d`` matrix square root: with ``S_r = A A^T`` and ``S_e = B B^T`` (A, B: centred embeddings over
``sqrt(n - 1)``, ``d x n``), ``Tr (S_r S_e)^(1/2)`` is the sum of the singular values of ``A^T B``. A scipy
``sqrtm`` of a 2048 x 2048 product takes ~15 s on 2 cores; this takes milliseconds, and equals the textbook
formula on the package's Gaussian fit (``tests/test_fad.py``). The package's own ``calculate_frechet_distance``
is not used: it unpacks ``sqrtm(..., disp=False)`` into two values, which fails with scipy >= 1.16.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from gdr.run_folder import RunFolder

WEIGHTS_FILE = "Cnn14_16k_mAP%3D0.438.pth"  # the name frechet_audio_distance looks for in its ckpt_dir
WEIGHTS_URL = "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth"
EMBEDDING = "PANN Cnn14 16 kHz (2048-d clip embedding)"


def weights_folder(configured: str | None = None) -> Path:
    """Where the checkpoint is looked for: `configured` (``report.fad_weights``), else ``$GDR_CACHE/fad``."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("GDR_CACHE", Path.home() / ".cache" / "gdr")) / "fad"


def unavailable(folder: Path) -> str | None:
    """None when FAD can be computed, else one line saying what is missing and how to get it."""
    how = f"get {WEIGHTS_URL} (~330 MB) into {folder}/ (--report.fad false silences this)"
    try:
        import frechet_audio_distance  # noqa: F401
    except ImportError:
        return f"FAD not computed: the optional extra is not installed (pip install -e '.[fad]'); {how}"
    if not (folder / WEIGHTS_FILE).is_file():
        return f"FAD not computed: no PANN Cnn14 16 kHz weights; {how}"
    return None


class Embedder:
    """PANN Cnn14-16k clip embeddings through ``frechet_audio_distance.FrechetAudioDistance(model_name="pann")``.

    The weights must already be in `folder` (`unavailable` says so); the package's global side effect
    (``torch.hub.set_dir(folder)``) is undone after loading.
    """

    def __init__(self, folder: Path):
        import torch
        from frechet_audio_distance import FrechetAudioDistance

        if (reason := unavailable(folder)) is not None:
            from gdr.errors import ModelNotFoundError

            raise ModelNotFoundError(reason)
        hub_dir = torch.hub.get_dir()
        try:
            self.fad = FrechetAudioDistance(ckpt_dir=str(folder), model_name="pann", sample_rate=16000,
                                            use_pca=False, use_activation=False, verbose=False)
        finally:
            torch.hub.set_dir(hub_dir)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """``(N,)`` float waveform at 16 kHz -> ``(2048,)`` float32 embedding.

        One clip per call: version 0.1.x's ``get_embeddings`` concatenates PANN's per-clip vectors of a list into
        one long vector, so the list is built here (and its swallowed errors surface as an empty result)."""
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints instead of raising
            out = self.fad.get_embeddings([np.asarray(audio, dtype=np.float32)])
        if out.shape != (2048,):
            raise RuntimeError(f"PANN embedding of shape {out.shape}, expected (2048,)")
        return out


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits (mean, unbiased covariance) of embeddings `x` ``(n1, d)`` and
    `y` ``(n2, d)``, both ``n >= 2``: ``||mu_x - mu_y||^2 + Tr S_x + Tr S_y - 2 ||A^T B||_*`` (module docstring)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("a Fréchet distance needs at least two embeddings per set")
    a = (x - x.mean(0)).T / np.sqrt(len(x) - 1)  # (d, n1): S_x = a a^T
    b = (y - y.mean(0)).T / np.sqrt(len(y) - 1)
    cross = np.linalg.svd(a.T @ b, compute_uv=False).sum()  # Tr (S_x S_y)^(1/2)
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2 * cross)


def fad_per_method(folder: RunFolder, rows: list[dict], clips: list[str], embed) -> list[dict]:
    """``[{"task", "method", "fad", "n_eval", "n_ref"}]`` for every (task, method) with at least two outputs.

    `embed`: ``(N,)`` waveform -> ``(d,)`` (an `Embedder`); reference set: the clean inputs of `clips`;
    evaluation set: the wavs of the rows of that task and method (all seeds)."""
    import soundfile as sf

    def load(path: Path) -> np.ndarray:
        return sf.read(str(path), dtype="float32")[0]

    reference = np.stack([embed(load(folder.input_wav(c))) for c in clips])
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r["wav"])
    out = []
    for (task, method), wavs in groups.items():
        if len(wavs) < 2 or len(reference) < 2:
            continue
        evaluated = np.stack([embed(load(folder.root / w)) for w in wavs])
        out.append({"task": task, "method": method, "fad": frechet_distance(reference, evaluated),
                    "n_eval": len(wavs), "n_ref": len(reference)})
    return out
