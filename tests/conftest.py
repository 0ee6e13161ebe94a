"""Shared fixtures: the tiny AudioLDM2-shaped model saved to a temp folder and loaded back, and test signals."""

import os
import sys
from pathlib import Path

# One intra-op thread per process, set before torch starts its pools: the tiny models are dominated by
# per-op overhead, and the multi-process tests (DDP, torchrun, scripts in subprocesses, which inherit this)
# would otherwise run 2 x N threads on the 2 CI cores (measured: 10-30x slower under that contention).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """An isolated gdr cache (tiny model, null conditionings) shared by tests and script subprocesses."""
    path = tmp_path_factory.mktemp("gdr_cache")
    os.environ["GDR_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(cache_dir) -> Path:
    """The tiny pipeline saved as a complete folder (the same folder `gdr-tiny` resolves to)."""
    from gdr.builders import ensure_tiny_model

    return ensure_tiny_model(cache_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir, cache_dir):
    from gdr.backbone import AudioLDM2

    return AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def language_models(tiny_dir):
    """The published GPT2Model of the tiny layout and a GPT2LMHeadModel carrying the same weights."""
    from transformers import GPT2LMHeadModel, GPT2Model

    base = GPT2Model.from_pretrained(tiny_dir / "language_model", dtype=torch.float32).eval()
    head = GPT2LMHeadModel(base.config).eval()
    head.transformer.load_state_dict(base.state_dict())
    return base, head


@pytest.fixture(scope="session")
def diffusers_pipe(tiny_dir, language_models):
    """diffusers' pipeline on the tiny layout, float32, with a GPT2LMHeadModel (where its helper works)."""
    from diffusers import AudioLDM2Pipeline

    pipe = AudioLDM2Pipeline.from_pretrained(tiny_dir, dtype=torch.float32)
    pipe.register_modules(language_model=language_models[1])
    return pipe


def run_script(script: str, *args: str, env: dict | None = None, timeout: float | None = None):
    """Run ``scripts/<script>`` in a subprocess; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True,
                          text=True, env=full_env, cwd=ROOT, timeout=timeout)


def signals(n: int = 16000, seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 test signals at 16 kHz: white noise, chirp, clipped sine, speech-like pulses, near-silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    pulses = np.zeros(n)
    pulses[:: 16000 // 120] = 1.0  # 120 Hz glottal-like pulse train
    # Two resonances (formants near 700 Hz and 1200 Hz) as decaying sinusoid kernels.
    k = np.arange(400) / 16000
    kernel = np.exp(-k * 300) * (np.sin(2 * np.pi * 700 * k) + 0.5 * np.sin(2 * np.pi * 1200 * k))
    speech = np.convolve(pulses, kernel)[:n] * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return {
        "white_noise": 0.3 * rng.standard_normal(n),
        "chirp": 0.5 * np.sin(2 * np.pi * (100 * t + 0.5 * 7000 * t**2 / t[-1])),
        "clipped_sine": np.clip(np.sin(2 * np.pi * 440 * t), -0.3, 0.3),
        "speech_like": 0.4 * speech / np.abs(speech).max(),
        "near_silence": 1e-4 * rng.standard_normal(n),
    }


def to_tensor(x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(x, dtype=dtype)[None]
