"""The hub as a user meets it: what is downloaded, bounded waits (a local endpoint that accepts and never
answers), HF_ENDPOINT with its port, proxies, HF_HUB_OFFLINE, and folders re-saved sharded or as fp16."""

import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT
from gdr import hub
from gdr.backbone import AudioLDM2
from gdr.errors import ModelNotFoundError, UnsupportedModelError

# The file list of cvssp/audioldm2 at c8e7e189 (hub tree pages; shared/audioldm2-hub/SOURCES.md).
PUBLISHED_FILES = """.gitattributes README.md model_index.json feature_extractor/preprocessor_config.json
language_model/config.json language_model/model.safetensors language_model/pytorch_model.bin
projection_model/config.json projection_model/diffusion_pytorch_model.bin
projection_model/diffusion_pytorch_model.safetensors scheduler/scheduler_config.json text_encoder/config.json
text_encoder/model.safetensors text_encoder/pytorch_model.bin text_encoder_2/config.json
text_encoder_2/model.safetensors text_encoder_2/pytorch_model.bin tokenizer/merges.txt
tokenizer/special_tokens_map.json tokenizer/tokenizer.json tokenizer/tokenizer_config.json tokenizer/vocab.json
tokenizer_2/special_tokens_map.json tokenizer_2/spiece.model tokenizer_2/tokenizer.json
tokenizer_2/tokenizer_config.json unet/config.json unet/diffusion_pytorch_model.bin
unet/diffusion_pytorch_model.safetensors vae/config.json vae/diffusion_pytorch_model.bin
vae/diffusion_pytorch_model.safetensors vocoder/config.json vocoder/model.safetensors
vocoder/pytorch_model.bin""".split()


def test_selected_files_are_configs_tokenizers_and_safetensors_only():
    chosen = hub.select_files(PUBLISHED_FILES)
    assert not [f for f in chosen if f.endswith(".bin")]
    assert set(chosen) == {f for f in PUBLISHED_FILES if not f.endswith(".bin") and f not in (".gitattributes",
                                                                                                 "README.md")}


def test_bin_only_where_a_component_has_no_safetensors_and_variants_and_shards():
    files = [f for f in PUBLISHED_FILES if f != "vocoder/model.safetensors"]
    chosen = hub.select_files(files)
    assert "vocoder/pytorch_model.bin" in chosen and "unet/diffusion_pytorch_model.bin" not in chosen
    fp16 = PUBLISHED_FILES + ["unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"]
    chosen = hub.select_files(fp16, variant="fp16")
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in chosen
    assert "unet/diffusion_pytorch_model.safetensors" not in chosen
    sharded = [f for f in PUBLISHED_FILES if not f.startswith("unet/diffusion")] + [
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors"]
    assert set(sharded[-3:]) <= set(hub.select_files(sharded))


def test_download_asks_the_hub_for_the_selected_files_only(monkeypatch, tmp_path, tiny_dir):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    calls = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, timeout=None: SimpleNamespace(
        sha="c8e7e189d324425c05c4c2f81214041ef4107983", siblings=[SimpleNamespace(rfilename=f) for f in PUBLISHED_FILES]))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(tiny_dir / "model_index.json"))

    def snapshot(repo, **kwargs):
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        calls.update(kwargs)
        return str(tiny_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert hub.resolve_model_folder("cvssp/audioldm2", tmp_path) == tiny_dir
    assert calls["allow_patterns"] == hub.select_files(PUBLISHED_FILES)
    assert calls["endpoint"] == "http://127.0.0.1:9" and calls["etag_timeout"] <= 15


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection, records what it is sent, never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.first_connection = None
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.first_connection = self.first_connection or time.monotonic()
            self.held.append(conn)
            conn.settimeout(2)
            try:
                self.received += conn.recv(4096)
            except OSError:
                pass

    def close(self):
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def _evaluate_with_hub(tmp_path, env):
    import subprocess

    full_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    full_env.update({"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), **env})
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--config", "configs/default.yaml",
                           "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=120)
    return proc, time.monotonic()


def test_an_endpoint_that_never_answers_gets_one_line_within_15_s(tmp_path, silent_server):
    proc, ended = _evaluate_with_hub(tmp_path, {"HF_ENDPOINT": f"http://127.0.0.1:{silent_server.port}"})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and f"127.0.0.1:{silent_server.port}" in lines[0]
    assert "hf download cvssp/audioldm2" in lines[0]
    assert b"/api/models/cvssp/audioldm2" in silent_server.received  # HF_ENDPOINT's port was used
    assert silent_server.first_connection is not None and ended - silent_server.first_connection <= 15
    assert not (tmp_path / "out").exists()


def test_proxies_are_honoured(tmp_path, silent_server):
    proc, ended = _evaluate_with_hub(tmp_path, {"HF_ENDPOINT": "http://hub.example.invalid:8080",
                                                "HTTP_PROXY": f"http://127.0.0.1:{silent_server.port}"})
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # A proxy is sent the absolute URL of the endpoint it should reach.
    assert b"hub.example.invalid:8080/api/models/cvssp/audioldm2" in silent_server.received
    assert ended - silent_server.first_connection <= 15


def test_offline_mode_never_touches_the_network(tmp_path, silent_server, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent_server.port}")
    with pytest.raises(ModelNotFoundError, match="nor in the local Hugging Face cache, and HF_HUB_OFFLINE is set"):
        hub.resolve_model_folder("cvssp/audioldm2", tmp_path)
    time.sleep(0.2)
    assert silent_server.first_connection is None


# ------------------------------------------------------------------------------------------ re-saved folders
def _resave(tiny_dir, tmp_path, dtype=torch.float32, **save_kwargs):
    """A copy of the tiny layout whose UNet, VAE and vocoder were re-saved with `save_kwargs` in `dtype`."""
    from diffusers import AudioLDM2UNet2DConditionModel, AutoencoderKL
    from transformers import SpeechT5HifiGan

    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    for sub, cls in (("unet", AudioLDM2UNet2DConditionModel), ("vae", AutoencoderKL), ("vocoder", SpeechT5HifiGan)):
        module = cls.from_pretrained(tiny_dir / sub, dtype=torch.float32).to(dtype)
        for f in (copy / sub).glob("*.safetensors"):
            f.unlink()
        module.save_pretrained(copy / sub, **save_kwargs)
        (copy / sub / "config.json").write_text((tiny_dir / sub / "config.json").read_text())
    return copy


def test_sharded_folder_loads_the_same_weights(tiny_dir, tiny_model, tmp_path, cache_dir):
    copy = _resave(tiny_dir, tmp_path, max_shard_size="1MB")
    assert len(list((copy / "unet").glob("diffusion_pytorch_model-*-of-*.safetensors"))) > 1
    model = AudioLDM2.from_pretrained(copy, cache_dir=cache_dir)
    for key, value in tiny_model.unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[key], value), key
    shard = sorted((copy / "unet").glob("diffusion_pytorch_model-*-of-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ModelNotFoundError, match=f"missing unet/{shard.name}"):
        AudioLDM2.from_pretrained(copy, cache_dir=cache_dir)


def test_fp16_variant_folder_loads_with_model_variant(tiny_dir, tiny_model, tmp_path, cache_dir):
    copy = _resave(tiny_dir, tmp_path, dtype=torch.float16, variant="fp16")
    assert (copy / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    with pytest.raises(ModelNotFoundError, match="pass --model.variant fp16"):
        AudioLDM2.from_pretrained(copy, cache_dir=cache_dir)
    model = AudioLDM2.from_pretrained(copy, cache_dir=cache_dir, variant="fp16")  # computes in float32
    for key, value in tiny_model.unet.state_dict().items():
        loaded = model.unet.state_dict()[key]
        assert loaded.dtype == torch.float32 and torch.equal(loaded, value.half().float()), key


def test_pickled_bin_is_never_read_when_safetensors_exist(tiny_dir, tiny_model, tmp_path, cache_dir):
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    for sub, name in (("unet", "diffusion_pytorch_model.bin"), ("vae", "diffusion_pytorch_model.bin"),
                      ("vocoder", "pytorch_model.bin"), ("text_encoder_2", "pytorch_model.bin")):
        (copy / sub / name).write_bytes(b"not a pickle: reading this would fail")
    model = AudioLDM2.from_pretrained(copy, cache_dir=tmp_path / "cache")
    z = torch.randn(1, 8, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.eps(z, 500), tiny_model.eps(z, 500))


def test_speech_checkpoints_are_refused_in_one_line(tiny_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["text_encoder_2"] = ["transformers", "VitsModel"]
    index["tokenizer_2"] = ["transformers", "VitsTokenizer"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError) as info:
        AudioLDM2.from_pretrained(copy, cache_dir=tmp_path / "cache")
    assert "speech (TTS) checkpoint" in str(info.value) and "(B, 512, 768)" in str(info.value)
    assert "\n" not in str(info.value)


def test_folder_without_model_index_names_it(tiny_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    (copy / "model_index.json").unlink()
    with pytest.raises(ModelNotFoundError, match="missing model_index.json"):
        hub.check_model_folder(Path(copy))


def test_the_deadline_bounds_a_call_that_never_returns():
    """The second line of defence behind each request's own timeout: a call that hangs anyway (a stuck proxy,
    a DNS lookup) is abandoned after the deadline with one line."""
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="no answer from .* within 0.5 s"):
        hub._call_with_deadline(lambda: time.sleep(20), 0.5, "cannot reach the hub")
    assert time.monotonic() - start < 5
    assert hub._call_with_deadline(lambda: 42, 5, "x") == 42
    with pytest.raises(KeyError):  # the call's own errors reach the caller
        hub._call_with_deadline(lambda: {}["missing"], 5, "x")
