"""Typed, user-facing errors.

Every error a user can cause (bad audio, a missing model, an absurd parameter) is a `GdrError`
whose message is one line; the scripts print it as ``error: <message>`` and exit non-zero,
without a traceback. Anything else escaping the library is a bug.
"""


class GdrError(Exception):
    """Base class of the errors the scripts report in one line."""


class AudioError(GdrError):
    """An input audio file or array that gdr cannot use."""


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """The audio path does not exist."""


class UnreadableAudioError(AudioError):
    """The file exists but is not audio that soundfile can decode."""


class EmptyAudioError(AudioError):
    """The audio has no samples."""


class NonFiniteAudioError(AudioError):
    """The audio contains NaN or Inf samples."""


class SilentAudioError(AudioError):
    """The audio is all silence (peak below the silence threshold), so it cannot be normalised."""


class TooShortAudioError(AudioError):
    """The audio is shorter than one analysis frame."""


class ModelNotFoundError(GdrError):
    """The model folder or hub id is missing, incomplete or unreadable."""


class ConfigError(GdrError, ValueError):
    """A configuration value is out of range or an unknown name was asked for."""


class UnsupportedModelError(GdrError):
    """A model folder that loads but that gdr cannot run correctly (e.g. the AudioLDM2 speech checkpoints)."""


class GdrWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. a prompt truncated by a tokenizer).

    The scripts print it as one ``warning: <message>`` line.
    """
