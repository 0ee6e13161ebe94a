"""Where a model comes from: ``gdr-tiny``, a local pipeline folder, or a Hugging Face hub id.

What a user meets, and what this module guarantees:

* A hub id is used from the Hugging Face cache when it is there; otherwise it is downloaded, but only
  what gdr needs (`select_files`: configs, tokenizer files, safetensors; a pickled ``.bin`` only for a
  component that has no safetensors).
* Every network wait is bounded: the first request answers within `HUB_TIMEOUT_S` or the run stops
  with one line. ``HF_ENDPOINT`` (with its port), the standard proxy variables and ``HF_HUB_OFFLINE``
  are honoured, read when the call happens (not when huggingface_hub was imported).
* A local folder is checked before loading (`check_model_folder`): sharded safetensors
  (``*.safetensors.index.json`` and its shards) and ``variant`` files (``*.fp16.safetensors``) count;
  anything missing is named in one line, as is a checkpoint gdr cannot run (the speech ones).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import threading
from pathlib import Path

from gdr.errors import ModelNotFoundError, UnsupportedModelError

DEFAULT_MODEL = "cvssp/audioldm2"
HUB_TIMEOUT_S = 8.0  # per request; with the 2 s grace of `_call_with_deadline`, one line within 10 s
# component -> (config file, safetensors stem, pickled stem): diffusers names both
# "diffusion_pytorch_model", transformers "model.safetensors" / "pytorch_model.bin". Text-stack
# components are needed only to compute a condition that is not cached yet (`gdr.conditioning`).
WEIGHTED = {
    "vae": ("config.json", "diffusion_pytorch_model", "diffusion_pytorch_model"),
    "unet": ("config.json", "diffusion_pytorch_model", "diffusion_pytorch_model"),
    "vocoder": ("config.json", "model", "pytorch_model"),
    "text_encoder": ("config.json", "model", "pytorch_model"),
    "text_encoder_2": ("config.json", "model", "pytorch_model"),
    "language_model": ("config.json", "model", "pytorch_model"),
    "projection_model": ("config.json", "diffusion_pytorch_model", "diffusion_pytorch_model"),
}
CORE = ("vae", "unet", "vocoder")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CONFIG_FILES = ("model_index.json", "*/config.json", "*/scheduler_config.json", "*/preprocessor_config.json",
                 "*/generation_config.json")
_TOKENIZER_FILES = ("tokenizer*/tokenizer.json", "tokenizer*/tokenizer_config.json",
                    "tokenizer*/special_tokens_map.json",
                    "tokenizer*/vocab.json", "tokenizer*/merges.txt", "tokenizer*/spiece.model",
                    "tokenizer*/added_tokens.json")


def how_to_get() -> str:
    """The one hint every "model missing" message ends with: commands that exist."""
    return (f"get it with `hf download {DEFAULT_MODEL} --exclude '*.bin' --local-dir models/audioldm2` and pass "
            "`--model.pretrained models/audioldm2` (train.py: `--model.init_args.pretrained`), or run the offline "
            "demo with `--config configs/smoke.yaml`")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------ local folders
def weight_files(folder: Path, component: str, variant: str | None = None) -> list[Path]:
    """The weight files `from_pretrained` would read for one component, safetensors first.

    Accepts ``<stem>[.<variant>].safetensors``, a sharded ``<stem>[.<variant>].safetensors.index.json``
    (all of whose shards must exist), and the same for ``.bin``. Returns ``[]`` when none is complete.
    """
    infix = f".{variant}" if variant else ""
    _, safe_stem, bin_stem = WEIGHTED[component]
    for stem, ext in ((safe_stem, "safetensors"), (bin_stem, "bin")):
        single = folder / f"{stem}{infix}.{ext}"
        if single.is_file():
            return [single]
        index = folder / f"{stem}{infix}.{ext}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError):
                raise ModelNotFoundError(f"{index} is not a valid shard index; {how_to_get()}") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ModelNotFoundError(f"model folder {folder.parent} is incomplete: missing {folder.name}/"
                                         f"{missing[0]} (shard of {index.name}); {how_to_get()}")
            return [folder / s for s in shards]
    return []


def check_model_index(folder: Path) -> dict:
    """Read ``model_index.json`` and refuse, in one line, checkpoints gdr cannot run correctly."""
    path = folder / "model_index.json"
    if not path.is_file():
        raise ModelNotFoundError(f"model folder {folder} is incomplete: missing model_index.json; {how_to_get()}")
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelNotFoundError(f"{path} is not valid JSON ({first_line(exc)}); {how_to_get()}") from None
    classes = {name: value[1] for name, value in index.items() if isinstance(value, list) and len(value) == 2}
    if index.get("_class_name") != "AudioLDM2Pipeline":
        raise UnsupportedModelError(f"{folder} holds a {index.get('_class_name')!r}, not an AudioLDM2Pipeline")
    if classes.get("text_encoder_2") == "VitsModel" or classes.get("tokenizer_2") == "VitsTokenizer":
        # The TTS checkpoints (e.g. anhnct/audioldm2_ljspeech) condition on a phoneme transcription; their
        # unconditional stream is zeros (B, 512, 768) that the projection/GPT-2 path gdr implements does not
        # produce, and diffusers' encode_prompt("") fails on them. Refuse rather than run them wrongly.
        raise UnsupportedModelError(
            f"{folder} is an AudioLDM2 speech (TTS) checkpoint (VITS phoneme encoder): gdr does not support it, "
            "because its condition needs a transcription and its null GPT-2 stream is zeros (B, 512, 768) rather "
            "than 8 generated vectors; use cvssp/audioldm2, -large or -music")
    return index


def check_model_folder(folder: Path, variant: str | None = None, components=CORE) -> None:
    """Raise a one-line `ModelNotFoundError` naming the first missing piece of a local pipeline folder."""
    if not folder.is_dir():
        raise ModelNotFoundError(f"model folder {folder} does not exist; {how_to_get()}")
    check_model_index(folder)
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise ModelNotFoundError(f"model folder {folder} is incomplete: missing scheduler/scheduler_config.json; "
                                 f"{how_to_get()}")
    for sub in components:
        config, stem, _ = WEIGHTED[sub]
        if not (folder / sub / config).is_file():
            raise ModelNotFoundError(f"model folder {folder} is incomplete: missing {sub}/{config}; {how_to_get()}")
        if not weight_files(folder / sub, sub, variant):
            expected = f"{stem}{'.' + variant if variant else ''}.safetensors"
            hint = ""
            if not variant and list((folder / sub).glob(f"{stem}.*.safetensors")):
                hint = " (only variant files such as fp16 are there: pass --model.variant fp16)"
            raise ModelNotFoundError(f"model folder {folder} is incomplete: no weights in {sub}/ (expected {expected}, "
                                     f"its .index.json with shards, or .bin){hint}; {how_to_get()}")


# ------------------------------------------------------------------------------------------ the hub
def select_files(repo_files: list[str], variant: str | None = None) -> list[str]:
    """The files of a hub snapshot gdr needs: configs, tokenizer files, and per weighted component its
    safetensors (the `variant` ones if asked), falling back to ``.bin`` only where no safetensors exist."""
    wanted = [f for f in repo_files if any(fnmatch.fnmatch(f, p) for p in _CONFIG_FILES + _TOKENIZER_FILES)]
    for sub, (_, safe_stem, bin_stem) in WEIGHTED.items():
        infix = f".{variant}" if variant else ""
        for stem, ext in ((safe_stem, "safetensors"), (bin_stem, "bin")):
            single = f"{sub}/{stem}{infix}.{ext}"
            index = f"{single}.index.json"
            shard = re.compile(re.escape(f"{sub}/{stem}") + r"-\d+-of-\d+" + re.escape(f"{infix}.{ext}") + "$")
            chosen = [f for f in repo_files if f in (single, index) or shard.match(f)]
            if chosen:
                wanted += chosen
                break
    return sorted(set(wanted))


def _call_with_deadline(fn, seconds: float, what: str):
    """Run `fn()` in a daemon thread; a one-line `ModelNotFoundError` if it does not return in time."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ModelNotFoundError(f"{what}: no answer from {hub_endpoint()} within {seconds:g} s (HF_ENDPOINT, "
                                 f"proxy settings); {how_to_get()}")
    if "error" in result:
        raise result["error"]
    return result["value"]


def download(repo_id: str, variant: str | None = None) -> Path:
    """Download what gdr needs of `repo_id` into the Hugging Face cache; returns the snapshot folder."""
    import huggingface_hub

    endpoint = hub_endpoint()
    api = huggingface_hub.HfApi(endpoint=endpoint)
    try:
        info = _call_with_deadline(lambda: api.model_info(repo_id, timeout=HUB_TIMEOUT_S),
                                   HUB_TIMEOUT_S + 2, f"cannot reach the hub for {repo_id!r}")
    except ModelNotFoundError:
        raise
    except Exception as exc:
        raise ModelNotFoundError(f"cannot reach {repo_id!r} on {endpoint} ({type(exc).__name__}: {first_line(exc)}); "
                                 f"{how_to_get()}") from None
    files = select_files([s.rfilename for s in info.siblings or []], variant)
    try:
        # model_index.json first: a checkpoint gdr refuses costs one small file, not gigabytes.
        index = huggingface_hub.hf_hub_download(repo_id, "model_index.json", revision=info.sha, endpoint=endpoint,
                                                etag_timeout=HUB_TIMEOUT_S)
        check_model_index(Path(index).parent)
        folder = huggingface_hub.snapshot_download(repo_id, revision=info.sha, allow_patterns=files,
                                                   endpoint=endpoint, etag_timeout=HUB_TIMEOUT_S)
    except (ModelNotFoundError, UnsupportedModelError):
        raise
    except Exception as exc:
        raise ModelNotFoundError(f"cannot download {repo_id!r} from {endpoint} ({type(exc).__name__}: "
                                 f"{first_line(exc)}); {how_to_get()}") from None
    return Path(folder)


def resolve_model_folder(pretrained: str, cache_dir: Path, variant: str | None = None) -> Path:
    """Local pipeline folder for `pretrained`: ``"gdr-tiny"``, a local path, or a hub id (cache, then download)."""
    from gdr.builders import TINY_MODEL_NAME, ensure_tiny_model

    if pretrained == TINY_MODEL_NAME:
        return ensure_tiny_model(cache_dir)
    local = Path(pretrained).expanduser()
    if local.exists() or not _HUB_ID.match(pretrained):
        check_model_folder(local, variant)
        return local.resolve()
    import huggingface_hub

    try:
        folder = Path(huggingface_hub.snapshot_download(pretrained, local_files_only=True))
    except Exception:
        if hub_offline():
            raise ModelNotFoundError(f"model {pretrained!r} is neither a local folder nor in the local Hugging Face "
                                     f"cache, and HF_HUB_OFFLINE is set; {how_to_get()}") from None
        folder = download(pretrained, variant)
    check_model_folder(folder, variant)
    return folder
