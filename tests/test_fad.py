"""FAD: the Fréchet distance against frechet_audio_distance's own, the PANN embeddings through the package from a
checkpoint on disk (random weights: nothing is downloaded), and the one-line note without weights."""

import numpy as np
import pytest
import soundfile as sf
import torch

from gdr import fad
from gdr.run_folder import RunFolder

fad_package = pytest.importorskip("frechet_audio_distance")


@pytest.mark.parametrize("d, n1, n2", [(1, 30, 20), (8, 60, 45), (64, 10, 12)])
def test_frechet_distance_equals_the_textbook_formula_on_the_packages_statistics(d, n1, n2):
    """Full rank (n > d) and rank-deficient (n < d). The reference: the package's Gaussian fit
    (``calculate_embd_statistics``) and ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))`` with scipy's sqrtm, as
    pytorch-fid writes it. (The package's own ``calculate_frechet_distance`` cannot serve: it unpacks
    ``sqrtm(..., disp=False)`` into two values, and scipy >= 1.16 returns one.)"""
    import scipy.linalg

    rng = np.random.default_rng(d)
    x = rng.standard_normal((n1, d)) @ rng.standard_normal((d, d))
    y = 0.5 + rng.standard_normal((n2, d)) @ rng.standard_normal((d, d))
    lib = fad_package.FrechetAudioDistance.__new__(fad_package.FrechetAudioDistance)  # its maths needs no model
    (mu1, s1), (mu2, s2) = lib.calculate_embd_statistics(x), lib.calculate_embd_statistics(y)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fad.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6 if n1 > d else 1e-4)
    assert fad.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8 * np.abs(x).max() ** 2)


def test_without_weights_one_line_says_how_to_get_them(tmp_path):
    line = fad.unavailable(tmp_path / "nowhere")
    assert line.startswith("FAD not computed") and "\n" not in line
    assert fad.WEIGHTS_URL in line and str(tmp_path / "nowhere") in line and "--report.fad false" in line


def test_fad_per_method_uses_the_packages_pann_embeddings(tmp_path):
    """A random-weight Cnn14-16k checkpoint under the package's file name: the package loads it (no download; the
    weights in use are the file's); each clip's embedding is that model's 2048-d output, and FAD is
    `frechet_distance` of the clean inputs' embeddings and the method's."""
    from frechet_audio_distance.models.pann import Cnn14_16k

    torch.manual_seed(0)
    state = Cnn14_16k(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000,
                      classes_num=527).state_dict()
    folder = tmp_path / "fad"
    folder.mkdir()
    torch.save({"model": {k: v.half() for k, v in state.items()}}, folder / fad.WEIGHTS_FILE)  # half: smaller file
    assert fad.unavailable(folder) is None
    hub_dir = torch.hub.get_dir()
    embed = fad.Embedder(folder)
    assert torch.hub.get_dir() == hub_dir  # the package's global side effect is undone
    model = embed.fad.model
    name = "conv_block1.conv1.weight"
    torch.testing.assert_close(model.state_dict()[name], state[name].half().float())  # the file's weights

    rng = np.random.default_rng(0)
    n = 11200  # 0.7 s: enough frames for Cnn14's six poolings, and fast
    rows, audio = [], {}
    run = RunFolder(tmp_path, ["c0", "c1"])
    for c in range(2):
        clean = (0.3 * np.sin(2 * np.pi * (200 + 150 * c) * np.arange(n) / 16000)).astype(np.float32)
        audio[run.relative(run.input_wav(f"c{c}"))] = clean
        audio[f"audio/c{c}/t/m.wav"] = clean + (0.05 * rng.standard_normal(n)).astype(np.float32)
        rows.append({"clip": f"c{c}", "task": "t", "method": "m", "wav": f"audio/c{c}/t/m.wav"})
    for rel, x in audio.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(tmp_path / rel), x, 16000, subtype="FLOAT")
    [result] = fad.fad_per_method(run, rows, ["c0", "c1"], embed)

    with torch.no_grad():
        def direct(rel):
            return model(torch.from_numpy(audio[rel])[None], None)["embedding"][0].numpy()

        reference = np.stack([direct(run.relative(run.input_wav(f"c{c}"))) for c in range(2)])
        evaluated = np.stack([direct(f"audio/c{c}/t/m.wav") for c in range(2)])
    assert result["n_eval"] == result["n_ref"] == 2 and result["fad"] > 0
    assert result["fad"] == pytest.approx(fad.frechet_distance(reference, evaluated), rel=1e-4)
