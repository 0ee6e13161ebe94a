"""gdr: guided diffusion reconstruction of audio with AudioLDM2."""

__version__ = "0.1.0"
