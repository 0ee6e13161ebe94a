"""Guidance methods behind one interface, registered by name (``--guidance.name``).

`gdr.methods.base` holds the interface (`Guidance`, the `Step` and `Context` a method sees, its capability
attributes); `gdr.methods.classic` the classic methods (seed, latent_pull, sdedit, inpaint, dps, mpgd, diffpir,
decoder_inversion, none); `gdr.methods.latent_posterior` the latent posterior samplers of 2023-25 (psld, resample,
daps). Importing this package registers them all.
"""

from gdr.methods import classic, latent_posterior  # noqa: F401  (registers the methods)
from gdr.methods.base import GUIDANCE, Context, Guidance, Step, build_guidance, item_loss

__all__ = ["GUIDANCE", "Context", "Guidance", "Step", "build_guidance", "item_loss"]
