"""The evaluation config: typed dataclasses, read from YAML with dotted command-line overrides.

``python scripts/evaluate.py --config configs/smoke.yaml --model.pretrained PATH --data.root DIR``;
``--print_config`` prints the resolved YAML. The type hints are the schema (jsonargparse, as in
LightningCLI); range checks that types cannot express live in each dataclass's ``__post_init__``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
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
    null_condition: ``original`` (what the UNet was trained with) or ``diffusers`` (``""`` through the text stack).
    cache_dir: where the tiny model and the cached null conditioning live (default ``$GDR_CACHE`` or ``~/.cache/gdr``).
    """

    pretrained: str = "cvssp/audioldm2"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"
    null_condition: Literal["original", "diffusers"] = "original"
    cache_dir: Optional[str] = None


@dataclass
class DataConfig:
    """Input clips: every audio file under ``root``, or the built-in demo clips when ``root`` is null.

    mono: ``first`` keeps channel 0 (as AudioLDM2 does), ``mean`` averages the channels.
    """

    root: Optional[str] = None
    mono: Literal["first", "mean"] = "first"
    demo_seconds: float = 6.0

    def __post_init__(self):
        _positive("data.demo_seconds", self.demo_seconds)


@dataclass
class ChunkConfig:
    """Long audio runs in chunks of ``seconds`` overlapping by at least ``overlap_seconds``.

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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="evaluate.py", exit_on_error=False, description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file (configs/*.yaml)")
    parser.add_argument("--model", type=ModelConfig, default=ModelConfig())
    parser.add_argument("--data", type=DataConfig, default=DataConfig())
    parser.add_argument("--chunk", type=ChunkConfig, default=ChunkConfig())
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
