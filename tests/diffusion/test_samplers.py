"""Samplers against denoisers whose exact answer is known in closed form.

For data x_0 ~ N(μ, s²) per dimension and x_t = α x_0 + σ ε, the posterior mean is
E[x_0 | x_t] = μ + α s² / (α² s² + σ²) · (x_t − α μ), so the exact v-prediction is
v = (α x_t − E[x_0 | x_t]) / σ, and the probability-flow ODE from t = T−1 is the affine map
x_0 = μ + s · z with z = (x_{T−1} − α μ) / sqrt(α² s² + σ²). Starting from the exact marginal at
T−1 with moment-matched z, any error in the samples is the sampler's own.
"""

from __future__ import annotations

import pytest
import torch

from stainldm.diffusion.samplers import SAMPLERS, ddim_sample, dpmpp_2m_sample, sample
from stainldm.diffusion.schedule import NoiseSchedule, ScheduleConfig
from stainldm.errors import InputError

N, D = 4096, 8
MU = torch.linspace(-1.0, 1.0, D)
STD = torch.linspace(0.5, 1.5, D)


def gaussian_model(schedule: NoiseSchedule, mu: torch.Tensor, std: torch.Tensor, *, prediction: str = "v"):
    """The exact v (or ε) prediction for x_0 ~ N(mu, std²) per dimension."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule.alpha_sigma(t, x_t)  # (B, 1)
        x0 = mu + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (x_t - alpha * mu)  # (B, D)
        return (alpha * x_t - x0) / sigma if prediction == "v" else (x_t - alpha * x0) / sigma

    return model_fn


def mixture_model(schedule: NoiseSchedule, means: torch.Tensor, weights: torch.Tensor, std: float):
    """The exact v-prediction for x_0 ~ Σ_k w_k N(means_k, std² I): responsibilities of the
    components at x_t times each component's Gaussian posterior mean."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule.alpha_sigma(t, x_t)  # (B, 1)
        var = alpha**2 * std**2 + sigma**2  # (B, 1): variance of x_t given the component
        diff = x_t[:, None, :] - alpha[:, None] * means[None]  # (B, K, D)
        resp = (weights.log() - (diff**2).sum(-1) / (2 * var)).softmax(-1)  # (B, K)
        post = means[None] + (alpha * std**2 / var)[:, None] * diff  # (B, K, D)
        x0 = (resp[..., None] * post).sum(1)  # (B, D)
        return (alpha * x_t - x0) / sigma

    return model_fn


def gaussian_start(schedule: NoiseSchedule, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x_{T−1} from the exact marginal with moment-matched z, and the exact ODE solution μ + s z."""
    z = torch.randn(N, D, generator=torch.Generator().manual_seed(seed))
    z = (z - z.mean(0)) / z.std(0, unbiased=False)  # per dimension: mean 0, std 1 exactly
    alpha, sigma = schedule.alpha_sigma(schedule.train_steps - 1)
    return alpha * MU + (alpha**2 * STD**2 + sigma**2) ** 0.5 * z, MU + STD * z


def stats(x: torch.Tensor, exact: torch.Tensor) -> tuple[float, float, float]:
    """max |mean − μ|, max |std/s − 1| over dimensions, RMS distance to the exact solution."""
    mean_err = (x.mean(0) - MU).abs().max().item()
    std_err = (x.std(0, unbiased=False) / STD - 1).abs().max().item()
    return mean_err, std_err, (x - exact).pow(2).mean().sqrt().item()


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


@pytest.fixture(scope="module", params=[False, True], ids=["sd-schedule", "zero-terminal-snr"])
def gaussian(request):
    schedule = NoiseSchedule(ScheduleConfig(zero_terminal_snr=request.param))
    x_T, exact = gaussian_start(schedule)
    model = gaussian_model(schedule, MU, STD)
    runs = {(name, steps): sample(name, model, schedule, x_T, steps=steps)
            for name, steps in [("ddim", 10), ("ddim", 50), ("ddim", 200), ("dpmpp_2m", 10), ("dpmpp_2m", 20)]}
    return schedule, x_T, exact, runs


def test_zero_terminal_snr_starts_from_plain_gaussian_noise(gaussian):
    schedule, x_T, _, _ = gaussian
    if schedule.config.zero_terminal_snr:  # the marginal at T−1 is N(0, I): the start is the noise
        assert torch.allclose(x_T.mean(0), torch.zeros(D), atol=1e-6)
        assert torch.allclose(x_T.std(0, unbiased=False), torch.ones(D), atol=1e-6)


def test_ddim_50_steps_reproduces_the_gaussian(gaussian):
    _, _, exact, runs = gaussian
    mean_err, std_err, dist = stats(runs["ddim", 50], exact)
    assert torch.isfinite(runs["ddim", 50]).all()
    assert mean_err < 1e-4  # measured ≤ 3e-7: a wrong α_s or σ_s in the update biases the mean
    assert std_err < 0.075  # measured 0.062 / 0.065: the last step's x̂_0 at t = 19 shrinks s
    assert dist < 0.04  # measured 0.032 / 0.035


def test_dpmpp_2m_10_steps_reproduces_the_gaussian(gaussian):
    _, _, exact, runs = gaussian
    mean_err, std_err, dist = stats(runs["dpmpp_2m", 10], exact)
    assert torch.isfinite(runs["dpmpp_2m", 10]).all()
    assert mean_err < 1e-4  # measured ≤ 3e-7
    assert std_err < 0.21  # measured 0.180 / 0.193, on the narrowest dimension (s = 0.5)
    assert dist < 0.08  # measured 0.060 / 0.069


def test_ddim_converges_to_the_exact_flow_at_first_order(gaussian):
    _, _, exact, runs = gaussian
    d50, d200 = rms(runs["ddim", 50], exact), rms(runs["ddim", 200], exact)
    assert d200 < 0.012  # measured 0.0088 / 0.0096
    assert 3.0 < d50 / d200 < 5.0  # 4× the steps, 4× smaller error (measured 3.6)


def test_dpmpp_2m_is_the_fast_sampler(gaussian):
    _, _, exact, runs = gaussian
    ref = runs["ddim", 200]
    # At 10 NFE DPM++(2M) lands much closer to the converged answer than DDIM does (measured
    # 0.051 vs 0.127, and 0.060 vs 0.136 to the exact flow) ...
    assert rms(runs["dpmpp_2m", 10], ref) < 0.5 * rms(runs["ddim", 10], ref)
    assert rms(runs["dpmpp_2m", 10], exact) < 0.5 * rms(runs["ddim", 10], exact)
    # ... and at 20 NFE it beats DDIM at 50 (measured 0.025 vs 0.032).
    assert rms(runs["dpmpp_2m", 20], exact) < rms(runs["ddim", 50], exact)


def test_epsilon_prediction_integrates_the_same_ode():
    v_schedule = NoiseSchedule()
    eps_schedule = NoiseSchedule(ScheduleConfig(prediction="epsilon"))
    x_T, _ = gaussian_start(v_schedule)
    for sampler in SAMPLERS:
        with_v = sample(sampler, gaussian_model(v_schedule, MU, STD), v_schedule, x_T, steps=20)
        with_eps = sample(sampler, gaussian_model(eps_schedule, MU, STD, prediction="epsilon"), eps_schedule,
                          x_T, steps=20)
        torch.testing.assert_close(with_eps, with_v, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("sampler", "steps", "within_std"), [("ddim", 50, (0.24, 0.30)),
                                                              ("dpmpp_2m", 10, (0.17, 0.30))])
@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_mixture_of_two_gaussians_keeps_both_modes_and_their_weights(sampler, steps, within_std, zero_terminal_snr):
    schedule = NoiseSchedule(ScheduleConfig(zero_terminal_snr=zero_terminal_snr))
    means = torch.stack([torch.full((D,), -1.5), torch.full((D,), 1.5)])  # (2, D)
    weights, std = torch.tensor([0.3, 0.7]), 0.3
    g = torch.Generator().manual_seed(0)
    k = torch.multinomial(weights, N, replacement=True, generator=g)  # (N,)
    alpha, sigma = schedule.alpha_sigma(schedule.train_steps - 1)
    x_T = alpha * means[k] + (alpha**2 * std**2 + sigma**2) ** 0.5 * torch.randn(N, D, generator=g)

    x = sample(sampler, mixture_model(schedule, means, weights, std), schedule, x_T, steps=steps)

    side = x.mean(1)  # (N,): projection on the axis through both modes
    upper = side > 0
    assert abs(upper.float().mean().item() - 0.7) < 0.03  # mode weights (1 sd of the draw ≈ 0.007)
    assert (side.abs() < 0.75).float().mean().item() < 0.005  # nothing stranded between the modes
    assert x[upper].mean().item() == pytest.approx(1.5, abs=0.03)
    assert x[~upper].mean().item() == pytest.approx(-1.5, abs=0.03)
    spread = torch.cat([x[upper] - 1.5, x[~upper] + 1.5]).std().item()  # true 0.3; few steps shrink it
    assert within_std[0] < spread < within_std[1]


def test_dpmpp_2m_and_ddim_share_the_first_order_first_step():
    schedule = NoiseSchedule()
    x_T, _ = gaussian_start(schedule)
    model = gaussian_model(schedule, MU, STD)
    seen: dict[str, list] = {"ddim": [], "dpmpp_2m": []}
    for name in SAMPLERS:
        sample(name, model, schedule, x_T, steps=10, callback=lambda i, t, x, name=name: seen[name].append((i, t, x)))
    assert [(i, t) for i, t, _ in seen["ddim"]] == [(i, 999 - 100 * i) for i in range(10)]
    assert [(i, t) for i, t, _ in seen["dpmpp_2m"]] == [(i, t) for i, t, _ in seen["ddim"]]
    torch.testing.assert_close(seen["dpmpp_2m"][0][2], seen["ddim"][0][2])  # both first order here
    assert not torch.allclose(seen["dpmpp_2m"][1][2], seen["ddim"][1][2])  # then the multistep kicks in


def test_the_step_out_of_snr_zero_is_exact_and_finite():
    schedule = NoiseSchedule(ScheduleConfig(zero_terminal_snr=True))
    model = gaussian_model(schedule, MU, STD)
    x_T = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    for name in SAMPLERS:
        steps = []
        x = sample(name, model, schedule, x_T, steps=10, callback=lambda i, t, x, steps=steps: steps.append(x))
        assert all(torch.isfinite(s).all() for s in steps) and torch.isfinite(x).all()
        # At SNR 0, x̂_0 = μ and ε̂ = x_T, so the first step lands on α_899 μ + σ_899 x_T.
        alpha, sigma = schedule.alpha_sigma(899)
        torch.testing.assert_close(steps[0], alpha * MU + sigma * x_T)
    x = ddim_sample(model, schedule, x_T, steps=10, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_ddim_with_eta_one_samples_the_gaussian():
    schedule = NoiseSchedule()
    x_T, _ = gaussian_start(schedule)
    x = ddim_sample(gaussian_model(schedule, MU, STD), schedule, x_T, steps=100, eta=1.0,
                    generator=torch.Generator().manual_seed(1))
    assert (x.mean(0) - MU).abs().max().item() < 0.07  # 3 sd of a 4096-sample mean at s = 1.5
    assert (x.std(0) / STD - 1).abs().max().item() < 0.1  # measured 0.068


def test_sampling_is_deterministic_given_the_generator():
    schedule = NoiseSchedule()
    model = gaussian_model(schedule, MU, STD)
    x_T, _ = gaussian_start(schedule)
    run = lambda eta, seed: ddim_sample(model, schedule, x_T[:64], steps=10, eta=eta,  # noqa: E731
                                        generator=None if seed is None else torch.Generator().manual_seed(seed))
    assert torch.equal(run(0.5, 7), run(0.5, 7))
    assert not torch.allclose(run(0.5, 7), run(0.5, 8))
    assert not torch.allclose(run(0.5, 7), run(0.0, 7))
    assert torch.equal(run(0.0, None), run(0.0, 7))  # eta = 0 draws nothing
    assert torch.equal(dpmpp_2m_sample(model, schedule, x_T[:64], steps=10),
                       dpmpp_2m_sample(model, schedule, x_T[:64], steps=10))


def _random_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear "network" standing in for a denoiser: (B, 3, H, W) → (B, 3, H, W)."""
    w = torch.tensor([[0.4, -0.3, 0.2], [0.1, 0.5, -0.2], [-0.3, 0.2, 0.6]])
    return torch.tanh(torch.einsum("bchw,cd->bdhw", x, w) + t.view(-1, 1, 1, 1) / 1000.0)


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_matches_monai_on_the_trailing_grid(steps):
    from monai.networks.schedulers import DDIMScheduler

    schedule = NoiseSchedule()
    # MONAI 1.6 spaces round(linspace(T−1−o, 0, n)) + o but steps each by T // n; with o = T/n − 1
    # the two agree and give the trailing grid.
    monai = DDIMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, prediction_type="v_prediction", steps_offset=1000 // steps - 1)
    monai.set_timesteps(steps)
    assert monai.timesteps.tolist() == schedule.inference_timesteps(steps).tolist()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x = x_T.clone()
    for t in monai.timesteps.tolist():
        x, _ = monai.step(_random_model(x, torch.full((4,), t)), t, x)
    torch.testing.assert_close(ddim_sample(_random_model, schedule, x_T, steps=steps), x, atol=2e-5, rtol=0)


def test_ddim_with_explicit_timesteps_matches_monai_on_a_leading_grid():
    from monai.networks.schedulers import DDIMScheduler

    schedule = NoiseSchedule()
    monai = DDIMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, prediction_type="v_prediction")
    monai.set_timesteps(20)
    leading = list(range(950, -1, -50))  # step() goes from t to t − T // n, here 50
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x = x_T.clone()
    for t in leading:
        x, _ = monai.step(_random_model(x, torch.full((4,), t)), t, x)
    ours = ddim_sample(_random_model, schedule, x_T, timesteps=leading)
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=0)


def test_samplers_keep_the_callers_dtype_and_device():
    schedule = NoiseSchedule()
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    seen = []

    def model_fn(x, t):
        seen.append((x.dtype, t.dtype, t.shape, t.device))
        return torch.zeros_like(x)

    for name in SAMPLERS:
        x = sample(name, model_fn, schedule, x_T, steps=3)
        assert x.dtype == torch.bfloat16 and x.shape == x_T.shape and torch.isfinite(x.float()).all()
    assert set(seen) == {(torch.bfloat16, torch.long, (2,), x_T.device)}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_samplers_on_cuda_with_a_cpu_generator_match_the_cpu():
    schedule = NoiseSchedule(ScheduleConfig(zero_terminal_snr=True))
    x_T, _ = gaussian_start(schedule)
    for name, kwargs in [("ddim", {"eta": 0.5}), ("dpmpp_2m", {})]:
        on_cpu = sample(name, gaussian_model(schedule, MU, STD), schedule, x_T, steps=10,
                        generator=torch.Generator().manual_seed(0), **kwargs)
        on_gpu = sample(name, gaussian_model(schedule, MU.cuda(), STD.cuda()), schedule, x_T.cuda(), steps=10,
                        generator=torch.Generator().manual_seed(0), **kwargs)
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)
    t_gpu = schedule.sample_timesteps(8, generator=torch.Generator().manual_seed(0), device="cuda")
    assert t_gpu.device.type == "cuda"
    assert torch.equal(t_gpu.cpu(), schedule.sample_timesteps(8, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "euler"}, "`sampler`"),
    ({"steps": 0}, "`steps`"),
    ({"steps": -5}, "`steps`"),
    ({"steps": 1001}, "`steps`"),
    ({"name": "dpmpp_2m", "eta": 0.5}, "`eta`"),
    ({"eta": -0.1}, "`eta`"),
])
def test_dispatcher_rejects_bad_arguments_by_name(kwargs, match):
    schedule = NoiseSchedule()
    args = {"name": "ddim", "steps": 10, "eta": 0.0} | kwargs
    with pytest.raises(InputError, match=match):
        sample(args.pop("name"), _random_model, schedule, torch.zeros(1, 3, 2, 2), **args)


@pytest.mark.parametrize("timesteps", [[], [999, 999, 0], [0, 500], [1000, 0], [5, -1]])
def test_explicit_timesteps_are_checked(timesteps):
    with pytest.raises(InputError, match="timesteps"):
        ddim_sample(_random_model, NoiseSchedule(), torch.zeros(1, 3, 2, 2), timesteps=timesteps)
    with pytest.raises(InputError, match="`steps`"):
        dpmpp_2m_sample(_random_model, NoiseSchedule(), torch.zeros(1, 3, 2, 2), steps=3, timesteps=[9, 5])
