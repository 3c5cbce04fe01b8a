"""stainldm: virtual H&E staining of unstained TMA slides with a conditional latent diffusion model."""

__version__ = "0.1.0"
