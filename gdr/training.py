"""What `scripts/train.py` trains: a per-timestep guidance schedule, or a LoRA adapter on the UNet.

Both are thin LightningModules around the frozen backbone:

* `ScheduleLearner`: strengths ``s = softplus(theta)`` (one per sampling step, or ``K`` knots over the noise
  level) trained end to end through the unrolled guided sampler on a restoration loss against the clean
  audio, ``L = logmel_l1(x_hat, x) + mrstft(x_hat, x)``. By default the gradient reaches every step's
  strength: the whole loop is backpropagated with the UNet checkpointed (recomputed in the backward pass), so
  memory is O(steps x latent) plus one UNet's activations. ``grad_steps: k`` is a compute knob for long
  loops: each optimizer step keeps the graph from a step drawn uniformly in ``[0, steps - k]`` (from the run's
  seeded stream) to the end, so every strength is still trained over a run. Data gradients inside the
  methods (dps, mpgd, diffpir, psld, resample, daps) are first order by design: constants of the outer
  backward pass; latent_pull and inpaint have none, so their schedule gradient is exact.
* `LoraAdapterLearner`: LoRA on the UNet's attention projections, trained with the standard
  epsilon-prediction loss on clean latents of the data (adapting the prior to the domain), or with
  ``objective: guided`` end to end through the guided sampler like the schedule.

Randomness: every batch item carries ``key`` (`gdr.datamodule`), a seed that depends only on the item's
identity (data seed, epoch, position in the epoch's order); its sampler noise (and the eps objective's
timestep and noise) come from a generator seeded by it. So N processes x batch b train exactly as one
process x batch N b, and a resumed run as an uninterrupted one.

Exports (`export`, at the end of fit, from rank 0, loadable by evaluate.py): ``schedule.safetensors``
(``--guidance.schedule_path``) or ``lora/`` (``--model.lora_path``), each saying what it was learned for
(method, parametrisation, steps, degradation, condition, scheduler, eta, training-file fingerprint). An
exponential moving average of the trained parameters is kept when ``ema_decay > 0`` and is what gets
validated and exported; checkpoints always hold the raw parameters and the average separately.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from gdr import checks
from gdr.adapters import inject_lora, save_lora
from gdr.atomic import write_text
from gdr.audio import SAMPLE_RATE
from gdr.backbone import AudioLDM2, default_cache_dir
from gdr.conditioning import Conditioning, ConditionSpec
from gdr.degradations import build_degradation
from gdr.errors import ConfigError
from gdr.methods import GUIDANCE, build_guidance
from gdr.metrics import LogMelL1, MultiResolutionSTFT, logmel_l1, mrstft
from gdr.module import guided_reconstruction, seed_for
from gdr.schedules import PARAMETRISATIONS, interpolate_knots, save_schedule


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name and renamed, so a kill leaves the last complete one intact;
    loaded with ``weights_only=True`` (they hold only tensors and plain Python values)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        from gdr.atomic import atomic_path

        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class CheckpointOnStop(L.Callback):
    """On SIGTERM / Ctrl-C (Lightning stops at the next step boundary), save ``last.ckpt`` where the run's
    `ModelCheckpoint` keeps it, so ``--ckpt_path last`` resumes from the step the run reached.

    Only a stop that was asked for saves: any other exception (a bug, a non-finite loss) leaves the last
    regular checkpoint as it is. `stopped_at` records the global step for the exit message."""

    def __init__(self):
        self.stopped_at: int | None = None
        self.path: str | None = None

    def on_exception(self, trainer, pl_module, exception):
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        self.stopped_at = trainer.global_step
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath:
            self.path = str(Path(checkpoint.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt")
            trainer.save_checkpoint(self.path)


class AudioExamples(L.Callback):
    """Logs the first validation batch (clean, degraded, reconstruction) as audio, from rank 0 only, to every
    logger that takes audio (wandb, TensorBoard)."""

    def __init__(self, max_items: int = 2):
        self.max_items = max_items

    @rank_zero_only
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        if batch_idx != 0 or not outputs:
            return
        n = min(self.max_items, len(batch["x"]))
        examples = {name: [w.float().cpu() for w in wave[:n]]
                    for name, wave in (("clean", batch["x"]), ("degraded", batch["y"]),
                                       ("reconstruction", outputs["x_hat"]))}
        for logger in trainer.loggers:
            for name, waves in examples.items():
                if isinstance(logger, WandbLogger):
                    logger.log_audio(f"val_audio/{name}", [w.numpy() for w in waves], step=trainer.global_step,
                                     sample_rate=[SAMPLE_RATE] * len(waves))
                elif isinstance(logger, TensorBoardLogger):
                    for k, w in enumerate(waves):
                        logger.experiment.add_audio(f"val_audio/{name}/{k}", w[None], trainer.global_step,
                                                    sample_rate=SAMPLE_RATE)


class FileLists(L.Callback):
    """Writes the data module's train/val file lists (``train.txt``, ``val.txt``) next to the checkpoints, so the
    held-out files can be evaluated exactly (``evaluate.py --data.files .../val.txt``)."""

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module):
        write = getattr(trainer.datamodule, "write_file_lists", None)
        if write is not None and trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            write(Path(trainer.checkpoint_callback.dirpath))


def fixed_checkpoint_folder(trainer: L.Trainer) -> None:
    """Checkpoints in ``<default_root_dir>/checkpoints`` (unless a callback names its own ``dirpath``), not under
    a logger's per-run folder (wandb: ``<project>/<new run id>/``), so ``--ckpt_path last`` finds them."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(Path(trainer.default_root_dir).resolve() / "checkpoints")


class LearnedSchedule(nn.Module):
    """Learnable strengths, kept positive by softplus and initialised at ``init``, in one of two parametrisations:

    * ``"steps"``: one strength per sampling step (``size`` = the step count); ``forward(i, n, level)`` is
      strength ``i``;
    * ``"knots"``: ``size`` strengths at knots evenly spaced in diffusion time t / T in [0, 1], linearly
      interpolated at the step's noise level ``level`` (`gdr.schedules.interpolate_knots`): step-count free.

    ``forward`` returns a 0-dim tensor that carries the graph to ``raw`` (the sampler's strength input).
    """

    def __init__(self, size: int, init: float = 1.0, parametrisation: str = "steps"):
        super().__init__()
        checks.choice("model.parametrisation", parametrisation, PARAMETRISATIONS)
        self.parametrisation = parametrisation
        raw = math.log(math.expm1(init)) if init < 20 else init  # softplus^-1
        self.raw = nn.Parameter(torch.full((size,), float(raw)))

    @property
    def step_free(self) -> bool:
        return self.parametrisation == "knots"

    def values(self) -> torch.Tensor:
        """``(size,)`` the strengths (per step, or per knot)."""
        return nn.functional.softplus(self.raw)

    def forward(self, i: int, n: int, level: float | None = None) -> torch.Tensor:
        if self.parametrisation == "knots":
            return interpolate_knots(self.values(), level)
        if n != self.raw.numel():
            raise ConfigError(f"a per-step schedule of {self.raw.numel()} strengths cannot run {n} steps")
        return self.values()[i]


class NonFiniteLossError(ConfigError):
    """The training loss became NaN or infinite (learning rate too high, or a diverging schedule)."""


class _Learner(L.LightningModule):
    """Shared machinery: the frozen backbone, the guided reconstruction of a batch, losses, EMA, export."""

    def __init__(self, pretrained: str, guidance: str, guidance_params: dict | None, degradation: dict | None,
                 condition: dict | None, steps: int, grad_steps: int | None, lr: float, ema_decay: float,
                 export_dir: str, cache_dir: str | None, checkpointing: bool):
        super().__init__()
        checks.positive("model.lr", lr)
        checks.integer("model.steps", steps, low=1)
        if grad_steps is not None:
            checks.integer("model.grad_steps", grad_steps, low=1, high=steps)
        checks.number("model.ema_decay", ema_decay, low=0, high=1, high_open=True)
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints hold only what is trained (see on_save_checkpoint)
        self.condition_spec = ConditionSpec.from_dict(condition)
        self.degradation = build_degradation(degradation or {"name": "identity"})
        self.backbone = AudioLDM2.from_pretrained(pretrained, cache_dir=cache_dir)
        self.guidance = build_guidance(guidance, guidance_params)
        self.val_logmel, self.val_mrstft = LogMelL1(), MultiResolutionSTFT()
        self._ema_swapped = False
        self._conditioning: Conditioning | None = None
        self._text_stack = None

    # ---------------------------------------------------------------- parameters and EMA
    def trained_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def setup(self, stage: str) -> None:
        if self.hparams.ema_decay > 0 and not hasattr(self, "ema_0"):
            for k, p in enumerate(self.trained_parameters().values()):
                self.register_buffer(f"ema_{k}", p.detach().clone())

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.hparams.ema_decay > 0:
            d = self.hparams.ema_decay
            with torch.no_grad():
                for k, p in enumerate(self.trained_parameters().values()):
                    getattr(self, f"ema_{k}").mul_(d).add_(p.detach(), alpha=1 - d)

    def _swap_ema(self) -> None:
        if self.hparams.ema_decay > 0:
            with torch.no_grad():
                for k, p in enumerate(self.trained_parameters().values()):
                    ema = getattr(self, f"ema_{k}")
                    tmp = p.detach().clone()
                    p.copy_(ema)
                    ema.copy_(tmp)
            self._ema_swapped = not self._ema_swapped

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The frozen backbone (1.8 GB for the real model) is reloaded from `pretrained`; keep the rest.
        keep = set(self.trained_parameters())
        state = {k: v for k, v in checkpoint["state_dict"].items() if k in keep or not k.startswith("backbone.")}
        if self._ema_swapped:
            # Saved during validation (the weights hold the average): store raw and average in their own slots,
            # so a resumed run continues from the raw weights, exactly as an uninterrupted one does.
            for k, name in enumerate(self.trained_parameters()):
                state[name], state[f"ema_{k}"] = state[f"ema_{k}"], state[name]
        checkpoint["state_dict"] = state

    def configure_optimizers(self):
        return torch.optim.Adam(list(self.trained_parameters().values()), lr=self.hparams.lr)

    # ---------------------------------------------------------------- randomness
    def item_generators(self, batch: dict) -> list[torch.Generator]:
        """One generator per item, seeded by the item's ``key`` (its identity in the data, not its place in this
        process's batch) and the run's ``seed_offset``."""
        return [torch.Generator(device=self.device).manual_seed(seed_for(int(key), self.hparams.seed_offset))
                for key in batch["key"].tolist()]

    def grad_from(self) -> int:
        """The first step kept in the graph: 0 (every step), or with ``grad_steps: k`` a step drawn uniformly in
        ``[0, steps - k]`` per optimizer step from the seeded stream (the same on every rank and micro-batch)."""
        k, n = self.hparams.grad_steps, self.hparams.steps
        if k is None or k >= n:
            return 0
        g = torch.Generator().manual_seed(seed_for("grad_from", self.hparams.seed_offset, self.global_step))
        return int(torch.randint(0, n - k + 1, (1,), generator=g))

    # ---------------------------------------------------------------- conditioning
    def conditioning(self, batch: dict) -> Conditioning | None:
        """The UNet's condition for `batch`: the ``condition`` block (evaluate's: text, negative text, CFG,
        ``audio: measurement``); None = the null condition. ``audio: measurement`` embeds each item's own
        measurement with CLAP, so the streams are ``(B, ...)``."""
        spec = self.condition_spec
        if not spec.conditioned and spec.unconditional == self.backbone.null_kind:
            return None
        if spec.conditioned and spec.audio == "measurement":
            stack = self.text_stack()
            items = [stack.conditioning(spec, y.detach().float().cpu()) for y in batch["y"]]
            return Conditioning.stack(items).to(self.device)
        if self._conditioning is None:
            from gdr.condition_cache import ConditionCache

            cache = ConditionCache(self.backbone.source, self.hparams.cache_dir or default_cache_dir())
            self._conditioning = cache.get(spec)
            cache.close()
        return self._conditioning.to(self.device)

    def text_stack(self):
        """CLAP, Flan-T5 and GPT-2 of the model folder (loaded once, for per-item conditions)."""
        if self._text_stack is None:
            from gdr.text_stack import TextStack

            self._text_stack = TextStack(self.backbone.source)
        return self._text_stack

    # ---------------------------------------------------------------- guided reconstruction
    def reconstruct(self, batch: dict, schedule, grad_from: int | None) -> torch.Tensor:
        """Guided reconstruction of ``batch["y"]`` ``(B, n)`` -> ``(B, n)``, differentiable from step `grad_from`."""
        return guided_reconstruction(self.backbone, self.degradation, self.guidance, schedule, batch["y"],
                                     support=batch["support"], steps=self.hparams.steps,
                                     generator=self.item_generators(batch), grad_from=grad_from,
                                     checkpoint=self.hparams.checkpointing, conditioning=self.conditioning(batch))

    @staticmethod
    def restoration_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (logmel_l1(x_hat, x) + mrstft(x_hat, x)).mean()

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop every rank with one line when any rank's loss is NaN or infinite (nothing is exported)."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self._trainer is not None:  # in DDP every rank must stop, not only the one that saw it
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise NonFiniteLossError(f"the training loss is not finite at step {self.global_step} (epoch "
                                     f"{self.current_epoch}); lower model.lr (now {self.hparams.lr:g}); nothing "
                                     "was exported")

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        # Methods such as DPS need autograd inside validation: run with Trainer(inference_mode=False)
        # (scripts/train.py sets it); no_grad here still lets them enable it locally.
        with torch.no_grad():
            x_hat = self.reconstruct(batch, self.schedule_for_eval(), None)
        self.val_logmel.update(x_hat, batch["x"])
        self.val_mrstft.update(x_hat, batch["x"])
        self.log("val/loss", self.restoration_loss(x_hat, batch["x"]), batch_size=len(x_hat), sync_dist=True)
        self.log_dict({"val/logmel_l1": self.val_logmel, "val/mrstft": self.val_mrstft}, batch_size=len(x_hat))
        return {"x_hat": x_hat.detach().cpu()}

    def on_validation_start(self) -> None:
        self._swap_ema()

    def on_validation_epoch_end(self) -> None:
        # Not on_validation_end: Lightning runs ModelCheckpoint.on_validation_end before the module's hook, and
        # the checkpoint must see the raw weights (on_save_checkpoint also guards against a swapped state).
        if self._ema_swapped:
            self._swap_ema()

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self._swap_ema()
            self.export(Path(self.hparams.export_dir))
            self._swap_ema()

    def provenance(self) -> dict:
        """What an export was learned for (stored with it; evaluate compares it with what it is used for)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return {"degradation": self.hparams.degradation or {"name": "identity"},
                "condition": dataclasses.asdict(self.condition_spec), "scheduler": "ddim", "eta": 0.0,
                "pretrained": self.hparams.pretrained, "train_files": getattr(datamodule, "fingerprint", None)}


# The options both learners share, as `--help` shows them (jsonargparse reads each class's Args section).
_LEARNER_ARGS = """\
        pretrained: Model id or folder (gdr-tiny for smoke runs).
        guidance: The guidance method, any registered method with a per-step strength (dps, latent_pull, ...).
        guidance_params: The method's own options, e.g. {every: 2}.
        degradation: The task, {name: ..., <params>} (linked to the data module's).
        condition: The UNet's condition, evaluate's condition block: {text, negative_text, cfg_scale, audio:
            none|measurement, unconditional} (null = the null condition).
        steps: Sampling steps, an integer >= 1.
        grad_steps: null = backpropagate through every step (default); k in [1, steps] = keep the graph from a
            step drawn per optimizer step in [0, steps - k] to the end (less compute, every step still trained).
        lr: Adam learning rate, a finite number > 0.
        ema_decay: Decay of the exponential moving average of the learned weights, in [0, 1) (0 = off).
        export_dir: Where the learned file is written at the end of fit.
        cache_dir: Where the tiny model and cached conditions live (null = $GDR_CACHE, else ~/.cache/gdr).
        checkpointing: Recompute the UNet in the backward pass (activation checkpointing: less memory).
        seed_offset: Added to every seed of the run (noise, timesteps, the window), an integer.
"""


class ScheduleLearner(_Learner):
    __doc__ = f"""Learn the guidance strength of one method over the sampling steps (see the module docstring).

    Args:
{_LEARNER_ARGS}        init_scale: Initial strength at every step, a finite number > 0.
        parametrisation: Either steps (one strength per sampling step) or knots (strengths at K points over the
            noise level, interpolated, so defined at any step count).
        knots: Number of knots for parametrisation knots, an integer >= 2.
    """

    def __init__(self, pretrained: str = "gdr-tiny", guidance: str = "dps", guidance_params: dict | None = None,
                 degradation: dict | None = None, condition: dict | None = None, steps: int = 10,
                 grad_steps: int | None = None, init_scale: float = 1.0, parametrisation: str = "steps",
                 knots: int = 8, lr: float = 0.05, ema_decay: float = 0.0,
                 export_dir: str = "outputs/train/schedule", cache_dir: str | None = None,
                 checkpointing: bool = True, seed_offset: int = 0):
        if guidance in GUIDANCE and not GUIDANCE[guidance].per_step_strength:
            learnable = ", ".join(name for name, cls in GUIDANCE.items() if cls.per_step_strength)
            raise ConfigError(f"guidance {guidance!r} has no per-step strength to learn; use one of {learnable}")
        checks.positive("model.init_scale", init_scale)
        checks.integer("model.knots", knots, low=2)
        super().__init__(pretrained, guidance, guidance_params, degradation, condition, steps, grad_steps, lr,
                         ema_decay, export_dir, cache_dir, checkpointing)
        self.schedule = LearnedSchedule(knots if parametrisation == "knots" else steps, init_scale, parametrisation)

    def schedule_for_eval(self):
        return self.schedule

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x_hat = self.reconstruct(batch, self.schedule, self.grad_from())
        loss = self.restoration_loss(x_hat, batch["x"])
        self.check_finite(loss)
        self.log("train/loss", loss, batch_size=len(x_hat), prog_bar=True, sync_dist=True)
        return loss

    def export(self, folder: Path) -> Path:
        return save_schedule(folder / "schedule.safetensors", self.schedule.values(), method=self.hparams.guidance,
                             steps=self.hparams.steps, parametrisation=self.schedule.parametrisation,
                             provenance=self.provenance())


class LoraAdapterLearner(_Learner):
    __doc__ = f"""LoRA on the UNet (rank, alpha, target modules), trained on the data's clean latents.

    ``objective="eps"``: ``|eps_theta(z_t, t) - eps|^2`` with ``z_t`` the forward noising of ``E(M(x))``;
    ``objective="guided"``: the restoration loss through the guided sampler (schedule fixed at ``scale``).

    Args:
        rank: LoRA rank, an integer >= 1.
        alpha: LoRA alpha (the update is scaled by alpha / rank), a finite number > 0.
        target_modules: UNet module names that get adapters (null = the attention projections).
        objective: eps (denoising loss on clean latents) or guided (restoration loss through the sampler).
        item_condition: eps objective only: none (the condition block for every item), caption (each item's
            caption from manifest.csv) or clean_audio (the CLAP audio embedding of each clean crop).
        scale: The guidance strength at every step for the guided objective, a finite number >= 0.
{_LEARNER_ARGS}    """

    def __init__(self, pretrained: str = "gdr-tiny", rank: int = 4, alpha: float = 4.0,
                 target_modules: list[str] | None = None, objective: str = "eps", item_condition: str = "none",
                 guidance: str = "dps", guidance_params: dict | None = None, degradation: dict | None = None,
                 condition: dict | None = None, scale: float = 1.0, steps: int = 10, grad_steps: int | None = None,
                 lr: float = 1e-3, ema_decay: float = 0.0, export_dir: str = "outputs/train/lora",
                 cache_dir: str | None = None, checkpointing: bool = True, seed_offset: int = 0):
        checks.choice("model.objective", objective, ("eps", "guided"))
        checks.choice("model.item_condition", item_condition, ITEM_CONDITIONS)
        if item_condition != "none" and objective != "eps":
            raise ConfigError(f"model.item_condition {item_condition} is for the eps objective; the guided objective "
                              "takes the condition block")
        super().__init__(pretrained, guidance, guidance_params, degradation, condition, steps, grad_steps, lr,
                         ema_decay, export_dir, cache_dir, checkpointing)
        from gdr.adapters import DEFAULT_LORA_TARGETS
        from gdr.schedules import Constant

        self.lora_config = inject_lora(self.backbone.unet, rank, alpha, target_modules or list(DEFAULT_LORA_TARGETS))
        self.backbone.unet.train()
        self.fixed_schedule = Constant(scale)

    def schedule_for_eval(self):
        return self.fixed_schedule

    def item_conditioning(self, batch: dict) -> Conditioning | None:
        """The eps objective's condition: per item (caption or clean-audio CLAP), else the condition block."""
        kind = self.hparams.item_condition
        if kind == "none":
            return self.conditioning(batch)
        stack = self.text_stack()
        spec = dataclasses.replace(self.condition_spec, cfg_scale=1.0)
        if kind == "caption":
            if "caption" not in batch:
                raise ConfigError("model.item_condition caption needs a caption column in the data folder's "
                                  "manifest.csv (data/README.md)")
            items = [stack.conditioning(dataclasses.replace(spec, text=text, audio="none")) for text in batch["caption"]]
        else:
            items = [stack.conditioning(dataclasses.replace(spec, audio="measurement"), x.detach().float().cpu())
                     for x in batch["x"]]
        return Conditioning.stack(items).to(self.device)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.hparams.objective == "guided":
            loss = self.restoration_loss(self.reconstruct(batch, self.fixed_schedule, self.grad_from()), batch["x"])
        else:
            model = self.backbone
            with torch.no_grad():
                z0 = model.waveform_to_latent(model.pad_to_grid(batch["x"]))
            # Each item's timestep and noise from its own stream (the same whatever the batch or rank).
            draws = []
            for g in self.item_generators(batch):
                t = torch.randint(0, model.scheduler.config.num_train_timesteps, (1,), generator=g, device=z0.device)
                draws.append((t, torch.randn((1, *z0.shape[1:]), generator=g, device=z0.device)))
            t = torch.cat([d[0] for d in draws])
            noise = torch.cat([d[1] for d in draws])
            z_t = model.scheduler.add_noise(z0, noise, t)
            conditioning = self.item_conditioning(batch) or Conditioning(model.null_condition)
            kwargs = {k: v.to(z0.device) for k, v in conditioning.cond.expand(z0.shape[0]).items()}
            eps = model.unet(z_t, t, return_dict=False, **kwargs)[0]
            loss = nn.functional.mse_loss(eps, noise)
        self.check_finite(loss)
        self.log("train/loss", loss, batch_size=len(batch["x"]), prog_bar=True, sync_dist=True)
        return loss

    def export(self, folder: Path) -> Path:
        target = save_lora(folder / "lora", self.backbone.unet, self.lora_config)
        meta = {"method": self.hparams.guidance if self.hparams.objective == "guided" else None,
                "objective": self.hparams.objective, "item_condition": self.hparams.item_condition,
                "steps": self.hparams.steps, **self.provenance()}
        write_text(target / "training.json", json.dumps(meta, indent=2, sort_keys=True))
        return target


ITEM_CONDITIONS = ("none", "caption", "clean_audio")
