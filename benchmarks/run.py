"""gdr's speed and memory, measured side by side with diffusers' own AudioLDM2Pipeline loop.

    python benchmarks/run.py                      # tiny and real-size (random weights), CPU or GPU, a few minutes
    python benchmarks/run.py --sizes tiny --memory-only
    python benchmarks/run.py --sizes real --seconds 10.24 --steps 50 --dtype bfloat16 --compile   # on a GPU

Prints markdown tables (paste them into benchmarks/README.md):

1. Speed per guidance method: loop time, per-step time, whole reconstruction (encode y, sample, decode, vocode),
   the ratio to the diffusers `AudioLDM2Pipeline` denoising loop (``output_type="latent"``, same UNet, scheduler,
   conditioning, steps, batch, dtype, device, in this process) and, for decoder-gradient methods, the ratio to
   their arithmetic bound: UNet forwards (+ backwards for DPS) and decoder forward+backward passes, each timed
   alone, with their FLOPs counted by `torch.utils.flop_counter`.
2. The every-k option of DPS as a speed/quality trade-off (final measurement residual); classifier-free
   guidance against diffusers' CFG loop.
3. Precision and compile variants of the plain loop.
4. Peak memory (RSS on CPU, max allocated on GPU) and wall time of the chunked path for 10 s, 1 min and 10 min
   inputs, each in a fresh process, with the fitted seconds-per-audio-second slope.
5. Throughput (``--throughput-only`` for just this): item-steps per second of one batched sampling run of B
   different items (own measurement, own generator) at B = 1, 4, 16, for latent_pull and DPS, as ratios to B = 1
   in the same run, with peak memory (max allocated on GPU; on CPU the RSS growth during the run, sampled).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gdr.backbone import AudioLDM2  # noqa: E402
from gdr.builders import build_real_size_components, build_tiny_pipeline  # noqa: E402
from gdr.conditioning import Condition  # noqa: E402
from gdr.degradations import build_degradation  # noqa: E402
from gdr.measurement import DecoderMeasurement, LatentMeasurement  # noqa: E402
from gdr.methods import build_guidance  # noqa: E402
from gdr.module import generators_for, guided_reconstruction  # noqa: E402
from gdr.sampler import sample  # noqa: E402
from gdr.schedules import Constant  # noqa: E402

LATENT_METHODS = [("none", {}), ("latent_pull", {}), ("sdedit", {"strength": 1.0}), ("inpaint", {}),
                  ("diffpir (closed form)", {})]
DECODER_METHODS = [("dps", {}), ("mpgd", {}), ("diffpir", {"iters": 1}), ("decoder_inversion", {})]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    """Median wall seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fn, peer, device, repeats: int) -> tuple[float, float]:
    """Median seconds of `fn` and of `peer`, timed alternately (ABAB...) so machine noise hits both alike."""
    fn()
    peer()
    a, b = [], []
    for _ in range(repeats):
        for f, out in ((fn, a), (peer, b)):
            sync(device)
            start = time.perf_counter()
            f()
            sync(device)
            out.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def build(size: str, device: torch.device, dtype: torch.dtype):
    """(gdr backbone, diffusers pipeline) sharing the same module objects."""
    tiny = build_tiny_pipeline()
    if size == "real":
        parts = build_real_size_components()
        tiny.register_modules(vae=parts["vae"], unet=parts["unet"], vocoder=parts["vocoder"],
                              scheduler=parts["scheduler"])
    pipe = tiny.to(device)
    if dtype != torch.float32:
        pipe.unet.to(dtype)
        # diffusers' loop casts the given embeddings to these two modules' dtype (gdr's never calls them).
        pipe.text_encoder_2.to(dtype)
        pipe.language_model.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    widths = pipe.unet.config.cross_attention_dim[0] if size == "real" else [None, 16, 32]
    gen = torch.Generator().manual_seed(0)
    cond = Condition(torch.randn(1, 8, widths[1], generator=gen), torch.randn(1, 4, widths[2], generator=gen),
                         torch.ones(1, 4, dtype=torch.long), "benchmark")
    model = AudioLDM2(pipe.vae, pipe.unet, pipe.scheduler, pipe.vocoder, cond.to(device, dtype), source=size)
    return model, pipe


def clip(seconds: float, device) -> torch.Tensor:
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    x = 0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(n, generator=torch.Generator().manual_seed(0))
    return (0.5 * x / x.abs().max())[None].to(device)


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def diffusers_loop(pipe, z_shape, latents: torch.Tensor, steps: int, cond, uncond=None, guidance_scale: float = 1.0):
    """The peer every row is timed against: `AudioLDM2Pipeline`'s denoising loop (``output_type="latent"``) from
    `latents`, conditioned on `cond` (a `Condition`), with CFG against `uncond` when ``guidance_scale > 1``.
    Returns a no-argument callable to time."""
    negative = {} if uncond is None else {"negative_prompt_embeds": uncond.t5, "negative_attention_mask": uncond.t5_mask,
                                          "negative_generated_prompt_embeds": uncond.gpt2}

    def run():
        with torch.no_grad():
            pipe(prompt_embeds=cond.t5, attention_mask=cond.t5_mask, generated_prompt_embeds=cond.gpt2, **negative,
                 guidance_scale=guidance_scale, num_inference_steps=steps, audio_length_in_s=z_shape[2] * 4 * 0.01,
                 latents=latents.clone(), output_type="latent")

    return run


def speed(size: str, args, device, dtype) -> list[str]:
    model, pipe = build(size, device, dtype)
    op = build_degradation({"name": "lowpass", "cutoff_hz": 4000})
    y = op(clip(args.seconds, device))
    measurement = DecoderMeasurement(model, op, y)
    z_shape = measurement.z_y.shape
    steps, reps = args.steps, args.repeats
    c = model.null_condition
    latents = torch.randn(z_shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    peer = diffusers_loop(pipe, z_shape, latents, steps, c)
    t_peer = timed(peer, device, reps)

    # Components of the arithmetic bound, each timed alone, with their FLOPs.
    t_val = torch.tensor(500, device=device)
    z = measurement.z_y.to(dtype)

    def unet_fwd():
        with torch.no_grad():
            model.eps(z, t_val)

    def unet_fwd_bwd():
        zz = z.clone().requires_grad_(True)
        model.eps(zz, t_val).sum().backward()

    def dec_fwd_bwd():
        zz = measurement.z_y.clone().requires_grad_(True)
        measurement.residual(zz).pow(2).sum().backward()

    parts = {name: (timed(fn, device, reps), flops(fn)) for name, fn in
             (("unet_fwd", unet_fwd), ("unet_fwd_bwd", unet_fwd_bwd), ("dec_fwd_bwd", dec_fwd_bwd))}
    t_fwd, t_fb, t_dec = (parts[k][0] for k in ("unet_fwd", "unet_fwd_bwd", "dec_fwd_bwd"))
    iters = dict(DECODER_METHODS)["diffpir"]["iters"]
    bounds = {"dps": steps * (t_fb + t_dec), "mpgd": steps * (t_fwd + t_dec),
              "diffpir": steps * (t_fwd + iters * t_dec), "decoder_inversion": steps * t_dec}

    rows = [f"\n### {size} model, {args.seconds:g} s of audio (latent {tuple(z_shape)}), {steps} steps, "
            f"{str(dtype).replace('torch.', '')}, {device.type}\n",
            f"diffusers AudioLDM2Pipeline loop: {t_peer:.3f} s ({1000 * t_peer / steps:.1f} ms/step). "
            f"Bound components: UNet forward {1000 * t_fwd:.1f} ms ({parts['unet_fwd'][1] / 1e9:.2f} GFLOP), "
            f"UNet forward+backward {1000 * t_fb:.1f} ms ({parts['unet_fwd_bwd'][1] / 1e9:.2f} GFLOP), "
            f"decoder forward+backward {1000 * t_dec:.1f} ms ({parts['dec_fwd_bwd'][1] / 1e9:.2f} GFLOP).\n",
            "Ratios to diffusers use the peer loop timed alternately with each method (same rounds).\n",
            "| method | loop s | ms/step | x diffusers loop | target | bound s | x bound | whole reconstruction s |",
            "|---|---|---|---|---|---|---|---|"]

    def loop(name, params):
        guidance_name = name.split(" ")[0]
        guidance = build_guidance(guidance_name, params)
        meas = LatentMeasurement(measurement.z_y, measurement.latent_mask) if "closed" in name else measurement

        def run():
            return sample(model.eps, model.scheduler, guidance, Constant(0.5), meas, steps=steps,
                          generator=torch.Generator(device=device).manual_seed(0))

        return run

    for name, params in LATENT_METHODS + DECODER_METHODS:
        run = loop(name, params)
        heavy = (name, params) in DECODER_METHODS
        t_loop, t_ref = interleaved(run, peer, device, 1 if heavy and size == "real" and device.type == "cpu" else reps)

        def whole():
            meas = DecoderMeasurement(model, op, y)
            z_out = sample(model.eps, model.scheduler, build_guidance(name.split(" ")[0], params), Constant(0.5),
                           meas, steps=steps, generator=torch.Generator(device=device).manual_seed(0))
            with torch.no_grad():
                model.latent_to_waveform(z_out, y.shape[-1])

        if "closed" in name:  # a latent-space measurement has no waveform to reconstruct
            t_whole = float("nan")
        else:
            t_whole = time.perf_counter()
            whole()
            sync(device)
            t_whole = time.perf_counter() - t_whole
        if heavy:
            bound = bounds[name.split(" ")[0]]
            rows.append(f"| {name} | {t_loop:.3f} | {1000 * t_loop / steps:.1f} | {t_loop / t_ref:.2f} | "
                        f"<= 1.2x bound | {bound:.3f} | {t_loop / bound:.2f} | {t_whole:.3f} |")
        else:
            rows.append(f"| {name} | {t_loop:.3f} | {1000 * t_loop / steps:.1f} | {t_loop / t_ref:.3f} | "
                        f"<= 1.05x loop | | | {t_whole:.3f} |")

    rows += latent_posterior_rows(model, measurement, peer, t_peer, steps, reps, device)

    rows += ["", "DPS every k steps (speed / quality): final measurement residual |A(G(z)) - y| in the mel domain.", "",
             "| every | loop s | x diffusers loop | residual |", "|---|---|---|---|"]
    for every in (1, 2, 4):
        guidance = build_guidance("dps", {"every": every})
        start = time.perf_counter()
        z_out = sample(model.eps, model.scheduler, guidance, Constant(1.0), measurement, steps=steps,
                       generator=torch.Generator(device=device).manual_seed(0))
        sync(device)
        t_loop = time.perf_counter() - start
        with torch.no_grad():
            residual = float(measurement.residual(z_out).norm())
        rows.append(f"| {every} | {t_loop:.3f} | {t_loop / t_peer:.2f} | {residual:.2f} |")

    rows += ["", "Plain loop (guidance none) by precision and compilation:", "",
             "| variant | loop s | x fp32 loop |", "|---|---|---|"]
    base = timed(loop("none", {}), device, reps)
    rows.append(f"| {str(dtype).replace('torch.', '')} | {base:.3f} | 1.00 |")
    for variant in args.variants:
        unet = model.unet
        if variant == "bf16-autocast":
            def run_autocast():
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loop("none", {})()
            t_var = timed(run_autocast, device, reps)
        elif variant == "compile":
            model.unet = torch.compile(unet)
            try:
                t_var = timed(loop("none", {}), device, reps)
            finally:
                model.unet = unet
        rows.append(f"| {variant} | {t_var:.3f} | {t_var / base:.2f} |")
    return rows


def cfg_speed(size: str, args, device, dtype) -> list[str]:
    """Classifier-free guidance: gdr's loop (guidance none) against diffusers' CFG loop, same embeddings."""
    from gdr.conditioning import Conditioning

    model, pipe = build(size, device, dtype)
    z_shape = model.waveform_to_latent(clip(args.seconds, device)).shape
    cond = model.null_condition
    gen = torch.Generator().manual_seed(2)
    uncond = Condition(torch.randn(cond.gpt2.shape, generator=gen), torch.randn(cond.t5.shape, generator=gen),
                       cond.t5_mask.cpu(), "benchmark").to(device, dtype)
    conditioning = Conditioning(cond, uncond, 3.5)
    latents = torch.randn(z_shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    zeros = torch.zeros(z_shape, device=device, dtype=dtype)
    measurement = LatentMeasurement(zeros, zeros)
    steps = args.steps

    peer = diffusers_loop(pipe, z_shape, latents, steps, cond, uncond, guidance_scale=3.5)

    def ours():
        with torch.no_grad():
            sample(model.denoiser(conditioning), model.scheduler, build_guidance("none"), Constant(0.0), measurement,
                   steps=steps, generator=torch.Generator(device=device).manual_seed(0))

    t_ours, t_peer = interleaved(ours, peer, device, args.repeats)
    return [f"\nClassifier-free guidance (w = 3.5, one batched UNet call per step), {size} model, latent "
            f"{tuple(z_shape)}, {steps} steps, {str(dtype).replace('torch.', '')}, {device.type}; timed alternately:\n",
            "| loop | s | ms/step | x diffusers CFG loop | target |", "|---|---|---|---|---|",
            f"| diffusers AudioLDM2Pipeline, guidance_scale 3.5 | {t_peer:.3f} | {1000 * t_peer / steps:.1f} | 1.00 | |",
            f"| gdr, guidance none, cfg_scale 3.5 | {t_ours:.3f} | {1000 * t_ours / steps:.1f} | {t_ours / t_peer:.3f} "
            "| <= 1.05x |"]


# ---------------------------------------------------------------- the latent posterior samplers (PSLD, ReSample, DAPS)
LATENT_POSTERIOR_METHODS = [("psld", {}), ("resample", {"every": 1, "iters": 3, "travel": 1, "tol": 0.0}),
                            ("daps", {"ode_steps": 2, "langevin_steps": 3, "lr": 1e-4})]


class PassCounter:
    """Counts UNet calls and VAE decoder / encoder forwards (split by whether autograd records them, i.e. whether
    a backward pass follows) while a block runs, through forward hooks on ``vae.decoder`` / ``vae.encoder``."""

    def __init__(self, model, eps_model):
        self.model, self.inner, self.counts = model, eps_model, {}

    def eps(self, z, t):
        self.counts["unet"] = self.counts.get("unet", 0) + 1
        return self.inner(z, t)

    def _hook(self, name):
        def hook(module, inputs, output):
            key = f"{name}_{'grad' if output.requires_grad else 'fwd'}"
            self.counts[key] = self.counts.get(key, 0) + 1
        return hook

    def __enter__(self):
        self.counts = {}
        self.handles = [self.model.vae.decoder.register_forward_hook(self._hook("dec")),
                        self.model.vae.encoder.register_forward_hook(self._hook("enc"))]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def latent_posterior_passes(name: str, params: dict, steps: int) -> dict:
    """Each method's passes per run from its docstring's cost formula (lowpass in the mel domain: no vocoder)."""
    from gdr.methods.latent_posterior import ReSample

    if name == "psld":  # every step: UNet forward+backward, decoder forward+backward, encoder forward+backward
        return {"unet": steps, "dec_grad": steps, "enc_grad": steps}
    if name == "daps":  # every step: ode_steps UNet forwards, langevin_steps decoder forward+backward
        return {"unet": steps * params["ode_steps"], "dec_grad": steps * params["langevin_steps"]}
    method = ReSample(**params)
    active = [i for i in range(steps) if method.active(i, steps)]
    pixel = [i for i in active if method.in_pixel_stage(i, steps)]
    travel = sum(min(method.travel, steps - 1 - i) for i in active)
    return {"unet": steps + travel, "dec_fwd": len(pixel), "enc_fwd": len(pixel),
            "dec_grad": (len(active) - len(pixel)) * method.iters}


def latent_posterior_rows(model, measurement, peer, t_peer, steps, reps, device) -> list[str]:
    """PSLD, ReSample and DAPS against their arithmetic bound and the diffusers loop.

    The passes a run makes are counted (`PassCounter`) and must equal the docstrings' cost formulas
    (`latent_posterior_passes`). The bound is those passes executed alone, back to back (UNet forward or
    forward+backward, decoder forward+backward through the residual, decoder forward, encoder forward,
    encoder forward+backward), timed alternately with the method (ABAB...) so machine noise hits both alike.
    ``x diffusers`` divides by `t_peer`, the diffusers loop's time measured before.
    """
    z = measurement.z_y
    mel = measurement.decode(z).detach()
    t_val = torch.tensor(500, device=device)

    def unet(grad):
        if grad:
            model.eps(z.clone().requires_grad_(True), t_val).sum().backward()
        else:
            with torch.no_grad():
                model.eps(z, t_val)

    units = {"dec_grad": lambda: measurement.residual(z.clone().requires_grad_(True)).pow(2).sum().backward(),
             "dec_fwd": lambda: torch.no_grad()(measurement.decode)(z),
             "enc_fwd": lambda: torch.no_grad()(model.mel_to_latent)(mel),
             "enc_grad": lambda: model.mel_to_latent(mel.clone().requires_grad_(True)).pow(2).sum().backward()}
    rows = ["", ("Latent posterior samplers (`gdr/latent_posterior.py`; lowpass, mel domain, scale 0.5): passes counted "
                 "during the run, equal to each docstring's cost formula; bound = those passes run alone, timed "
                 "alternately with the method."), "",
            ("| method | params | passes (UNet / dec fwd / dec fwd+bwd / enc fwd / enc fwd+bwd) | loop s | "
             "x diffusers loop | bound s | x bound |"), "|---|---|---|---|---|---|---|"]
    for name, params in LATENT_POSTERIOR_METHODS:
        guidance = build_guidance(name, params)
        counter = PassCounter(model, model.eps)

        def run(guidance=guidance):
            return sample(model.eps, model.scheduler, guidance, Constant(0.5), measurement, steps=steps,
                          generator=torch.Generator(device=device).manual_seed(0))

        with counter:
            sample(counter.eps, model.scheduler, guidance, Constant(0.5), measurement, steps=steps,
                   generator=torch.Generator(device=device).manual_seed(0))
        counts, want = dict(counter.counts), latent_posterior_passes(name, params, steps)
        if {k: v for k, v in counts.items() if v} != {k: v for k, v in want.items() if v}:
            raise AssertionError(f"{name}: counted passes {counts} differ from its cost formula {want}")

        def bound_run(counts=counts, grad=name == "psld"):  # PSLD's one UNet pass per step is forward+backward
            for _ in range(counts.get("unet", 0)):
                unet(grad)
            for kind, fn in units.items():
                for _ in range(counts.get(kind, 0)):
                    fn()

        t_loop, bound = interleaved(run, bound_run, device, reps)
        passes = " / ".join(str(counts.get(k, 0)) for k in ("unet", "dec_fwd", "dec_grad", "enc_fwd", "enc_grad"))
        rows.append(f"| {name} | {json.dumps(params)} | {passes} | {t_loop:.3f} | {t_loop / t_peer:.2f} | "
                    f"{bound:.3f} | {t_loop / bound:.2f} |")
    return rows


def latent_posterior_speed(size: str, args, device, dtype) -> list[str]:
    """The latent posterior samplers' table alone (``--latent-posterior-only``), on the speed table's setup."""
    model, pipe = build(size, device, dtype)
    op = build_degradation({"name": "lowpass", "cutoff_hz": 4000})
    measurement = DecoderMeasurement(model, op, op(clip(args.seconds, device)))
    z_shape, c = measurement.z_y.shape, model.null_condition
    latents = torch.randn(z_shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    peer = diffusers_loop(pipe, z_shape, latents, args.steps, c)
    t_peer = timed(peer, device, args.repeats)
    return [f"\n### {size} model, {args.seconds:g} s of audio (latent {tuple(z_shape)}), {args.steps} steps, "
            f"{str(dtype).replace('torch.', '')}, {device.type}; diffusers loop {t_peer:.3f} s"] + \
        latent_posterior_rows(model, measurement, peer, t_peer, args.steps, args.repeats, device)


class RssSampler:
    """Peak resident memory of this process while a block runs (sampled every 5 ms from /proc/self/statm).

    The process-lifetime high-water mark (ru_maxrss) is dominated by model construction; this isolates the
    reconstruction itself.
    """

    def __enter__(self):
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.baseline = self.peak = self.rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()
        return self

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def loop(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())


def memory_child(seconds: float, size: str, steps: int) -> None:
    """Runs in a fresh process: one chunked guided reconstruction; prints JSON with peak memory and wall time."""
    from gdr.module import GuidedReconstructor

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = build(size, device, torch.float32)
    module = GuidedReconstructor(model, build_degradation("identity"), build_guidance("latent_pull"), Constant(0.5),
                                 steps=steps, chunk_samples=163_840, overlap_samples=20_480)
    x = clip(seconds, "cpu")[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with RssSampler() as rss:
        start = time.perf_counter()
        module.reconstruct_clip(x, seed=0)
        wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    print(json.dumps({"seconds": seconds, "wall_s": wall, "peak_mib": peak / 2**20, "device": device.type,
                      "baseline_mib": rss.baseline / 2**20}))


def profile(args, device) -> list[str]:
    """torch.profiler over one plain loop of the tiny model: where the time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, _ = build("tiny", device, torch.float32)
    op = build_degradation({"name": "lowpass", "cutoff_hz": 4000})
    measurement = DecoderMeasurement(model, op, op(clip(args.seconds, device)))

    def run():
        sample(model.eps, model.scheduler, build_guidance("latent_pull"), Constant(0.5), measurement,
               steps=args.steps, generator=torch.Generator(device=device).manual_seed(0))

    run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        run()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)
    return ["\n### Profile of the latent_pull loop (tiny model), top operators by self CPU time\n", "```",
            table.rstrip(), "```"]


def memory(args) -> list[str]:
    rows = ["\n### Memory and time against length (chunked path: 10.24 s chunks, 1.28 s overlap, "
            f"latent_pull, {args.memory_steps} steps, {args.memory_size} model, each length in a fresh process)\n",
            "Peak: CUDA max allocated on GPU; on CPU the peak resident memory sampled during the reconstruction "
            "(the process before it: model, inputs).\n",
            "| audio | wall s | RSS before MiB | peak MiB | x 10 s peak |", "|---|---|---|---|---|"]
    results = []
    for seconds in args.lengths:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(seconds), "--memory-size",
                              args.memory_size, "--memory-steps", str(args.memory_steps)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in results:
        rows.append(f"| {r['seconds']:g} s | {r['wall_s']:.1f} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | "
                    f"{r['peak_mib'] / results[0]['peak_mib']:.2f} |")
    xs = torch.tensor([r["seconds"] for r in results], dtype=torch.float64)
    ys = torch.tensor([r["wall_s"] for r in results], dtype=torch.float64)
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
    intercept = float(ys.mean() - slope * xs.mean())
    rows.append(f"\nWall time fit: {slope:.4f} s per second of audio + {intercept:.2f} s "
                f"(real-time factor {slope:.3f}); peak memory target: 10 min <= 1.2x 10 s.")
    return rows


class PeakMemory:
    """Peak memory of a block: CUDA max allocated (MB), or on CPU the peak RSS growth over the block's start,
    sampled every 2 ms by a thread (the process high-water mark cannot be reset)."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, float("nan")

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import threading

        self._start, self._peak, self._stop = self._rss(), 0, threading.Event()

        def poll():
            while not self._stop.is_set():
                self._peak = max(self._peak, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.mb = max(self._peak - self._start, 0) / 2**20


def batch_run(model, method: str, params: dict, batch: int, seconds: float, steps: int, device, conditioning=None):
    """One batched reconstruction of `batch` different items (each its own clip and generator), as evaluation
    packs them: measurement, sampling loop, decoding. Returns a no-argument callable."""
    op = build_degradation({"name": "lowpass", "cutoff_hz": 4000})
    n = int(seconds * 16000)
    gens = torch.Generator().manual_seed(7)
    y = op((0.3 * torch.randn(batch, n, generator=gens)).to(device))  # other audio in every row
    guidance = build_guidance(method, params)

    def run():
        return guided_reconstruction(model, op, guidance, Constant(0.5), y, steps=steps,
                                     generator=generators_for(range(batch), device), conditioning=conditioning)

    return run


def throughput_rows(model, device, seconds: float, steps: int, batches, repeats: int,
                    methods=(("latent_pull", {}), ("dps", {}))) -> tuple[list[str], dict]:
    """Rows of item-steps per second against the batch size (see the module docstring, item 5); also returns
    ``{(method, batch): (seconds per run, peak MB)}``."""
    rows = ["| method | batch | s per batch run | item-steps / s | x batch 1 | x real time | peak memory MB |",
            "|---|---|---|---|---|---|---|"]
    results = {}
    for method, params in methods:
        base = None
        for b in batches:
            run = batch_run(model, method, params, b, seconds, steps, device)
            with PeakMemory(device) as peak:  # `timed`'s warm-up call included (first-call allocations)
                t = timed(run, device, repeats)
            rate = b * steps / t
            base = base or rate
            results[(method, b)] = (t, peak.mb)
            rows.append(f"| {method} | {b} | {t:.3f} | {rate:.1f} | {rate / base:.2f} | {b * seconds / t:.2f} | "
                        f"{peak.mb:.0f} |")
    return rows, results


def throughput(size: str, args, device, dtype) -> list[str]:
    model, _ = build(size, device, dtype)
    rows = [f"\n### Throughput, {size} model, {args.seconds:g} s items, {args.steps} steps, "
            f"{str(dtype).replace('torch.', '')}, {device.type}, torch threads {torch.get_num_threads()}\n",
            "One sampling run of B different items (each its own clip, measurement and generator, as evaluation "
            "packs them), measurement + loop + decoding. `x batch 1`: item-steps per second over batch 1's, same "
            "run. `x real time`: audio seconds reconstructed per wall second.\n"]
    rows += throughput_rows(model, device, args.seconds, args.steps, args.batches,
                            1 if size == "real" and device.type == "cpu" else args.repeats)[0]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "real"], choices=["tiny", "real"])
    parser.add_argument("--seconds", type=float, default=2.56, help="audio per reconstruction (speed tables)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--variants", nargs="*", default=["bf16-autocast"], choices=["bf16-autocast", "compile"])
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    parser.add_argument("--lengths", nargs="+", type=float, default=[10.0, 60.0, 600.0])
    parser.add_argument("--memory-size", default="tiny", choices=["tiny", "real"])
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--profile", action="store_true", help="add a torch.profiler table of the loop")
    parser.add_argument("--latent-posterior-only", action="store_true",
                        help="only the PSLD / ReSample / DAPS table (tiny or real size, no memory runs)")
    parser.add_argument("--throughput-only", action="store_true", help="only the batch-size throughput table")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16], help="batch sizes of the throughput table")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--memory-child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child is not None:
        memory_child(args.memory_child, args.memory_size, args.memory_steps)
        return
    if args.compile:
        args.variants = [*args.variants, "compile"]
    import platform

    import diffusers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"{platform.processor() or 'CPU'}"
    print(f"# gdr benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"device {name}. torch {torch.__version__}, diffusers {diffusers.__version__}. "
          f"Command: `python benchmarks/run.py {' '.join(sys.argv[1:])}`")
    lines = []
    if args.throughput_only:
        for size in args.sizes:
            lines += throughput(size, args, device, dtype)
        print("\n".join(lines))
        return
    if args.latent_posterior_only:
        for size in args.sizes:
            lines += latent_posterior_speed(size, args, device, dtype)
        print("\n".join(lines))
        return
    if not args.memory_only:
        for size in args.sizes:
            lines += speed(size, args, device, dtype)
            lines += cfg_speed(size, args, device, dtype)
            lines += throughput(size, args, device, dtype)
    if args.profile:
        lines += profile(args, device)
    if not args.no_memory:
        lines += memory(args)
    print("\n".join(lines))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
