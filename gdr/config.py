"""The evaluation config: typed dataclasses, read from YAML with dotted command-line overrides.

``python scripts/evaluate.py --config configs/smoke.yaml --model.pretrained PATH --data.root DIR``;
``--print_config`` prints the resolved YAML. The type hints are the schema (jsonargparse, as in
LightningCLI); range checks that types cannot express live in each dataclass's ``__post_init__``.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

from gdr import checks
from gdr.errors import ConfigError
from gdr.schedulers import check_sampling


@dataclass
class ModelConfig:
    """Which AudioLDM2 to load and how.

    Attributes:
        pretrained: Hub id (cvssp/audioldm2, -large, -music), a local pipeline folder, or gdr-tiny (the built-in
            random tiny model).
        dtype: The UNet's dtype; the VAE and vocoder stay float32 when the VAE config asks (force_upcast).
        device: auto (a GPU when there is one), cpu, cuda or cuda:N.
        cache_dir: Where the tiny model and cached conditions live (null = $GDR_CACHE, else ~/.cache/gdr).
        lora_path: A LoRA adapter folder written by scripts/train.py (lora.safetensors, adapter_config.json).
        attention: UNet attention: sdpa (fused) or eager.
        compile: torch.compile the UNet (for GPU runs; the first call is slow).
        variant: Weight-file variant, e.g. fp16 for *.fp16.safetensors (null = the plain files).
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
    """Input clips: every audio file under root, or the built-in demo clips.

    Attributes:
        root: Folder of audio files (any depth); null = the built-in demo clips.
        mono: How several channels become one: first keeps channel 0 (as AudioLDM2 does), mean averages them.
        demo_seconds: Length of each demo clip in seconds, > 0 (used when root is null).
        kind: Kind of every clip that neither manifest.csv nor a folder name marks; speech turns on the speech
            metrics (data/README.md); null = other.
        files: A text file naming the clips to load, one path per line relative to root (e.g. the val.txt a
            training run wrote next to its checkpoints); null = every audio file under root.
    """

    root: Optional[str] = None
    mono: Literal["first", "mean"] = "first"
    demo_seconds: float = 6.0
    kind: Optional[Literal["speech", "music", "sound", "other"]] = None
    files: Optional[str] = None

    def __post_init__(self):
        checks.positive("data.demo_seconds", self.demo_seconds)
        if self.root is not None and not Path(self.root).exists():  # before any heavy import (gdr.data says more)
            from gdr.errors import AudioFileNotFoundError

            raise AudioFileNotFoundError(f"{self.root}: no such folder")
        if self.files is not None and not Path(self.files).is_file():
            from gdr.errors import AudioFileNotFoundError

            raise AudioFileNotFoundError(f"data.files {self.files}: no such file list")


@dataclass
class ChunkConfig:
    """Long audio runs in overlapping chunks on the model's grid (0.32 s for AudioLDM2).

    Attributes:
        seconds: Chunk length in seconds, > 0 (10.24 s is what AudioLDM2 was trained on).
        overlap_seconds: Overlap of neighbouring chunks in seconds, in [0, seconds / 2].
        batch_size: Chunks that go through the model at once, an integer >= 1.
    """

    seconds: float = 10.24
    overlap_seconds: float = 1.28
    batch_size: int = 1

    def __post_init__(self):
        checks.positive("chunk.seconds", self.seconds)
        if not 0 <= self.overlap_seconds <= self.seconds / 2:
            raise ConfigError(f"chunk.overlap_seconds must be in [0, chunk.seconds / 2], got {self.overlap_seconds}")
        checks.integer("chunk.batch_size", self.batch_size, low=1)


@dataclass
class DegradationConfig:
    """The operator y = A(x) (+ n) applied to every clip, by registry name.

    Attributes:
        name: The degradation (see the list below), e.g. lowpass.
        params: Its parameters, e.g. {cutoff_hz: 4000} (lowpass), {snr_db: 10, color: pink} (noise),
            {level: 0.1} (clip), {length_ms: 100, count: 3} (gaps).
        seed: Seed of the noise realisation per clip, an integer (independent of the sampler seeds).
    """

    name: str = "identity"
    params: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        from gdr.degradations import build_degradation

        build_degradation({"name": self.name, **(self.params or {})})  # unknown names and bad values: one line now


@dataclass
class GuidanceConfig:
    """The guidance method, its per-step strength and its own parameters.

    Attributes:
        name: The method (see the list below), e.g. dps.
        scale: Strength at every step (constant) or at the last step (ramps), a finite number >= 0.
        schedule: constant, or a linear / cosine ramp from start_scale at the noisiest step to scale.
        start_scale: First strength of a ramp, >= 0 (null = 0).
        params: The method's own options, e.g. {strength: 0.5} (sdedit), {lam: 1, zeta: 0.3} (diffpir),
            {loss: norm, every: 2} (dps, mpgd), {start: target} (latent_pull).
        schedule_path: A schedule learned by scripts/train.py (schedule.safetensors); replaces scale and
            schedule.
    """

    name: str = "dps"
    scale: float = 1.0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    start_scale: Optional[float] = None
    params: dict = field(default_factory=dict)
    schedule_path: Optional[str] = None

    def __post_init__(self):
        from gdr.methods import build_guidance

        if self.name is not None:  # None: the task's default method (gdr restore)
            build_guidance(self.name, self.params)  # unknown names and bad values: one line, before the model loads


@dataclass
class SamplerConfig:
    """The reverse process (the diffusers scheduler does the math).

    Attributes:
        steps: Sampling steps, an integer in [1, 1000].
        eta: DDIM eta in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like noise).
        scheduler: ddim or ddpm.
        domain: Where data consistency is measured: mel (the VAE's input) or waveform (through the vocoder).
        return_denoised: Decode the last step's denoised estimate (true) or its prev_sample (false, as the
            seed experiment did).
        seeds: Independent samples per clip (seeds 0 .. seeds-1), an integer >= 1.
        batch_size: Latents per sampling run, packed across clips, chunks and seeds of one recipe: auto (up to 16,
            from free accelerator memory; 4 on a CPU) or an integer >= 1. Changes the speed, not the results.
    """

    steps: int = 50
    eta: float = 0.0
    scheduler: Literal["ddim", "ddpm"] = "ddim"
    domain: Literal["mel", "waveform"] = "mel"
    return_denoised: bool = True
    seeds: int = 1
    batch_size: Union[int, Literal["auto"]] = "auto"

    def __post_init__(self):
        check_sampling(self.steps, self.eta, self.scheduler, self.domain)
        checks.integer("sampler.seeds", self.seeds, low=1)
        self.batch_size = checks.auto_or_integer("sampler.batch_size", self.batch_size, low=1)


@dataclass
class ConditionConfig:
    """What the prior is conditioned on (computed once per clip and cached).

    Attributes:
        text: A prompt, e.g. "a man speaking" ("" = none).
        negative_text: Classifier-free guidance's negative prompt ("" = the null condition).
        cfg_scale: Classifier-free guidance weight, a finite number >= 0 (1 = none; AudioLDM2's pipeline
            uses 3.5).
        audio: none, or measurement: condition on the CLAP audio embedding of the degraded input.
        unconditional: The null condition: original (zeros for the GPT-2 stream, what the UNet was trained
            with) or diffusers ("" through the text stack).
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
    """A grid over recipes, crossed with every clip and seed.

    Attributes:
        grid: Dotted keys mapped to lists, e.g. {guidance.name: [dps, mpgd], guidance.scale: [0.5, 1]}; the run
            covers their Cartesian product.
        skip_incompatible: Drop (method, degradation) pairs that cannot run together (e.g. inpaint on
            clipping) and list them in the report, instead of failing.
    """

    grid: dict = field(default_factory=dict)
    skip_incompatible: bool = True


@dataclass
class TrainerConfig:
    """Lightning Trainer settings for the run.

    Attributes:
        accelerator: auto, cpu or gpu.
        devices: Processes / GPUs per node the grid is sharded over, an integer >= 1.
        num_nodes: Machines (torchrun or SLURM launches one process per device on each), an integer >= 1.
        strategy: Lightning's strategy: auto, ddp, ...
    """

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"

    def __post_init__(self):
        checks.integer("trainer.devices", self.devices, low=1)
        checks.integer("trainer.num_nodes", self.num_nodes, low=1)

    @property
    def world_size(self) -> int:
        """Processes in all: one per device on every node."""
        return self.devices * self.num_nodes


@dataclass
class ReportConfig:
    """Statistics and the report.

    Attributes:
        bootstrap: Paired bootstrap resamples, an integer >= 100.
        seed_metrics: Also report the seed experiment's own waveform MSE, SNR and correlation (unaligned,
            against the input) with their paired verdicts.
        confidence: Confidence level of the intervals, in (0.5, 1).
        embed_audio: Embed the wavs in report.html (one self-contained file that grows with the audio); false
            links them by relative path.
        wandb_project: The wandb project (offline unless WANDB_MODE or wandb login say otherwise).
        correction: How all the report's p-values are adjusted together: holm (family-wise error), bh
            (Benjamini-Hochberg, false discovery rate) or none.
        primary: The primary metric per task, fixed before the run: keys are a degradation name, a task label
            or default, e.g. {default: lsd, gaps: plcmos}.
        fad: Compute FAD per method when the PANN weights are there (else one warning line says how).
        fad_weights: Folder holding the PANN Cnn14 16 kHz checkpoint (null = $GDR_CACHE/fad).
    """

    bootstrap: int = 2000
    seed_metrics: bool = False
    confidence: float = 0.95
    embed_audio: bool = False
    wandb_project: str = "gdr"
    correction: Literal["holm", "bh", "none"] = "holm"
    primary: dict = field(default_factory=lambda: {"default": "lsd"})
    fad: bool = True
    fad_weights: Optional[str] = None

    def __post_init__(self):
        checks.integer("report.bootstrap", self.bootstrap, low=100)
        checks.number("report.confidence", self.confidence, low=0.5, high=1, low_open=True, high_open=True)
        from gdr.metric_names import HIGHER_IS_BETTER

        for task, metric in (self.primary or {}).items():
            if metric not in HIGHER_IS_BETTER:
                raise ConfigError(f"report.primary.{task}: unknown metric {metric!r}; known: "
                                  f"{', '.join(HIGHER_IS_BETTER)}")


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help (each option's description, type and default) with the epilog's lines kept."""


def build_parser() -> ArgumentParser:
    from gdr.degradations import DEGRADATIONS
    from gdr.methods import GUIDANCE

    tags = {"per_step_strength": "strength per step", "decoder_gradients": "decoder gradients",
            "needs_mask": "needs a maskable degradation"}
    methods = "\n".join(f"  {name:18s}" + ", ".join([t for k, t in tags.items() if getattr(cls, k)]
                                                   + ([] if cls.uses_prior else ["no diffusion prior"]))
                         for name, cls in GUIDANCE.items())
    epilog = (f"guidance methods (--guidance.name):\n{methods}\n"
              f"degradations (--degradation.name): {', '.join(DEGRADATIONS)}\n"
              "method and degradation parameters: --guidance.params '{lam: 1}' --degradation.params '{cutoff_hz: 4000}'\n"
              "configs: configs/smoke.yaml (tiny offline model), configs/default.yaml (cvssp/audioldm2), "
              "configs/sweep_*.yaml, configs/seed_experiment.yaml")
    parser = ArgumentParser(prog="evaluate.py", exit_on_error=False,
                            description="Zero-shot guided reconstruction with AudioLDM2: degrade clips, reconstruct "
                                        "them with guidance methods and baselines, score, and report.",
                            epilog=epilog, formatter_class=HelpFormatter)
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


def check_config_files(argv: list[str] | None) -> None:
    """One line naming the file (and line) for a ``--config`` that is missing or not valid YAML."""
    import sys

    import yaml

    argv = sys.argv[1:] if argv is None else argv
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{path}{where}: {problem} (not valid YAML)") from None


def plain_message(text: str) -> str:
    """jsonargparse's type errors as a user reads them: ``guidance.scale must be a finite number, got nan``."""
    import re

    text = " ".join(text.split())
    match = re.search(r'Parser key "([^"]+)": Expected a <class \'(float|int|bool)\'>\. Got value: (\S+)', text)
    if match:
        key, kind, value = match.groups()
        what = {"float": "a finite number", "int": "an integer", "bool": "true or false"}[kind]
        return f"{key} must be {what}, got {value}"
    match = re.search(r'Parser key "([^"]+)": Does not validate against any of the Union subtypes '
                      r'Subtypes: \[(.*?)\].*Given value: (.*)$', text)
    if match:  # e.g. an int-or-null option given text, or a subclass option (the learner) given a bad value
        key, subtypes, value = match.groups()
        nested = re.fullmatch(r"NestedArg\(key='([^']+)', val='(.*)'\)", value)
        if nested:
            return f"{key}.init_args.{nested.group(1)}: {nested.group(2)!r} is not a valid value"
        names = [("null" if t == "NoneType" else t) for t in re.findall(r"<class '(?:[\w.]+\.)?(\w+)'>", subtypes)]
        return f"{key} must be {' or '.join(names)}, got {value!r}"
    return text


def parse(argv: list[str] | None = None):
    """Parse `argv`; returns ``(parser, namespace, objects)`` where `objects` has the dataclasses built.

    Bad values raise `ConfigError` with one line.
    """
    parser = build_parser()
    check_config_files(argv)
    try:
        cfg = parser.parse_args(argv)
        objects = parser.instantiate(cfg)
    except argparse.ArgumentError as exc:
        raise ConfigError(plain_message(str(exc))) from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(" ".join(str(exc).split())) from None
    return parser, cfg, objects
