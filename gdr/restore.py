"""Restore a real damaged recording: the damage read from the file, the model's estimate spliced in at the
native rate only where the recording is unreliable.

``Restorer.from_pretrained("cvssp/audioldm2")(audio, sample_rate, task="declip") -> (audio, sample_rate)``;
``gdr restore`` (`gdr.commands`) is the same code path over files. The story of one recording:

1. detect the damage (`gdr.detect`): the unreliable samples (declip, inpaint), the band edge (bwe), the noise
   level (denoise), or nothing (reconstruct);
2. model channels: stereo as mid/side (the model restores the mid, ``(L + R) / 2``) or each channel on its own;
3. each model channel: resample to 16 kHz, normalise as AudioLDM2 expects (mean 0, peak 0.5), build the task's
   16 kHz operator (`Damage.operator_for`: gaps with conservatively dilated spans, lowpass, noise, identity),
   run evaluate's `GuidedReconstructor.reconstruct_clip` (same methods, chunking, conditioning, batching),
   undo the normalisation and resample back to the native rate;
4. merge (`merge`): unreliable samples take the estimate (declip: projected onto the clipped side, so a
   restored peak never lies inside the clip level), bwe joins the input's band below the cutoff to the
   estimate's band above with a linear-phase FIR crossover; every other sample is the input's, bit for bit.
   denoise and reconstruct have no reliable subset: the output is the estimate.

Mid/side is the default for stereo: the fill is generated, so two independent per-channel runs put
uncorrelated content into the two channels wherever they generate (gaps, clipped peaks, the new band), which
turns a centred source diffuse and phasey there; the mid is the mono signal the model was trained on, it runs
once (half the cost), and where only one channel is damaged the other recovers it exactly from the restored
mid (``L = 2 M - R``). ``per-channel`` suits unrelated channels (dual mono, spaced microphones) and denoising,
where mid/side leaves the side channel (and its noise) as it was.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from gdr.audio import MIN_SAMPLES, PEAK, SILENCE_PEAK
from gdr.config import ChunkConfig, ConditionConfig, GuidanceConfig, ModelConfig, SamplerConfig
from gdr.detect import MODEL_RATE, TASKS, Damage, DetectionConfig, detect
from gdr.errors import ConfigError, TooShortAudioError

ChannelMode = Literal["mid-side", "per-channel"]
CHANNEL_MODES = ("mid-side", "per-channel")
# The method each task runs unless --guidance.name says otherwise, and why:
DEFAULT_METHODS = {
    "declip": ("dps", {}),  # scattered holes: a data gradient through the decoder sees every reliable sample
    "bwe": ("inpaint", {}),  # AudioLDM's own zero-shot super-resolution: low-band latent cells pasted in
    "inpaint": ("inpaint", {}),  # RePaint: cells away from the gaps pasted, gaps generated; no decoder gradients
    "denoise": ("sdedit", {"strength": 0.4}),  # noise the noisy latent part-way, denoise with the prior
    "reconstruct": ("latent_pull", {}),  # the principled reading of the seed experiment
}
CROSSOVER_HZ = 200.0  # bwe crossover transition width
CROSSOVER_DB = 80.0  # its stop-band attenuation


@dataclass
class RestoreGuidanceConfig(GuidanceConfig):
    """`GuidanceConfig` whose method defaults to the task's (`DEFAULT_METHODS`): null = the task's default,
    with the task's default ``params`` unless ``params`` are given."""

    name: str | None = None


@dataclass
class Restoration:
    """One restored recording.

    Attributes:
        audio: ``(N, C)`` float64 at `sample_rate`, full scale 1 (reliable samples equal the input's).
        damage: what detection found. replaced: one line saying what was replaced.
        method: the guidance method that ran (None when nothing did). seconds: wall time.
    """

    audio: np.ndarray
    sample_rate: int
    damage: Damage
    replaced: str
    method: str | None
    seconds: float

    @property
    def over_full_scale(self) -> int:
        """Samples beyond +-1 (restored clipped peaks): a PCM file limits them to full scale."""
        return int((np.abs(self.audio) > 1.0).sum())


def _config(cls, value):
    """A config dataclass from None (defaults), a dict, or an instance (checked by its ``__post_init__``)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return cls(**value)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from None
    if dataclasses.is_dataclass(value):
        return cls(**dataclasses.asdict(value))
    raise ConfigError(f"expected a dict or {cls.__name__}, got {type(value).__name__}")


def method_for(task: str, guidance: GuidanceConfig) -> tuple[str, dict]:
    """The guidance method and its params for `task` (the task's default when ``guidance.name`` is null)."""
    if guidance.name is None:
        name, params = DEFAULT_METHODS[task]
        return name, dict(guidance.params or params)
    return guidance.name, dict(guidance.params or {})


def check_options(task: str, channels: str, guidance: GuidanceConfig, sampler: SamplerConfig,
                  condition: ConditionConfig) -> None:
    """Everything that can be checked before any audio or model: one-line `ConfigError` otherwise."""
    from gdr.checks import choice
    from gdr.conditioning import ConditionSpec
    from gdr.degradations import build_degradation
    from gdr.methods import build_guidance
    from gdr.schedulers import make_scheduler
    from gdr.schedules import schedule_for

    choice("task", task, TASKS)
    choice("channels", channels, CHANNEL_MODES)
    name, params = method_for(task, guidance)
    method = build_guidance(name, params)
    schedule_for({**dataclasses.asdict(guidance), "name": name})
    example = {"declip": {"name": "gaps", "spans": [[0.0, 0.01]]}, "inpaint": {"name": "gaps", "spans": [[0.0, 0.01]]},
               "bwe": {"name": "lowpass"}, "denoise": {"name": "noise"}, "reconstruct": {"name": "identity"}}[task]
    method.validate(build_degradation(example), make_scheduler(sampler.scheduler))
    ConditionSpec.from_dict(dataclasses.asdict(condition))


# ------------------------------------------------------------------------------------------ native-rate merge
def resample(x: np.ndarray | torch.Tensor, orig: int, new: int, length: int | None = None) -> torch.Tensor:
    """``(N,)`` -> ``(M,)`` float64 with torchaudio's windowed sinc (the resampler `gdr.audio` uses);
    trimmed or zero-padded to `length` when given."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if orig != new:
        import torchaudio

        x = torchaudio.functional.resample(x, orig_freq=orig, new_freq=new)
    if length is not None:
        x = torch.nn.functional.pad(x[:length], (0, max(0, length - x.shape[-1])))
    return x


def crossover_lowpass(cutoff_hz: float, sample_rate: int) -> np.ndarray:
    """Odd-length linear-phase (type I) Kaiser FIR low-pass: -6 dB at `cutoff_hz`, `CROSSOVER_HZ` transition,
    `CROSSOVER_DB` stop band. Its complement ``delta - h`` is the matching high-pass (they sum to one)."""
    from scipy.signal import firwin, kaiserord

    taps, beta = kaiserord(CROSSOVER_DB, CROSSOVER_HZ / (sample_rate / 2))
    taps += 1 - taps % 2  # odd: a whole-sample delay, so 'same' convolution is zero-phase
    return firwin(taps, cutoff_hz, window=("kaiser", beta), fs=sample_rate)


def lowpassed(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` ``(N, C)`` filtered by the odd-length linear-phase FIR `h`, delay removed (same length)."""
    from scipy.signal import oaconvolve

    return oaconvolve(x, h[:, None], mode="same", axes=0)


def channel_estimates(x: np.ndarray, sources: list[np.ndarray], unreliable: np.ndarray | None,
                      mid_side: bool) -> np.ndarray:
    """The model's per-source estimates ``[(N,)]`` -> per-channel estimates ``(N, C)`` of `x` ``(N, C)``.

    Mid/side (stereo): where the other channel is reliable, a channel is ``2 M - other`` (exact for an exact
    mid); where both are unreliable, the mid; without a sample subset, ``M +- S`` with the input's side.
    """
    if not mid_side:
        return np.stack(sources, axis=1)
    mid = sources[0]
    if unreliable is None:
        side = (x[:, 0] - x[:, 1]) / 2
        return np.stack([mid + side, mid - side], axis=1)
    left = np.where(unreliable[:, 1], mid, 2 * mid - x[:, 1])
    right = np.where(unreliable[:, 0], mid, 2 * mid - x[:, 0])
    return np.stack([left, right], axis=1)


def merge(x: np.ndarray, estimate: np.ndarray, damage: Damage, sample_rate: int) -> tuple[np.ndarray, str]:
    """The output ``(N, C)``: `x` where it is reliable, `estimate` ``(N, C)`` where not; and what was replaced."""
    task = damage.task
    if damage.unreliable is not None:
        mask = damage.unreliable
        if task == "declip":  # consistent declipping: a clipped sample was at least as far out as its level
            estimate = np.where(x >= 0, np.maximum(estimate, x), np.minimum(estimate, x))
        out = x.copy()
        out[mask] = estimate[mask]
        count = int(mask.sum())
        return out, f"{count} samples ({100 * count / mask.size:.2g} %) replaced, every other sample bit-exact"
    if task == "bwe":
        cutoff = damage.params["cutoff_hz"]
        h = crossover_lowpass(cutoff, sample_rate)
        out = x + (estimate - x) - lowpassed(estimate - x, h)  # x + highpass(estimate - x)
        return out, (f"the band above {cutoff:.0f} Hz replaced through a {len(h)}-tap linear-phase crossover, "
                     "the band below is the input's")
    return estimate, f"no reliable subset ({task}): the output is the model's estimate at {sample_rate} Hz"


# ------------------------------------------------------------------------------------------ array in/out
def to_native(audio, name: str = "audio") -> tuple[np.ndarray, dict]:
    """numpy ``(N,)``/``(N, C)`` (soundfile layout) or torch ``(N,)``/``(C, N)`` (torchaudio layout), float or
    int PCM -> ``(N, C)`` float64 at full scale 1, and how to turn the result back (`from_native`)."""
    layout = {"torch": isinstance(audio, torch.Tensor), "ndim": None, "dtype": None}
    if layout["torch"]:
        layout["dtype"] = audio.dtype
        array = audio.detach().cpu().numpy()
        array = array.T if array.ndim == 2 else array
    else:
        array = np.asarray(audio)
        layout["dtype"] = array.dtype
    layout["ndim"] = array.ndim
    if array.ndim not in (1, 2):
        raise ConfigError(f"{name}: expected (samples,) or (samples, channels) audio, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.integer):
        layout["scale"] = float(2 ** (8 * array.dtype.itemsize - 1))
        x = array.astype(np.float64) / layout["scale"]
    elif np.issubdtype(array.dtype, np.floating):
        x = array.astype(np.float64)
    else:
        raise ConfigError(f"{name}: expected float or integer samples, got {array.dtype}")
    return (x[:, None] if x.ndim == 1 else x), layout


def from_native(x: np.ndarray, layout: dict):
    """Inverse of `to_native`: ``(N, C)`` float64 -> the caller's type, layout and dtype."""
    out = x[:, 0] if layout["ndim"] == 1 else x
    if "scale" in layout:  # integer PCM: round, saturate at full scale
        info = np.iinfo(layout["dtype"] if not layout["torch"] else np.dtype(str(layout["dtype"]).split(".")[-1]))
        out = np.clip(np.rint(out * layout["scale"]), info.min, info.max)
    if layout["torch"]:
        out = torch.from_numpy(np.ascontiguousarray(out.T if out.ndim == 2 else out)).to(layout["dtype"])
        return out
    return out.astype(layout["dtype"])


# ------------------------------------------------------------------------------------------ the restorer
class Restorer:
    """AudioLDM2 restoring real recordings (module docstring). ``restorer(audio, sr, task=...) -> (audio, sr)``.

    Args:
        model: the backbone (`gdr.backbone.AudioLDM2`). cache_dir: gdr's cache (conditions).
    """

    def __init__(self, model, cache_dir=None):
        self.model, self.cache_dir = model, cache_dir

    @classmethod
    def from_pretrained(cls, pretrained: str = "cvssp/audioldm2", *, unconditional: str = "original",
                        **model_options) -> Restorer:
        """Load a model as ``evaluate`` does: `pretrained` is a hub id, a pipeline folder or ``gdr-tiny``;
        `model_options` are `gdr.config.ModelConfig`'s fields (dtype, device, cache_dir, lora_path, attention,
        compile, variant); `unconditional` the null condition (``original`` or ``diffusers``)."""
        from gdr.evaluate import load_model

        model_cfg = _config(ModelConfig, {"pretrained": str(pretrained), **model_options})
        return cls(load_model(model_cfg, null_condition=unconditional), cache_dir=model_cfg.cache_dir)

    def __call__(self, audio, sample_rate: int, task: str = "reconstruct", **options):
        """Restore `audio` (numpy ``(N,)``/``(N, C)`` or torch ``(N,)``/``(C, N)``, float or int PCM) at
        `sample_rate` Hz. `options`: those of `restore`. Returns ``(audio, sample_rate)`` in the input's type,
        layout, dtype, rate and length."""
        x, layout = to_native(audio)
        result = self.restore(x, sample_rate, task, **options)
        return from_native(result.audio, layout), result.sample_rate

    def restore(self, x: np.ndarray, sample_rate: int, task: str, *, guidance=None, sampler=None, condition=None,
                chunk=None, detection=None, channels: ChannelMode = "mid-side", seed: int = 0,
                damage: Damage | None = None, progress: bool = False, name: str = "audio") -> Restoration:
        """Restore `x` ``(N, C)`` float64 (full scale 1) at `sample_rate` Hz.

        Args:
            task: ``declip``, ``bwe``, ``inpaint``, ``denoise`` or ``reconstruct``.
            guidance, sampler, condition, chunk: evaluate's config blocks (`gdr.config` dataclasses or dicts);
                ``guidance.name`` null = the task's default method (`DEFAULT_METHODS`).
            detection: `gdr.detect.DetectionConfig` (or a dict): overrides and ``force``.
            channels: stereo as ``mid-side`` (default, module docstring) or ``per-channel``.
            seed: the sampler seed (outputs are deterministic in it).
            damage: a detection already made (the command prints it before loading the model).
        """
        start = time.perf_counter()
        # 1. Check inputs
        guidance, sampler = _config(RestoreGuidanceConfig, guidance), _config(SamplerConfig, sampler)
        condition, chunk = _config(ConditionConfig, condition), _config(ChunkConfig, chunk)
        detection = _config(DetectionConfig, detection)
        check_options(task, channels, guidance, sampler, condition)
        sample_rate = int(sample_rate)
        if sample_rate <= 0:
            raise ConfigError(f"{name}: invalid sample rate {sample_rate}")
        # 2. Detect the damage
        damage = damage or detect(task, x, sample_rate, detection, name=name)
        if not damage.found and not detection.force:
            return Restoration(x.copy(), sample_rate, damage, "nothing found: unchanged", None,
                               time.perf_counter() - start)
        # 3. Model channels
        mid_side = channels == "mid-side" and x.shape[1] == 2
        if mid_side:
            sources = [(x[:, 0] + x[:, 1]) / 2]
            masks = [None if damage.unreliable is None else damage.unreliable.any(axis=1)]
        else:
            sources = [x[:, c] for c in range(x.shape[1])]
            masks = [None if damage.unreliable is None else damage.unreliable[:, c] for c in range(x.shape[1])]
        # 4. The model's estimate of each, at the native rate
        method, params = method_for(task, guidance)
        estimates = [self._estimate(s, m, damage, sample_rate, method, params, guidance, sampler, condition, chunk,
                                    seed, k, progress, name) for k, (s, m) in enumerate(zip(sources, masks))]
        # 5. Merge: the estimate only where the recording is unreliable
        estimate = channel_estimates(x, estimates, damage.unreliable, mid_side)
        out, replaced = merge(x, estimate, damage, sample_rate)
        return Restoration(out, sample_rate, damage, replaced, method, time.perf_counter() - start)

    def _estimate(self, source, unreliable, damage, sample_rate, method, params, guidance, sampler, condition,
                  chunk, seed, index, progress, name) -> np.ndarray:
        """One model channel ``(N,)`` native -> the model's estimate ``(N,)`` native (module docstring, step 3)."""
        from gdr.backbone import default_cache_dir
        from gdr.condition_cache import ConditionCache
        from gdr.conditioning import ConditionSpec
        from gdr.degradations import build_degradation
        from gdr.methods import build_guidance
        from gdr.module import GuidedReconstructor, seed_for
        from gdr.schedules import schedule_for

        n = source.shape[0]
        x16 = resample(source, sample_rate, MODEL_RATE)
        if x16.numel() < MIN_SAMPLES:
            raise TooShortAudioError(f"{name}: {x16.numel()} samples at 16 kHz is shorter than one frame "
                                     f"({MIN_SAMPLES} samples, 64 ms)")
        mean = x16.mean()
        peak = (x16 - mean).abs().max()
        if peak < SILENCE_PEAK:  # a silent model channel (e.g. an empty side of a stereo file): nothing to do
            return source.copy()
        gain = PEAK / peak  # AudioLDM2's loudness: mean 0, peak 0.5
        y16 = ((x16 - mean) * gain).float()
        operator = build_degradation(damage.operator_for(unreliable, sample_rate, y16.numel()))
        spec = ConditionSpec.from_dict(dataclasses.asdict(condition))
        method_obj = build_guidance(method, params)
        conditioning = None
        if method_obj.uses_prior:
            cache = ConditionCache(self.model.source, self.cache_dir or default_cache_dir())
            try:
                conditioning = cache.get(spec, y16 if spec.audio == "measurement" else None)
            finally:
                cache.close()
            conditioning = conditioning.to(self.model.device, next(self.model.unet.parameters()).dtype)
        module = GuidedReconstructor(
            self.model, operator, method_obj, schedule_for({**dataclasses.asdict(guidance), "name": method}),
            steps=sampler.steps, eta=sampler.eta, scheduler=sampler.scheduler, domain=sampler.domain,
            return_denoised=sampler.return_denoised, chunk_samples=int(round(chunk.seconds * MODEL_RATE)),
            overlap_samples=int(round(chunk.overlap_seconds * MODEL_RATE)), chunk_batch=chunk.batch_size,
            conditioning=conditioning)
        est16 = module.reconstruct_clip(y16, seed_for("restore", seed, index), progress=progress,
                                        desc=f"{name} ch{index}" if index else name)
        est = est16.double().cpu() / gain + mean
        return resample(est, MODEL_RATE, sample_rate, length=n).numpy()
