"""What the UNet is conditioned on: the two cross-attention streams, classifier-free guidance, and the spec.

AudioLDM2's UNet attends to two streams (``shared/docs/audioldm2-frontend.md``, ``real-checkpoint.md`` §5):

1. the "language of audio": ``max_new_tokens`` (8) vectors that GPT-2 generates greedily from the
   projected CLAP text embedding and Flan-T5 hidden states of the prompt, ``(B, 8, 768)``;
2. the Flan-T5 hidden states of the prompt, ``(B, L, 1024)``, with their attention mask ``(B, L)``.

`Condition` holds one pair of streams, `Conditioning` a condition with CFG's unconditional branch and its
weight (the CFG combination is here), `ConditionSpec` what the user asked for (prompt, negative prompt, CFG
scale, CLAP audio of the measurement, null kind). The text stack that computes the streams is
`gdr.text_stack`; `gdr.condition_cache` computes each condition once and caches it.

Null conditions (``kind``):

* ``"original"`` (default): GPT-2 stream zeros ``(1, 8, 768)``, T5 stream T5("") with an all-ones mask.
  It is what the UNet was trained with for dropped conditions (10 % dropout in haoheliu/AudioLDM2) and
  needs only Flan-T5 (no CLAP, no GPT-2).
* ``"diffusers"``: ``""`` through CLAP, Flan-T5, the projection and GPT-2, exactly as
  ``AudioLDM2Pipeline.encode_prompt`` encodes the prompt ``""``. As CFG's unconditional branch of a
  non-empty prompt, the pipeline tokenizes "" padded (mask 0) to the prompt's T5 length; the padding
  sits inside the sequence GPT-2 reads and shifts the positions of what it generates, so the GPT-2
  stream differs from the unpadded one (`gdr.text_stack.TextStack.null` with ``pad_to`` reproduces it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from gdr import checks
from gdr.errors import ConfigError

NullConditionKind = Literal["original", "diffusers"]
NULL_KINDS = ("original", "diffusers")


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
        checks.number("condition.cfg_scale", self.cfg_scale, low=0)
        if self.cfg_scale != 1.0 and self.uncond is None:
            raise ConfigError("classifier-free guidance (cfg_scale != 1) needs an unconditional branch")
        if self.uncond is not None:  # both branches of one batch need one T5 length
            length = max(self.cond.t5.shape[1], self.uncond.t5.shape[1])
            self.cond, self.uncond = pad_condition(self.cond, length), pad_condition(self.uncond, length)

    @property
    def cfg(self) -> bool:
        return self.cfg_scale != 1.0

    @classmethod
    def stack(cls, rows: list["Conditioning | None"]) -> "Conditioning | None":
        """One conditioning for a batch whose row ``b`` is conditioned on ``rows[b]`` (streams ``(B, ...)``).

        The same object for every row stays as it is (one condition broadcast to the batch); otherwise each
        stream is concatenated along the batch, T5 streams zero-padded to one length under mask 0 (which the UNet
        ignores). All rows must share the CFG weight (items of one recipe do)."""
        if all(row is rows[0] for row in rows):
            return rows[0]
        if any(row is None for row in rows) or len({row.cfg_scale for row in rows}) != 1:
            raise ValueError("rows of one batch need a conditioning each and one cfg_scale")

        def cat(conditions: list[Condition]) -> Condition:
            length = max(c.t5.shape[1] for c in conditions)
            padded = [pad_condition(c, length) for c in conditions]
            return Condition(torch.cat([c.gpt2 for c in padded]), torch.cat([c.t5 for c in padded]),
                             torch.cat([c.t5_mask for c in padded]), padded[0].kind)

        uncond = None if rows[0].uncond is None else cat([row.uncond for row in rows])
        return cls(cat([row.cond for row in rows]), uncond, rows[0].cfg_scale)

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
        checks.number("condition.cfg_scale", self.cfg_scale, low=0)  # 1 = no CFG
        checks.choice("condition.audio", self.audio, AUDIO_SOURCES)
        checks.choice("condition.unconditional", self.unconditional, NULL_KINDS)
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
