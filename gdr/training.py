"""What `scripts/train.py` trains: a per-timestep guidance schedule, or a LoRA adapter on the UNet.

Both are thin LightningModules around the frozen backbone:

* `ScheduleLearner`: strengths ``s_i = softplus(theta_i)`` (one per sampling step) trained end to end
  through the unrolled guided sampler on a restoration loss against the clean audio,
  ``L = logmel_l1(x_hat, x) + mrstft(x_hat, x)``. Memory stays bounded by truncated backprop (the graph is
  kept through the last ``grad_steps`` steps only) and activation checkpointing of the UNet. Data
  gradients inside the methods are first order (constants of the outer backward pass).
* `LoraAdapterLearner`: LoRA on the UNet's attention projections, trained with the standard
  epsilon-prediction loss on clean latents of the data (adapting the prior to the domain), or with
  ``objective: guided`` end to end through the guided sampler like the schedule.

Exports (`export`, called at the end of fit and loadable by evaluate.py): ``schedule.safetensors``
(``--guidance.schedule_path``) or ``lora/`` (``--model.lora_path``). An exponential moving average of the
trained parameters is kept when ``ema_decay > 0`` and is what gets validated and exported.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from gdr import checks
from gdr.adapters import inject_lora, save_lora
from gdr.backbone import AudioLDM2
from gdr.degradations import build_degradation
from gdr.errors import ConfigError
from gdr.methods import GUIDANCE, build_guidance
from gdr.metrics import LogMelL1, MultiResolutionSTFT, logmel_l1, mrstft
from gdr.module import guided_reconstruction, seed_for
from gdr.schedules import save_schedule


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
    """Logs the first validation batch (clean, degraded, reconstruction) as audio to wandb, from rank 0 only."""

    def __init__(self, max_items: int = 2):
        self.max_items = max_items

    @rank_zero_only
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        from lightning.pytorch.loggers import WandbLogger

        if batch_idx != 0 or not outputs or not isinstance(trainer.logger, WandbLogger):
            return
        import wandb

        n = min(self.max_items, len(batch["x"]))
        audio = {}
        for name, wave in (("clean", batch["x"]), ("degraded", batch["y"]), ("reconstruction", outputs["x_hat"])):
            audio[f"val_audio/{name}"] = [wandb.Audio(w.float().cpu().numpy(), sample_rate=16000) for w in wave[:n]]
        trainer.logger.experiment.log({**audio, "trainer/global_step": trainer.global_step})


class LearnedSchedule(nn.Module):
    """``steps`` strengths kept positive by softplus; initialised at ``init``. ``forward(i, n)`` -> 0-dim tensor."""

    def __init__(self, steps: int, init: float = 1.0):
        super().__init__()
        raw = math.log(math.expm1(init)) if init < 20 else init  # softplus^-1
        self.raw = nn.Parameter(torch.full((steps,), float(raw)))

    def values(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw)

    def forward(self, i: int, n: int) -> torch.Tensor:
        return self.values()[i]


class _Learner(L.LightningModule):
    """Shared machinery: the frozen backbone, the guided reconstruction of a batch, losses, EMA, export."""

    def __init__(self, pretrained: str, guidance: str, guidance_params: dict | None, steps: int, grad_steps: int,
                 lr: float, ema_decay: float, export_dir: str, cache_dir: str | None, checkpointing: bool):
        super().__init__()
        checks.positive("model.lr", lr)
        checks.integer("model.steps", steps, low=1)
        checks.integer("model.grad_steps", grad_steps, low=1, high=steps)
        checks.number("model.ema_decay", ema_decay, low=0, high=1, high_open=True)
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints hold only what is trained (see on_save_checkpoint)
        self.backbone = AudioLDM2.from_pretrained(pretrained, cache_dir=cache_dir)
        self.guidance = build_guidance(guidance, guidance_params)
        self.val_logmel, self.val_mrstft = LogMelL1(), MultiResolutionSTFT()

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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The frozen backbone (1.8 GB for the real model) is reloaded from `pretrained`; keep the rest.
        keep = set(self.trained_parameters())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k in keep or not k.startswith("backbone.")}

    def configure_optimizers(self):
        return torch.optim.Adam(list(self.trained_parameters().values()), lr=self.hparams.lr)

    # ---------------------------------------------------------------- guided reconstruction
    def reconstruct(self, batch: dict, schedule, generator: torch.Generator, grad_steps: int) -> torch.Tensor:
        """Guided reconstruction of ``batch["y"]`` ``(B, n)`` -> ``(B, n)``, differentiable through the last steps."""
        return guided_reconstruction(self.backbone, self.degradation, self.guidance, schedule, batch["y"],
                                     support=batch["support"], steps=self.hparams.steps, generator=generator,
                                     grad_steps=grad_steps, checkpoint=self.hparams.checkpointing)

    @staticmethod
    def restoration_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (logmel_l1(x_hat, x) + mrstft(x_hat, x)).mean()

    def generator(self, stage: str, batch_idx: int) -> torch.Generator:
        # One stream per (stage, step): identical across resumes and independent of global RNG state.
        step = self.global_step if stage == "train" else batch_idx
        return torch.Generator(device=self.device).manual_seed(seed_for(stage, self.hparams.seed_offset, step))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Methods such as DPS need autograd inside validation: run with Trainer(inference_mode=False)
        # (scripts/train.py sets it); no_grad here still lets them enable it locally.
        with torch.no_grad():
            x_hat = self.reconstruct(batch, self.schedule_for_eval(), self.generator("val", batch_idx), 0)
        self.val_logmel.update(x_hat, batch["x"])
        self.val_mrstft.update(x_hat, batch["x"])
        self.log("val/loss", self.restoration_loss(x_hat, batch["x"]), batch_size=len(x_hat), sync_dist=True)
        self.log_dict({"val/logmel_l1": self.val_logmel, "val/mrstft": self.val_mrstft}, batch_size=len(x_hat))
        return {"x_hat": x_hat.detach().cpu()}

    def on_validation_start(self) -> None:
        self._swap_ema()

    def on_validation_end(self) -> None:
        self._swap_ema()

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self._swap_ema()
            self.export(Path(self.hparams.export_dir))
            self._swap_ema()


# The options both learners share, as `--help` shows them (jsonargparse reads each class's Args section).
_LEARNER_ARGS = """\
        pretrained: Model id or folder (gdr-tiny for smoke runs).
        guidance: The guidance method, any registered method with a per-step strength (dps, latent_pull, ...).
        guidance_params: The method's own options, e.g. {every: 2}.
        degradation: The task, {name: ..., <params>} (linked to the data module's).
        steps: Sampling steps, an integer >= 1.
        grad_steps: Steps kept in the autograd graph (truncated backprop), an integer in [1, steps].
        lr: Adam learning rate, a finite number > 0.
        ema_decay: Decay of the exponential moving average of the learned weights, in [0, 1) (0 = off).
        export_dir: Where the learned file is written at the end of fit.
        cache_dir: Where the tiny model and cached conditions live (null = $GDR_CACHE, else ~/.cache/gdr).
        checkpointing: Recompute the UNet in the backward pass (activation checkpointing: less memory).
        seed_offset: Added to every seed of the run (noise, timesteps), an integer.
"""


class ScheduleLearner(_Learner):
    __doc__ = f"""Learn the per-step guidance strength of one method (see the module docstring).

    Args:
{_LEARNER_ARGS}        init_scale: Initial strength at every step, a finite number > 0.
    """

    def __init__(self, pretrained: str = "gdr-tiny", guidance: str = "dps", guidance_params: dict | None = None,
                 degradation: dict | None = None, steps: int = 10, grad_steps: int = 3, init_scale: float = 1.0,
                 lr: float = 0.05, ema_decay: float = 0.0, export_dir: str = "outputs/train/schedule",
                 cache_dir: str | None = None, checkpointing: bool = True, seed_offset: int = 0):
        if guidance in GUIDANCE and not GUIDANCE[guidance].per_step_strength:
            learnable = ", ".join(name for name, cls in GUIDANCE.items() if cls.per_step_strength)
            raise ConfigError(f"guidance {guidance!r} has no per-step strength to learn; use one of {learnable}")
        checks.positive("model.init_scale", init_scale)
        super().__init__(pretrained, guidance, guidance_params, steps, grad_steps, lr, ema_decay, export_dir,
                         cache_dir, checkpointing)
        self.degradation = build_degradation(degradation or {"name": "identity"})
        self.schedule = LearnedSchedule(steps, init_scale)

    def schedule_for_eval(self):
        return self.schedule

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x_hat = self.reconstruct(batch, self.schedule, self.generator("train", batch_idx), self.hparams.grad_steps)
        loss = self.restoration_loss(x_hat, batch["x"])
        self.log("train/loss", loss, batch_size=len(x_hat), prog_bar=True, sync_dist=True)
        return loss

    def export(self, folder: Path) -> Path:
        return save_schedule(folder / "schedule.safetensors", self.schedule.values(), method=self.hparams.guidance,
                             steps=self.hparams.steps)


class LoraAdapterLearner(_Learner):
    __doc__ = f"""LoRA on the UNet (rank, alpha, target modules), trained on the data's clean latents.

    ``objective="eps"``: ``|eps_theta(z_t, t) - eps|^2`` with ``z_t`` the forward noising of ``E(M(x))``;
    ``objective="guided"``: the restoration loss through the guided sampler (schedule fixed at ``scale``).

    Args:
        rank: LoRA rank, an integer >= 1.
        alpha: LoRA alpha (the update is scaled by alpha / rank), a finite number > 0.
        target_modules: UNet module names that get adapters (null = the attention projections).
        objective: eps (denoising loss on clean latents) or guided (restoration loss through the sampler).
        scale: The guidance strength at every step for the guided objective, a finite number >= 0.
{_LEARNER_ARGS}    """

    def __init__(self, pretrained: str = "gdr-tiny", rank: int = 4, alpha: float = 4.0,
                 target_modules: list[str] | None = None, objective: str = "eps", guidance: str = "dps",
                 guidance_params: dict | None = None, degradation: dict | None = None, scale: float = 1.0,
                 steps: int = 10, grad_steps: int = 2, lr: float = 1e-3, ema_decay: float = 0.0,
                 export_dir: str = "outputs/train/lora", cache_dir: str | None = None, checkpointing: bool = True,
                 seed_offset: int = 0):
        checks.choice("model.objective", objective, ("eps", "guided"))
        super().__init__(pretrained, guidance, guidance_params, steps, grad_steps, lr, ema_decay, export_dir,
                         cache_dir, checkpointing)
        from gdr.adapters import DEFAULT_LORA_TARGETS
        from gdr.schedules import Constant

        self.degradation = build_degradation(degradation or {"name": "identity"})
        self.lora_config = inject_lora(self.backbone.unet, rank, alpha, target_modules or list(DEFAULT_LORA_TARGETS))
        self.backbone.unet.train()
        self.fixed_schedule = Constant(scale)

    def schedule_for_eval(self):
        return self.fixed_schedule

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        g = self.generator("train", batch_idx)
        if self.hparams.objective == "guided":
            loss = self.restoration_loss(self.reconstruct(batch, self.fixed_schedule, g, self.hparams.grad_steps),
                                         batch["x"])
        else:
            model = self.backbone
            with torch.no_grad():
                z0 = model.waveform_to_latent(model.pad_to_grid(batch["x"]))
            t = torch.randint(0, model.scheduler.config.num_train_timesteps, (z0.shape[0],), generator=g,
                              device=z0.device)
            noise = torch.randn(z0.shape, generator=g, device=z0.device)
            z_t = model.scheduler.add_noise(z0, noise, t)
            eps = model.unet(z_t, t, return_dict=False, **model.null_condition.expand(z0.shape[0]))[0]
            loss = nn.functional.mse_loss(eps, noise)
        self.log("train/loss", loss, batch_size=len(batch["x"]), prog_bar=True, sync_dist=True)
        return loss

    def export(self, folder: Path) -> Path:
        return save_lora(folder / "lora", self.backbone.unet, self.lora_config)
