"""Model loading through the real from_pretrained code, the inverse helpers, the null conditioning cache,
and the one-line messages for missing or incomplete model folders."""

import json
import shutil

import pytest
import torch

from gdr.backbone import AudioLDM2
from gdr.builders import build_tiny_pipeline, build_real_size_components
from gdr.errors import ModelNotFoundError


@pytest.fixture(scope="module")
def reference_pipe(tiny_dir):
    """The same tiny pipeline, loaded by diffusers itself (the independent reference)."""
    from diffusers import AudioLDM2Pipeline

    return AudioLDM2Pipeline.from_pretrained(tiny_dir, dtype=torch.float32)


def test_save_load_round_trip_keeps_every_weight(tiny_model):
    fresh = build_tiny_pipeline(seed=0)
    for name in ("vae", "unet", "vocoder"):
        loaded = getattr(tiny_model, name).state_dict()
        for key, value in getattr(fresh, name).state_dict().items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=f"{name}.{key}")
    assert tiny_model.scheduler.config.beta_start == 0.0015 and tiny_model.scheduler.config.beta_end == 0.0195


def test_inverse_helpers_match_diffusers(tiny_model, reference_pipe):
    torch.manual_seed(0)
    mel = torch.randn(2, 1, 32, 64) - 4.0
    z = tiny_model.mel_to_latent(mel)
    assert z.shape == (2, 8, 8, 16)
    expected_z = reference_pipe.vae.encode(mel).latent_dist.mode() * reference_pipe.vae.config.scaling_factor
    torch.testing.assert_close(z, expected_z)
    mel_back = tiny_model.latent_to_mel(z)
    torch.testing.assert_close(mel_back, reference_pipe.vae.decode(z / 0.4110932946205139).sample)
    wave = tiny_model.mel_to_waveform(mel_back)
    full = reference_pipe.mel_spectrogram_to_waveform(mel_back)  # 160 T + 32 samples
    assert full.shape[-1] == 160 * 32 + 32 and wave.shape == (2, 160 * 32)
    torch.testing.assert_close(wave, full[:, : 160 * 32])


def test_scaling_factor_is_read_from_the_vae_config(tiny_dir, tmp_path, cache_dir):
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    cfg_path = copy / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["scaling_factor"] = 2.0
    cfg_path.write_text(json.dumps(cfg))
    model = AudioLDM2.from_pretrained(copy, cache_dir=cache_dir)
    reference = AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir)
    mel = torch.randn(1, 1, 16, 64)
    torch.testing.assert_close(model.mel_to_latent(mel), reference.mel_to_latent(mel) * 2.0 / 0.4110932946205139)


def test_mel_to_latent_pads_time_to_a_multiple_of_four(tiny_model):
    z = tiny_model.mel_to_latent(torch.randn(1, 1, 30, 64))
    assert z.shape == (1, 8, 8, 16)
    assert tiny_model.latent_to_mel(z).shape == (1, 1, 32, 64)


@pytest.mark.parametrize("damage, needle", [
    ("no_folder", "does not exist"),
    ("no_vae", "missing vae/config.json"),
    ("no_weights", "no weights in unet/"),
    ("truncated", "cannot load vae/"),
])
def test_incomplete_model_folders_give_one_line(tiny_dir, tmp_path, damage, needle):
    copy = tmp_path / "model"
    if damage != "no_folder":
        shutil.copytree(tiny_dir, copy)
    if damage == "no_vae":
        shutil.rmtree(copy / "vae")
    elif damage == "no_weights":
        (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    elif damage == "truncated":
        weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelNotFoundError) as info:
        AudioLDM2.from_pretrained(copy, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert needle in message and "\n" not in message and "hf download cvssp/audioldm2" in message


def test_hub_id_offline_gives_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError,
                       match="neither a local folder nor in the local Hugging Face cache.*configs/smoke.yaml"):
        AudioLDM2.from_pretrained("cvssp/audioldm2", cache_dir=tmp_path / "cache")


def test_real_size_builder_has_audioldm2_shapes():
    parts = build_real_size_components()
    assert parts["vae"].config.scaling_factor == pytest.approx(0.4110932946205139)
    assert list(parts["unet"].config.block_out_channels) == [128, 256, 384, 640]
    n_params = {k: sum(p.numel() for p in parts[k].parameters()) / 1e6 for k in ("vae", "unet", "vocoder")}
    assert n_params["vae"] == pytest.approx(55.4, abs=0.2)
    assert n_params["unet"] == pytest.approx(346.9, abs=0.5)
    assert n_params["vocoder"] == pytest.approx(55.3, abs=0.2)
    with torch.no_grad():
        wave = parts["vocoder"](torch.randn(1, 8, 64))
    assert wave.shape[-1] == 160 * 8 + 32


def test_eager_and_sdpa_attention_agree(tiny_dir, cache_dir):
    sdpa = AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir)
    eager = AudioLDM2.from_pretrained(tiny_dir, cache_dir=cache_dir, attention="eager")
    z = torch.randn(2, 8, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(eager.eps(z, 300), sdpa.eps(z, 300), rtol=1e-4, atol=1e-5)
    assert type(eager.unet.attn_processors[next(iter(eager.unet.attn_processors))]).__name__ == "AttnProcessor"


def test_null_condition_moves_with_the_module(tiny_model):
    import copy

    moved = copy.deepcopy(tiny_model).to(torch.float64)
    assert moved.null_condition.t5.dtype == torch.float64 and moved.null_condition.t5_mask.dtype == torch.long


def test_mel_to_latent_pads_with_the_log_floor_not_zeros(tiny_model):
    """An odd-length mel is padded with silence (log 1e-5), exactly as if the silence had been there."""
    from gdr.audio import LOG_FLOOR

    mel = torch.randn(1, 1, 30, 64, generator=torch.Generator().manual_seed(0)) - 5.0
    silence = torch.full((1, 1, 2, 64), float(torch.log(torch.tensor(LOG_FLOOR))))
    with torch.no_grad():
        torch.testing.assert_close(tiny_model.mel_to_latent(mel), tiny_model.mel_to_latent(torch.cat([mel, silence], 2)),
                                   rtol=0, atol=0)
