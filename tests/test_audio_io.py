"""Audio loading: every bad input raises its typed error with a one-line message naming the file."""

import numpy as np
import pytest
import soundfile as sf
import torch

from gdr import errors
from gdr.audio import load_audio, write_wav


def _write(path, data, sr=16000, subtype="FLOAT"):
    sf.write(str(path), data, sr, subtype=subtype)
    return path


BAD_CASES = ["missing", "unreadable", "empty", "nan", "silent", "too_short"]


def make_bad_input(folder, case):
    """Create one bad input of kind `case` in `folder`; returns ``(path, expected error type)``.
    Shared with the script tests."""
    rng = np.random.default_rng(0)
    if case == "missing":
        return folder / "does_not_exist.wav", errors.AudioFileNotFoundError
    if case == "unreadable":
        path = folder / "garbage.wav"
        path.write_bytes(b"this is not audio at all" * 10)
        return path, errors.UnreadableAudioError
    if case == "empty":
        return _write(folder / "empty.wav", np.zeros(0, dtype=np.float32)), errors.EmptyAudioError
    if case == "nan":
        nan = rng.standard_normal(16000).astype(np.float32)
        nan[100] = np.nan
        return _write(folder / "nan.wav", nan), errors.NonFiniteAudioError
    if case == "silent":
        return _write(folder / "silent.wav", np.zeros(16000, dtype=np.float32)), errors.SilentAudioError
    assert case == "too_short"
    return _write(folder / "short.wav", rng.standard_normal(500).astype(np.float32)), errors.TooShortAudioError


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_audio_raises_typed_one_line_error(tmp_path, case):
    path, kind = make_bad_input(tmp_path, case)
    with pytest.raises(kind) as info:
        load_audio(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message
    assert isinstance(info.value, errors.GdrError)


def test_other_rates_and_channels_load_as_16k_mono(tmp_path):
    rng = np.random.default_rng(3)
    stereo = rng.standard_normal((48000, 2)).astype(np.float32) * 0.2
    x = load_audio(_write(tmp_path / "stereo48k.flac", stereo, sr=48000, subtype="PCM_24"))
    assert x.shape == (16000,) and x.dtype == torch.float32
    assert x.abs().max().item() == pytest.approx(0.5)


def test_write_wav_is_atomic_and_round_trips(tmp_path):
    x = torch.linspace(-0.5, 0.5, 3000)
    path = tmp_path / "out" / "a.wav"
    write_wav(path, x)
    data, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000
    np.testing.assert_array_equal(data, x.numpy())
    assert [p.name for p in path.parent.iterdir()] == ["a.wav"]  # no temporary left behind

    class Boom(Exception):
        pass

    from gdr import atomic

    with pytest.raises(Boom):
        with atomic.atomic_path(tmp_path / "out" / "b.wav") as tmp:
            tmp.write_bytes(b"partial")
            raise Boom
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.wav"]


def test_dc_only_file_says_nothing_is_left_after_mean_removal(tmp_path):
    path = _write(tmp_path / "dc.wav", np.full(16000, 0.25, dtype=np.float32))
    with pytest.raises(errors.SilentAudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert "DC only" in message and "mean removal" in message and "-12 dBFS" in message and "\n" not in message


def test_stereo_with_a_silent_first_channel_names_mono_mean(tmp_path):
    stereo = np.zeros((16000, 2), dtype=np.float32)
    stereo[:, 1] = 0.3 * np.random.default_rng(0).standard_normal(16000)
    path = _write(tmp_path / "right_only.wav", stereo)
    with pytest.raises(errors.SilentAudioError, match="--data.mono mean"):
        load_audio(path)
    assert load_audio(path, mono="mean").abs().max().item() == pytest.approx(0.5)
    # Truly silent stereo still says "silent", without the hint.
    with pytest.raises(errors.SilentAudioError, match="silent \\(peak below -100 dBFS\\)$"):
        load_audio(_write(tmp_path / "both_silent.wav", np.zeros((16000, 2), dtype=np.float32)))
