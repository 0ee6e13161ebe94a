"""AudioLDM2's text stack: tokenizers, CLAP (text and audio), Flan-T5, the projection and GPT-2's greedy loop.

gdr owns this path instead of calling ``AudioLDM2Pipeline.encode_prompt``: on the published layout
that helper breaks twice (CLAP's config says float64; diffusers' GPT-2 loop calls a method that
``GPT2Model`` lost in transformers 5, diffusers issue #12630). Here every component is loaded with
an explicit float32 dtype whatever its config says, and `generate_language_model` is the plain loop.
It makes the streams of `gdr.conditioning` (prompts, null conditions, the CLAP *audio* embedding of the
measurement, `TextStack.clap_audio`); `gdr.condition_cache` runs it once per condition.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch

from gdr.conditioning import Condition, Conditioning, ConditionSpec, NullConditionKind, pad_condition
from gdr.errors import ConfigError, GdrWarning, ModelNotFoundError, UnsupportedModelError
from gdr.hub import check_model_index, first_line, how_to_get, weight_files

TEXT_STACK = ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "projection_model", "language_model")


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
