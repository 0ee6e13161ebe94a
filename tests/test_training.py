"""scripts/train.py: the schedule learner learns, resume is exact, exports reload, DDP works, bad configs fail."""

import json
import math
import os
import subprocess
import sys
from unittest.mock import PropertyMock, patch

import lightning as L
import pytest
import torch
from safetensors import safe_open

from conftest import ROOT
from gdr.datamodule import RestorationDataModule
from gdr.training import AtomicCheckpointIO, LoraAdapterLearner, ScheduleLearner

LOWPASS = {"name": "lowpass", "cutoff_hz": 3000}


def _data(**kw):
    args = dict(root=None, degradation=LOWPASS, crop_seconds=0.64, batch_size=2, items_per_epoch=4,
                synthetic_count=6)
    return RestorationDataModule(**{**args, **kw})


def _trainer(tmp_path, epochs, **kw):
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, use_distributed_sampler=False,
                     plugins=[AtomicCheckpointIO()], inference_mode=False, **kw)


def _schedule(tmp_path, cache_dir, **kw):
    args = dict(pretrained="gdr-tiny", guidance="dps", degradation=LOWPASS, steps=4, init_scale=1.0,
                lr=0.5, export_dir=str(tmp_path / "export"), cache_dir=str(cache_dir))
    return ScheduleLearner(**{**args, **kw})


def test_learned_schedule_starts_at_its_initial_strength():
    from gdr.training import LearnedSchedule

    for init in (0.05, 0.7, 3.0, 25.0):
        values = LearnedSchedule(4, init).values().detach()
        torch.testing.assert_close(values, torch.full((4,), init), rtol=1e-6, atol=0)


def test_ema_is_the_decayed_average_of_the_trained_parameters(tmp_path, cache_dir, tiny_dir):
    learner = _schedule(tmp_path, cache_dir, ema_decay=0.9)
    learner.setup("fit")
    start = learner.schedule.raw.detach().clone()
    with torch.no_grad():
        learner.schedule.raw.add_(1.0)
    learner.on_train_batch_end(None, None, 0)
    torch.testing.assert_close(learner.ema_0, 0.9 * start + 0.1 * (start + 1.0))


def test_a_checkpoint_taken_during_validation_holds_the_raw_weights_and_the_average_apart(tmp_path, cache_dir,
                                                                                          tiny_dir):
    """Lightning saves in ModelCheckpoint.on_validation_end, while validation runs on the EMA weights: the checkpoint
    must still hold the raw weights as the parameter and the average as the EMA buffer, or a resumed run continues
    from the average."""
    learner = _schedule(tmp_path, cache_dir, ema_decay=0.9)
    learner.setup("fit")
    with torch.no_grad():
        learner.schedule.raw.add_(1.0)  # raw != average
    raw, average = learner.schedule.raw.detach().clone(), learner.ema_0.clone()
    learner.on_validation_start()  # validation runs on the average
    torch.testing.assert_close(learner.schedule.raw.detach(), average, rtol=0, atol=0)
    checkpoint = {"state_dict": learner.state_dict()}
    learner.on_save_checkpoint(checkpoint)
    assert torch.equal(checkpoint["state_dict"]["schedule.raw"], raw)
    assert torch.equal(checkpoint["state_dict"]["ema_0"], average)
    learner.on_validation_epoch_end()  # and training continues on the raw weights
    assert torch.equal(learner.schedule.raw.detach(), raw) and torch.equal(learner.ema_0, average)


def test_a_fresh_lora_changes_nothing_trains_only_itself_and_reloads_with_its_alpha(tmp_path, cache_dir, tiny_dir):
    from gdr.adapters import inject_lora, save_lora
    from gdr.backbone import AudioLDM2

    model = AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir)
    z = torch.randn(1, 8, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.eps(z, 500)
    config = inject_lora(model.unet, rank=2, alpha=6.0)  # alpha != rank: the scale alpha / rank is 3
    trainable = [n for n, p in model.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    from gdr.adapters import DEFAULT_LORA_TARGETS

    adapted = {n.split(".lora_A")[0] for n in trainable if ".lora_A" in n}  # every targeted attention projection
    projections = {n for n, _ in model.unet.named_modules() if n.endswith(tuple(f".{t}" for t in DEFAULT_LORA_TARGETS))
                   and ".lora_" not in n and "attn" in n}
    assert projections and adapted == projections
    assert not any(p.requires_grad for n, p in model.unet.named_parameters() if "lora_" not in n)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        torch.testing.assert_close(model.eps(z, 500), before, rtol=0, atol=0)  # B = 0: the identity at start
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
        adapted = model.eps(z, 500)
    assert (adapted - before).abs().max() > 1e-4
    save_lora(tmp_path / "lora", model.unet, config)
    reloaded = AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir, lora_path=tmp_path / "lora")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eps(z, 500), adapted)


def test_checkpoints_keep_every_trained_parameter_and_nothing_else_of_the_backbone(tmp_path, cache_dir, tiny_dir):
    learner = LoraAdapterLearner(pretrained="gdr-tiny", rank=2, alpha=2.0, steps=2, grad_steps=1,
                                 export_dir=str(tmp_path), cache_dir=str(cache_dir))
    checkpoint = {"state_dict": learner.state_dict()}
    learner.on_save_checkpoint(checkpoint)
    kept = set(checkpoint["state_dict"])
    trained = set(learner.trained_parameters())
    assert trained and trained <= kept
    assert {k for k in kept if k.startswith("backbone.")} == trained


def test_schedule_training_moves_every_strength_and_exports_what_it_was_learned_for(tmp_path, cache_dir, tiny_dir):
    """A short fit through Lightning: every exported strength has moved, the export says what it is for.

    Whether learning *helps* is tested where the answer is known (tests/test_schedule_learning.py: under the
    Gaussian oracle the learned schedule reaches the best constant strength). It is not asserted here: on the random
    tiny model the validation loss is flat in the strength (8.381 to 8.42 over strengths 0.2 to 2.0, measured
    2026-12-01), so a lower validation loss after 8 steps would be luck, not learning."""
    torch.manual_seed(0)
    learner, data = _schedule(tmp_path, cache_dir, guidance="latent_pull", init_scale=0.7, lr=0.2), _data()
    trainer = _trainer(tmp_path, 4, enable_checkpointing=False)
    trainer.fit(learner, datamodule=data)
    assert math.isfinite(trainer.callback_metrics["val/loss"])
    # The whole loop is backpropagated: every exported strength has moved from its init.
    with safe_open(str(tmp_path / "export" / "schedule.safetensors"), "pt") as f:
        meta, exported = f.metadata(), f.get_tensor("values")
    assert exported.shape == (4,) and (exported - 0.7).abs().min() > 0.02, exported
    assert meta["method"] == "latent_pull" and meta["parametrisation"] == "steps" and meta["steps"] == "4"
    assert json.loads(meta["degradation"]) == LOWPASS and json.loads(meta["condition"])["text"] == ""
    assert json.loads(meta["scheduler"]) == "ddim" and json.loads(meta["eta"]) == 0.0
    assert json.loads(meta["train_files"]) == data.fingerprint
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "export" / "schedule.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # like any file


def test_a_non_finite_loss_stops_the_run_in_one_line_and_exports_nothing(tmp_path, cache_dir, tiny_dir, monkeypatch):
    from gdr.training import NonFiniteLossError

    learner = _schedule(tmp_path, cache_dir, guidance="latent_pull", steps=2)
    calls = []

    def loss(x_hat, x):  # finite at the first step, NaN at the second
        calls.append(1)
        value = ScheduleLearner.restoration_loss(x_hat, x)
        return value if len(calls) < 2 else value * float("nan")

    monkeypatch.setattr(learner, "restoration_loss", loss)
    with pytest.raises(NonFiniteLossError, match="not finite at step 1 .*lower model.lr"):
        _trainer(tmp_path, 2, enable_checkpointing=False, num_sanity_val_steps=0).fit(
            learner, datamodule=_data(crop_seconds=0.32))
    assert not (tmp_path / "export").exists()


def test_resume_from_a_mid_run_checkpoint_is_bitwise_exact(tmp_path, cache_dir, tiny_dir):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(folder, epochs, ckpt_path=None):
        # Small on purpose (2 sampling steps, 0.32 s crops): exactness does not depend on size.
        learner = _schedule(folder, cache_dir, ema_decay=0.5, steps=2, grad_steps=1)
        callback = ModelCheckpoint(dirpath=folder / "ckpt", every_n_epochs=1, save_top_k=-1, save_last=True)
        _trainer(folder, epochs, callbacks=[callback]).fit(learner, datamodule=_data(crop_seconds=0.32),
                                                           ckpt_path=ckpt_path)
        return learner

    full = run(tmp_path / "full", 3)
    first = run(tmp_path / "part", 1)
    assert not torch.equal(first.schedule.raw, full.schedule.raw)
    resumed = run(tmp_path / "part", 3, ckpt_path=str(tmp_path / "part" / "ckpt" / "epoch=0-step=2.ckpt"))
    assert torch.equal(resumed.schedule.raw, full.schedule.raw)
    assert torch.equal(resumed.ema_0, full.ema_0)
    # Checkpoints hold what is trained, not the frozen backbone.
    state = torch.load(tmp_path / "full" / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert "schedule.raw" in state and not any(k.startswith("backbone.") for k in state)


def test_a_failed_save_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def boom(obj, f, *a, **k):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt  # stands in for a kill in the middle of writing

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert io.load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_lora_export_reloads_through_peft_and_changes_the_unet(tmp_path, cache_dir, tiny_dir):
    from gdr.backbone import AudioLDM2

    learner = LoraAdapterLearner(pretrained="gdr-tiny", rank=4, alpha=4.0, lr=0.01, steps=3, grad_steps=1,
                                 export_dir=str(tmp_path / "export"), cache_dir=str(cache_dir))
    _trainer(tmp_path, 2, enable_checkpointing=False).fit(learner, datamodule=_data(degradation={"name": "identity"}))
    folder = tmp_path / "export" / "lora"
    assert (folder / "lora.safetensors").exists() and (folder / "adapter_config.json").exists()
    base = AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir)
    adapted = AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir, lora_path=folder)
    z = torch.randn(1, 8, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_base, out_adapted = base.eps(z, 500), adapted.eps(z, 500)
        learner.backbone.unet.eval()
        out_trained = learner.backbone.eps(z, 500)
    assert not torch.allclose(out_base, out_adapted, atol=1e-6)
    torch.testing.assert_close(out_adapted, out_trained)


def test_exported_schedule_changes_evaluate_output(tmp_path, cache_dir, tiny_dir, recwarn):
    import csv

    from gdr.adapters import inject_lora, save_lora
    from gdr.backbone import AudioLDM2
    from gdr.schedules import save_schedule
    from test_evaluate_script import _evaluate_main

    path = save_schedule(tmp_path / "learned.safetensors", torch.tensor([5.0, 0.1, 3.0]), method="dps", steps=3,
                         provenance={"degradation": {"name": "noise", "snr_db": 10}})
    model = AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir)
    save_lora(tmp_path / "my_adapter", model.unet, inject_lora(model.unet, rank=2, alpha=2.0))
    common = ["--config", "configs/smoke.yaml", "--progress", "false", "--logger", "false", "--data.demo_seconds",
              "1.0", "--sampler.steps", "3", "--degradation.name", "lowpass", "--report.bootstrap", "100"]
    assert _evaluate_main()([*common, "--output_dir", str(tmp_path / "plain")]) == 0
    recwarn.clear()
    assert _evaluate_main()([*common, "--output_dir", str(tmp_path / "learned"), "--guidance.schedule_path", str(path),
                             "--model.lora_path", str(tmp_path / "my_adapter")]) == 0
    from gdr.errors import GdrWarning

    warned = [str(w.message) for w in recwarn if w.category is GdrWarning and str(w.message).startswith("schedule")]
    assert len(warned) == 1 and "learned for noise(snr_db=10), used on lowpass(" in warned[0], warned
    plain = [r for r in csv.DictReader((tmp_path / "plain" / "metrics.csv").open()) if r["guidance"] == "dps"]
    learned = [r for r in csv.DictReader((tmp_path / "learned" / "metrics.csv").open()) if r["guidance"] == "dps"]
    assert learned[0]["method"] == "dps learned:learned 3st lora:my_adapter" and plain[0]["method"] == "dps s=1 3st"
    assert [r["lsd"] for r in plain] != [r["lsd"] for r in learned]
    assert "dps learned:learned 3st lora:my_adapter" in (tmp_path / "learned" / "report.md").read_text()


def _train(args, timeout=None, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "fit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _exported(folder, learner):
    """The tensors (and metadata) of a run's export."""
    path = folder / ("schedule.safetensors" if learner == "schedule" else "lora/lora.safetensors")
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


DDP_ARGS = ["--trainer.max_epochs", "1", "--trainer.precision", "64-true", "--data.crop_seconds", "0.32", "--data.items_per_epoch", "4",
            "--model.init_args.steps", "2", "--trainer.enable_progress_bar", "false"]


@pytest.mark.parametrize("learner, lr", [("schedule", "0.2"), pytest.param("lora", "0.001", marks=pytest.mark.slow)])
def test_two_processes_equal_one_process_with_the_global_batch(tmp_path, tiny_dir, learner, lr):
    """2 processes x batch 1 (DDP, gloo) against 1 process x batch 2: every item draws its noise (and the eps
    objective its timestep) from its own stream keyed by the item's identity, so both runs compute the same
    per-item gradients and average them; the exports are equal, not only alike in format. The runs are in
    float64 (``precision 64-true``): in float32 the batch-of-2 UNet call and the all-reduce round differently
    (~1e-7 relative), which Adam's normalised steps amplify to 2e-6 after two steps at lr 0.02; in float64 the
    same difference stays far below the 1e-9 tolerance."""
    import csv

    files, logged = {}, {}
    for name, devices, batch in (("single", "1", "2"), ("ddp", "2", "1")):
        out = tmp_path / name
        proc = _train(["--config", f"configs/train/{learner}_smoke.yaml", *DDP_ARGS, "--trainer.devices", devices,
                       "--trainer.strategy", "ddp" if devices == "2" else "auto", "--data.batch_size", batch,
                       "--model.init_args.lr", lr, "--model.init_args.export_dir", str(out),
                       "--trainer.default_root_dir", str(out), "--trainer.logger",
                       "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(out)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        files[name] = _exported(out, learner)
        (log,) = out.glob("lightning_logs/version_*/metrics.csv")
        logged[name] = {k: float(v) for row in csv.DictReader(log.open()) for k, v in row.items()
                        if k.startswith("val/") and v}
    # Validation is sharded (each rank one of the 2 validation files) and its metrics synced across ranks.
    assert logged["single"].keys() == logged["ddp"].keys() == {"val/loss", "val/logmel_l1", "val/mrstft"}
    for key, value in logged["single"].items():
        assert abs(logged["ddp"][key] - value) <= 1e-9 * abs(value), (key, logged)
    (meta_single, single), (meta_ddp, ddp) = files["single"], files["ddp"]
    assert meta_single == meta_ddp and single.keys() == ddp.keys() and single
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=1e-9)
    if learner == "schedule":  # it trained (init 0.7): the equality means something
        assert (single["values"] - 0.7).abs().max() > 1e-3
    else:
        assert max(float(v.abs().max()) for k, v in single.items() if "lora_B" in k) > 1e-5


@pytest.mark.parametrize("args, needle", [
    (["--config", "configs/train/lora_smoke.yaml", "--model.init_args.rank", "0"], "lora rank must be an integer >= 1"),
    (["--config", "configs/train/schedule_smoke.yaml", "--model.init_args.lr", "-0.1"], "model.lr must be a finite number > 0"),
    (["--config", "configs/train/schedule_smoke.yaml", "--data.root", "EMPTY"], "no audio files found"),
    (["--config", "configs/train/schedule_smoke.yaml", "--model.init_args.guidance", "sdedit"], "no per-step strength"),
    (["--config", "configs/train/schedule_smoke.yaml", "--trainer.max_epochs", "lots"],
     "trainer.max_epochs must be int or null, got 'lots'"),
    (["--config", "configs/train/schedule_smoke.yaml", "--trainer.max_epochs", "0"], "trainer.max_epochs is 0"),
    (["--config", "configs/train/lora_smoke.yaml", "--trainer.max_steps", "0"], "trainer.max_steps is 0"),
    (["--config", "configs/train/schedule_smoke.yaml", "--model.init_args.lr", "nan"],
     "lr must be a finite number, got nan"),
    (["--config", "configs/train/schedule_smoke.yaml", "--model.init_args.parametrisation", "spline"],
     "model.parametrisation must be 'steps' or 'knots', got 'spline'"),
])
def test_bad_training_configs_fail_in_one_line(tmp_path, capsys, tiny_dir, args, needle):
    from gdr.cli import main_guard

    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["fit", *[str(empty) if a == "EMPTY" else a for a in args],
            "--trainer.default_root_dir", str(tmp_path / "run")]
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    code = main_guard(lambda: module.main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


CHEAP_PARAMS = {"diffpir": {"iters": 2}, "resample": {"every": 1, "iters": 2},
                "daps": {"ode_steps": 2, "langevin_steps": 2, "lr": 1e-4}}


@pytest.mark.parametrize("guidance", ["latent_pull", "inpaint", "dps", "mpgd", "diffpir", "psld", "resample", "daps"])
def test_every_method_with_a_strength_gets_schedule_gradients(tmp_path, cache_dir, tiny_dir, guidance):
    learner = _schedule(tmp_path, cache_dir, guidance=guidance, steps=3, init_scale=0.5,
                        guidance_params=CHEAP_PARAMS.get(guidance))
    batch = next(iter(_data(crop_seconds=0.32).train_dataloader()))
    loss = learner.training_step(batch, 0)
    loss.backward()
    grad = learner.schedule.raw.grad
    assert torch.isfinite(loss) and grad is not None and torch.isfinite(grad).all()
    # The whole loop is in the graph: every step's strength has a gradient. (Not at strength 1 for latent_pull and
    # inpaint: their last step then returns z_y itself, which no earlier step can change.)
    assert (grad.abs() > 0).all(), grad


def test_the_grad_steps_window_moves_so_every_strength_is_trained_over_a_run(tmp_path, cache_dir, tiny_dir):
    """grad_steps k: the graph starts at a step drawn per optimizer step in [0, steps - k]; strengths before it get
    no gradient that step, and over a few steps every position is drawn."""
    learner = _schedule(tmp_path, cache_dir, guidance="latent_pull", steps=3, grad_steps=1, init_scale=0.5)
    batch = next(iter(_data(crop_seconds=0.32).train_dataloader()))
    starts = set()
    for step in range(12):
        learner.schedule.raw.grad = None
        with patch.object(type(learner), "global_step", new_callable=PropertyMock, return_value=step):
            start = learner.grad_from()
            assert start == learner.grad_from()  # a pure function of the step: every rank and micro-batch agree
            learner.training_step(batch, 0).backward()
        grad = learner.schedule.raw.grad
        assert (grad[:start] == 0).all() and (grad[start:].abs() > 0).all(), (start, grad)
        starts.add(start)
    assert starts == {0, 1, 2}


def test_lora_guided_objective_trains_the_adapter(tmp_path, cache_dir, tiny_dir):
    learner = LoraAdapterLearner(pretrained="gdr-tiny", rank=2, alpha=2.0, objective="guided", guidance="latent_pull",
                                 scale=0.5, steps=2, grad_steps=1, export_dir=str(tmp_path), cache_dir=str(cache_dir))
    batch = next(iter(_data(crop_seconds=0.32).train_dataloader()))
    learner.training_step(batch, 0).backward()
    grads = [p.grad for p in learner.trained_parameters().values()]
    assert grads and all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def _shipped(config: str, out, *extra: str) -> list[str]:
    """A shipped real-model config (with its WandbLogger, offline) run on the tiny model, small and in float32."""
    return ["--config", f"configs/train/{config}.yaml", "--model.init_args.pretrained", "gdr-tiny",
            "--model.init_args.steps", "2", "--data.crop_seconds", "0.32", "--data.items_per_epoch", "4",
            "--data.batch_size", "2", "--trainer.accumulate_grad_batches", "1", "--trainer.precision", "32-true",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
            "--model.init_args.export_dir", str(out / "export"), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["schedule", "lora"])
def test_kill_9_and_resume_with_the_shipped_config_equals_an_uninterrupted_run(tmp_path, tiny_dir, config):
    """README's resume, as a user runs it: the shipped config with its WandbLogger (offline), EMA on and validation
    every 2nd epoch, killed with SIGKILL after its second epoch's checkpoint, then rerun with --ckpt_path last.
    The export is bit-equal to an uninterrupted run's, the checkpoints sit in one folder under the run's
    default_root_dir, and the wandb run continues under its id."""
    import signal
    import time

    extra = ["--trainer.max_epochs", "4", "--trainer.check_val_every_n_epoch", "2", "--model.init_args.ema_decay",
             "0.5", "--model.init_args.guidance", "latent_pull"]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    full = tmp_path / "full"
    proc = _train(_shipped(config, full, *extra), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    part = tmp_path / "part"
    args = [sys.executable, str(ROOT / "scripts" / "train.py"), "fit", *_shipped(config, part, *extra)]
    killed = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (part / "checkpoints" / "epoch=1-step=4.ckpt").exists():
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (part / "export").exists()  # it did not get that far
    run_id = (part / "wandb_run_id").read_text().strip()
    proc = _train([*_shipped(config, part, *extra), "--ckpt_path", "last"], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch=3-step=8.ckpt" in {p.name for p in (part / "checkpoints").iterdir()}
    assert (part / "wandb_run_id").read_text().strip() == run_id
    runs = sorted(p.name for p in (part / "wandb").iterdir() if p.name.startswith("offline-run"))
    assert len(runs) == 2 and all(r.endswith(run_id) for r in runs), runs
    (_, resumed), (_, uninterrupted) = _exported(part / "export", config), _exported(full / "export", config)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


def _lora(tmp_path, cache_dir, **kw):
    args = dict(pretrained="gdr-tiny", rank=2, alpha=2.0, steps=2, export_dir=str(tmp_path), cache_dir=str(cache_dir))
    learner = LoraAdapterLearner(**{**args, **kw})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B = 0 at init would zero every A gradient: give B a value so every tensor can get one
        for name, p in learner.trained_parameters().items():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return learner


def _silent_cross_attention(learner, batch) -> tuple[int, int]:
    """(cross-attention LoRA tensors without gradient, cross-attention LoRA tensors) after one backward pass."""
    learner.training_step(batch, 0).backward()
    cross = {n: p.grad for n, p in learner.trained_parameters().items() if "attn2" in n}
    return sum(g is None or not g.abs().max() > 0 for g in cross.values()), len(cross)


@pytest.mark.parametrize("objective", ["eps", "guided"])
def test_with_a_condition_every_cross_attention_lora_tensor_gets_gradient(tmp_path, cache_dir, tiny_dir, objective):
    batch = next(iter(_data(crop_seconds=0.32, degradation={"name": "identity"}).train_dataloader()))
    kw = dict(objective=objective, guidance="latent_pull", scale=0.5)
    silent, total = _silent_cross_attention(_lora(tmp_path, cache_dir, **kw), batch)
    # The null condition's GPT-2 stream is zeros: the LoRA on its keys and values sees no input (the 40).
    assert total and silent > 0
    conditioned = _lora(tmp_path, cache_dir, condition={"text": "a dog barks"}, **kw)
    assert _silent_cross_attention(conditioned, batch) == (0, total)


def test_cfg_runs_inside_the_guided_objective(tmp_path, cache_dir, tiny_dir):
    """With cfg_scale != 1 every UNet call of the guided objective runs the doubled batch [uncond, cond] of the
    call the same objective makes without CFG, and the gradient flows through it."""
    batch = next(iter(_data(crop_seconds=0.32, degradation={"name": "identity"}).train_dataloader()))

    def unet_batches(condition):
        learner = _lora(tmp_path, cache_dir, objective="guided", guidance="latent_pull", scale=0.5, condition=condition)
        sizes = []
        hook = learner.backbone.unet.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(
            (args[0].shape[0], kwargs["encoder_hidden_states"].shape[0])), with_kwargs=True)
        learner.training_step(batch, 0).backward()
        hook.remove()
        assert all(p.grad is not None for p in learner.trained_parameters().values())
        return sizes

    plain = unet_batches({"text": "rain on a roof"})
    assert plain and unet_batches({"text": "rain on a roof", "cfg_scale": 3.0}) == [(2 * a, 2 * b) for a, b in plain]


@pytest.mark.parametrize("item_condition", ["caption", "clean_audio"])
def test_the_eps_objective_conditions_each_item_on_its_caption_or_clean_audio(tmp_path, cache_dir, tiny_dir,
                                                                             item_condition):
    learner = _lora(tmp_path, cache_dir, item_condition=item_condition)
    batch = next(iter(_data(crop_seconds=0.32, degradation={"name": "identity"}).train_dataloader()))
    batch["caption"] = ["a dog barks", "a violin plays a slow melody"]
    streams = []
    hook = learner.backbone.unet.register_forward_pre_hook(
        lambda module, args, kwargs: streams.append(kwargs["encoder_hidden_states"]), with_kwargs=True)
    learner.training_step(batch, 0).backward()
    hook.remove()
    (gpt2,) = streams
    assert gpt2.shape[0] == 2 and not torch.allclose(gpt2[0], gpt2[1])  # each item its own condition
    assert _silent_cross_attention(learner, batch)[0] == 0


@pytest.mark.slow
def test_torchrun_two_nodes_equal_one_process(tmp_path, tiny_dir):
    """Past one machine with Lightning's own launch: torchrun with 2 nodes x 1 process on localhost (gloo), each
    node started as README says, gives the export of 1 process with the global batch."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    single = tmp_path / "single"
    proc = _train(["--config", "configs/train/schedule_smoke.yaml", *DDP_ARGS, "--data.batch_size", "2",
                   "--model.init_args.export_dir", str(single), "--trainer.default_root_dir", str(single)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    nodes = tmp_path / "nodes"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    launches = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
         str(rank), "--master_addr", "127.0.0.1", "--master_port", port, str(ROOT / "scripts" / "train.py"), "fit",
         "--config", "configs/train/schedule_smoke.yaml", *DDP_ARGS, "--data.batch_size", "1",
         "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp",
         "--model.init_args.export_dir", str(nodes), "--trainer.default_root_dir", str(nodes)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [p.communicate(timeout=900) for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    (meta_single, one), (meta_nodes, two) = _exported(single, "schedule"), _exported(nodes, "schedule")
    assert meta_single == meta_nodes
    torch.testing.assert_close(two["values"], one["values"], rtol=0, atol=1e-9)
    assert (one["values"] - 0.7).abs().max() > 1e-3


def test_audio_examples_go_to_every_logger_that_takes_audio(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from gdr.training import AudioExamples

    logged = []
    monkeypatch.setattr(WandbLogger, "log_audio", lambda self, key, audios, step=None, **kw: logged.append(
        (loggers.index(self), key, len(audios), step, kw["sample_rate"])))
    loggers = [CSVLogger(tmp_path), WandbLogger(name="first", offline=True, save_dir=tmp_path),
               WandbLogger(name="second", offline=True, save_dir=tmp_path)]
    trainer = SimpleNamespace(loggers=loggers, global_step=7)
    batch = {"x": torch.zeros(3, 160), "y": torch.zeros(3, 160)}
    AudioExamples(max_items=2).on_validation_batch_end(trainer, None, {"x_hat": torch.zeros(3, 160)}, batch, 0)
    assert sorted(logged) == sorted((index, f"val_audio/{kind}", 2, 7, [16000, 16000])
                                    for index in (1, 2) for kind in ("clean", "degraded", "reconstruction"))


def test_a_manifest_caption_column_reaches_the_batch(tmp_path):
    import soundfile as sf

    root = tmp_path / "data"
    root.mkdir()
    t = torch.arange(16000) / 16000
    for k, name in enumerate(("a.wav", "b.wav", "c.wav")):
        sf.write(root / name, (0.3 * torch.sin(2 * torch.pi * (200 + 100 * k) * t)).numpy(), 16000)
    (root / "manifest.csv").write_text("path,kind,caption\na.wav,sound,a low hum\nb.wav,sound,a mid tone\n"
                                       "c.wav,sound,\n")
    data = _data(root=str(root), val_fraction=0.3, batch_size=1, degradation={"name": "identity"})
    names = data.train_files.names
    captions = {"a.wav": "a low hum", "b.wav": "a mid tone", "c.wav": ""}
    seen = {}
    for batch in data.train_dataloader():
        (caption,) = batch["caption"]
        seen.setdefault(caption, 0)
        seen[caption] += 1
    assert sorted(seen) == sorted(captions[n] for n in names)
