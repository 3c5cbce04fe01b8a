"""The conditional LDM: its loss, condition dropout, classifier-free guidance, seeded sampling."""

from __future__ import annotations

import pytest
import torch

from stainldm.diffusion.schedule import ScheduleConfig
from stainldm.models.denoiser import DenoiserConfig, build_denoiser
from stainldm.models.encoder import ConditionConfig
from stainldm.models.ldm import Condition, LatentDiffusion, LDMConfig

DENOISER = DenoiserConfig(channels=(16, 32), attention_levels=(False, True), num_head_channels=16, norm_num_groups=8)


def _ldm(*, semantic: bool = False, spatial: bool = True, dropout: float = 0.1, prediction: str = "v",
         seed: int = 0) -> LatentDiffusion:
    cond = ConditionConfig(spatial=spatial, spatial_channels=8, semantic=semantic, token_dim=16, dropout=dropout)
    cfg = LDMConfig(denoiser=DENOISER, condition=cond, schedule=ScheduleConfig(prediction=prediction))
    torch.manual_seed(seed)
    ldm = LatentDiffusion(cfg, in_channels=2, latent_channels=4, downsampling=2)
    with torch.no_grad():  # MONAI zero-initialises the output convolutions: an untrained UNet outputs 0
        for p in ldm.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ldm


def _batch(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 16, 16, generator=g), torch.rand(b, 2, 32, 32, generator=g) * 2 - 1  # z0, x_cond


@pytest.mark.parametrize(("semantic", "prediction"), [(False, "v"), (True, "v"), (False, "epsilon")])
def test_training_loss_is_finite_and_reaches_every_trainable_part(semantic, prediction):
    ldm = _ldm(semantic=semantic, prediction=prediction, dropout=0.5)
    z0, x = _batch(4)
    loss = ldm.training_loss(z0, x, generator=torch.Generator().manual_seed(3))
    assert loss.ndim == 0 and torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert ldm.stem.net[0].weight.grad is not None and ldm.stem.net[0].weight.grad.abs().sum() > 0
    assert next(ldm.unet.parameters()).grad is not None
    if semantic:
        assert ldm.semantic.proj.weight.grad.abs().sum() > 0


def test_training_loss_follows_its_generator():
    ldm = _ldm()
    z0, x = _batch()
    losses = [float(ldm.training_loss(z0, x, generator=torch.Generator().manual_seed(s)).detach()) for s in (5, 5, 6)]
    assert losses[0] == losses[1] != losses[2]


def test_dropped_rows_get_zero_spatial_features_and_the_null_tokens():
    ldm = _ldm(semantic=True)
    with torch.no_grad():
        ldm.null_tokens.normal_()  # learned in training; make it distinguishable from zeros
        _, x = _batch(3)
        full = ldm.encode_condition(x)
        drop = torch.tensor([False, True, False])
        cond = ldm.encode_condition(x, drop)
    assert full.spatial.shape == (3, 8, 16, 16) and full.tokens.shape == (3, 1, 16)
    assert torch.equal(cond.spatial[1], torch.zeros_like(cond.spatial[1]))
    assert torch.equal(cond.spatial[[0, 2]], full.spatial[[0, 2]])
    assert torch.equal(cond.tokens[1], ldm.null_tokens[0].expand(full.tokens.shape[1], -1))
    assert torch.equal(cond.tokens[[0, 2]], full.tokens[[0, 2]])
    nothing_dropped = ldm.encode_condition(x, torch.zeros(3, dtype=torch.bool))
    assert torch.equal(nothing_dropped.spatial, full.spatial) and torch.equal(nothing_dropped.tokens, full.tokens)


def test_the_null_tokens_take_part_in_every_training_step_even_when_no_row_is_dropped():
    """Under DDP a parameter without a gradient in a step stops the next step ("Expected to have
    finished reduction in the prior iteration"): a batch that drops no row must still reach them."""
    ldm = _ldm(semantic=True)
    _, x = _batch(3)
    cond = ldm.encode_condition(x, torch.zeros(3, dtype=torch.bool))
    (cond.tokens.sum() + cond.spatial.sum()).backward()
    assert ldm.null_tokens.grad is not None and torch.equal(ldm.null_tokens.grad, torch.zeros_like(ldm.null_tokens))


def test_guidance_one_is_the_plain_forward_and_other_scales_extrapolate():
    ldm = _ldm(semantic=True).eval()
    with torch.no_grad():
        ldm.null_tokens.normal_()
        z, x = _batch(2)
        t = torch.tensor([10, 700])
        cond = ldm.encode_condition(x)
        plain = ldm(z, t, cond)
        assert torch.equal(ldm.guided(cond, 1.0)(z, t), plain)
        out_u = ldm(z, t, ldm.null_condition(cond))
        assert not torch.allclose(out_u, plain)
        for w in (0.0, 2.5):
            expected = out_u + w * (plain - out_u)
            assert torch.allclose(ldm.guided(cond, w)(z, t), expected, atol=1e-5)


def test_null_condition_is_shaped_like_the_condition():
    ldm = _ldm(semantic=True)
    cond = Condition(torch.ones(2, 8, 4, 4), torch.ones(2, 5, 16))
    null = ldm.null_condition(cond)
    assert torch.equal(null.spatial, torch.zeros(2, 8, 4, 4)) and null.tokens.shape == (2, 5, 16)


@pytest.mark.parametrize(("sampler", "eta"), [("dpmpp_2m", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_sample_latent_has_the_latent_shape_and_follows_the_seed(sampler, eta):
    ldm = _ldm().eval()
    _, x = _batch(2)

    def draw(seed: int) -> torch.Tensor:
        return ldm.sample_latent(x, sampler=sampler, steps=3, guidance=1.5, eta=eta,
                                 generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (2, 4, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sample_latent_from_given_noise_ignores_the_generator_when_deterministic():
    ldm = _ldm().eval()
    _, x = _batch(1)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    a = ldm.sample_latent(x, sampler="ddim", steps=2, noise=noise, generator=torch.Generator().manual_seed(1))
    b = ldm.sample_latent(x, sampler="ddim", steps=2, noise=noise, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_spatial_off_builds_a_denoiser_over_the_latent_alone():
    ldm = _ldm(spatial=False, semantic=True)
    assert ldm.stem is None
    z0, x = _batch(2)
    assert torch.isfinite(ldm.training_loss(z0, x))


@pytest.mark.parametrize(("cfg", "match"), [
    (DenoiserConfig(channels=(16, 32), attention_levels=(False,)), r"attention_levels has 1 entries for 2 levels"),
    (DenoiserConfig(channels=(16, 24), attention_levels=(False, False), norm_num_groups=16),
     r"ldm\.denoiser\.norm_num_groups \(16\) must divide"),
    (DenoiserConfig(channels=(16, 48), attention_levels=(False, True), norm_num_groups=16, num_head_channels=32),
     r"ldm\.denoiser\.num_head_channels \(32\) must divide"),
])
def test_bad_denoiser_settings_are_config_errors_naming_the_key(cfg, match):
    from stainldm.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        build_denoiser(cfg, in_channels=4, out_channels=4, cross_attention_dim=None)
