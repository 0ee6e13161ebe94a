"""The UNet's two cross-attention streams, and AudioLDM2's text stack that makes them.

AudioLDM2's UNet attends to two streams (``shared/docs/audioldm2-frontend.md``, ``real-checkpoint.md`` §5):

1. the "language of audio": ``max_new_tokens`` (8) vectors that GPT-2 generates greedily from the
   projected CLAP text embedding and Flan-T5 hidden states of the prompt, ``(B, 8, 768)``;
2. the Flan-T5 hidden states of the prompt, ``(B, L, 1024)``, with their attention mask ``(B, L)``.

gdr owns this path instead of calling ``AudioLDM2Pipeline.encode_prompt``: on the published layout
that helper breaks twice (CLAP's config says float64; diffusers' GPT-2 loop calls a method that
``GPT2Model`` lost in transformers 5, diffusers issue #12630). Here every component is loaded with
an explicit float32 dtype whatever its config says, and `generate_language_model` is the plain loop.

Null conditions (``kind``):

* ``"original"`` (default): GPT-2 stream zeros ``(1, 8, 768)``, T5 stream T5("") with an all-ones mask.
  It is what the UNet was trained with for dropped conditions (10 % dropout in haoheliu/AudioLDM2) and
  needs only Flan-T5 (no CLAP, no GPT-2).
* ``"diffusers"``: ``""`` through CLAP, Flan-T5, the projection and GPT-2, exactly as
  ``AudioLDM2Pipeline.encode_prompt`` encodes the prompt ``""``. It equals the pipeline's
  *unconditional* branch only when the pipeline's prompt is empty too: for a non-empty prompt the
  pipeline pads T5("") with mask 0 to the prompt's T5 length, which changes neither the T5 values at
  unmasked positions nor the GPT-2 vectors, but gives a longer T5 stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from gdr.errors import ConfigError, ModelNotFoundError
from gdr.hub import WEIGHTED, check_model_index, first_line, how_to_get, weight_files

NullConditionKind = Literal["original", "diffusers"]
TEXT_STACK = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "projection_model", "language_model")
# What each null kind reads; "original" also reads language_model/config.json for the GPT-2 shape.
NEEDS = {"original": ("tokenizer_2", "text_encoder_2"), "diffusers": TEXT_STACK}


@dataclass
class Condition:
    """The UNet's cross-attention inputs for a batch of one condition.

    Attributes:
        gpt2: ``(1, N, D1)`` generated GPT-2 stream (N = 8, D1 = 768 for AudioLDM2).
        t5: ``(1, L, D2)`` Flan-T5 hidden states (D2 = 1024).
        t5_mask: ``(1, L)`` long attention mask of the T5 stream.
        kind: what produced it (``"original"``, ``"diffusers"``, or ``"text"``).
    """

    gpt2: torch.Tensor
    t5: torch.Tensor
    t5_mask: torch.Tensor
    kind: str

    def to(self, device=None, dtype=None) -> "Condition":
        return Condition(self.gpt2.to(device, dtype), self.t5.to(device, dtype), self.t5_mask.to(device), self.kind)

    def expand(self, batch: int) -> dict[str, torch.Tensor]:
        """UNet keyword arguments for a batch of `batch` latents."""
        return {
            "encoder_hidden_states": self.gpt2.expand(batch, -1, -1),
            "encoder_hidden_states_1": self.t5.expand(batch, -1, -1),
            "encoder_attention_mask_1": self.t5_mask.expand(batch, -1),
        }


def generate_language_model(language_model: torch.nn.Module, inputs_embeds: torch.Tensor,
                            attention_mask: torch.Tensor | None, max_new_tokens: int) -> torch.Tensor:
    """AudioLDM2's "language of audio": greedy generation over GPT-2's last hidden states.

    Each step feeds the sequence so far as ``inputs_embeds``, takes the final hidden state (after the
    last layer norm) at the last position and appends it (AudioLDM2 ``modules.py``; diffusers
    ``generate_language_model``). No KV cache: the sequence is short and recomputing keeps the
    definition exact for ``GPT2Model`` and ``GPT2LMHeadModel`` on any transformers version.

    Args:
        language_model: ``GPT2Model`` or ``GPT2LMHeadModel`` (its ``base_model`` is used).
        inputs_embeds: ``(B, S, D)`` projected prompt embeddings.
        attention_mask: ``(B, S)`` 0/1 mask of `inputs_embeds` (None = all ones).
        max_new_tokens: how many vectors to generate (the config's ``max_new_tokens``, 8).

    Returns:
        ``(B, max_new_tokens, D)`` generated hidden states.
    """
    base = language_model.base_model
    embeds = inputs_embeds
    mask = attention_mask if attention_mask is not None else embeds.new_ones(embeds.shape[:2], dtype=torch.long)
    for _ in range(max_new_tokens):
        hidden = base(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        embeds = torch.cat([embeds, hidden[:, -1:]], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return embeds[:, -max_new_tokens:]


class TextStack:
    """AudioLDM2's text stack of a pipeline folder, each part loaded on first use in float32, eval mode.

    Args:
        folder: a pipeline folder (``model_index.json`` names each component's class).
        device: where the text stack runs (CPU is fine: it runs once per condition).
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.index = check_model_index(self.folder)
        self._parts: dict = {}

    def part(self, name: str):
        """Load component `name` with the class `model_index.json` names for it."""
        if name in self._parts:
            return self._parts[name]
        import diffusers
        import transformers

        entry = self.index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2) or not (self.folder / name).is_dir():
            raise ModelNotFoundError(f"model folder {self.folder} has no {name}/ to compute the condition with; "
                                     f"{how_to_get()}")
        library, class_name = entry
        cls = getattr(transformers if library == "transformers" else diffusers, class_name, None)
        if cls is None:
            raise ModelNotFoundError(f"{self.folder}/model_index.json names an unknown class {library}.{class_name} "
                                     f"for {name}")
        try:
            if name.startswith("tokenizer"):
                part = cls.from_pretrained(self.folder / name)
            else:
                part = cls.from_pretrained(self.folder / name, dtype=torch.float32).to(self.device).eval()
        except Exception as exc:  # OSError, safetensors errors on truncated files, ...
            raise ModelNotFoundError(f"cannot load {name}/ from {self.folder} ({type(exc).__name__}: "
                                     f"{first_line(exc)}); {how_to_get()}") from None
        self._parts[name] = part
        return part

    @torch.no_grad()
    def t5(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Flan-T5 hidden states ``(1, L, D2)`` and mask ``(1, L)`` of `prompt` (no padding, truncated)."""
        tokenizer = self.part("tokenizer_2")
        tokens = tokenizer(prompt, padding=True, max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        return self.part("text_encoder_2")(ids, attention_mask=mask)[0].float(), mask.long()

    @torch.no_grad()
    def clap_text(self, prompt: str) -> torch.Tensor:
        """CLAP text embedding ``(1, 1, P)`` of `prompt` (P = 512), padded to the tokenizer's length (as diffusers)."""
        tokenizer = self.part("tokenizer")
        tokens = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        features = self.part("text_encoder").get_text_features(tokens.input_ids.to(self.device),
                                                               attention_mask=tokens.attention_mask.to(self.device))
        features = getattr(features, "pooler_output", features)  # transformers 5 returns an output object
        return features[:, None, :].float()

    @torch.no_grad()
    def encode(self, prompt: str) -> Condition:
        """`prompt` through CLAP, Flan-T5, the projection and GPT-2 (``encode_prompt`` for one prompt, no CFG)."""
        clap = self.clap_text(prompt)
        t5, t5_mask = self.t5(prompt)
        projected = self.part("projection_model")(hidden_states=clap, hidden_states_1=t5,
                                                  attention_mask=t5_mask.new_ones(1, 1), attention_mask_1=t5_mask)
        language_model = self.part("language_model")
        gpt2 = generate_language_model(language_model, projected.hidden_states, projected.attention_mask,
                                       max_new_tokens=_max_new_tokens(language_model.config))
        return Condition(gpt2.float(), t5, t5_mask, "text")

    def null(self, kind: NullConditionKind) -> Condition:
        """The null condition of `kind` (see the module docstring)."""
        if kind == "diffusers":
            return dataclasses.replace(self.encode(""), kind="diffusers")
        if kind != "original":
            raise ConfigError(f"null_condition must be 'original' or 'diffusers', got {kind!r}")
        t5, _ = self.t5("")
        config = _language_model_config(self.folder)
        gpt2 = torch.zeros(1, _max_new_tokens(config), config["n_embd"])
        return Condition(gpt2, t5, torch.ones(t5.shape[:2], dtype=torch.long), "original")


def _language_model_config(folder: Path) -> dict:
    path = folder / "language_model" / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(f"model folder {folder} is incomplete: missing language_model/config.json; "
                                 f"{how_to_get()}")
    return json.loads(path.read_text())


def _max_new_tokens(config) -> int:
    value = config.get("max_new_tokens") if isinstance(config, dict) else getattr(config, "max_new_tokens", None)
    return int(value or 8)  # 8 = AudioLDM2's sequence_gen_length, also diffusers' default


# ------------------------------------------------------------------------------------------ cached null
def _fingerprint(folder: Path, kind: NullConditionKind) -> str:
    """Names, sizes and mtimes of the files the `kind` null reads, or "" when they are not (all) there."""
    if not all((folder / sub).is_dir() for sub in NEEDS[kind]):
        return ""
    files = [f for sub in NEEDS[kind] for f in sorted((folder / sub).glob("*")) if f.is_file()]
    files.append(folder / "language_model" / "config.json")
    ident = [(f.parent.name, f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _check_text_stack(folder: Path, kind: NullConditionKind) -> None:
    """One line naming the first part of the text stack that `kind` needs and the folder lacks."""
    for sub in NEEDS[kind]:
        if sub in WEIGHTED:
            if not (folder / sub / WEIGHTED[sub][0]).is_file() or not weight_files(folder / sub, sub):
                raise ModelNotFoundError(f"model folder {folder} is incomplete: the {kind!r} null condition needs "
                                         f"{sub}/ (config and weights) once, to be cached; {how_to_get()}")
        elif not (folder / sub).is_dir():
            raise ModelNotFoundError(f"model folder {folder} is incomplete: the {kind!r} null condition needs "
                                     f"{sub}/ once, to be cached; {how_to_get()}")


def load_null_condition(source: str | Path, kind: NullConditionKind, cache_dir: Path) -> Condition:
    """The null condition of `source`, from the safetensors cache or computed once and cached.

    The cache key is the folder and kind; a cached entry is reused unless the text-stack files it was
    computed from are present and changed (a folder whose text encoders were deleted keeps working).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from gdr.atomic import atomic_path

    if kind not in NEEDS:
        raise ConfigError(f"null_condition must be 'original' or 'diffusers', got {kind!r}")
    folder = Path(source)
    key = hashlib.sha256(f"{folder}|{kind}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "null_condition" / f"{key}.safetensors"
    fingerprint = _fingerprint(folder, kind)
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                cached_fingerprint = (f.metadata() or {}).get("text_stack", "")
            if not fingerprint or fingerprint == cached_fingerprint:
                t = load_file(str(path))
                return Condition(t["gpt2"], t["t5"], t["t5_mask"], kind)
        except Exception:  # a damaged cache entry is recomputed, not fatal
            pass
    _check_text_stack(folder, kind)
    cond = TextStack(folder).null(kind)
    with atomic_path(path) as tmp:
        save_file({"gpt2": cond.gpt2.contiguous(), "t5": cond.t5.contiguous(), "t5_mask": cond.t5_mask.contiguous()},
                  str(tmp), metadata={"source": str(folder), "kind": kind, "text_stack": fingerprint})
    logging.getLogger(__name__).info("cached the %s null condition of %s in %s", kind, folder, path)
    return cond
