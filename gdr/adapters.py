"""LoRA adapters on AudioLDM2's UNet (peft), as small safetensors files.

`inject_lora` adds peft LoRA layers to the UNet's attention projections; `save_lora` writes
``lora.safetensors`` (the peft state dict) and ``adapter_config.json``; `load_lora` injects the same
config into a fresh UNet and loads the weights back through peft. (Learned schedules have their own file
format, in `gdr.schedules`.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from gdr import checks
from gdr.atomic import atomic_path, write_text
from gdr.errors import ConfigError, ModelNotFoundError

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def inject_lora(unet: torch.nn.Module, rank: int = 8, alpha: float = 8.0,
                target_modules: tuple[str, ...] | list[str] = DEFAULT_LORA_TARGETS, dropout: float = 0.0):
    """Add LoRA layers to `unet` in place (only they are trainable afterwards); returns the peft config."""
    from peft import LoraConfig, inject_adapter_in_model

    checks.integer("lora rank", rank, low=1)
    checks.positive("lora alpha", alpha)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout,
                        init_lora_weights=True)
    unet.requires_grad_(False)
    try:
        inject_adapter_in_model(config, unet)
    except ValueError as exc:
        raise ConfigError(f"lora target_modules {list(target_modules)}: {str(exc).splitlines()[0]}") from None
    return config


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def save_lora(folder: str | os.PathLike, unet: torch.nn.Module, config, state: dict | None = None) -> Path:
    """Write ``lora.safetensors`` and ``adapter_config.json`` into `folder` (atomically each)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    with atomic_path(folder / "lora.safetensors") as tmp:
        save_file(state if state is not None else lora_state_dict(unet), str(tmp), metadata={"format": "peft-lora"})
    cfg = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules),
           "lora_dropout": config.lora_dropout}
    write_text(folder / "adapter_config.json", json.dumps(cfg, indent=2))
    return folder


def load_lora(unet: torch.nn.Module, folder: str | os.PathLike) -> None:
    """Inject the saved LoRA config into `unet` and load its weights (peft's ``set_peft_model_state_dict``)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, cfg_path = folder / "lora.safetensors", folder / "adapter_config.json"
    if not weights.is_file() or not cfg_path.is_file():
        raise ModelNotFoundError(f"LoRA folder {folder} needs lora.safetensors and adapter_config.json "
                                 "(written by scripts/train.py)")
    cfg = json.loads(cfg_path.read_text())
    inject_lora(unet, rank=cfg["r"], alpha=cfg["lora_alpha"], target_modules=cfg["target_modules"],
                dropout=cfg.get("lora_dropout", 0.0))
    result = set_peft_model_state_dict(unet, load_file(str(weights)))
    if getattr(result, "unexpected_keys", None):
        raise ModelNotFoundError(f"LoRA weights in {weights} do not fit this UNet "
                                 f"(e.g. {result.unexpected_keys[0]})")
    unet.requires_grad_(False)
