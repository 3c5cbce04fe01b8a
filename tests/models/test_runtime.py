"""SDPA attention and gradient checkpointing: the same function as before, less memory."""

from __future__ import annotations

import copy

import pytest
import torch

from stainldm.models._runtime import enable_checkpointing, set_sdpa
from stainldm.models.autoencoder import AutoencoderConfig, build_autoencoder, encode_mean
from stainldm.models.denoiser import DenoiserConfig
from stainldm.models.encoder import ConditionConfig
from stainldm.models.ldm import LatentDiffusion, LDMConfig


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights in every convolution and linear layer: MONAI zero-initialises the output and
    attention projections, so a fresh model would hide what attention computes."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in**0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def _ldm(semantic: bool = True) -> LatentDiffusion:
    torch.manual_seed(0)
    cfg = LDMConfig(denoiser=DenoiserConfig(channels=(32, 64), attention_levels=(True, True), num_head_channels=16,
                                            norm_num_groups=16),
                    condition=ConditionConfig(spatial=True, spatial_channels=16, semantic=semantic,
                                              backbone="resnet18", token_dim=32))
    return _randomise(LatentDiffusion(cfg, in_channels=2, latent_channels=4, downsampling=2))


def _ae() -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomise(build_autoencoder(AutoencoderConfig(channels=(16, 32), norm_num_groups=8, attention=True)))


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``fn()`` (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_every_attention_block_is_built_with_sdpa_and_matches_the_math_path():
    """SDPA (MONAI use_flash_attention) is the default; it computes what MONAI's einsum path does,
    self- and cross-attention, the denoiser and the autoencoder's non-local attention."""
    ldm, ae = _ldm().eval(), _ae().eval()
    blocks = [m for m in (*ldm.modules(), *ae.modules()) if hasattr(m, "use_flash_attention")]
    assert len(blocks) >= 6 and all(m.use_flash_attention for m in blocks)
    g = torch.Generator().manual_seed(1)
    z, x, t = torch.randn(2, 4, 24, 24, generator=g), torch.randn(2, 2, 48, 48, generator=g), torch.tensor([10, 900])
    img = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        sdpa = ldm(z, t, ldm.encode_condition(x)), ae.reconstruct(img)
        math_ldm, math_ae = copy.deepcopy(ldm), copy.deepcopy(ae)
        assert set_sdpa(math_ldm, False) == sum(1 for m in ldm.modules() if hasattr(m, "use_flash_attention"))
        set_sdpa(math_ae, False)
        ref = math_ldm(z, t, math_ldm.encode_condition(x)), math_ae.reconstruct(img)
    for a, b in zip(sdpa, ref, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        assert float(a.abs().max()) > 0.01


def test_sdpa_keeps_attention_memory_linear_in_the_tokens():
    """The math path holds a (batch × heads × tokens²) matrix; SDPA does not: 4096 tokens, 2 heads."""
    ldm = _ldm(semantic=False).eval()
    z, x, t = torch.randn(1, 4, 64, 64), torch.randn(1, 2, 128, 128), torch.tensor([500])
    sizes: dict[bool, int] = {}
    for on in (True, False):
        set_sdpa(ldm, on)
        with torch.no_grad(), torch.autograd.profiler.profile(profile_memory=True) as prof:
            ldm(z, t, ldm.encode_condition(x))
        sizes[on] = max(e.cpu_memory_usage for e in prof.key_averages())  # the largest allocation of one op
    tokens = 64 * 64  # level 0 of a 64² latent
    assert sizes[False] >= 2 * tokens**2 * 4  # at least one fp32 attention matrix of both heads
    assert sizes[True] < tokens**2 * 4  # less than one head's matrix


@pytest.mark.parametrize("kind", ["ldm", "autoencoder"])
def test_gradient_checkpointing_gives_the_same_gradients_from_less_saved_memory(kind):
    model = _ldm() if kind == "ldm" else _ae()
    plain, ckpt = model.train(), copy.deepcopy(model).train()
    assert enable_checkpointing(ckpt) >= 2
    g = torch.Generator().manual_seed(3)
    if kind == "ldm":
        z0, x = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 2, 64, 64, generator=g)

        def step(m):
            return lambda: m.training_loss(z0, x, generator=torch.Generator().manual_seed(5))
    else:
        y = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1

        def step(m):
            return lambda: (m.decode(encode_mean(m, y)) - y).abs().mean()

    losses, saved, grads = [], [], []
    for m in (plain, ckpt):
        loss, nbytes = _saved_bytes(step(m))
        loss.backward()
        losses.append(loss.detach())
        saved.append(nbytes)
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4)
    assert saved[1] < 0.5 * saved[0], saved
    # the state dict is untouched, and evaluation with no gradients runs as before
    assert ckpt.state_dict().keys() == plain.state_dict().keys()
    assert type(copy.deepcopy(ckpt)) is type(ckpt)


def test_encode_mean_is_float32_under_autocast_and_close_to_the_fp32_mean():
    ae = _ae().eval()
    y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = ae.encode(y)[0]
        torch.testing.assert_close(encode_mean(ae, y), ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert ae.encode(y)[0].dtype == torch.bfloat16  # MONAI's own: rounded to bf16
            mixed = encode_mean(ae, y)
    assert mixed.dtype == torch.float32
    assert float((mixed - ref).abs().max()) < 0.05 * float(ref.abs().max())
    # not rounded to bf16's 8-bit mantissa: most values are not representable in bf16
    assert float((mixed != mixed.bfloat16().float()).float().mean()) > 0.5
