"""Stage 1: a KL-regularised autoencoder (MONAI ``AutoencoderKL``) of H&E tiles.

Downsampling ``f = 2^(len(channels) - 1)``: the default ``(32, 64, 64)`` maps a 256 px tile to a
64×64×4 latent (f = 4). Latents fed to the diffusion model are ``μ · scale`` with ``scale`` =
1 / std of training latents (Rombach et al. 2022, sec. 4.3.2), measured after training and
stored with the weights.

Loss: L1 reconstruction + ``kl_weight`` · KL(q(z|x) || N(0, I)), plus, when enabled, a patch
adversarial term (MONAI ``PatchDiscriminator``, least squares, switched on after
``adversarial_start`` steps), a frequency-domain term (L1 between log-amplitude spectra,
:func:`log_amplitude_l1`: a decoder that smears nuclei and fibres loses high-frequency amplitude,
which a pixel L1 barely notices) and a perceptual term (MONAI ``PerceptualLoss``) only when its
weights are a local file — nothing is downloaded.

The decoder may be deeper than the encoder (``decoder_res_blocks``): the decoder draws the detail,
and a trained one can be deepened and fine-tuned alone without touching the latent space that
an ldm was trained on (:func:`load_deepened`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stainldm.errors import ConfigError


@dataclass(frozen=True)
class AutoencoderConfig:
    """Autoencoder architecture and loss weights.

    Attributes:
        channels: feature channels per resolution level; ``len - 1`` downsamplings.
        num_res_blocks: residual blocks per level.
        decoder_res_blocks: residual blocks per level of the decoder alone (None: ``num_res_blocks``).
            More than ``init`` has deepens a trained decoder: the blocks it lacks are added at the
            end of each level as identities (their last convolution zeroed), so fine-tuning starts
            from exactly ``init``'s reconstructions, and the encoder, hence the latent space, is
            unchanged (:func:`load_deepened`).
        latent_channels: channels of the latent.
        attention: non-local attention in the bottleneck of encoder and decoder.
        norm_num_groups: GroupNorm groups (must divide every entry of ``channels``).
        kl_weight: weight of the KL term.
        adversarial_weight: weight of the patch adversarial term (0 = off).
        adversarial_start: step at which the adversarial term starts (warm-up).
        frequency_weight: weight of the log-amplitude spectrum term (0 = off; see
            :func:`log_amplitude_l1`).
        perceptual_weight: weight of the perceptual term (0 = off).
        perceptual_weights: local weights file for the perceptual network (required if on).
        init: a trained autoencoder to start from instead of a random initialisation: an
            autoencoder run folder, or an ldm run or checkpoint folder (the autoencoder it carries).
            Its architecture keys (``channels``, ``num_res_blocks``, ``latent_channels``,
            ``attention``, ``norm_num_groups``) must equal these.
        train_encoder: False trains the decoder only (needs ``init``): the encoder and the latent
            projections keep ``init``'s weights, so the latent space, its scale and every ldm trained
            on ``init`` stay valid — a sharper decoder can replace the one an ldm was shipped with
            (as Stable Diffusion's fine-tuned VAE decoders did; :func:`~stainldm.models.runs.export_run`).
    """

    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int = 1
    decoder_res_blocks: int | None = None
    latent_channels: int = 4
    attention: bool = False
    norm_num_groups: int = 16
    kl_weight: float = 1e-6
    adversarial_weight: float = 0.0
    adversarial_start: int = 1000
    frequency_weight: float = 0.0
    perceptual_weight: float = 0.0
    perceptual_weights: str | None = None
    init: str | None = None
    train_encoder: bool = True


#: the keys of :class:`AutoencoderConfig` that shape the weights (the rest are the loss's and training's)
ARCHITECTURE_KEYS = ("channels", "num_res_blocks", "decoder_res_blocks", "latent_channels", "attention",
                     "norm_num_groups")
#: the :data:`ARCHITECTURE_KEYS` that shape the decoder alone
DECODER_KEYS = ("decoder_res_blocks",)
#: the modules a decoder-only fine-tuning leaves as they are: they make the latent
ENCODER_PARTS = ("encoder", "quant_conv_mu", "quant_conv_log_sigma")


def decoder_blocks(cfg: AutoencoderConfig) -> int:
    """Residual blocks per level of the decoder."""
    return cfg.num_res_blocks if cfg.decoder_res_blocks is None else cfg.decoder_res_blocks


def architecture_diff(a: AutoencoderConfig, b: AutoencoderConfig, *, encoder_only: bool = False) -> list[str]:
    """The :data:`ARCHITECTURE_KEYS` in which ``a`` and ``b`` differ (empty: their weights fit each other);
    ``encoder_only``: those that shape the encoder and the latent (empty: they encode alike)."""
    def value(cfg: AutoencoderConfig, key: str) -> Any:
        return decoder_blocks(cfg) if key == "decoder_res_blocks" else getattr(cfg, key)

    keys = [k for k in ARCHITECTURE_KEYS if not (encoder_only and k in DECODER_KEYS)]
    return [k for k in keys if value(a, k) != value(b, k)]


def downsampling(cfg: AutoencoderConfig) -> int:
    """Spatial downsampling factor of the latent."""
    return 2 ** (len(cfg.channels) - 1)


def check_autoencoder_config(cfg: AutoencoderConfig, *, where: str = "autoencoder") -> None:
    if len(cfg.channels) < 2:
        raise ConfigError(f"{where}.channels needs at least 2 levels, got {list(cfg.channels)}")
    bad = [c for c in cfg.channels if c % cfg.norm_num_groups]
    if bad:
        raise ConfigError(f"{where}.norm_num_groups ({cfg.norm_num_groups}) must divide every entry of "
                          f"{where}.channels {list(cfg.channels)}")
    if cfg.num_res_blocks < 1 or decoder_blocks(cfg) < 1:
        raise ConfigError(f"{where}.num_res_blocks and {where}.decoder_res_blocks must be 1 or more, got "
                          f"{cfg.num_res_blocks} and {cfg.decoder_res_blocks}")
    if cfg.frequency_weight < 0:
        raise ConfigError(f"{where}.frequency_weight ({cfg.frequency_weight}) must be 0 (off) or more")
    if not cfg.train_encoder and not cfg.init:
        raise ConfigError(f"{where}.train_encoder false (decoder-only fine-tuning) needs {where}.init: the "
                          "trained autoencoder (or ldm checkpoint) whose encoder is kept")
    if cfg.perceptual_weight > 0 and not (cfg.perceptual_weights and Path(cfg.perceptual_weights).is_file()):
        raise ConfigError(f"{where}.perceptual_weight > 0 needs {where}.perceptual_weights: a local weights file "
                          f"(got {cfg.perceptual_weights!r}); nothing is downloaded")


def build_autoencoder(cfg: AutoencoderConfig) -> nn.Module:
    """The MONAI ``AutoencoderKL`` for RGB H&E tiles in [-1, 1]."""
    from monai.networks.nets import AutoencoderKL

    check_autoencoder_config(cfg)
    n = len(cfg.channels)

    def build(blocks: int) -> nn.Module:
        return AutoencoderKL(
            spatial_dims=2, in_channels=3, out_channels=3, channels=tuple(cfg.channels),
            num_res_blocks=(blocks,) * n, attention_levels=(False,) * n,
            latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
            with_encoder_nonlocal_attn=cfg.attention, with_decoder_nonlocal_attn=cfg.attention,
            use_flash_attention=True,  # SDPA: same function, memory linear in the tokens (models/_runtime.py)
        )

    ae = build(cfg.num_res_blocks)
    if decoder_blocks(cfg) != cfg.num_res_blocks:  # MONAI sets one count for both: the decoder of another
        ae.decoder = build(decoder_blocks(cfg)).decoder
    return ae


def load_deepened(ae: nn.Module, init: nn.Module) -> None:
    """Loads the trained autoencoder ``init`` into ``ae``, whose decoder has as many residual blocks
    per level as ``init``'s or more (:attr:`AutoencoderConfig.decoder_res_blocks`); everything else
    is the same architecture. Each block ``ae`` shares with ``init`` takes its weights, in order; each
    residual block it adds (at the end of a level) becomes an identity, its last convolution zeroed,
    so ``ae`` reconstructs exactly as ``init`` does until it is trained.

    Raises:
        ValueError: ``ae``'s decoder is not ``init``'s with residual blocks added.
    """
    from monai.networks.nets.autoencoderkl import AEKLResBlock

    ours, theirs = ae.decoder.blocks, init.decoder.blocks
    j = 0
    for block in ours:
        if j < len(theirs) and type(theirs[j]) is type(block) and _same_shapes(theirs[j], block):
            block.load_state_dict(theirs[j].state_dict())
            j += 1
        elif isinstance(block, AEKLResBlock) and isinstance(block.nin_shortcut, nn.Identity):
            nn.init.zeros_(block.conv2.conv.weight)
            nn.init.zeros_(block.conv2.conv.bias)
        else:
            raise ValueError(f"decoder block {type(block).__name__} has no counterpart in the trained decoder")
    if j != len(theirs):
        raise ValueError(f"{len(theirs) - j} blocks of the trained decoder have no counterpart")
    for name, module in ae.named_children():
        if name != "decoder":
            module.load_state_dict(getattr(init, name).state_dict())


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def encode_mean(ae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The latent mean μ ``(B, C_lat, H/f, W/f)`` of images ``x`` in float32.

    Under autocast the encoder computes in bf16/fp16, but its last 1×1 projection runs in float32,
    so the latent the diffusion model learns is not rounded to 8 bits of mantissa.
    """
    h = ae.encoder(x)  # (B, C_top, H/f, W/f), in the autocast dtype
    with torch.autocast(x.device.type, enabled=False):
        return ae.quant_conv_mu(h.float())


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, 1)) summed over latent elements, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


#: amplitude floor of :func:`log_amplitude_l1`: about 4× the per-coefficient amplitude of 8-bit
#: quantisation noise in [-1, 1] (σ = (2/255)/√12 ≈ 0.0023 with an orthonormal FFT), so frequencies
#: that hold nothing but rounding noise in both images do not count
SPECTRUM_FLOOR = 0.01


def log_amplitude_l1(x: torch.Tensor, recon: torch.Tensor, *, floor: float = SPECTRUM_FLOOR) -> torch.Tensor:
    """Mean |log A(recon) − log A(x)| over the 2-D amplitude spectra of every channel.

    ``A = sqrt(|FFT|² + floor²)`` of the orthonormal real FFT per channel. Taking logs makes the
    error relative, so each frequency counts alike whatever its energy: the weak high-frequency
    amplitude of nuclear edges and fibres weighs as much as the strong low-frequency content
    that a pixel loss is dominated by. This is the spectral bias that the focal frequency loss
    (Jiang et al. 2021, "Focal Frequency Loss for Image Reconstruction and Synthesis", ICCV) and
    the amplitude term of Fourier-space losses (Fuoli et al. 2021, "Fourier Space Losses for
    Efficient Perceptual Image Super-Resolution", ICCV) counter. Only amplitudes are compared:
    the pixel L1 already holds positions. Computed in float32 with autocast off (an FFT in bf16
    loses the small high-frequency amplitudes this term exists for; a bf16 ``recon``'s own
    rounding, σ ≈ 0.001, lies under ``floor``); ``floor`` keeps the log and its gradient finite.

    Args:
        x: target images ``(B, C, H, W)`` in [-1, 1].
        recon: reconstructions, same shape (any float dtype).
        floor: amplitude floor (in the orthonormal FFT's units).

    Returns:
        a float32 scalar, 0 for identical images.
    """
    with torch.autocast(recon.device.type, enabled=False):
        fx = torch.fft.rfft2(x.float(), norm="ortho")  # (B, C, H, W//2 + 1), complex64
        fr = torch.fft.rfft2(recon.float(), norm="ortho")
        eps = floor * floor
        # ½ log(|F|² + floor²): no square root, so the gradient is finite where |F| = 0
        log_ax = 0.5 * torch.log(fx.real.square() + fx.imag.square() + eps)
        log_ar = 0.5 * torch.log(fr.real.square() + fr.imag.square() + eps)
        return (log_ar - log_ax).abs().mean()


class AutoencoderLoss(nn.Module):
    """L1 + KL (+ adversarial, + frequency, + perceptual) for the autoencoder; owns the discriminator."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.discriminator = None
        self.perceptual = None
        if cfg.adversarial_weight > 0:
            from monai.losses import PatchAdversarialLoss
            from monai.networks.nets import PatchDiscriminator

            self.discriminator = PatchDiscriminator(spatial_dims=2, channels=32, in_channels=3, num_layers_d=3)
            self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        if cfg.perceptual_weight > 0:
            from monai.losses import PerceptualLoss

            self.perceptual = PerceptualLoss(spatial_dims=2, network_type="resnet50", pretrained=True,
                                             pretrained_path=cfg.perceptual_weights)

    def generator_loss(self, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                       step: int) -> tuple[torch.Tensor, dict[str, float]]:
        l1 = (recon - x).abs().mean()
        kl = kl_divergence(mu, sigma)
        loss = l1 + self.cfg.kl_weight * kl
        parts = {"l1": float(l1.detach()), "kl": float(kl.detach())}
        if self.cfg.frequency_weight > 0:
            spec = log_amplitude_l1(x, recon)
            loss = loss + self.cfg.frequency_weight * spec
            parts["frequency"] = float(spec.detach())
        if self.perceptual is not None:
            p = self.perceptual(recon.float(), x.float())
            loss = loss + self.cfg.perceptual_weight * p
            parts["perceptual"] = float(p.detach())
        if self.discriminator is not None and step >= self.cfg.adversarial_start:
            logits = self.discriminator(recon.contiguous())[-1]
            g = self.adversarial(logits, target_is_real=True, for_discriminator=False)
            loss = loss + self.cfg.adversarial_weight * g
            parts["adv_g"] = float(g.detach())
        return loss, parts

    def discriminator_loss(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        fake = self.discriminator(recon.detach().contiguous())[-1]
        real = self.discriminator(x.contiguous())[-1]
        return 0.5 * (self.adversarial(fake, target_is_real=False, for_discriminator=True)
                      + self.adversarial(real, target_is_real=True, for_discriminator=True))
