"""The install works: torchaudio and diffusers' AudioLDM2Pipeline import together (a broken torch/torchaudio
pairing makes transformers' audio utils, and with them the pipeline import, fail)."""


def test_torchaudio_and_audioldm2_pipeline_import_together():
    import torch
    import torchaudio
    from diffusers import AudioLDM2Pipeline

    # Exercise the compiled parts, not just the import.
    y = torchaudio.functional.resample(torch.randn(1, 4410), 44100, 16000)
    assert y.shape == (1, 1600)
    assert AudioLDM2Pipeline.__name__ == "AudioLDM2Pipeline"
