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
  ``AudioLDM2Pipeline.encode_prompt`` encodes the prompt ``""``. As CFG's unconditional branch of a
  non-empty prompt, the pipeline tokenizes "" padded (mask 0) to the prompt's T5 length; the padding
  sits inside the sequence GPT-2 reads and shifts the positions of what it generates, so the GPT-2
  stream differs from the unpadded one (`TextStack.null` with ``pad_to`` reproduces it).

Prompts, classifier-free guidance (`Conditioning`, `ConditionSpec`) and the CLAP *audio* embedding of the
measurement (`TextStack.clap_audio`) build on the same path; `ConditionCache` computes each once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from gdr.errors import ConfigError, GdrWarning, ModelNotFoundError, UnsupportedModelError
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


def pad_condition(condition: Condition, length: int) -> Condition:
    """`condition` with its T5 stream zero-padded to `length` tokens under mask 0 (the UNet ignores them)."""
    extra = length - condition.t5.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad a T5 stream of {condition.t5.shape[1]} tokens to {length}")
    if extra == 0:
        return condition
    t5 = torch.nn.functional.pad(condition.t5, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(condition.t5_mask, (0, extra))
    return Condition(condition.gpt2, t5, mask, condition.kind)


@dataclass
class Conditioning:
    """What the UNet is conditioned on: a condition and, for classifier-free guidance, the unconditional branch.

    With ``cfg_scale`` w != 1 the noise prediction is ``eps_u + w (eps_c - eps_u)`` from one UNet call on
    the doubled batch ``[uncond, cond]`` (``AudioLDM2Pipeline.__call__``'s order); w = 1 runs the
    condition alone (diffusers runs CFG only for w > 1; w = 1 is the same prediction at half the cost).
    Streams may be ``(1, ...)`` (one condition for the batch) or ``(B, ...)`` (one per item).
    """

    cond: Condition
    uncond: Condition | None = None
    cfg_scale: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise ConfigError(f"condition.cfg_scale must be a finite number >= 0, got {self.cfg_scale!r}")
        if self.cfg_scale != 1.0 and self.uncond is None:
            raise ConfigError("classifier-free guidance (cfg_scale != 1) needs an unconditional branch")
        if self.uncond is not None:  # both branches of one batch need one T5 length
            length = max(self.cond.t5.shape[1], self.uncond.t5.shape[1])
            self.cond, self.uncond = pad_condition(self.cond, length), pad_condition(self.uncond, length)

    @property
    def cfg(self) -> bool:
        return self.cfg_scale != 1.0

    def to(self, device=None, dtype=None) -> "Conditioning":
        uncond = None if self.uncond is None else self.uncond.to(device, dtype)
        return Conditioning(self.cond.to(device, dtype), uncond, self.cfg_scale)

    def unet_kwargs(self, batch: int) -> dict[str, torch.Tensor]:
        """UNet keyword arguments for `batch` latents: ``batch`` rows, or ``2 batch`` (``[uncond, cond]``) with CFG."""
        cond = self.cond.expand(batch)
        if not self.cfg:
            return cond
        uncond = self.uncond.expand(batch)
        return {k: torch.cat([uncond[k], cond[k]]) for k in cond}

    def combine(self, out: torch.Tensor) -> torch.Tensor:
        """The UNet output of `unet_kwargs`' batch -> the guided noise prediction ``(batch, ...)``."""
        if not self.cfg:
            return out
        eps_uncond, eps_cond = out.chunk(2)
        return eps_uncond + self.cfg_scale * (eps_cond - eps_uncond)


AUDIO_SOURCES = ("none", "measurement")


@dataclass(frozen=True)
class ConditionSpec:
    """What to condition the prior on (the ``condition`` config block).

    text: the prompt (CLAP and Flan-T5 read it); "" = no text.
    negative_text: the prompt of CFG's unconditional branch ("" = the `unconditional` null).
    cfg_scale: classifier-free guidance weight w (1 = no CFG; diffusers' ``guidance_scale``).
    audio: ``none``, or ``measurement``: the CLAP *audio* embedding of the degraded input stands where
        the text's CLAP embedding stands (the T5 stream still comes from `text`, or "").
    unconditional: the null condition, ``original`` or ``diffusers`` (module docstring): the UNet's
        condition when there is neither text nor audio, and CFG's unconditional branch.
    """

    text: str = ""
    negative_text: str = ""
    cfg_scale: float = 1.0
    audio: str = "none"
    unconditional: str = "original"

    def __post_init__(self):
        for name in ("text", "negative_text"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"condition.{name} must be a string, got {getattr(self, name)!r}")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) \
                or not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            raise ConfigError(f"condition.cfg_scale must be a finite number >= 0 (1 = no CFG), got {self.cfg_scale!r}")
        if self.audio not in AUDIO_SOURCES:
            raise ConfigError(f"condition.audio must be one of {', '.join(AUDIO_SOURCES)}, got {self.audio!r}")
        if self.unconditional not in NEEDS:
            raise ConfigError(f"condition.unconditional must be 'original' or 'diffusers', got {self.unconditional!r}")
        if self.cfg_scale != 1 and not self.conditioned:
            raise ConfigError(f"condition.cfg_scale={self.cfg_scale:g} has nothing to guide towards: the prompt is "
                              "empty and condition.audio is none (set condition.text or condition.audio: measurement)")

    @classmethod
    def from_dict(cls, values: dict | None) -> "ConditionSpec":
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"condition: unknown key(s) {', '.join(map(str, unknown))}")
        return cls(**values)

    @property
    def conditioned(self) -> bool:
        """Whether there is a condition beyond the null one."""
        return bool(self.text.strip()) or self.audio == "measurement"

    def label(self) -> str:
        """A short readable name, e.g. ``null:original`` or ``"a man speaking" w=3.5 uncond=original``."""
        if not self.conditioned:
            return f"null:{self.unconditional}"
        parts = []
        if self.text.strip():
            text = " ".join(self.text.split())
            parts.append(f'"{text[:40]}…"' if len(text) > 40 else f'"{text}"')
        if self.audio == "measurement":
            parts.append("clap:measurement")
        if self.cfg_scale != 1:
            parts.append(f"w={self.cfg_scale:g}")
            negative = " ".join(self.negative_text.split())
            parts.append(f'neg="{negative[:30]}"' if negative else f"uncond={self.unconditional}")
        return " ".join(parts)


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
            if name.startswith(("tokenizer", "feature_extractor")):
                part = cls.from_pretrained(self.folder / name)
            else:
                part = cls.from_pretrained(self.folder / name, dtype=torch.float32).to(self.device).eval()
        except Exception as exc:  # OSError, safetensors errors on truncated files, ...
            raise ModelNotFoundError(f"cannot load {name}/ from {self.folder} ({type(exc).__name__}: "
                                     f"{first_line(exc)}); {how_to_get()}") from None
        self._parts[name] = part
        return part

    @torch.no_grad()
    def t5(self, prompt: str, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Flan-T5 hidden states ``(1, L, D2)`` and mask ``(1, L)`` of `prompt`, truncated to the tokenizer's length.

        `pad_to`: tokenize to exactly this many tokens (padding with mask 0, or truncating), as
        ``encode_prompt`` tokenizes the negative prompt of classifier-free guidance to the prompt's length.
        """
        tokenizer = self.part("tokenizer_2")
        if pad_to is None:
            tokens = tokenizer(prompt, padding=True, max_length=tokenizer.model_max_length, truncation=True,
                               return_tensors="pt")
        else:
            tokens = tokenizer(prompt, padding="max_length", max_length=pad_to, truncation=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        return self.part("text_encoder_2")(ids, attention_mask=mask)[0].float(), mask.long()

    def token_count(self, prompt: str) -> dict[str, tuple[int, int]]:
        """``{tokenizer: (tokens of prompt, tokens kept)}`` for both tokenizers, to say when a prompt is truncated."""
        counts = {}
        for name in ("tokenizer", "tokenizer_2"):
            tokenizer = self.part(name)
            counts[name] = (len(tokenizer(prompt).input_ids), int(tokenizer.model_max_length))
        return counts

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
    def clap_audio(self, waveform: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
        """CLAP audio embedding ``(1, 1, P)`` (unit norm) of a mono `waveform` ``(N,)``.

        The pipeline's ``ClapFeatureExtractor`` at its rate (48 kHz) and ``ClapModel.get_audio_features``,
        as CLAP embeds audio for AudioLDM2's training. The extractor crops audio longer than its
        ``max_length_s`` (10 s) at a *random* offset; to stay deterministic and see the whole clip, a
        longer clip is cut into equal windows of at most that length, each embedded, and the unit mean
        of their embeddings returned.
        """
        import torchaudio

        extractor = self.part("feature_extractor")
        model = self.part("text_encoder")
        if not hasattr(model, "get_audio_features"):
            raise ModelNotFoundError(f"{self.folder}/text_encoder is a {type(model).__name__} without CLAP's audio "
                                     "branch; condition.audio: measurement needs a ClapModel")
        rate = int(extractor.sampling_rate)
        x = torchaudio.functional.resample(waveform.detach().float().cpu().reshape(-1), sample_rate, rate)
        limit = int(extractor.nb_max_samples)
        count = max(1, -(-x.numel() // limit))
        windows = [w.numpy() for w in torch.tensor_split(x, count)]
        features = extractor(windows, sampling_rate=rate, return_tensors="pt")
        out = model.get_audio_features(input_features=features.input_features.to(self.device),
                                       is_longer=features.get("is_longer"))
        embeddings = getattr(out, "pooler_output", out).float()  # (count, P), unit norm each
        mean = embeddings.mean(dim=0)
        return (mean / mean.norm().clamp_min(1e-12))[None, None, :]

    @torch.no_grad()
    def encode(self, prompt: str, *, clap: torch.Tensor | None = None, pad_to: int | None = None) -> Condition:
        """`prompt` through CLAP, Flan-T5, the projection and GPT-2 (``encode_prompt`` for one prompt, no CFG).

        `clap`: a CLAP embedding ``(1, 1, P)`` to use instead of the prompt's CLAP text embedding (e.g.
        `clap_audio` of the measurement: CLAP embeds audio and text in one space). `pad_to`: the T5
        tokenization length (see `t5`), which also changes the GPT-2 stream computed from it.
        """
        clap = self.clap_text(prompt) if clap is None else clap.to(self.device, torch.float32)
        t5, t5_mask = self.t5(prompt, pad_to)
        projected = self.part("projection_model")(hidden_states=clap, hidden_states_1=t5,
                                                  attention_mask=t5_mask.new_ones(1, 1), attention_mask_1=t5_mask)
        language_model = self.part("language_model")
        gpt2 = generate_language_model(language_model, projected.hidden_states, projected.attention_mask,
                                       max_new_tokens=_max_new_tokens(language_model.config))
        return Condition(gpt2.float(), t5, t5_mask, "text")

    def null(self, kind: NullConditionKind, pad_to: int | None = None) -> Condition:
        """The null condition of `kind` (see the module docstring).

        `pad_to`: as CFG's unconditional branch of a prompt with that many T5 tokens. ``diffusers``
        tokenizes "" to that length, as ``encode_prompt`` does (which also changes its GPT-2 stream);
        ``original`` zero-pads under mask 0, which the UNet ignores.
        """
        if kind == "diffusers":
            return dataclasses.replace(self.encode("", pad_to=pad_to), kind="diffusers")
        if kind != "original":
            raise ConfigError(f"null_condition must be 'original' or 'diffusers', got {kind!r}")
        t5, _ = self.t5("")
        config = _language_model_config(self.folder)
        gpt2 = torch.zeros(1, _max_new_tokens(config), config["n_embd"])
        null = Condition(gpt2, t5, torch.ones(t5.shape[:2], dtype=torch.long), "original")
        return null if pad_to is None else pad_condition(null, pad_to)

    def conditioning(self, spec: ConditionSpec, audio: torch.Tensor | None = None) -> Conditioning:
        """The `Conditioning` of `spec`; `audio` ``(N,)`` at 16 kHz is the measurement for ``audio: measurement``.

        Matches ``AudioLDM2Pipeline.encode_prompt`` with CFG: the negative prompt (or "" for the
        ``diffusers`` null) is tokenized to the prompt's T5 length, so a longer negative prompt is
        truncated there (said in a `GdrWarning`).
        """
        for name in ("text", "negative_text"):
            self._say_if_truncated(f"condition.{name}", getattr(spec, name))
        if not spec.conditioned:
            return Conditioning(self.null(spec.unconditional))
        if spec.audio == "measurement":
            if audio is None:
                raise ConfigError("condition.audio: measurement needs the measured audio")
            clap = self.clap_audio(audio)
        else:
            clap = None
        cond = self.encode(spec.text, clap=clap)
        if spec.cfg_scale == 1:
            return Conditioning(cond)
        length = cond.t5.shape[1]
        if spec.negative_text.strip():
            kept = len(self.part("tokenizer_2")(spec.negative_text, truncation=True).input_ids)
            if kept > length:
                warnings.warn(f"condition.negative_text is {kept} Flan-T5 tokens; the prompt's {length} are kept "
                              "(diffusers tokenizes the negative prompt to the prompt's length)", GdrWarning,
                              stacklevel=2)
            uncond = dataclasses.replace(self.encode(spec.negative_text, pad_to=length), kind="negative")
        else:
            uncond = self.null(spec.unconditional, pad_to=length)
        return Conditioning(cond, uncond, float(spec.cfg_scale))

    def _say_if_truncated(self, name: str, prompt: str) -> None:
        if not prompt.strip():
            return
        counts = self.token_count(prompt)
        over = [f"{'CLAP' if tok == 'tokenizer' else 'Flan-T5'} keeps the first {kept}"
                for tok, (n, kept) in counts.items() if n > kept]
        if over:
            n = max(c[0] for c in counts.values())
            warnings.warn(f"{name} is {n} tokens long; {' and '.join(over)} (truncated as its tokenizer does)",
                          GdrWarning, stacklevel=3)


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
def _files_fingerprint(folder: Path, subfolders: tuple[str, ...]) -> str:
    """Names, sizes and mtimes of the files in `subfolders` (and GPT-2's config), or "" when not all are there."""
    if not all((folder / sub).is_dir() for sub in subfolders):
        return ""
    files = [f for sub in subfolders for f in sorted((folder / sub).glob("*")) if f.is_file()]
    files.append(folder / "language_model" / "config.json")
    ident = [(f.parent.name, f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _fingerprint(folder: Path, kind: NullConditionKind) -> str:
    """The fingerprint of the files the `kind` null reads."""
    return _files_fingerprint(folder, NEEDS[kind])


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


# ------------------------------------------------------------------------------------------ cached conditionings
def check_audio_branch(folder: str | Path) -> None:
    """Raise `UnsupportedModelError` in one line unless `folder` has CLAP's audio branch (for ``audio: measurement``).

    Needs the ``feature_extractor/`` and a ``ClapModel`` text encoder whose weights hold ``audio_model.*``
    tensors: without them transformers would build the audio tower with random weights and say nothing.
    """
    from safetensors import safe_open

    folder = Path(folder)
    index = check_model_index(folder)
    encoder = index.get("text_encoder")
    if not (isinstance(encoder, list) and encoder[-1] == "ClapModel"):
        raise UnsupportedModelError(f"condition.audio: measurement needs CLAP's audio branch, but {folder}'s "
                                    f"text_encoder is {encoder!r}, not a ClapModel")
    if not (folder / "feature_extractor" / "preprocessor_config.json").is_file():
        raise ModelNotFoundError(f"condition.audio: measurement needs {folder}/feature_extractor/ (CLAP's audio "
                                 f"front end); {how_to_get()}")
    files = [f for f in weight_files(folder / "text_encoder", "text_encoder") if f.suffix == ".safetensors"]
    if files:
        keys = set()
        for file in files:
            with safe_open(str(file), "pt") as f:
                keys.update(f.keys())
        if not any(k.startswith("audio_model.") for k in keys):
            raise UnsupportedModelError(f"condition.audio: measurement needs CLAP's audio branch, but "
                                        f"{folder}/text_encoder has no audio_model weights (a text-only CLAP)")


class ConditionCache:
    """`Conditioning`s computed once per (model folder, spec, audio content) and cached as safetensors.

    The text stack is loaded on the first miss and dropped by `close` (it is not needed for sampling).
    An entry is reused unless the text-stack files it was computed from are present and changed.

    Args:
        folder: the pipeline folder; cache_dir: gdr's cache (entries go to ``conditions/``).
    """

    def __init__(self, folder: str | Path, cache_dir: str | Path):
        self.folder, self.dir = Path(folder), Path(cache_dir) / "conditions"
        self._stack: TextStack | None = None

    def _needs(self, spec: ConditionSpec) -> tuple[str, ...]:
        if not spec.conditioned:
            return NEEDS[spec.unconditional]
        return TEXT_STACK + (("feature_extractor",) if spec.audio == "measurement" else ())

    def path(self, spec: ConditionSpec, audio: torch.Tensor | None = None) -> Path:
        content = None
        if spec.conditioned and spec.audio == "measurement":
            content = hashlib.sha256(audio.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()
        ident = {"folder": str(self.folder), "spec": dataclasses.asdict(spec), "audio": content}
        return self.dir / f"{hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]}.safetensors"

    def get(self, spec: ConditionSpec, audio: torch.Tensor | None = None) -> Conditioning:
        """The conditioning of `spec` (and the measurement `audio` ``(N,)`` at 16 kHz, for ``audio: measurement``)."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        from gdr.atomic import atomic_path

        if not spec.conditioned:  # the null condition has its own cache, shared with `AudioLDM2.from_pretrained`
            return Conditioning(load_null_condition(self.folder, spec.unconditional, self.dir.parent))
        path = self.path(spec, audio)
        fingerprint = _files_fingerprint(self.folder, self._needs(spec))
        if path.exists():
            try:
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                if not fingerprint or fingerprint == meta.get("text_stack"):
                    t = load_file(str(path))
                    uncond = (Condition(t["uncond_gpt2"], t["uncond_t5"], t["uncond_t5_mask"], meta["uncond_kind"])
                              if "uncond_gpt2" in t else None)
                    cond = Condition(t["gpt2"], t["t5"], t["t5_mask"], meta["kind"])
                    return Conditioning(cond, uncond, float(meta["cfg_scale"]))
            except Exception:  # a damaged entry is recomputed, not fatal
                pass
        if spec.conditioned and spec.audio == "measurement":
            check_audio_branch(self.folder)
        for sub in self._needs(spec):
            if not (self.folder / sub).is_dir():
                raise ModelNotFoundError(f"model folder {self.folder} is incomplete: the condition "
                                         f"{spec.label()} needs {sub}/ once, to be cached; {how_to_get()}")
        if self._stack is None:
            self._stack = TextStack(self.folder)
        conditioning = self._stack.conditioning(spec, audio)
        tensors = {"gpt2": conditioning.cond.gpt2, "t5": conditioning.cond.t5, "t5_mask": conditioning.cond.t5_mask}
        meta = {"source": str(self.folder), "kind": conditioning.cond.kind, "cfg_scale": repr(conditioning.cfg_scale),
                "text_stack": fingerprint, "label": spec.label()}
        if conditioning.uncond is not None:
            tensors.update(uncond_gpt2=conditioning.uncond.gpt2, uncond_t5=conditioning.uncond.t5,
                           uncond_t5_mask=conditioning.uncond.t5_mask)
            meta["uncond_kind"] = conditioning.uncond.kind
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        return conditioning

    def close(self) -> None:
        """Free the text stack (CLAP, Flan-T5, GPT-2: about 1.5 GB for AudioLDM2)."""
        import gc

        self._stack = None
        gc.collect()
