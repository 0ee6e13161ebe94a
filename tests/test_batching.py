"""Batched sampling equals one item at a time: every method, eta 0 and 1, with and without CFG, clips of two
lengths (one long enough to be chunked and joined) and two seeds packed into batches of 4 latents.

The reference is the same code with a batch of one latent, which draws each chunk's noise from that chunk's own
generator alone; the batched run can only match it if every row keeps its own random stream, measurement, mask,
loss and conditioning (the mutations ``batch_*`` in ``tests/mutate.py`` break each of these in turn).
"""

from __future__ import annotations

import csv

import pytest
import torch

from gdr.batching import BatchSize, pack
from gdr.chunking import chunk_layout
from gdr.conditioning import Condition, Conditioning
from gdr.degradations import build_degradation
from gdr.errors import ConfigError
from gdr.methods import GUIDANCE, build_guidance
from gdr.module import GuidedReconstructor, chunk_seed
from gdr.schedules import build_schedule

CHUNK, OVERLAP = 10_240, 5_120  # two and one grids of the tiny model (5120 samples)
SHORT, LONG = 10_240, 15_000  # one chunk; two chunks joined by a crossfade
# Cheap settings of the costly methods (a few inner iterations), so the matrix stays seconds per case.
PARAMS = {"latent_pull": {"masked": True}, "sdedit": {"strength": 0.5}, "diffpir": {"iters": 2},
          "resample": {"every": 1, "iters": 3, "travel": 1}, "daps": {"ode_steps": 2, "langevin_steps": 2},
          "decoder_inversion": {"iters": 2}}
METHODS = sorted(GUIDANCE)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads wait on each other (10-30x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _clip(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return 0.3 * torch.sin(2 * torch.pi * (220 + 40 * seed) * t) + 0.05 * torch.randn(n, generator=g)


def _conditioning(model, seed: int, cfg: float) -> Conditioning:
    """A random condition of the model's stream widths (not the text stack: the rows only need to differ)."""
    from gdr.builders import GPT2_WIDTH, T5_WIDTH

    g = torch.Generator().manual_seed(seed)
    gpt2, t5 = GPT2_WIDTH, T5_WIDTH

    def condition(tokens):
        return Condition(torch.randn(1, 8, gpt2, generator=g), torch.randn(1, tokens, t5, generator=g),
                         torch.ones(1, tokens, dtype=torch.long), "text")

    return Conditioning(condition(5 + seed), condition(4) if cfg != 1.0 else None, cfg)


def _module(model, method: str, eta: float, degradation, domain: str = "mel") -> GuidedReconstructor:
    return GuidedReconstructor(model, degradation, build_guidance(method, PARAMS.get(method)), build_schedule(0.5),
                               steps=2, eta=eta, domain=domain, chunk_samples=CHUNK, overlap_samples=OVERLAP)


# A method without the prior draws no noise and never calls the UNet: eta and CFG do not apply to it.
CASES = [pytest.param(method, eta, cfg, id=f"{method}-{eta:g}-{'cfg' if cfg != 1 else 'no-cfg'}")
         for method in METHODS for eta in (0.0, 1.0) for cfg in (1.0, 3.0)
         if GUIDANCE[method].uses_prior or (eta == 0 and cfg == 1)]


@pytest.mark.parametrize("method, eta, cfg", CASES)
def test_batched_equals_one_at_a_time(tiny_model, method, eta, cfg):
    gaps = build_degradation({"name": "gaps", "length_ms": 40, "count": 2})
    module = _module(tiny_model, method, eta, gaps)
    ys = [_clip(SHORT, 0), _clip(LONG, 1), _clip(SHORT, 0)]  # clips A, B (two chunks), A again
    seeds = [11, 12, 13]  # the second A is another seed of the same clip
    a, b = _conditioning(tiny_model, 0, cfg), _conditioning(tiny_model, 1, cfg)
    conds = [a, b, a]  # each clip its own condition (as with ``condition.audio: measurement``)
    rows = []
    real = module.reconstruct

    def spy(y, generator=None, support=None, conditioning=None):
        rows.append(y.shape[0])
        return real(y, generator, support, conditioning)

    module.reconstruct = spy
    batched = module.reconstruct_clips(ys, seeds, conds, batch_size=4)
    assert rows == [4]  # A, the 2 chunks of B, A's other seed: clips, chunks and seeds mixed in one batch
    single = [module.reconstruct_clips([y], [s], [c], batch_size=1)[0] for y, s, c in zip(ys, seeds, conds)]
    for i, (a, b) in enumerate(zip(batched, single)):
        assert a.shape == b.shape == ys[i].shape
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= 1e-5, f"item {i}: {(a - b).abs().max():.2e}"
    # The seeds matter (so equality above is not two runs of a seed-free method): same clip, other seed.
    if GUIDANCE[method].uses_prior and not (method == "seed" and eta == 0):
        assert (batched[0] - batched[2]).abs().max() > 1e-4


@pytest.mark.parametrize("method", ["dps", "psld"])
def test_batched_equals_one_at_a_time_in_the_waveform_domain(tiny_model, method):
    """The waveform residual applies each row's own gap operator to its decoded waveform (`PerItem.forward`).
    Long gaps and the squared loss at full strength, so that another row's gaps would move the output by more than
    the tolerance on the tiny model's quiet outputs (~0.01): 4e-5 (DPS) and 1.4e-4 (PSLD) with item 0's gaps."""
    gaps = build_degradation({"name": "gaps", "length_ms": 150, "count": 2})
    module = GuidedReconstructor(tiny_model, gaps, build_guidance(method, {"loss": "squared"}), build_schedule(1.0),
                                 steps=2, domain="waveform", chunk_samples=CHUNK, overlap_samples=OVERLAP)
    ys, seeds = [_clip(SHORT, 0), _clip(LONG, 1)], [3, 4]
    batched = module.reconstruct_clips(ys, seeds, batch_size=3)
    for y, seed, out in zip(ys, seeds, batched):
        assert (out - module.reconstruct_clips([y], [seed], batch_size=1)[0]).abs().max() <= 1e-5


def test_a_clip_that_fits_in_one_chunk_keeps_its_seed_and_chunks_get_their_own():
    """The first chunk's seed is the clip's (a short clip samples exactly as before chunk seeds existed); the
    others differ from it and from one another."""
    seeds = [chunk_seed(7, k) for k in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4


def test_resample_stops_each_item_on_its_own(tiny_model):
    """ReSample's latent optimisation: the per-item loss and per-item early stop make a batch of three items (which
    meet the tolerance at different iterations) equal to each item alone."""
    from gdr.measurement import LatentMeasurement

    method = build_guidance("resample", {"iters": 40, "lr": 0.05, "tol": 0.05})
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 2, 4, 4, generator=g) * torch.tensor([0.1, 1.0, 3.0]).view(3, 1, 1, 1)
    mask = (torch.rand(3, 2, 4, 4, generator=g) > 0.3).float()
    z0 = torch.zeros_like(y)
    together = method.optimise(z0, LatentMeasurement(y, mask))
    alone = torch.cat([method.optimise(z0[b:b + 1], LatentMeasurement(y[b:b + 1], mask[b:b + 1])) for b in range(3)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    # The small item met the tolerance and stopped, the large one never did (so the per-item stop is tested).
    residual = (mask * (alone - y)).pow(2).flatten(1).mean(1)
    assert residual[0] < 0.05**2 < residual[2]


def test_out_of_memory_halves_the_batch_says_so_once_and_changes_nothing(tiny_model, capsys):
    module = _module(tiny_model, "dps", 1.0, build_degradation("identity"))
    ys, seeds = [_clip(SHORT, 0), _clip(LONG, 1)], [1, 2]
    reference = module.reconstruct_clips(ys, seeds, batch_size=1)
    real, calls = module.reconstruct, []

    def tight(y, *args):
        calls.append(y.shape[0])
        if y.shape[0] > 2:  # A and the two chunks of B do not fit
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(y, *args)

    module.reconstruct = tight
    batch = BatchSize(4)
    out = module.reconstruct_clips(ys, seeds, batch_size=batch)
    assert calls == [3, 2, 1] and batch.value == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines == ["warning: out of accelerator memory at 4 latents per batch; retrying at 2"]  # said once
    for a, b in zip(out, reference):
        assert (a - b).abs().max() <= 1e-5


def test_out_of_memory_at_batch_one_is_raised():
    assert BatchSize(1).halve() is False


def test_packs_share_a_key_keep_order_and_hold_at_most_the_capacity():
    keys = {0: "a", 1: "b", 2: "a", 3: "a", 4: "b", 5: "a", 6: "a"}
    sizes = {0: 1, 1: 3, 2: 2, 3: 1, 4: 1, 5: 5, 6: 1}
    packs = pack(list(keys), keys.__getitem__, sizes.__getitem__, capacity=4)
    assert packs == [[0, 2, 3], [1, 4], [5], [6]]  # 5 alone: more chunks than a pack holds
    assert sorted(i for p in packs for i in p) == list(keys)
    for p in packs:
        assert len({keys[i] for i in p}) == 1
        assert len(p) == 1 or sum(sizes[i] for i in p) <= 4


@pytest.mark.parametrize("value, ok", [("auto", True), (1, True), ("8", True), (0, False), (-2, False),
                                       ("many", False), (2.5, False), (True, False)])
def test_batch_size_is_auto_or_a_positive_integer(value, ok):
    from gdr.config import SamplerConfig

    if ok:
        assert SamplerConfig(batch_size=value).batch_size in ("auto", 1, 8)
    else:
        with pytest.raises(ConfigError, match="sampler.batch_size must be auto or an integer >= 1"):
            SamplerConfig(batch_size=value)


def test_auto_batch_size_on_a_cpu_is_small_and_fixed():
    from gdr.batching import CPU_BATCH, auto_batch_size

    assert auto_batch_size(torch.device("cpu")) == CPU_BATCH
    assert auto_batch_size(torch.device("cpu"), cap=2) == 2


def test_long_clip_layout_of_the_matrix_is_three_chunks():
    """The matrix above covers the join: its long clip is two chunks (a crossfade), its short one one."""
    assert len(chunk_layout(LONG, CHUNK, OVERLAP, 5120).starts) == 2
    assert len(chunk_layout(SHORT, CHUNK, OVERLAP, 5120).starts) == 1


TIMING = ("wall_s", "peak_mem_mb")


def _evaluate(out, data, batch_size):
    from gdr.config import parse
    from gdr.evaluate import run

    parser, cfg, objects = parse([
        "--config", "configs/smoke.yaml", "--data.root", str(data), "--output_dir", str(out), "--progress", "false",
        "--logger", "false", "--report.fad", "false", "--report.bootstrap", "100", "--chunk.seconds", "0.64",
        "--chunk.overlap_seconds", "0.32", "--degradation.name", "gaps",
        "--degradation.params", '{"length_ms": 40, "count": 2}', "--sampler.steps", "2", "--sampler.eta", "1.0",
        "--sampler.seeds", "2", "--sampler.batch_size", str(batch_size),
        "--sweep.grid", '{"guidance.name": [dps, inpaint]}'])
    run(cfg, objects, parser)
    return list(csv.DictReader((out / "metrics.csv").open()))


def test_evaluation_batched_equals_one_at_a_time_in_wavs_and_metrics(tmp_path, tiny_dir, monkeypatch):
    """The whole evaluation at ``sampler.batch_size`` 4 (packs of both clips and both seeds, the long clip's two
    chunks in them) writes the wavs and metrics.csv of the run at batch size 1 (timing columns aside)."""
    import numpy as np
    import soundfile as sf

    from conftest import ROOT
    from gdr import evaluate

    monkeypatch.chdir(ROOT)
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("short", SHORT, 0), ("long", LONG, 1)):
        sf.write(str(data / f"{name}.wav"), _clip(n, seed).numpy().astype(np.float32), 16000)
    sizes = []
    real = evaluate.EvaluationRunner.run_methods

    def spy(self, items):
        sizes.append(sum(self.window(item)[0] for item in items))
        return real(self, items)

    monkeypatch.setattr(evaluate.EvaluationRunner, "run_methods", spy)
    one = _evaluate(tmp_path / "one", data, 1)
    assert set(sizes) == {1, 2}  # one item per pack: a short clip's latent or the long clip's two chunks
    sizes.clear()
    four = _evaluate(tmp_path / "four", data, 4)
    assert 4 in sizes  # packs mixed clips and seeds
    assert len(one) == len(four) == 2 * (5 + 1 + 2 * 2)  # clips x (baselines + decoder_inversion + 2 methods x 2 seeds)
    for a, b in zip(one, four):
        assert a.keys() == b.keys()
        for key in a:
            if key in TIMING:
                continue
            try:
                assert abs(float(a[key]) - float(b[key])) <= 1e-5, (a["clip"], a["method"], key, a[key], b[key])
            except ValueError:
                assert a[key] == b[key], (key, a[key], b[key])
        x, _ = sf.read(str(tmp_path / "one" / a["wav"]))
        y, _ = sf.read(str(tmp_path / "four" / b["wav"]))
        assert x.shape == y.shape and np.abs(x - y).max() <= 1e-5, (a["clip"], a["method"])
    methods = [r for r in one if r["kind"] == "method" and r["guidance"] == "dps"]
    assert len({r["wav"] for r in methods}) == 4  # each item its own wav (clip x seed)


def test_resume_keys_do_not_depend_on_batch_sizes():
    """A run resumed at another batch size reuses every record: batch sizes change the speed, not a result."""
    from conftest import ROOT
    from gdr.config import parse
    from gdr.evaluate import plan_evaluation

    base = ["--config", str(ROOT / "configs" / "smoke.yaml"), "--data.demo_seconds", "1.0"]

    def keys(*extra):
        return [item.key for item in plan_evaluation(parse([*base, *extra])[2]).items]

    assert keys() == keys("--sampler.batch_size", "1") == keys("--sampler.batch_size", "7", "--chunk.batch_size", "3")
    assert keys() != keys("--sampler.steps", "3")  # (the keys do see a change of result)
