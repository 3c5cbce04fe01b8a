"""The KL autoencoder: shapes, downsampling factor, config checks, the KL term, the loss and its
frequency-domain term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stainldm.errors import ConfigError
from stainldm.models.autoencoder import (
    AutoencoderConfig,
    AutoencoderLoss,
    architecture_diff,
    build_autoencoder,
    check_autoencoder_config,
    downsampling,
    kl_divergence,
    load_deepened,
    log_amplitude_l1,
)


def test_default_autoencoder_maps_a_256_px_tile_to_a_64x64x4_latent_and_back():
    cfg = AutoencoderConfig()
    assert downsampling(cfg) == 4
    torch.manual_seed(0)
    ae = build_autoencoder(cfg).eval()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        recon, mu, sigma = ae(x)
    assert mu.shape == sigma.shape == (1, 4, 64, 64)
    assert recon.shape == (1, 3, 256, 256)
    assert bool((sigma > 0).all()) and torch.isfinite(recon).all()


@pytest.mark.parametrize(("channels", "factor"), [((8, 8), 2), ((8, 8, 16), 4), ((8, 8, 16, 16), 8)])
def test_downsampling_is_two_to_the_levels_minus_one_and_matches_the_latent(channels, factor):
    cfg = AutoencoderConfig(channels=channels, norm_num_groups=8, latent_channels=3)
    assert downsampling(cfg) == factor
    with torch.no_grad():
        mu, _ = build_autoencoder(cfg).eval().encode(torch.zeros(1, 3, 32, 32))
    assert mu.shape == (1, 3, 32 // factor, 32 // factor)


def test_norm_groups_that_do_not_divide_the_channels_are_a_config_error():
    with pytest.raises(ConfigError, match=r"autoencoder\.norm_num_groups \(16\) must divide.*\[16, 24\]"):
        build_autoencoder(AutoencoderConfig(channels=(16, 24), norm_num_groups=16))


def test_a_single_level_is_a_config_error():
    with pytest.raises(ConfigError, match=r"autoencoder\.channels needs at least 2 levels"):
        check_autoencoder_config(AutoencoderConfig(channels=(32,)))


@pytest.mark.parametrize("weights", [None, "no/such/resnet50.pth"])
def test_a_perceptual_weight_without_a_local_weights_file_is_a_config_error(weights):
    cfg = AutoencoderConfig(perceptual_weight=0.1, perceptual_weights=weights)
    with pytest.raises(ConfigError, match=r"autoencoder\.perceptual_weights.*local weights file.*nothing is downloaded"):
        build_autoencoder(cfg)


def test_the_key_prefix_of_config_errors_follows_where():
    with pytest.raises(ConfigError, match=r"^train\.autoencoder\.norm_num_groups"):
        check_autoencoder_config(AutoencoderConfig(channels=(16, 24)), where="train.autoencoder")


def test_kl_divergence_is_zero_for_the_prior_and_positive_elsewhere():
    mu, sigma = torch.zeros(3, 4, 8, 8), torch.ones(3, 4, 8, 8)
    assert float(kl_divergence(mu, sigma)) == pytest.approx(0.0, abs=1e-6)
    # KL(N(μ, σ²) || N(0, 1)) = ½(μ² + σ² − log σ² − 1) per element, summed, batch mean
    kl = kl_divergence(torch.full((2, 1, 2, 2), 1.0), torch.full((2, 1, 2, 2), 2.0))
    expected = 4 * 0.5 * (1 + 4 - torch.log(torch.tensor(4.0)) - 1)
    assert float(kl) == pytest.approx(float(expected), rel=1e-5)


def test_generator_loss_is_l1_plus_weighted_kl_and_backpropagates():
    cfg = AutoencoderConfig(channels=(8, 8), norm_num_groups=8, kl_weight=0.5)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, mu, sigma = ae(x)
    loss, parts = AutoencoderLoss(cfg).generator_loss(x, recon, mu, sigma, step=0)
    assert float(loss.detach()) == pytest.approx(parts["l1"] + 0.5 * parts["kl"], rel=1e-5)
    loss.backward()
    grads = [p.grad for p in ae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_adversarial_term_starts_after_warm_up():
    cfg = AutoencoderConfig(channels=(8, 8), norm_num_groups=8, adversarial_weight=0.1, adversarial_start=2)
    torch.manual_seed(0)
    ae, loss_fn = build_autoencoder(cfg), AutoencoderLoss(cfg)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    recon, mu, sigma = ae(x)
    _, before = loss_fn.generator_loss(x, recon, mu, sigma, step=1)
    _, after = loss_fn.generator_loss(x, recon, mu, sigma, step=2)
    assert "adv_g" not in before and "adv_g" in after
    d = loss_fn.discriminator_loss(x, recon)
    assert torch.isfinite(d) and d.requires_grad


# ---------------------------------------------------------------------------------------------
# The frequency-domain term
# ---------------------------------------------------------------------------------------------
def _he_batch(he_image, n: int = 4, px: int = 64) -> torch.Tensor:
    """``n`` real H&E crops of the bundled sample as ``(n, 3, px, px)`` in [-1, 1]."""
    crops = [he_image[200 + 300 * i : 200 + 300 * i + px, 400 : 400 + px] for i in range(n)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _box_blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.full((3, 1, 3, 3), 1 / 9)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=3)


def test_log_amplitude_l1_is_zero_for_identical_images(he_image):
    x = _he_batch(he_image)
    assert float(log_amplitude_l1(x, x.clone())) == 0.0


def test_log_amplitude_l1_sees_blur_that_the_pixel_l1_calls_small(he_image):
    """A 3×3 blur and a brightness offset with the same pixel L1: the spectrum term tells them apart."""
    x = _he_batch(he_image)
    blurred = _box_blur(x)
    l1 = float((blurred - x).abs().mean())
    shifted = x + l1  # the same pixel L1, every frequency but 0 intact
    assert float((shifted - x).abs().mean()) == pytest.approx(l1, rel=1e-5)
    blur_term, shift_term = float(log_amplitude_l1(x, blurred)), float(log_amplitude_l1(x, shifted))
    assert blur_term > 5 * l1  # relative to its pixel error, blur is what the term punishes
    assert blur_term > 100 * shift_term
    # more blur, more loss
    assert float(log_amplitude_l1(x, _box_blur(blurred))) > blur_term


def test_log_amplitude_l1_is_computed_in_float32_under_bf16_autocast(he_image):
    x = _he_batch(he_image, n=2)
    recon = _box_blur(x).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        term = log_amplitude_l1(x, recon)
    assert term.dtype == torch.float32
    expected = log_amplitude_l1(x, recon.detach().float())
    assert float(term.detach()) == pytest.approx(float(expected), rel=1e-6)
    term.backward()
    assert torch.isfinite(recon.grad).all()
    # a zero spectrum (flat grey) keeps a finite gradient thanks to the floor
    flat = torch.zeros(1, 3, 16, 16, requires_grad=True)
    log_amplitude_l1(torch.zeros(1, 3, 16, 16), flat).backward()
    assert torch.isfinite(flat.grad).all()


def test_generator_loss_adds_the_weighted_frequency_term(he_image):
    cfg = AutoencoderConfig(channels=(8, 8), norm_num_groups=8, kl_weight=0.5, frequency_weight=0.2)
    torch.manual_seed(0)
    ae = build_autoencoder(cfg)
    x = _he_batch(he_image, n=2, px=32)
    recon, mu, sigma = ae(x)
    loss, parts = AutoencoderLoss(cfg).generator_loss(x, recon, mu, sigma, step=0)
    assert parts["frequency"] == pytest.approx(float(log_amplitude_l1(x, recon).detach()), rel=1e-6)
    assert float(loss.detach()) == pytest.approx(parts["l1"] + 0.5 * parts["kl"] + 0.2 * parts["frequency"], rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ae.parameters())
    # off by default: no part, no cost
    _, plain = AutoencoderLoss(AutoencoderConfig(channels=(8, 8), norm_num_groups=8)).generator_loss(
        x, recon.detach(), mu.detach(), sigma.detach(), step=0)
    assert "frequency" not in plain


def test_a_negative_frequency_weight_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^autoencoder\.frequency_weight \(-0\.1\) must be 0 \(off\) or more"):
        build_autoencoder(AutoencoderConfig(frequency_weight=-0.1))


def _randomised(cfg: AutoencoderConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    ae = build_autoencoder(cfg).eval()
    with torch.no_grad():  # no zero-initialised layer left that would hide a wrong copy
        for p in ae.parameters():
            p.normal_(0, 0.05)
    return ae


@pytest.mark.parametrize("attention", [False, True])
def test_a_deepened_decoder_starts_as_the_trained_one_with_the_same_encoder(attention):
    small = AutoencoderConfig(channels=(8, 16), norm_num_groups=8, attention=attention)
    deep = AutoencoderConfig(channels=(8, 16), norm_num_groups=8, attention=attention, decoder_res_blocks=3)
    trained, ae = _randomised(small, 0), _randomised(deep, 1)
    assert sum(p.numel() for p in ae.decoder.parameters()) > sum(p.numel() for p in trained.decoder.parameters())
    assert [n for n, _ in ae.encoder.named_parameters()] == [n for n, _ in trained.encoder.named_parameters()]
    assert architecture_diff(small, deep) == ["decoder_res_blocks"]
    assert architecture_diff(small, deep, encoder_only=True) == []
    load_deepened(ae, trained)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ae.encode(x)[0], trained.encode(x)[0])
        assert torch.allclose(ae.reconstruct(x), trained.reconstruct(x), atol=1e-6)
        # the added blocks (the only zeroed ones) are real layers: training them changes the output
        added = [b for b in ae.decoder.blocks if hasattr(b, "conv2") and not b.conv2.conv.weight.any()]
        assert len(added) == 2 * len(small.channels)  # 2 more per level
        added[-1].conv2.conv.weight.normal_(0, 0.05)
        assert not torch.allclose(ae.reconstruct(x), trained.reconstruct(x), atol=1e-3)


def test_a_decoder_of_another_shape_cannot_be_deepened():
    trained = _randomised(AutoencoderConfig(channels=(8, 16), norm_num_groups=8), 0)
    other = _randomised(AutoencoderConfig(channels=(8, 24), norm_num_groups=8, decoder_res_blocks=2), 1)
    with pytest.raises(ValueError, match=r"has no counterpart in the trained decoder"):
        load_deepened(other, trained)


@pytest.mark.parametrize("key", ["num_res_blocks", "decoder_res_blocks"])
def test_fewer_than_one_residual_block_is_a_config_error(key):
    with pytest.raises(ConfigError, match=r"^autoencoder\.num_res_blocks and autoencoder\.decoder_res_blocks must be 1"):
        build_autoencoder(AutoencoderConfig(**{key: 0}))
