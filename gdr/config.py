"""The evaluation config: typed dataclasses, read from YAML with dotted command-line overrides.

``python scripts/evaluate.py --config configs/smoke.yaml --model.pretrained PATH --data.root DIR``;
``--print_config`` prints the resolved YAML. The type hints are the schema (jsonargparse, as in
LightningCLI); range checks that types cannot express live in each dataclass's ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from jsonargparse import ActionConfigFile, ArgumentParser

from gdr.errors import ConfigError


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


@dataclass
class ModelConfig:
    """Which AudioLDM2 to load and how.

    pretrained: hub id, local pipeline folder, or ``gdr-tiny`` (the built-in random tiny model).
    cache_dir: where the tiny model and the cached null conditioning live (default ``$GDR_CACHE`` or ``~/.cache/gdr``).
    lora_path: a LoRA adapter folder written by ``scripts/train.py`` (lora.safetensors + adapter_config.json).
    dtype: the UNet's dtype; the VAE and vocoder stay float32 when the VAE config asks (``force_upcast``).
    attention: ``sdpa`` (fused) or ``eager``; compile: ``torch.compile`` the UNet (GPU runs; slow first call).
    variant: weight-file variant to load, e.g. ``fp16`` for ``*.fp16.safetensors`` folders (null = the plain files).
    """

    pretrained: str = "cvssp/audioldm2"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"
    cache_dir: Optional[str] = None
    lora_path: Optional[str] = None
    attention: Literal["sdpa", "eager"] = "sdpa"
    compile: bool = False
    variant: Optional[str] = None


@dataclass
class DataConfig:
    """Input clips: every audio file under ``root``, or the built-in demo clips when ``root`` is null.

    mono: ``first`` keeps channel 0 (as AudioLDM2 does), ``mean`` averages the channels.
    kind: the kind of every clip that neither ``manifest.csv`` nor a folder name marks (``speech`` turns on the
    speech metrics; ``data/README.md``); null means ``other``.
    """

    root: Optional[str] = None
    mono: Literal["first", "mean"] = "first"
    demo_seconds: float = 6.0
    kind: Optional[Literal["speech", "music", "sound", "other"]] = None

    def __post_init__(self):
        _positive("data.demo_seconds", self.demo_seconds)


@dataclass
class ChunkConfig:
    """Long audio runs in chunks of ``seconds`` overlapping by at least ``overlap_seconds``.

    Both are moved onto the model's grid (0.32 s for AudioLDM2: hop 160 x VAE 4 x UNet 8), so chunks see
    the whole clip's mel frames and latent cells; the overlap is at most half a chunk (`gdr.chunking`).

    10.24 s is the length AudioLDM2 was trained on; ``batch_size`` chunks run through the model at once.
    """

    seconds: float = 10.24
    overlap_seconds: float = 1.28
    batch_size: int = 1

    def __post_init__(self):
        _positive("chunk.seconds", self.seconds)
        if not 0 <= self.overlap_seconds <= self.seconds / 2:
            raise ConfigError(f"chunk.overlap_seconds must be in [0, chunk.seconds / 2], got {self.overlap_seconds}")
        if self.batch_size < 1:
            raise ConfigError(f"chunk.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class DegradationConfig:
    """The operator ``y = A(x) (+ n)`` applied to every clip, by registry name, with its parameters.

    ``params`` e.g. ``{cutoff_hz: 4000}`` (lowpass), ``{snr_db: 10, color: pink}`` (noise),
    ``{level: 0.1}`` (clip), ``{length_ms: 100, count: 3}`` (gaps), ``{ops: [...]}`` (compose).
    ``seed`` fixes the noise realisation per clip (independent of the sampler seeds).
    """

    name: str = "identity"
    params: dict = field(default_factory=dict)
    seed: int = 0


@dataclass
class GuidanceConfig:
    """The guidance method by registry name, its strength schedule and method parameters.

    Strength: ``constant`` uses ``scale`` at every step; ``linear`` / ``cosine`` ramp from
    ``start_scale`` (default 0) at the noisiest step to ``scale`` at the last; ``schedule_path`` loads
    a schedule learned by ``scripts/train.py`` (it replaces the others).
    ``params`` are the method's own options, e.g. ``{strength: 0.5}`` (sdedit), ``{lam: 1, zeta: 0.3}``
    (diffpir), ``{loss: norm, every: 2}`` (dps, mpgd), ``{start: target}`` (latent_pull).
    """

    name: str = "dps"
    scale: float = 1.0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    start_scale: Optional[float] = None
    params: dict = field(default_factory=dict)
    schedule_path: Optional[str] = None


@dataclass
class SamplerConfig:
    """The reverse process. ``domain``: where data consistency is measured (``mel`` or ``waveform``).

    ``seeds``: how many independent samples per clip (seeds 0 .. seeds-1).
    """

    steps: int = 50
    eta: float = 0.0
    scheduler: Literal["ddim", "ddpm"] = "ddim"
    domain: Literal["mel", "waveform"] = "mel"
    return_denoised: bool = True
    seeds: int = 1

    def __post_init__(self):
        if self.steps < 1 or self.steps > 1000:
            raise ConfigError(f"sampler.steps must be in [1, 1000], got {self.steps}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"sampler.eta must be in [0, 1], got {self.eta}")
        if self.seeds < 1:
            raise ConfigError(f"sampler.seeds must be >= 1, got {self.seeds}")


@dataclass
class ConditionConfig:
    """What the prior is conditioned on (`gdr.conditioning.ConditionSpec`; computed once per clip and cached).

    text: a prompt, e.g. ``"a man speaking"`` ("" = none); negative_text: CFG's negative prompt.
    cfg_scale: classifier-free guidance weight (1 = none; AudioLDM2's pipeline default is 3.5).
    audio: ``none`` or ``measurement``: condition on the CLAP audio embedding of the degraded input
    (no typing; the T5 stream comes from ``text`` or ""). unconditional: the null condition, ``original``
    (zeros for the GPT-2 stream, what the UNet was trained with) or ``diffusers`` ("" through the text
    stack): the UNet's condition when there is neither text nor audio, and CFG's unconditional branch.
    """

    text: str = ""
    negative_text: str = ""
    cfg_scale: float = 1.0
    audio: Literal["none", "measurement"] = "none"
    unconditional: Literal["original", "diffusers"] = "original"

    def __post_init__(self):
        from gdr.conditioning import ConditionSpec

        ConditionSpec.from_dict(dataclasses.asdict(self))  # the same checks as for sweep values


@dataclass
class SweepConfig:
    """A grid over recipes: dotted keys (``guidance.name``, ``guidance.scale``, ``degradation``,
    ``sampler.steps``, ...) mapped to lists; the run covers their Cartesian product x clips x seeds.

    skip_incompatible: drop (method, degradation) pairs that cannot run together (e.g. inpaint on
    clipping) and list them in the report, instead of failing.
    """

    grid: dict = field(default_factory=dict)
    skip_incompatible: bool = True


@dataclass
class TrainerConfig:
    """Lightning `Trainer` settings for the run: ``devices: 2`` shards the grid over two processes/GPUs."""

    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"

    def __post_init__(self):
        if self.devices < 1:
            raise ConfigError(f"trainer.devices must be >= 1, got {self.devices}")


@dataclass
class ReportConfig:
    """Statistics and report: paired bootstrap with ``bootstrap`` resamples at ``confidence``.

    seed_metrics: also compute and report the seed experiment's own waveform MSE, SNR and correlation
    (unaligned, against the input; ``configs/seed_experiment.yaml``), with their paired verdicts.
    correction: how the p-values of all the report's comparisons are adjusted together: ``holm`` (family-wise
    error rate), ``bh`` (Benjamini-Hochberg, false discovery rate) or ``none`` (`gdr.stats`).
    primary: the primary metric per task, fixed before the run: keys are a degradation name (``gaps``), a task
    label (``lowpass(cutoff_hz=4000)``) or ``default``; e.g. ``{default: lsd, gaps: plcmos, noise: pesq_wb}``.
    fad: compute FAD per method when the embedding weights are there (else one line says how to get them);
    fad_weights: the folder holding the PANN Cnn14 16 kHz checkpoint ``Cnn14_16k_mAP%3D0.438.pth`` (default
    ``$GDR_CACHE/fad``; `gdr.fad`).
    """

    bootstrap: int = 2000
    seed_metrics: bool = False
    confidence: float = 0.95
    embed_audio: bool = True
    wandb_project: str = "gdr"
    correction: Literal["holm", "bh", "none"] = "holm"
    primary: dict = field(default_factory=lambda: {"default": "lsd"})
    fad: bool = True
    fad_weights: Optional[str] = None

    def __post_init__(self):
        if self.bootstrap < 100:
            raise ConfigError(f"report.bootstrap must be >= 100, got {self.bootstrap}")
        if not 0.5 < self.confidence < 1:
            raise ConfigError(f"report.confidence must be in (0.5, 1), got {self.confidence}")
        from gdr.metrics import HIGHER_IS_BETTER

        for task, metric in (self.primary or {}).items():
            if metric not in HIGHER_IS_BETTER:
                raise ConfigError(f"report.primary.{task}: unknown metric {metric!r}; known: "
                                  f"{', '.join(HIGHER_IS_BETTER)}")


def build_parser() -> ArgumentParser:
    from gdr.degradations import DEGRADATIONS
    from gdr.guidance import GUIDANCE

    epilog = (f"guidance methods (--guidance.name): {', '.join(GUIDANCE)}\n"
              f"degradations (--degradation.name): {', '.join(DEGRADATIONS)}\n"
              "method and degradation parameters: --guidance.params '{lam: 1}' --degradation.params '{cutoff_hz: 4000}'")
    parser = ArgumentParser(prog="evaluate.py", exit_on_error=False, description=__doc__.splitlines()[0],
                            epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (configs/*.yaml)")
    parser.add_argument("--model", type=ModelConfig, default=ModelConfig())
    parser.add_argument("--data", type=DataConfig, default=DataConfig())
    parser.add_argument("--chunk", type=ChunkConfig, default=ChunkConfig())
    parser.add_argument("--degradation", type=DegradationConfig, default=DegradationConfig())
    parser.add_argument("--guidance", type=GuidanceConfig, default=GuidanceConfig())
    parser.add_argument("--sampler", type=SamplerConfig, default=SamplerConfig())
    parser.add_argument("--condition", type=ConditionConfig, default=ConditionConfig())
    parser.add_argument("--sweep", type=SweepConfig, default=SweepConfig())
    parser.add_argument("--trainer", type=TrainerConfig, default=TrainerConfig())
    parser.add_argument("--report", type=ReportConfig, default=ReportConfig())
    parser.add_argument("--logger", type=bool, default=True,
                        help="log to wandb (offline unless WANDB_MODE / wandb login say otherwise)")
    parser.add_argument("--output_dir", type=str, default="outputs/evaluate", help="where results are written")
    parser.add_argument("--progress", type=bool, default=True, help="show progress bars")
    return parser


def parse(argv: list[str] | None = None):
    """Parse `argv`; returns ``(parser, namespace, objects)`` where `objects` has the dataclasses built.

    Bad values raise `ConfigError` with one line.
    """
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
        objects = parser.instantiate(cfg)
    except argparse.ArgumentError as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(" ".join(str(exc).split())) from None
    return parser, cfg, objects
