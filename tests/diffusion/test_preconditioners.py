"""Preconditioners: closed-form coefficients, exact Gaussian denoising, validation, contract."""

import math

import pytest
import torch
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion import DiffusionModel
from hpcdiff.diffusion.preconditioners import (
    BaseAffinePreconditioner,
    EDMPreconditioner,
    IDDPMPreconditioner,
    VEPreconditioner,
    VPPreconditioner,
)


class RecordingNet(Module):
    """1x1 conv scaled by a function of the noise label; records what it was called with."""

    def __init__(self, channels: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 1)
        self.calls = []

    def forward(self, x, t, condition=None, **kwargs):
        self.calls.append({"x": x, "t": t, "condition": condition, "kwargs": kwargs})
        out = self.conv(x) * (1 + 0.1 * t.to(x.dtype)).view(-1, 1, 1, 1)
        if isinstance(condition, torch.Tensor):
            out = out + condition
        return out


def _vp_sigma(t, beta_d=19.9, beta_min=0.1):
    return math.sqrt(math.exp(0.5 * beta_d * t**2 + beta_min * t) - 1)


PRECONDITIONERS = {
    "edm": lambda net: EDMPreconditioner(net, sigma_data=0.5),
    "edm_per_channel": lambda net: EDMPreconditioner(net, sigma_data=[0.3, 1.2]),
    "ve": VEPreconditioner,
    "vp": VPPreconditioner,
    "iddpm": IDDPMPreconditioner,
}


def _times(name: str, B: int) -> torch.Tensor:
    """Valid diffusion times; for iDDPM exact table levels so c_noise is unambiguous."""
    if name == "iddpm":
        return IDDPMPreconditioner(RecordingNet()).u[torch.arange(100, 100 + 50 * B, 50)]
    if name == "vp":
        return torch.linspace(0.05, 0.95, B)
    return torch.logspace(-2, 1.5, B)


# ---------------------------------------------------------------------------------------------
# Closed-form coefficients
# ---------------------------------------------------------------------------------------------
def test_edm_coefficients_closed_form():
    sigma_data = 0.5
    p = EDMPreconditioner(RecordingNet(), sigma_data=sigma_data)
    sigmas = [0.002, 0.1, sigma_data, 3.0, 80.0]
    c_in, c_noise, c_out, c_skip = p.compute_coefficients(torch.tensor(sigmas).view(-1, 1, 1, 1))
    for i, s in enumerate(sigmas):
        r = math.sqrt(s**2 + sigma_data**2)
        torch.testing.assert_close(c_skip[i].item(), sigma_data**2 / r**2)
        torch.testing.assert_close(c_out[i].item(), s * sigma_data / r)
        torch.testing.assert_close(c_in[i].item(), 1 / r)
        torch.testing.assert_close(c_noise[i].item(), math.log(s) / 4)
    # At sigma = sigma_data: c_skip = 1/2 and c_out = c_in * sigma_data^2 = sigma_data / sqrt(2).
    assert c_skip[2].item() == pytest.approx(0.5, abs=1e-7)
    assert c_out[2].item() == pytest.approx(sigma_data / math.sqrt(2), rel=1e-6)
    # Unit-variance network input and training target (Karras et al. 2022, App. B.6).
    s = torch.tensor(sigmas).view(-1, 1, 1, 1)
    torch.testing.assert_close(c_in**2 * (sigma_data**2 + s**2), torch.ones_like(s))
    target_var = (1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * s**2
    torch.testing.assert_close(target_var / c_out**2, torch.ones_like(s))


def test_edm_per_channel_sigma_data_broadcasts():
    sd = [0.3, 1.2]
    p = EDMPreconditioner(RecordingNet(), sigma_data=sd)
    sigma = torch.tensor([0.7, 2.0]).view(-1, 1, 1, 1)
    c_in, c_noise, c_out, c_skip = p.compute_coefficients(sigma)
    assert c_skip.shape == c_out.shape == c_in.shape == (2, 2, 1, 1)
    assert c_noise.shape == (2, 1, 1, 1)
    for c, s_c in enumerate(sd):
        scalar = EDMPreconditioner(RecordingNet(), sigma_data=s_c).compute_coefficients(sigma)
        torch.testing.assert_close(c_in[:, c : c + 1], scalar[0])
        torch.testing.assert_close(c_out[:, c : c + 1], scalar[2])
        torch.testing.assert_close(c_skip[:, c : c + 1], scalar[3])
        torch.testing.assert_close(c_noise, scalar[1])


@pytest.mark.parametrize(
    "sigma_data, channels",
    [(0.5, 0), ([0.7], 0), (torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), 3), ((1, 2), 2)],
)
def test_edm_sigma_data_forms(sigma_data, channels):
    p = EDMPreconditioner(RecordingNet(), sigma_data=sigma_data)
    assert p._sigma_data_channels == channels
    assert p.sigma_data.dtype == torch.float32
    assert p.sigma_data.ndim == (1 if channels else 0)
    assert "sigma_data" in p.state_dict()


def test_vp_coefficients_closed_form():
    p = VPPreconditioner(RecordingNet())
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0])
    sigma = p.sigma(t)
    torch.testing.assert_close(sigma, torch.tensor([_vp_sigma(v) for v in t.tolist()]))
    c_in, c_noise, c_out, c_skip = p.compute_coefficients(sigma.view(-1, 1))
    torch.testing.assert_close(c_skip, torch.ones(4, 1))
    torch.testing.assert_close(c_out, -sigma.view(-1, 1))
    torch.testing.assert_close(c_in, (1 / (sigma**2 + 1).sqrt()).view(-1, 1))
    # c_noise = (M - 1) sigma^-1(sigma(t)) = (M - 1) t (float64: sigma^-1 cancels near t = 0).
    c_noise64 = (
        VPPreconditioner(RecordingNet())
        .double()
        .compute_coefficients(p.double().sigma(t.double()).view(-1, 1))[1]
    )
    torch.testing.assert_close(c_noise64, 999 * t.double().view(-1, 1))


def test_ve_coefficients_closed_form():
    p = VEPreconditioner(RecordingNet())
    sigma = torch.tensor([0.02, 1.0, 100.0]).view(-1, 1)
    c_in, c_noise, c_out, c_skip = p.compute_coefficients(sigma)
    torch.testing.assert_close(c_in, torch.ones(3, 1))
    torch.testing.assert_close(c_skip, torch.ones(3, 1))
    torch.testing.assert_close(c_out, sigma)
    torch.testing.assert_close(c_noise, torch.log(sigma / 2))
    torch.testing.assert_close(p.sigma(sigma.flatten()), sigma.flatten())


def test_iddpm_noise_levels_follow_recurrence():
    C_1, C_2, M = 0.001, 0.008, 1000
    u = IDDPMPreconditioner(RecordingNet(), C_1=C_1, C_2=C_2, M=M).u.double()
    assert u.shape == (M + 1,) and u[M] == 0 and bool((u[:-1] > u[1:]).all())

    def alpha_bar(j):
        return math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2

    ratio = torch.tensor([max(alpha_bar(j - 1) / alpha_bar(j), C_1) for j in range(1, M + 1)])
    torch.testing.assert_close(
        (u[:-1] ** 2 + 1) * ratio.double(), u[1:] ** 2 + 1, rtol=1e-4, atol=0
    )


def test_iddpm_coefficients():
    p = IDDPMPreconditioner(RecordingNet(), M=1000)
    u = p.u
    j = torch.tensor([0, 1, 17, 500, 998, 999])
    c_in, c_noise, c_out, c_skip = p.compute_coefficients(u[j].view(-1, 1))
    assert c_noise.flatten().tolist() == (999 - j).tolist()
    torch.testing.assert_close(c_out, -u[j].view(-1, 1))
    torch.testing.assert_close(c_skip, torch.ones(6, 1))
    torch.testing.assert_close(c_in, 1 / (u[j].view(-1, 1) ** 2 + 1).sqrt())
    # Off-table sigmas round to the nearest level.
    between = 0.7 * u[500] + 0.3 * u[501]
    assert p.compute_coefficients(between.view(1, 1))[1].item() == 999 - 500
    assert IDDPMPreconditioner(RecordingNet(), M=10).u.shape == (11,)


# ---------------------------------------------------------------------------------------------
# Exact Gaussian: F chosen so that D(x, t) is the posterior mean E[x0 | x0 + sigma n = x]
# ---------------------------------------------------------------------------------------------
class GaussianOracle(Module):
    """F = (E[x0|x] - c_skip x) / c_out for data N(mu_c, s_c^2), recovering sigma from c_noise."""

    def __init__(self, name: str, mu: list, s: list):
        super().__init__()
        self.name = name
        self.register_buffer("mu", torch.tensor(mu, dtype=torch.float64).view(1, -1, 1, 1))
        self.register_buffer("s", torch.tensor(s, dtype=torch.float64).view(1, -1, 1, 1))

    def attach(self, precond):
        self._precond = (precond,)  # a tuple, so the wrapper is not registered as a child

    def _sigma_from_noise_label(self, c_noise):
        p = self._precond[0]
        if self.name.startswith("edm"):
            return (4 * c_noise).exp()
        if self.name == "ve":
            return 2 * c_noise.exp()
        if self.name == "vp":
            return p.sigma(c_noise / (p.M - 1))
        return p.u[p.M - 1 - c_noise]

    def forward(self, x_in, c_noise, condition=None):
        sigma = self._sigma_from_noise_label(c_noise).view(-1, 1, 1, 1)
        c_in, _, c_out, c_skip = self._precond[0].compute_coefficients(sigma)
        x = x_in / c_in
        posterior_mean = self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)
        return (posterior_mean - c_skip * x) / c_out


@pytest.mark.parametrize("name", list(PRECONDITIONERS))
def test_exact_gaussian_posterior_mean(name):
    mu, s = [0.3, -1.0], [0.8, 2.5]
    oracle = GaussianOracle(name, mu, s)
    p = PRECONDITIONERS[name](oracle).double()
    oracle.attach(p)
    t = _times(name, 4).double()
    sigma = p.sigma(t).view(-1, 1, 1, 1)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mu_t, s_t = oracle.mu, oracle.s
    expected = mu_t + s_t**2 / (s_t**2 + sigma**2) * (x - mu_t)
    torch.testing.assert_close(p(x, t), expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def test_validation_errors():
    p = EDMPreconditioner(RecordingNet(), sigma_data=[0.5, 0.5])
    x, t = torch.randn(3, 2, 4, 4), torch.rand(3) + 0.1
    with pytest.raises(ValueError, match=r"t to have shape \(3,\)"):
        p(x, t.view(3, 1))
    with pytest.raises(ValueError, match=r"t to have shape \(3,\)"):
        p(x, t[:2])
    with pytest.raises(ValueError, match="Condition tensor has batch size 2"):
        p(x, t, condition=torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="Condition TensorDict has batch size 4"):
        p(x, t, condition=TensorDict({"y": torch.zeros(4, 1)}, batch_size=[4]))
    with pytest.raises(ValueError, match="sigma_data with 2 channels, but input x has 3"):
        p(torch.randn(3, 3, 4, 4), t)
    # A TensorDict without batch dimensions is not checked (as in the reference).
    seen = []
    p = EDMPreconditioner(lambda x, t, condition=None: seen.append(condition) or x)
    p(x, t, condition=TensorDict({"y": torch.zeros(1)}, batch_size=[]))
    assert isinstance(seen[0], TensorDict)


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        BaseAffinePreconditioner(RecordingNet())


# ---------------------------------------------------------------------------------------------
# Contract shared by all preconditioners
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRECONDITIONERS))
def test_contract(name, tmp_path):
    torch.manual_seed(0)
    net = RecordingNet()
    p = PRECONDITIONERS[name](net)
    assert isinstance(p, DiffusionModel) and isinstance(p, torch.nn.Module)
    x, t = torch.randn(3, 2, 4, 4), _times(name, 3)

    # D = c_skip x + c_out F(c_in x, c_noise); the network sees (B,) noise labels.
    out = p(x, t)
    assert out.shape == x.shape
    call = net.calls[-1]
    assert call["condition"] is None and call["kwargs"] == {} and call["t"].shape == (3,)
    c_in, c_noise, c_out, c_skip = p.compute_coefficients(p.sigma(t).view(-1, 1, 1, 1))
    torch.testing.assert_close(call["x"], c_in * x)
    torch.testing.assert_close(call["t"], c_noise.flatten())
    F_x = net.conv(c_in * x) * (1 + 0.1 * c_noise.float()).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, c_skip * x + c_out * F_x)

    # Condition and extra keyword arguments reach the network unchanged.
    cond = torch.randn(3, 2, 4, 4)
    p(x, t, cond, extra=7)
    assert net.calls[-1]["condition"] is cond and net.calls[-1]["kwargs"] == {"extra": 7}

    # Gradients reach the wrapped network.
    p(x, t).square().sum().backward()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.abs().sum() > 0

    # bf16 autocast runs; the output stays close to fp32.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = p(x, t)
    assert out_bf16.shape == x.shape and torch.isfinite(out_bf16).all()
    scale = out.detach().abs().max().item()
    torch.testing.assert_close(out_bf16.float(), out.detach(), rtol=0.05, atol=0.05 * scale)

    # Save / re-create with the wrapped Module; the same outputs result.
    path = p.save(tmp_path / "precond.mdlus")
    q = type(p).from_checkpoint(path)
    assert type(q.model) is RecordingNet
    torch.testing.assert_close(q(x, t), out.detach())


@pytest.mark.parametrize("name", list(PRECONDITIONERS))
def test_compile_fullgraph_traces(name):
    torch._dynamo.reset()
    p = PRECONDITIONERS[name](RecordingNet())
    x, t = torch.randn(2, 2, 4, 4), _times(name, 2)
    compiled = torch.compile(p, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, t), p(x, t))


def test_compile_inductor_per_channel_edm():
    torch._dynamo.reset()
    p = EDMPreconditioner(RecordingNet(), sigma_data=torch.tensor([0.3, 1.2]))
    x, t = torch.randn(2, 2, 4, 4), torch.tensor([0.05, 4.0])
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(p, fullgraph=True)(x, t), p(x, t))
