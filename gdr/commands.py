"""The ``gdr`` command (``python -m gdr`` too): ``gdr restore IN [IN ...] -o OUT_DIR --task TASK``.

Wiring only: parse, check everything that can be checked before any work, then per file read -> detect ->
`gdr.restore.Restorer.restore` -> write. evaluate's option blocks keep their names, defaults and checks
(``--model.*``, ``--guidance.*``, ``--sampler.*``, ``--condition.*``, ``--chunk.*``; `gdr.config`).

A bad file prints one ``error:`` line and the run goes on; the exit status is 1 if any file failed. Output
files are written atomically, never over an input; the model is loaded only when a file needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Literal, Optional

from gdr.cli import main_guard
from gdr.errors import ConfigError, GdrError

USAGE = """usage: gdr COMMAND ...

commands:
  restore   restore damaged recordings at their own rate and channels (gdr restore --help)
"""


def build_restore_parser():
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    from gdr.config import ChunkConfig, ConditionConfig, ModelConfig, SamplerConfig
    from gdr.restore import DEFAULT_METHODS, RestoreGuidanceConfig

    defaults = ", ".join(f"{task}: {name}" + (f" {params}" if params else "")
                         for task, (name, params) in DEFAULT_METHODS.items())
    parser = ArgumentParser(prog="gdr restore", exit_on_error=False,
                            description="Restore damaged recordings; the output keeps the input's rate, channels, "
                                        "length and sample format, and every reliable sample bit for bit.",
                            epilog=f"default method per task (--guidance.name): {defaults}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")
    parser.add_argument("inputs", nargs="+", type=str, help="audio files (anything soundfile reads)")
    parser.add_argument("-o", "--output-dir", type=str, required=True,
                        help="where restored files go, under the input's file name")
    parser.add_argument("--task", type=Literal["declip", "bwe", "inpaint", "denoise", "reconstruct"],
                        default="reconstruct", help="what damage to restore")
    parser.add_argument("--channels", type=Literal["mid-side", "per-channel"], default="mid-side",
                        help="stereo: the model restores the mid (default: coherent fill in both channels, half "
                             "the cost) or each channel on its own")
    parser.add_argument("--clip-level", type=Optional[float], default=None,
                        help="declip: the clipping level (full scale 1, both polarities); default: detected")
    parser.add_argument("--cutoff-hz", type=Optional[float], default=None,
                        help="bwe: the band edge in Hz; default: detected from the spectrum")
    parser.add_argument("--min-gap-ms", type=float, default=20.0,
                        help="inpaint: shortest dropout (a run of one repeated value)")
    parser.add_argument("--labels", type=Optional[str], default=None,
                        help="inpaint: an Audacity label file (start end [label] per line, seconds) of the gaps")
    parser.add_argument("--snr-db", type=Optional[float], default=None,
                        help="denoise: the SNR in dB; default: estimated from the quietest frames")
    parser.add_argument("--force", action=ActionYesNo, default=False,
                        help="run the model even when nothing was found")
    parser.add_argument("--dry-run", action=ActionYesNo, default=False,
                        help="print what each file's task detects; no model, nothing written")
    parser.add_argument("--subtype", type=Optional[str], default=None,
                        help="output sample format (soundfile's names: PCM_16, PCM_24, FLOAT, ...); default: the "
                             "input's")
    parser.add_argument("--model", type=ModelConfig, default=ModelConfig())
    parser.add_argument("--guidance", type=RestoreGuidanceConfig, default=RestoreGuidanceConfig())
    parser.add_argument("--sampler", type=SamplerConfig, default=SamplerConfig())
    parser.add_argument("--condition", type=ConditionConfig, default=ConditionConfig())
    parser.add_argument("--chunk", type=ChunkConfig, default=ChunkConfig())
    parser.add_argument("--progress", type=bool, default=True, help="a progress bar over each file's chunks")
    return parser


def parse_restore(argv: list[str]):
    """``(namespace, objects)``; bad values raise a one-line `ConfigError` (as `gdr.config.parse`)."""
    parser = build_restore_parser()
    try:
        cfg = parser.parse_args(argv)
        return cfg, parser.instantiate(cfg)
    except argparse.ArgumentError as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(" ".join(str(exc).split())) from None


def output_paths(inputs: list[Path], out_dir: Path, seeds: int) -> dict[Path, list[Path]]:
    """Each input's output file(s) (``name`` or ``stem_seed<k>.ext``); refuses collisions and inputs in one line."""
    outputs = {path: [out_dir / (path.name if seeds == 1 else f"{path.stem}_seed{k}{path.suffix}")
                      for k in range(seeds)] for path in inputs}
    owner: dict[Path, Path] = {}
    sources = {path.resolve() for path in inputs}
    for path, outs in outputs.items():
        for out in outs:
            if out.resolve() in sources:
                raise ConfigError(f"refusing to write over the input {out}: choose another --output-dir")
            if out.resolve() in owner:
                raise ConfigError(f"{owner[out.resolve()]} and {path} would both write {out}: restore them into "
                                  "different output folders")
            owner[out.resolve()] = path
    return outputs


def restore_files(argv: list[str]) -> int:
    import soundfile as sf

    from gdr.audio import read_audio, write_audio
    from gdr.detect import DetectionConfig, detect
    from gdr.interrupt import StopSignals
    from gdr.restore import Restorer, check_options

    _, o = parse_restore(argv)
    # 1. Everything checkable before any work
    detection = DetectionConfig(clip_level=o.clip_level, cutoff_hz=o.cutoff_hz, min_gap_ms=o.min_gap_ms,
                                labels=o.labels, snr_db=o.snr_db, force=o.force)
    check_options(o.task, o.channels, o.guidance, o.sampler, o.condition)
    if o.subtype is not None and o.subtype not in sf.available_subtypes():
        raise ConfigError(f"subtype {o.subtype!r} is not a soundfile subtype; known: "
                          f"{', '.join(sorted(sf.available_subtypes()))}")
    inputs = [Path(p) for p in o.inputs]
    outputs = output_paths(inputs, Path(o.output_dir), o.sampler.seeds)
    if not o.dry_run:
        from gdr.evaluate import check_writable

        check_writable(Path(o.output_dir))
    model_options = {k: v for k, v in dataclasses.asdict(o.model).items() if k != "pretrained"}
    restorer: list[Restorer] = []  # loaded by the first file that needs the model
    failed: list[str] = []
    # 2. Each file: read, detect, restore, write
    with StopSignals() as stop:
        for i, path in enumerate(inputs):
            stop.check(f"{i} of {len(inputs)} files done")
            try:
                start = time.perf_counter()
                x, sample_rate = read_audio(path, dtype="float64")
                info = sf.info(str(path))
                damage = detect(o.task, x, sample_rate, detection, name=str(path))
                print(f"{path}: {damage.summary}", flush=True)
                if o.dry_run:
                    continue
                subtype = o.subtype or info.subtype
                if not sf.check_format(info.format, subtype):
                    raise ConfigError(f"{path}: subtype {subtype} cannot be written as {info.format}")
                if not damage.found and not o.force:
                    for out in outputs[path]:
                        write_audio(out, x, sample_rate, info.format, subtype)
                    print(f"{path}: nothing to restore, copied through unchanged to {outputs[path][0]}"
                          + (" (--force runs the model anyway)" if o.task != "reconstruct" else ""), flush=True)
                    continue
                if not restorer:
                    restorer.append(Restorer.from_pretrained(o.model.pretrained, unconditional=o.condition.unconditional,
                                                             **model_options))
                for seed, out in enumerate(outputs[path]):
                    result = restorer[0].restore(x, sample_rate, o.task, guidance=o.guidance, sampler=o.sampler,
                                                 condition=o.condition, chunk=o.chunk, detection=detection,
                                                 channels=o.channels, seed=seed, damage=damage, progress=o.progress,
                                                 name=path.name)
                    write_audio(out, result.audio, sample_rate, info.format, subtype)
                    over = result.over_full_scale if subtype.startswith("PCM") else 0
                    note = (f"; {over} restored samples beyond full scale were limited to +-1 by {subtype} "
                            "(--subtype FLOAT keeps them)") if over else ""
                    print(f"{path}: {result.replaced}; method {result.method}, {sample_rate} Hz x "
                          f"{x.shape[1]} ch, {time.perf_counter() - start:.1f} s -> {out}{note}", flush=True)
            except GdrError as exc:
                message = " ".join(str(exc).split())
                print(f"error: {message if message.startswith(str(path)) else f'{path}: {message}'}",
                      file=sys.stderr, flush=True)
                failed.append(str(path))
    if failed:
        print(f"error: {len(failed)} of {len(inputs)} file(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command != "restore":
        raise ConfigError(f"unknown command {command!r}; known: restore (gdr --help)")
    return restore_files(rest)


def console() -> None:
    """The ``gdr`` console script."""
    sys.exit(main_guard(main))
