"""DSM losses: hand-computed values per prediction type and reduction, masks, per-channel weights,
gradients, validation, and the exact-Gaussian expected loss."""

import pytest
import torch
from tensordict import TensorDict

from hpcdiff.diffusion.metrics import MSEDSMLoss, WeightedMSEDSMLoss
from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
from hpcdiff.diffusion.preconditioners import EDMPreconditioner


class FixedNoiseScheduler:
    """sigma(t) = t, alpha = 1, a fixed noise tensor, w(t) = 1 + t (times channel_w if given)."""

    def __init__(self, eps, channel_w=None):
        self.eps = eps
        self.channel_w = channel_w
        self.sample_calls = []

    def sample_time(self, N, *, device=None, dtype=None):
        self.sample_calls.append((N, device, dtype))
        return torch.linspace(0.5, 2.0, N, device=device, dtype=dtype)

    def add_noise(self, x0, time):
        return x0 + time.view(-1, 1, 1, 1) * self.eps

    def loss_weight(self, t):
        w = 1 + t
        return w if self.channel_w is None else w[:, None] * self.channel_w  # (B,) | (B, C)


class Net(torch.nn.Module):
    """1x1 conv scaled by (1 + t); adds a tensor condition; records keyword arguments."""

    def __init__(self, channels=2):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1)
        self.seen = {}

    def forward(self, x, t, condition=None, **kwargs):
        self.seen = {"condition": condition, "kwargs": kwargs, "t": t}
        out = self.conv(x) * (1 + t).view(-1, 1, 1, 1)
        return out if not isinstance(condition, torch.Tensor) else out + condition


def score_to_x0(score, x_t, t):  # sigma = t, alpha = 1
    return x_t + t.view(-1, 1, 1, 1) ** 2 * score


def epsilon_to_x0(eps, x_t, t):
    return x_t - t.view(-1, 1, 1, 1) * eps


CONVERSIONS = {"x0": lambda p, x_t, t: p, "score": score_to_x0, "epsilon": epsilon_to_x0}


def _setup(B=3, C=2, channel_w=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, C, 4, 4, generator=g)
    eps = torch.randn(B, C, 4, 4, generator=g)
    torch.manual_seed(seed)
    return x0, Net(C), FixedNoiseScheduler(eps, channel_w)


def _expected_none(net, sched, x0, t, prediction_type, cond=None):
    """w(t) (x0_hat(x_t, t) - x0)^2 per element, written out by hand."""
    x_t = x0 + t.view(-1, 1, 1, 1) * sched.eps
    pred = net.conv(x_t) * (1 + t).view(-1, 1, 1, 1)
    if cond is not None:
        pred = pred + cond
    x0_hat = CONVERSIONS[prediction_type](pred, x_t, t)
    w = sched.loss_weight(t)
    w = w.view(*w.shape, *([1] * (x0.ndim - w.ndim)))
    return w * (x0_hat - x0) ** 2


def _loss(cls, net, sched, prediction_type, reduction):
    return cls(
        net,
        sched,
        prediction_type=prediction_type,
        score_to_x0_fn=score_to_x0,
        epsilon_to_x0_fn=epsilon_to_x0,
        reduction=reduction,
    )


@pytest.mark.parametrize("prediction_type", ["x0", "score", "epsilon"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_matches_hand_formula(prediction_type, reduction):
    x0, net, sched = _setup()
    loss = _loss(MSEDSMLoss, net, sched, prediction_type, reduction)(x0)
    t = torch.linspace(0.5, 2.0, 3)
    expected = _expected_none(net, sched, x0, t, prediction_type)
    expected = {"none": expected, "mean": expected.mean(), "sum": expected.sum()}[reduction]
    assert loss.shape == expected.shape
    torch.testing.assert_close(loss, expected)
    assert sched.sample_calls == [(3, x0.device, x0.dtype)]


def test_explicit_time_condition_and_kwargs_are_forwarded():
    x0, net, sched = _setup()
    t = torch.tensor([0.1, 1.0, 7.0])
    cond = torch.randn_like(x0)
    loss = MSEDSMLoss(net, sched, reduction="none")(x0, t=t, condition=cond, flag=True)
    assert sched.sample_calls == []
    assert net.seen["condition"] is cond and net.seen["kwargs"] == {"flag": True}
    assert net.seen["t"] is t
    torch.testing.assert_close(loss, _expected_none(net, sched, x0, t, "x0", cond))
    td = TensorDict({"y": torch.zeros(3, 1)}, batch_size=[3])
    MSEDSMLoss(net, sched)(x0, t, td)
    assert net.seen["condition"] is td


def test_per_channel_loss_weights():
    channel_w = torch.tensor([0.25, 4.0])
    x0, net, sched = _setup(channel_w=channel_w)
    t = torch.tensor([0.3, 1.0, 2.0])
    loss = MSEDSMLoss(net, sched, reduction="none")(x0, t=t)
    per_sample = MSEDSMLoss(net, FixedNoiseScheduler(sched.eps), reduction="none")(x0, t=t)
    torch.testing.assert_close(loss, per_sample * channel_w.view(1, 2, 1, 1))


def test_per_channel_edm_scheduler_weights():
    sigma_data = torch.tensor([0.3, 1.5])
    sched = EDMNoiseScheduler(sigma_data=sigma_data)
    x0, net, _ = _setup()
    t = torch.tensor([0.05, 0.9, 20.0])
    torch.manual_seed(3)
    loss = MSEDSMLoss(net, sched, reduction="none")(x0, t=t)
    torch.manual_seed(3)
    x_t = sched.add_noise(x0, t)
    s, sd = t.view(-1, 1, 1, 1), sigma_data.view(1, -1, 1, 1)
    w = (s**2 + sd**2) / (s * sd) ** 2  # EDM lambda(sigma), per channel
    expected = w * (net(x_t, t) - x0) ** 2
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("prediction_type", ["x0", "score", "epsilon"])
def test_weighted_loss_with_mask_equals_unweighted_on_selection(prediction_type):
    x0, net, sched = _setup()
    mask = torch.zeros_like(x0)
    mask[0, 1] = 1
    mask[2, :, 1:3, :] = 1
    kw = dict(prediction_type=prediction_type, score_to_x0_fn=score_to_x0)
    kw["epsilon_to_x0_fn"] = epsilon_to_x0
    t = torch.tensor([0.4, 1.1, 3.0])
    full = MSEDSMLoss(net, sched, reduction="none", **kw)(x0, t=t)
    for reduction, expected in [
        ("sum", full[mask.bool()].sum()),
        ("mean", full[mask.bool()].sum() / x0.numel()),  # mean over all elements
        ("none", full * mask),
    ]:
        loss = WeightedMSEDSMLoss(net, sched, reduction=reduction, **kw)(x0, mask, t=t)
        torch.testing.assert_close(loss, expected)
    ones = WeightedMSEDSMLoss(net, sched, **kw)(x0, torch.ones_like(x0), t=t)
    torch.testing.assert_close(ones, full.mean())


def test_weighted_loss_real_valued_weight():
    x0, net, sched = _setup()
    weight = torch.rand_like(x0)
    t = torch.tensor([0.4, 1.1, 3.0])
    loss = WeightedMSEDSMLoss(net, sched, reduction="none")(x0, weight=weight, t=t)
    torch.testing.assert_close(loss, weight * _expected_none(net, sched, x0, t, "x0"))


def test_gradients_flow_to_model_only():
    x0, net, sched = _setup()
    t = torch.tensor([0.4, 1.1, 3.0])
    mask = torch.zeros_like(x0)
    mask[1] = 1
    loss = WeightedMSEDSMLoss(net, sched, reduction="sum")(x0, mask, t=t)
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    assert all(g.abs().sum() > 0 for g in grads)
    assert x0.grad is None and t.grad is None and mask.grad is None
    # The same gradients as the hand formula restricted to the unmasked sample.
    net.zero_grad()
    _expected_none(net, sched, x0, t, "x0")[1].sum().backward()
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("cls", [MSEDSMLoss, WeightedMSEDSMLoss])
def test_validation_errors(cls):
    _, net, sched = _setup()
    with pytest.raises(ValueError, match="must be 'x0', 'score', 'epsilon', or 'velocity'"):
        cls(net, sched, prediction_type="v")
    with pytest.raises(ValueError, match="score_to_x0_fn must be provided"):
        cls(net, sched, prediction_type="score")
    with pytest.raises(ValueError, match="epsilon_to_x0_fn must be provided"):
        cls(net, sched, prediction_type="epsilon", score_to_x0_fn=score_to_x0)
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean', or 'sum', got 'max'"):
        cls(net, sched, reduction="max")


class GaussianPosterior:
    """Exact x0-, score- or epsilon-predictor for data N(mu_c, s_c^2) under sigma(t) = t."""

    def __init__(self, mu, s, prediction_type):
        self.mu, self.s, self.kind = mu.view(1, -1, 1, 1), s.view(1, -1, 1, 1), prediction_type

    def __call__(self, x, t, condition=None):
        sigma = t.view(-1, 1, 1, 1)
        x0_hat = self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)
        if self.kind == "score":
            return (x0_hat - x) / sigma**2
        return x0_hat if self.kind == "x0" else (x - x0_hat) / sigma


@pytest.mark.parametrize("prediction_type", ["x0", "score", "epsilon"])
def test_exact_gaussian_expected_loss_is_one(prediction_type):
    # With sigma_data = s, lambda(sigma) times the posterior variance is 1 at every sigma.
    mu, s = torch.tensor([0.5, -2.0]), torch.tensor([0.4, 1.7])
    sched = EDMNoiseScheduler(sigma_data=s)
    loss_fn = MSEDSMLoss(
        GaussianPosterior(mu, s, prediction_type),
        sched,
        prediction_type=prediction_type,
        score_to_x0_fn=sched.score_to_x0,
        epsilon_to_x0_fn=sched.epsilon_to_x0,
        reduction="none",
    )
    torch.manual_seed(0)
    x0 = mu.view(1, -1, 1, 1) + s.view(1, -1, 1, 1) * torch.randn(256, 2, 8, 8, dtype=torch.float64)
    loss = loss_fn(x0)
    # 32768 chi^2_1 draws: mean 1, standard error sqrt(2 / 32768) ~ 0.008 per channel-half.
    assert abs(loss.mean().item() - 1) < 0.04
    assert torch.allclose(loss.mean(dim=(0, 2, 3)), torch.ones(2, dtype=torch.float64), atol=0.06)


def test_with_preconditioner_trains():
    torch.manual_seed(0)
    net = EDMPreconditioner(Net(2), sigma_data=0.5)
    loss_fn = MSEDSMLoss(net, EDMNoiseScheduler())
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x0 = 0.5 * torch.randn(64, 2, 4, 4)
    t = EDMNoiseScheduler().sample_time(64)

    def fixed_loss():
        torch.manual_seed(1)
        return loss_fn(x0, t=t)

    start = fixed_loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss_fn(x0).backward()
        opt.step()
    assert fixed_loss().item() < 0.9 * start
