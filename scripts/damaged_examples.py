"""Write damaged example recordings for README's "Restore a recording": ``python scripts/damaged_examples.py DIR``.

The clips are the tests' generated speech-like and music-like recordings (`tests/test_detect.py`), damaged as
real files are: clipped.wav (44.1 kHz stereo 16-bit, hard clipped), band_limited.wav (48 kHz stereo 24-bit,
4 kHz band limit), dropouts.wav (44.1 kHz mono 16-bit, digital-silence dropouts, with dropouts.txt: the same
gaps as an Audacity label file), noisy.wav (48 kHz mono 24-bit, white noise at -35 dBFS).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_detect import music_like, quantize, speech_like, steep_lowpass

from gdr.audio import write_audio


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stereo = np.stack([speech_like(44_100, 2.0), music_like(44_100, 2.0)], axis=1)
    write_audio(out / "clipped.wav", np.clip(quantize(stereo), -0.3, 0.3), 44_100, "WAV", "PCM_16")
    wide = np.stack([speech_like(48_000, 2.0), music_like(48_000, 2.0)], axis=1)
    limited = np.stack([steep_lowpass(c, 4000.0, 48_000) for c in wide.T], axis=1)
    write_audio(out / "band_limited.wav", quantize(limited, 24), 48_000, "WAV", "PCM_24")
    speech = quantize(speech_like(44_100, 2.0))
    gaps = [(0.62, 0.68), (1.31, 1.35)]
    for start, end in gaps:
        speech[int(start * 44_100):int(end * 44_100)] = 0.0
    write_audio(out / "dropouts.wav", speech, 44_100, "WAV", "PCM_16")
    (out / "dropouts.txt").write_text("".join(f"{s:.6f}\t{e:.6f}\tdropout\n" for s, e in gaps))
    noisy = speech_like(48_000, 2.0) + 10 ** (-35 / 20) * np.random.default_rng(0).standard_normal(96_000)
    write_audio(out / "noisy.wav", quantize(noisy, 24), 48_000, "WAV", "PCM_24")
    print(f"damaged examples written to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/damaged"))
