"""Learn a guidance schedule or a LoRA adapter: ``python scripts/train.py fit --config configs/train/schedule.yaml``.

Wiring only (LightningCLI): the model class comes from the config (``gdr.training.ScheduleLearner`` or
``gdr.training.LoraAdapterLearner``), the data from `gdr.datamodule.RestorationDataModule`; the resolved
config is saved with the run. Resume: add ``--ckpt_path last`` (or a checkpoint path).
"""

import sys

from gdr.cli import main_guard


def main(argv=None) -> int:
    import argparse

    from lightning.pytorch.cli import LightningCLI

    from gdr.cli import quiet_lightning
    from gdr.datamodule import RestorationDataModule
    from gdr.errors import ConfigError, GdrError
    from gdr.training import AtomicCheckpointIO

    quiet_lightning()  # after importing Lightning, which sets its own log level

    class TrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.degradation", "model.init_args.degradation")

        def instantiate_trainer(self, **kwargs):
            return super().instantiate_trainer(plugins=[AtomicCheckpointIO()], **kwargs)

    try:
        TrainCLI(datamodule_class=RestorationDataModule, subclass_mode_model=True, args=argv,
                 save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False},
                 seed_everything_default=0,
                 trainer_defaults={"use_distributed_sampler": False, "inference_mode": False})
    except argparse.ArgumentError as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
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
