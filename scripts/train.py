"""Learn a guidance schedule or a LoRA adapter: ``python scripts/train.py fit --config configs/train/schedule.yaml``.

Wiring only (LightningCLI): the model class comes from the config (``gdr.training.ScheduleLearner`` or
``gdr.training.LoraAdapterLearner``), the data from `gdr.datamodule.RestorationDataModule`; the resolved
config is saved with the run. Resume: add ``--ckpt_path last`` (or a checkpoint path).
"""

import sys
from pathlib import Path

from gdr.cli import main_guard

DESCRIPTION = ("Learn a per-timestep guidance schedule (gdr.training.ScheduleLearner) or a LoRA adapter "
               "(gdr.training.LoraAdapterLearner) on a restoration dataset, on one or many GPUs.")
EPILOG = ("Learners (--model): gdr.training.ScheduleLearner (the strength of each sampling step of one guidance "
          "method) and gdr.training.LoraAdapterLearner (LoRA layers on the UNet); --model.help ScheduleLearner lists "
          "a learner's options. Shipped configs (--config): configs/train/schedule_smoke.yaml and lora_smoke.yaml "
          "(tiny offline model, synthetic data, seconds on CPU); configs/train/schedule.yaml and lora.yaml "
          "(cvssp/audioldm2 and your data, --data.root DIR). Resume with --ckpt_path last; SIGTERM or Ctrl-C saves "
          "last.ckpt at the next step.")


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def wandb_run_id(folder: Path, resume: bool) -> str:
    """The wandb run id of the run folder: kept in ``wandb_run_id`` there; a new run (no ``--ckpt_path``) gets a
    new one, a resumed run reuses it, so its curves continue in one wandb run."""
    import secrets

    from gdr.atomic import write_text

    path = folder / "wandb_run_id"
    if resume and path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    write_text(path, run_id + "\n")
    return run_id


def check_trainer_config(trainer) -> None:
    """Options Lightning accepts but that would train nothing (and export the untrained initial values)."""
    from gdr.errors import ConfigError

    for name in ("max_epochs", "max_steps"):
        if trainer.get(name) == 0:
            raise ConfigError(f"trainer.{name} is 0: nothing would be trained (use -1 or null for no limit)")


def main(argv=None) -> int:
    import argparse
    import signal

    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from gdr.cli import quiet_lightning
    from gdr.config import plain_message
    from gdr.datamodule import RestorationDataModule
    from gdr.errors import ConfigError, GdrError
    from gdr.interrupt import Interrupted, StopSignals
    from gdr.training import AtomicCheckpointIO, CheckpointOnStop, FileLists, fixed_checkpoint_folder

    from jsonargparse import Namespace

    quiet_lightning()  # after importing Lightning, which sets its own log level
    on_stop = CheckpointOnStop()

    class TrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.degradation", "model.init_args.degradation")

        def before_instantiate_classes(self):
            config = self.config[self.subcommand] if self.subcommand else self.config
            check_trainer_config(config.trainer)
            resume = bool(config.get("ckpt_path"))
            run_folder = Path(config.trainer.default_root_dir or ".")
            for logger in as_list(config.trainer.logger):
                if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("WandbLogger"):
                    # One wandb run per run folder: a resume (--ckpt_path) continues it under its id.
                    logger.init_args.id = logger.init_args.get("id") or wandb_run_id(run_folder, resume)
                    logger.init_args.resume = "allow"

        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(plugins=[AtomicCheckpointIO()], **kwargs)
            fixed_checkpoint_folder(trainer)
            trainer.callbacks.extend([on_stop, FileLists()])
            return trainer

    try:
        with StopSignals(sigint_as_sigterm=True) as stop:  # SIGTERM / Ctrl-C: save last.ckpt at a step boundary
            TrainCLI(datamodule_class=RestorationDataModule, subclass_mode_model=True, args=argv,
                     save_config_kwargs={"overwrite": True},
                     parser_kwargs={"exit_on_error": False, "description": DESCRIPTION, "epilog": EPILOG,
                                    "fit": {"exit_on_error": False, "description": DESCRIPTION, "epilog": EPILOG}},
                     seed_everything_default=0,
                     trainer_defaults={"use_distributed_sampler": True, "inference_mode": False})
    except SIGTERMException:
        saved = f"checkpoint {on_stop.path}" if on_stop.path else "no checkpoint (no ModelCheckpoint callback)"
        signum = stop.signum or signal.SIGTERM
        raise Interrupted(signum, f"stopped by {signal.Signals(signum).name} at step {on_stop.stopped_at}, {saved}; "
                                  "rerun with --ckpt_path last to resume") from None
    except argparse.ArgumentError as exc:
        raise ConfigError(plain_message(str(exc))) from None
    except (ValueError, TypeError) as exc:
        # jsonargparse wraps errors raised while building the model or data; surface ours in one line.
        cause = exc
        while cause is not None and not isinstance(cause, GdrError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
