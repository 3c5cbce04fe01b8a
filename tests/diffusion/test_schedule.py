"""The noise schedule: ᾱ, zero terminal SNR, the forward process and its inverses, timesteps, config."""

from __future__ import annotations

import math

import pytest
import torch

from stainldm.config import from_dict
from stainldm.diffusion.schedule import NoiseSchedule, ScheduleConfig
from stainldm.errors import ConfigError, InputError

KINDS = ("scaled_linear", "linear", "cosine")


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_alphas_cumprod_is_float64_cpu_and_strictly_decreasing(kind, zero_terminal_snr):
    abar = NoiseSchedule(ScheduleConfig(kind=kind, zero_terminal_snr=zero_terminal_snr)).alphas_cumprod
    assert abar.dtype == torch.float64 and abar.device.type == "cpu" and abar.shape == (1000,)
    assert (abar.diff() < 0).all()
    assert abar[0] < 1.0
    assert abar[-1] > 0.0 if not zero_terminal_snr else abar[-1] == 0.0


def test_scaled_linear_and_linear_match_monai_and_the_paper_values():
    from monai.networks.schedulers import DDPMScheduler

    for kind, monai_name in [("scaled_linear", "scaled_linear_beta"), ("linear", "linear_beta")]:
        ours = NoiseSchedule(ScheduleConfig(kind=kind)).alphas_cumprod
        theirs = DDPMScheduler(1000, schedule=monai_name, beta_start=0.00085, beta_end=0.012).alphas_cumprod
        torch.testing.assert_close(ours, theirs.double(), atol=1e-6, rtol=0)  # theirs is float32
    # Stable Diffusion's schedule ends at sqrt(ᾱ) = 0.068265, SNR 0.004682 (Lin et al. 2024, sec. 3.1).
    abar_last = NoiseSchedule().alphas_cumprod[-1].item()
    assert math.sqrt(abar_last) == pytest.approx(0.068265, abs=1e-6)
    assert abar_last / (1 - abar_last) == pytest.approx(0.004682, abs=1e-6)


def test_cosine_follows_nichol_and_dhariwal():
    abar = NoiseSchedule(ScheduleConfig(kind="cosine")).alphas_cumprod
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 500, 750):  # ᾱ_t = f((t+1)/T) / f(0) where no β is clipped
        assert abar[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_terminal_snr_rescales_as_lin_et_al_algorithm_1(kind):
    plain = NoiseSchedule(ScheduleConfig(kind=kind)).alphas_cumprod
    zt = NoiseSchedule(ScheduleConfig(kind=kind, zero_terminal_snr=True)).alphas_cumprod
    assert zt[-1].item() == 0.0  # exactly: SNR 0 at t = T−1
    assert zt[0].sqrt().item() == pytest.approx(plain[0].sqrt().item(), rel=1e-12)  # sqrt ᾱ_0 kept
    # sqrt ᾱ is an affine map of the original: shifted by its last value, scaled to keep the first.
    a, a_zt = plain.sqrt(), zt.sqrt()
    expected = (a - a[-1]) * a[0] / (a[0] - a[-1])
    torch.testing.assert_close(a_zt, expected, atol=1e-15, rtol=1e-12)


def test_q_sample_v_target_and_predict_x0_eps_round_trip():
    schedule = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, 5, 5, generator=g)
    noise = torch.randn(6, 4, 5, 5, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = schedule.q_sample(x0, t, noise)
    v = schedule.v_target(x0, t, noise)
    x0_hat, eps_hat = schedule.predict_x0_eps(x_t, t, v)
    torch.testing.assert_close(x0_hat, x0, atol=2e-6, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=2e-6, rtol=0)
    # Salimans & Ho 2022: with φ = atan(σ/α), x_t = cos φ x_0 + sin φ ε and v = cos φ ε − sin φ x_0.
    phi = torch.atan2(*reversed(schedule.alpha_sigma(t, x0)))
    torch.testing.assert_close(v, phi.cos() * noise - phi.sin() * x0)
    torch.testing.assert_close(x_t, phi.cos() * x0 + phi.sin() * noise)


def test_forward_process_agrees_with_monai():
    from monai.networks.schedulers import DDPMScheduler

    schedule = NoiseSchedule()
    monai = DDPMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([3, 400, 800, 999])
    torch.testing.assert_close(schedule.q_sample(x0, t, noise), monai.add_noise(x0, noise, t), atol=1e-5, rtol=0)
    torch.testing.assert_close(schedule.v_target(x0, t, noise), monai.get_velocity(x0, noise, t), atol=1e-5, rtol=0)


def test_zero_terminal_snr_v_still_recovers_x0_at_snr_zero():
    schedule = NoiseSchedule(ScheduleConfig(zero_terminal_snr=True))
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    t = torch.tensor([999, 999])
    x_t = schedule.q_sample(x0, t, noise)
    torch.testing.assert_close(x_t, noise)  # pure noise
    x0_hat, eps_hat = schedule.predict_x0_eps(x_t, t, schedule.v_target(x0, t, noise))
    assert torch.isfinite(x0_hat).all()
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)


def test_epsilon_prediction_converts_to_x0():
    schedule = NoiseSchedule(ScheduleConfig(prediction="epsilon"))
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0, 500, 999])
    x0_hat, eps_hat = schedule.predict_x0_eps(schedule.q_sample(x0, t, noise), t, noise)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=0)  # ÷ α_999 ≈ 0.068 amplifies rounding
    assert eps_hat is noise


def test_alpha_sigma_broadcasts_and_follows_the_callers_dtype():
    schedule = NoiseSchedule()
    like = torch.zeros(3, 4, 5, 6, dtype=torch.float16)
    alpha, sigma = schedule.alpha_sigma(torch.tensor([0, 10, 999]), like)
    assert alpha.shape == sigma.shape == (3, 1, 1, 1)
    assert alpha.dtype == sigma.dtype == torch.float16 and alpha.device == like.device
    a, s = schedule.alpha_sigma(10)  # an int gives exact Python floats
    assert isinstance(a, float) and a == math.sqrt(schedule.alphas_cumprod[10].item())
    assert a**2 + s**2 == pytest.approx(1.0, abs=1e-15)
    assert alpha[1, 0, 0, 0].item() == pytest.approx(a, rel=1e-3)
    with pytest.raises(IndexError, match="outside"):
        schedule.alpha_sigma(1000)


def test_lambda_is_half_log_snr_decreasing_and_minus_inf_at_snr_zero():
    schedule = NoiseSchedule()
    lam = schedule.lambda_(torch.arange(1000))
    assert lam.dtype == torch.float32 and (lam.diff() < 0).all()
    abar = schedule.alphas_cumprod[123].item()
    assert schedule.lambda_(123) == pytest.approx(0.5 * math.log(abar / (1 - abar)), rel=1e-12)
    assert lam[123].item() == pytest.approx(schedule.lambda_(123), rel=1e-6)
    zt = NoiseSchedule(ScheduleConfig(zero_terminal_snr=True))
    assert zt.lambda_(999) == -math.inf
    assert zt.lambda_(torch.tensor([999])).item() == -math.inf and math.isfinite(zt.lambda_(998))


def test_sample_timesteps_uniform_and_reproducible():
    schedule = NoiseSchedule()
    t = schedule.sample_timesteps(100_000, generator=torch.Generator().manual_seed(0), device="cpu")
    assert t.dtype == torch.long and t.shape == (100_000,)
    assert t.min() >= 0 and t.max() <= 999
    counts = torch.bincount(t // 100, minlength=10).double()
    assert ((counts / 10_000 - 1).abs() < 0.04).all()  # 10 bins of 10k: 1 sd ≈ 1 %
    again = schedule.sample_timesteps(100_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_trailing_inference_timesteps():
    schedule = NoiseSchedule()
    assert schedule.inference_timesteps(10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert schedule.inference_timesteps(1).tolist() == [999]
    assert schedule.inference_timesteps(1000).tolist() == list(range(999, -1, -1))
    for n in range(1, 1001):
        ts = schedule.inference_timesteps(n)
        assert ts.dtype == torch.long and len(ts) == n and ts[0] == 999 and ts[-1] >= 0
        assert (ts.diff() < 0).all(), n


@pytest.mark.parametrize("n", [0, -3, 1001, 2.5, True])
def test_inference_timesteps_rejects_bad_step_counts(n):
    with pytest.raises(InputError, match="`steps`"):
        NoiseSchedule().inference_timesteps(n)


@pytest.mark.parametrize(("changes", "key"), [
    ({"kind": "quadratic"}, "schedule.kind"),
    ({"train_steps": 1}, "schedule.train_steps"),
    ({"train_steps": 1000.0}, "schedule.train_steps"),
    ({"beta_start": 0.0}, "schedule.beta_start"),
    ({"beta_end": 1.0}, "schedule.beta_end"),
    ({"beta_start": 0.02, "beta_end": 0.01}, "schedule.beta_end"),
    ({"prediction": "x0"}, "schedule.prediction"),
    ({"zero_terminal_snr": True, "prediction": "epsilon"}, "schedule.zero_terminal_snr"),
])
def test_bad_config_values_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        NoiseSchedule(ScheduleConfig(**changes))


def test_config_errors_use_the_callers_prefix_and_yaml_loading_checks_types():
    with pytest.raises(ConfigError, match=r"ldm\.schedule\.beta_end"):
        NoiseSchedule(ScheduleConfig(beta_end=2.0), where="ldm.schedule")
    with pytest.raises(ConfigError, match="kind"):
        from_dict(ScheduleConfig, {"kind": "quadratic"}, where="schedule")
    cfg = from_dict(ScheduleConfig, {"kind": "cosine", "zero_terminal_snr": True}, where="schedule")
    assert NoiseSchedule(cfg).alphas_cumprod[-1] == 0.0
