"""scripts/train.py: the schedule learner learns, resume is exact, exports reload, DDP works, bad configs fail."""

import os
import subprocess
import sys

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
    args = dict(pretrained="gdr-tiny", guidance="dps", degradation=LOWPASS, steps=4, grad_steps=2, init_scale=1.0,
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


def test_schedule_training_lowers_the_validation_loss(tmp_path, cache_dir, tiny_dir):
    # On the random tiny model the strength of latent_pull matters most (DPS barely moves its output).
    torch.manual_seed(0)
    learner, data = _schedule(tmp_path, cache_dir, guidance="latent_pull", init_scale=0.7, lr=0.2), _data()
    trainer = _trainer(tmp_path, 4, enable_checkpointing=False)
    before = trainer.validate(learner, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(learner, datamodule=data)
    after = trainer.validate(learner, datamodule=data, verbose=False)[0]["val/loss"]
    assert after < before - 1e-3, (before, after)
    values = learner.schedule.values().detach()
    # Truncated backprop: only the last grad_steps = 2 strengths get gradients.
    torch.testing.assert_close(values[:2], torch.full((2,), 0.7))
    assert (values[2:] - 0.7).abs().min() > 0.05
    with safe_open(str(tmp_path / "export" / "schedule.safetensors"), "pt") as f:
        assert f.metadata()["method"] == "latent_pull" and f.get_tensor("values").shape == (4,)


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


def test_exported_schedule_changes_evaluate_output(tmp_path, cache_dir, tiny_dir):
    import csv

    from gdr.schedules import save_schedule
    from test_evaluate_script import _evaluate_main

    path = save_schedule(tmp_path / "learned.safetensors", torch.tensor([5.0, 0.1, 3.0]), method="dps", steps=3)
    common = ["--config", "configs/smoke.yaml", "--progress", "false", "--logger", "false", "--data.demo_seconds",
              "1.0", "--sampler.steps", "3", "--degradation.name", "lowpass", "--report.bootstrap", "100"]
    assert _evaluate_main()([*common, "--output_dir", str(tmp_path / "plain")]) == 0
    assert _evaluate_main()([*common, "--output_dir", str(tmp_path / "learned"),
                             "--guidance.schedule_path", str(path)]) == 0
    plain = [r for r in csv.DictReader((tmp_path / "plain" / "metrics.csv").open()) if r["guidance"] == "dps"]
    learned = [r for r in csv.DictReader((tmp_path / "learned" / "metrics.csv").open()) if r["guidance"] == "dps"]
    assert learned[0]["method"] == "dps learned:learned 3st" and plain[0]["method"] == "dps s=1 3st"
    assert [r["lsd"] for r in plain] != [r["lsd"] for r in learned]
    assert "dps learned:learned 3st" in (tmp_path / "learned" / "report.md").read_text()


def _train(args, timeout=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "fit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_two_process_ddp_equals_one_process_accumulating_the_same_two_items(tmp_path, tiny_dir):
    """2 processes x batch 1 against 1 process x batch 1 with accumulate_grad_batches 2: at optimizer step k both
    average the gradients of items 2k and 2k + 1 under the sampler noise of step k (keyed by global_step), so
    the exported schedules are equal, not only alike in format. (1 process x batch 2 cannot be equal: its two
    items share one noise draw of shape (2, ...), not two of shape (1, ...).) The runs differ only in how float32
    gradients are averaged (all-reduce vs accumulation); Adam turns that into differences of order lr x 1e-5, so
    lr is 0.02 here (1.1e-6 at the smoke config's 0.2)."""
    files = {}
    for name, devices, accumulate in (("single", "1", "2"), ("ddp", "2", "1")):
        out = tmp_path / name
        proc = _train(["--config", "configs/train/schedule_smoke.yaml", "--trainer.devices", devices,
                       "--trainer.strategy", "ddp" if devices == "2" else "auto", "--trainer.max_epochs", "1",
                       "--trainer.accumulate_grad_batches", accumulate, "--data.batch_size", "1",
                       "--model.init_args.steps", "2", "--model.init_args.grad_steps", "1",
                       "--model.init_args.lr", "0.02", "--data.crop_seconds", "0.32",
                       "--model.init_args.export_dir", str(out), "--trainer.default_root_dir", str(out)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        with safe_open(str(out / "schedule.safetensors"), "pt") as f:
            files[name] = (f.metadata(), {k: f.get_tensor(k) for k in f.keys()})
    (meta_single, single), (meta_ddp, ddp) = files["single"], files["ddp"]
    assert meta_single == meta_ddp and single.keys() == ddp.keys() == {"values"}
    assert single["values"].shape == (2,)
    torch.testing.assert_close(ddp["values"], single["values"], rtol=0, atol=1e-6)
    assert (single["values"] - 0.7).abs().max() > 1e-3  # it trained (init 0.7): the equality means something


@pytest.mark.parametrize("args, needle", [
    (["--config", "configs/train/lora_smoke.yaml", "--model.init_args.rank", "0"], "lora rank must be an integer >= 1"),
    (["--config", "configs/train/schedule_smoke.yaml", "--model.init_args.lr", "-0.1"], "model.lr must be a finite number > 0"),
    (["--config", "configs/train/schedule_smoke.yaml", "--data.root", "EMPTY"], "no audio files found"),
    (["--config", "configs/train/schedule_smoke.yaml", "--model.init_args.guidance", "sdedit"], "no per-step strength"),
    (["--config", "configs/train/schedule_smoke.yaml", "--trainer.max_epochs", "lots"], "max_epochs"),
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
    learner = _schedule(tmp_path, cache_dir, guidance=guidance, steps=3, grad_steps=2,
                        guidance_params=CHEAP_PARAMS.get(guidance))
    batch = next(iter(_data(crop_seconds=0.32).train_dataloader()))
    loss = learner.training_step(batch, 0)
    loss.backward()
    grad = learner.schedule.raw.grad
    assert torch.isfinite(loss) and grad is not None and torch.isfinite(grad).all()
    assert grad[0] == 0 and grad[1:].abs().sum() > 0  # truncated: only the last two steps are in the graph


def test_lora_guided_objective_trains_the_adapter(tmp_path, cache_dir, tiny_dir):
    learner = LoraAdapterLearner(pretrained="gdr-tiny", rank=2, alpha=2.0, objective="guided", guidance="latent_pull",
                                 scale=0.5, steps=2, grad_steps=1, export_dir=str(tmp_path), cache_dir=str(cache_dir))
    batch = next(iter(_data(crop_seconds=0.32).train_dataloader()))
    learner.training_step(batch, 0).backward()
    grads = [p.grad for p in learner.trained_parameters().values()]
    assert grads and all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
