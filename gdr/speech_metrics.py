"""The speech metrics people publish with, and where each one means something.

Each is computed by the package the field uses, and tested equal to that package's own function on
espeak-ng speech (``tests/data/``, ``tests/test_speech_metrics.py``):

* ``pesq_wb``: ITU-T P.862.2 wideband PESQ at 16 kHz, MOS-LQO in [1.04, 4.64], through torchmetrics'
  ``PerceptualEvaluationSpeechQuality(16000, "wb")`` (which calls ``pesq.pesq``). [``pesq.pesq``]
* ``stoi`` / ``estoi``: short-time objective intelligibility (Taal et al. 2011) and its extended form
  (Jensen & Taal 2016), in [0, 1] (ESTOI can go slightly below 0), through torchmetrics'
  ``ShortTimeObjectiveIntelligibility(16000, extended=False/True)`` (which calls ``pystoi.stoi``). [``pystoi.stoi``]
* ``dnsmos_sig``, ``dnsmos_bak``, ``dnsmos_ovrl``: DNSMOS P.835 (Reddy et al. 2022) speech quality, background
  noise and overall MOS in [1, 5], non-intrusive, from the ONNX models the ``speechmos`` wheel ships (no
  download; onnxruntime on the CPU). [``speechmos.dnsmos.run``]
* ``plcmos``: PLCMOS v2 (Diener et al. 2023), packet-loss-concealment MOS in [1, 5], non-intrusive, from the
  ``speechmos`` wheel's ONNX model. It averages 15 rater embeddings drawn from numpy's global generator; gdr
  seeds that draw (`plcmos` ``seed``) and restores the generator afterwards, so a score is reproducible and
  equals ``speechmos.plcmos.run`` after ``np.random.seed(seed)``. [``speechmos.plcmos.run``]

Where they apply (`applicable`): all of them only on clips of kind ``speech`` (``data/README.md``: a
manifest column or a folder name); PLCMOS only on a task whose degradation has gaps (packet loss), the one it
was trained to judge. Elsewhere the evaluation leaves the cell blank: PESQ of a drum loop or PLCMOS of a
low-passed clip would read like a score and mean nothing.

The intrusive ones (PESQ, STOI, ESTOI) compare the output with the clean input after the same alignment as
every other metric (`gdr.metrics.align`); PESQ and STOI look at band envelopes and loudness, not phase, so
they are meaningful for outputs of the phase-free vocoder too. The non-intrusive ones (DNSMOS, PLCMOS) see
the output as written, clipped to [-1, 1] as a PCM file would hold it (the models refuse larger values).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from gdr.metric_names import DNSMOS, INTRUSIVE, SPEECH_METRICS  # noqa: F401  (what this module computes)

SAMPLE_RATE = 16000


def _trim(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(pred.shape[-1], target.shape[-1])
    return pred[..., :n], target[..., :n]


def has_gaps(degradation: dict) -> bool:
    """Whether a degradation config (``{"name": ..., "params": ...}``) drops segments, alone or in a compose."""
    if degradation.get("name") == "gaps":
        return True
    ops = (degradation.get("params") or {}).get("ops", []) if degradation.get("name") == "compose" else []
    return any(op.get("name") == "gaps" for op in ops)


def applicable(clip_kind: str, degradation: dict) -> tuple[str, ...]:
    """The speech metrics that mean something for a clip of `clip_kind` on the task `degradation`."""
    if clip_kind != "speech":
        return ()
    return (*INTRUSIVE, *DNSMOS, *(("plcmos",) if has_gaps(degradation) else ()))


# ------------------------------------------------------------------------------------------ intrusive
def _pesq_errors() -> tuple[type, ...]:
    import pesq

    # pesq's C code also raises a bare ValueError ("cannot convert float NaN to integer") for an all-zero output.
    names = ("NoUtterancesError", "BufferTooShortError")
    return (*(getattr(pesq, name) for name in names if hasattr(pesq, name)), ValueError)


def pesq_wb(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Wideband PESQ (MOS-LQO) per item through torchmetrics' ``PerceptualEvaluationSpeechQuality(16000, "wb")``.

    ``pred``, ``target``: ``(B, N)`` at 16 kHz, trimmed to the shorter length -> ``(B,)`` float64. An item in
    which PESQ finds no speech (``pesq.NoUtterancesError``, or pesq's ValueError for an all-zero output) is NaN:
    there is no score, and the evaluation leaves the cell blank.
    """
    from torchmetrics.audio import PerceptualEvaluationSpeechQuality

    pred, target = _trim(pred, target)
    errors = _pesq_errors()
    out = []
    for p, t in zip(pred.detach().cpu().double(), target.detach().cpu().double()):
        metric = PerceptualEvaluationSpeechQuality(SAMPLE_RATE, "wb")
        try:
            out.append(float(metric(p[None], t[None])))
        except errors:
            out.append(float("nan"))
    return torch.tensor(out, dtype=torch.float64)


def _stoi(pred: torch.Tensor, target: torch.Tensor, extended: bool) -> torch.Tensor:
    from torchmetrics.audio import ShortTimeObjectiveIntelligibility

    pred, target = _trim(pred, target)
    out = []
    for p, t in zip(pred.detach().cpu().double(), target.detach().cpu().double()):
        metric = ShortTimeObjectiveIntelligibility(SAMPLE_RATE, extended=extended)
        out.append(float(metric(p[None], t[None])))
    return torch.tensor(out, dtype=torch.float64)


def stoi(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """STOI per item through torchmetrics' ``ShortTimeObjectiveIntelligibility(16000)`` (``pystoi.stoi``).
    ``(B, N)`` each at 16 kHz -> ``(B,)`` float64, in [0, 1]."""
    return _stoi(pred, target, extended=False)


def estoi(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Extended STOI per item through torchmetrics' ``ShortTimeObjectiveIntelligibility(16000, extended=True)``.
    ``(B, N)`` each at 16 kHz -> ``(B,)`` float64."""
    return _stoi(pred, target, extended=True)


# ------------------------------------------------------------------------------------------ non-intrusive
def _pcm_range(x: torch.Tensor) -> np.ndarray:
    """``(N,)`` tensor -> float32 numpy in [-1, 1] (what a PCM file holds; the speechmos models refuse more)."""
    return np.clip(x.detach().cpu().float().numpy(), -1.0, 1.0)


def dnsmos(pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """DNSMOS P.835 per item: ``{"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}`` -> ``(B,)`` float64 MOS each.

    ``pred``: ``(B, N)`` at 16 kHz. ``speechmos.dnsmos.run(x, 16000)`` (the non-personalised model) on each item:
    9.01 s windows hopped by 1 s, a shorter clip repeated to 9.01 s, the window scores averaged.
    """
    from speechmos import dnsmos as speechmos_dnsmos

    scores = [speechmos_dnsmos.run(_pcm_range(x), SAMPLE_RATE) for x in pred]
    return {name: torch.tensor([float(s[f"{name.split('_')[1]}_mos"]) for s in scores], dtype=torch.float64)
            for name in DNSMOS}


@functools.lru_cache(maxsize=1)
def _plcmos_model():
    from speechmos.plcmos import PLCMOS

    return PLCMOS()


def plcmos(pred: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """PLCMOS v2 per item (``speechmos``'s ``PLCMOS()``, 15 rater embeddings), ``(B, N)`` at 16 kHz -> ``(B,)``.

    The embeddings come from numpy's global generator (speechmos draws them with ``np.random.normal``), seeded
    with `seed` for each item and restored afterwards, so nothing else's random stream changes.
    """
    model = _plcmos_model()
    state = np.random.get_state()
    out = []
    try:
        for x in pred:
            np.random.seed(seed)
            out.append(float(model(_pcm_range(x))["plcmos"]))
    finally:
        np.random.set_state(state)
    return torch.tensor(out, dtype=torch.float64)


def speech_scores(out: torch.Tensor, aligned: torch.Tensor, reference: torch.Tensor,
                  names: tuple[str, ...]) -> dict[str, float]:
    """The speech metrics `names` of one output: intrusive ones on `aligned` against `reference`, non-intrusive
    ones on `out` as written. ``out`` ``(N',)``, ``aligned`` and ``reference`` ``(N,)`` at 16 kHz."""
    scores: dict[str, float] = {}
    intrusive = {"pesq_wb": pesq_wb, "stoi": stoi, "estoi": estoi}
    for name in names:
        if name in intrusive:
            scores[name] = float(intrusive[name](aligned[None].double(), reference[None].double())[0])
    if any(name in DNSMOS for name in names):
        values = dnsmos(out[None])
        scores.update({name: float(values[name][0]) for name in DNSMOS if name in names})
    if "plcmos" in names:
        scores["plcmos"] = float(plcmos(out[None])[0])
    return scores
