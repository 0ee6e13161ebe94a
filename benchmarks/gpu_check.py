"""The GPU check: everything gdr claims about speed on a GPU, measured in one command on one GPU (< 8 minutes).

    bash benchmarks/gpu_check.sh                 # on a GPU: the full-size layout with random weights, built here
    bash benchmarks/gpu_check.sh --dry-run       # anywhere: the tiny model on the CPU, 2 steps (what a test runs)

Prints markdown for benchmarks/README.md:

1. Precision: the final latents of the plain loop (guidance none, same initial noise) with the UNet in bfloat16,
   float16, under ``torch.compile``, and with eager attention instead of SDPA, each against the float32 SDPA run
   (max absolute error, and relative to the largest latent value).
2. Speed: seconds per 10.24 s clip at 50 steps (batch 1, ``--dtype``, default bfloat16) for latent_pull, dps and
   classifier-free guidance (w = 3.5), each against diffusers' ``AudioLDM2Pipeline`` denoising loop on the same
   device, dtype and weights (timed alternately), as a ratio.
3. Batch scaling: item-steps per second, real-time factor and peak memory at batch 1, 4, 16 (and 32) for
   latent_pull and DPS (`benchmarks/run.py`'s throughput table).
4. The goals, met or not: latent-guided batched >= 100x real time, DPS batched >= 20x real time, the guided
   latent loop <= 1.05x diffusers' loop at batch 1.

Weights are random: the numbers are speed and numerical agreement, never quality.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (benchmarks/run.py: build, timed, interleaved, diffusers_loop, throughput_rows)

from gdr.conditioning import Conditioning  # noqa: E402
from gdr.measurement import LatentMeasurement  # noqa: E402
from gdr.methods import build_guidance  # noqa: E402
from gdr.sampler import sample  # noqa: E402
from gdr.schedules import Constant  # noqa: E402

GOALS = {"latent": 100.0, "dps": 20.0, "loop": 1.05}  # x real time, x real time, x diffusers' loop


def plain_latents(model, z_shape, steps: int, device, conditioning=None) -> torch.Tensor:
    """The plain loop's final latents from a fixed initial noise (generator seed 0)."""
    zeros = torch.zeros(z_shape, device=device)
    with torch.no_grad():
        return sample(model.denoiser(conditioning), model.scheduler, build_guidance("none"), Constant(0.0),
                      LatentMeasurement(zeros, zeros), steps=steps,
                      generator=torch.Generator(device=device).manual_seed(0)).float()


def precision(model, z_shape, steps: int, device, with_compile: bool) -> list[str]:
    from diffusers.models.attention_processor import AttnProcessor

    reference = plain_latents(model, z_shape, steps, device)
    scale = float(reference.abs().max())
    rows = ["| variant | max abs error | relative to max latent |", "|---|---|---|"]
    unet = model.unet
    variants = [("bfloat16 UNet", lambda u: u.to(torch.bfloat16)), ("float16 UNet", lambda u: u.to(torch.float16)),
                ("eager attention (not SDPA)", lambda u: (u.set_attn_processor(AttnProcessor()), u)[1])]
    if with_compile:
        variants.append(("torch.compile (float32)", torch.compile))
    for name, make in variants:
        model.unet = make(copy.deepcopy(unet))
        try:
            start = time.perf_counter()
            out = plain_latents(model, z_shape, steps, device)
            err = float((out - reference).abs().max())
            rows.append(f"| {name} | {err:.2e} | {err / scale:.2e} |" + ("" if "compile" not in name else
                                                                          f" (first call {time.perf_counter() - start:.0f} s)"))
        finally:
            model.unet = unet
    if not with_compile:
        rows.append("| torch.compile | skipped (--no-compile / --dry-run) | |")
    return rows


def speed(model, pipe, z_shape, seconds: float, steps: int, device, repeats: int) -> tuple[list[str], dict]:
    """Batch 1 against diffusers' loop (same weights, dtype, device, steps): the denoising loop alone (what diffusers'
    ``output_type="latent"`` runs) and the whole clip (measurement, loop, decoding to a waveform)."""
    from gdr.degradations import build_degradation
    from gdr.measurement import DecoderMeasurement

    dtype = next(model.unet.parameters()).dtype
    cond = model.null_condition
    latents = torch.randn(z_shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    peer = bench.diffusers_loop(pipe, z_shape, latents, steps, cond)
    cfg_peer = bench.diffusers_loop(pipe, z_shape, latents, steps, cond, cond, guidance_scale=3.5)
    op = build_degradation({"name": "lowpass", "cutoff_hz": 4000})
    measurement = DecoderMeasurement(model, op, op(bench.clip(seconds, device)))
    rows = ["| method | loop s | diffusers loop s | x diffusers loop | whole clip s | x real time |",
            "|---|---|---|---|---|---|"]
    ratios = {}
    for name, conditioning, reference in (("latent_pull", None, peer), ("dps", None, peer),
                                          ("none + CFG 3.5", Conditioning(cond, cond, 3.5), cfg_peer)):
        method = name.split(" ")[0]

        def loop():
            return sample(model.denoiser(conditioning), model.scheduler, build_guidance(method), Constant(0.5),
                          measurement, steps=steps, generator=torch.Generator(device=device).manual_seed(0))

        t, t_ref = bench.interleaved(loop, reference, device, repeats)
        t_clip = bench.timed(bench.batch_run(model, method, {}, 1, seconds, steps, device, conditioning), device,
                             repeats)
        ratios[name] = t / t_ref
        rows.append(f"| {name} | {t:.3f} | {t_ref:.3f} | {t / t_ref:.2f} | {t_clip:.3f} | {seconds / t_clip:.1f} |")
    return rows, ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, 2 steps: a walk-through")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                        help="UNet dtype of the speed and batch tables")
    parser.add_argument("--steps", type=int, help="default 50 (2 with --dry-run)")
    parser.add_argument("--seconds", type=float, help="default 10.24 (1.28 with --dry-run)")
    parser.add_argument("--batches", nargs="+", type=int, help="default 1 4 16 32 (1 2 with --dry-run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (its first call compiles)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" on every UNet cast
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("error: no CUDA device here; `bash benchmarks/gpu_check.sh --dry-run` walks through the check on the "
              "CPU with the tiny model", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda and not args.dry_run else "cpu")
    size = "tiny" if args.dry_run else "real"
    steps = args.steps or (2 if args.dry_run else 50)
    seconds = args.seconds or (1.28 if args.dry_run else 10.24)
    batches = args.batches or ([1, 2] if args.dry_run else [1, 4, 16, 32])
    repeats = 1 if args.dry_run else args.repeats
    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    import diffusers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# gdr GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          + (" (DRY RUN: tiny model on the CPU, not a measurement)" if args.dry_run else "") + "\n")
    print(f"Device {name}; torch {torch.__version__}, diffusers {diffusers.__version__}; {size} layout with random "
          f"weights; {seconds:g} s clips, {steps} steps. Command: `bash benchmarks/gpu_check.sh "
          f"{' '.join(sys.argv[1:])}`\n")

    # 1. Precision (the float32 model, variants made from copies of its UNet).
    model, _ = bench.build(size, device, torch.float32)
    z_shape = model.waveform_to_latent(bench.clip(seconds, device)).shape
    print(f"## Precision: plain loop latents {tuple(z_shape)} against float32 + SDPA\n")
    print("\n".join(precision(model, z_shape, steps, device, with_compile=not (args.dry_run or args.no_compile))))
    del model

    # 2. Speed at batch 1 against diffusers, 3. batch scaling: the UNet in --dtype.
    model, pipe = bench.build(size, device, dtype)
    print(f"\n## Speed at batch 1, UNet {args.dtype}: one {seconds:g} s clip, {steps} steps\n")
    rows, ratios = speed(model, pipe, z_shape, seconds, steps, device, repeats)
    print("\n".join(rows))
    print(f"\n## Batch scaling, UNet {args.dtype}\n")
    rows, results = bench.throughput_rows(model, device, seconds, steps, batches, repeats)
    print("\n".join(rows))

    # 4. The goals.
    def realtime(method):
        return max(b * seconds / results[(method, b)][0] for b in batches)

    checks = [(f"latent-guided (latent_pull) batched >= {GOALS['latent']:g}x real time", realtime("latent_pull"),
               realtime("latent_pull") >= GOALS["latent"], "x"),
              (f"DPS batched >= {GOALS['dps']:g}x real time", realtime("dps"), realtime("dps") >= GOALS["dps"], "x"),
              (f"guided latent loop (latent_pull) <= {GOALS['loop']:g}x diffusers' loop at batch 1",
               ratios["latent_pull"], ratios["latent_pull"] <= GOALS["loop"], "x")]
    print("\n## Goals\n")
    for what, value, ok, unit in checks:
        verdict = "not judged (dry run)" if args.dry_run else ("met" if ok else "NOT met")
        print(f"- {what}: {value:.2f}{unit}, {verdict}")
    print(f"\nTotal {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
