"""The install works: torchaudio and diffusers' AudioLDM2Pipeline import together (a broken torch/torchaudio
pairing makes transformers' audio utils, and with them the pipeline import, fail)."""


def test_torchaudio_and_audioldm2_pipeline_import_together():
    import torch
    import torchaudio
    from diffusers import AudioLDM2Pipeline

    # Exercise the compiled parts, not just the import.
    y = torchaudio.functional.resample(torch.randn(1, 4410), 44100, 16000)
    assert y.shape == (1, 1600)
    # The pipeline class is diffusers' own, with the components gdr's model folders are laid out for.
    import inspect

    import numpy as np
    from diffusers import DiffusionPipeline
    from transformers import ClapFeatureExtractor

    assert issubclass(AudioLDM2Pipeline, DiffusionPipeline)
    assert AudioLDM2Pipeline.__module__ == "diffusers.pipelines.audioldm2.pipeline_audioldm2"
    assert list(inspect.signature(AudioLDM2Pipeline.__init__).parameters)[1:] == [
        "vae", "text_encoder", "text_encoder_2", "projection_model", "language_model", "tokenizer", "tokenizer_2",
        "feature_extractor", "unet", "scheduler", "vocoder"]
    # transformers' audio utils (what a broken pairing breaks): CLAP's 48 kHz log-mel features of 1 s of audio,
    # fused into 4 views of 1001 frames x 64 mel bins.
    features = ClapFeatureExtractor()(np.zeros(48000, dtype=np.float32), sampling_rate=48000, return_tensors="pt")
    assert features.input_features.shape == (1, 4, 1001, 64) and torch.isfinite(features.input_features).all()
