"""Fast paths against the reference: values, all gradients (gradcheck in float64), precision."""

import pytest
import torch
import torch.nn.functional as F

from fourierft.functional import delta_weight, spectral_positions
from fourierft import kernels
from fourierft.kernels import Block, fourier_linear, plan_coeff_grad, plan_delta_weight

SHAPES = [(8, 8), (6, 10), (11, 7), (9, 5), (16, 3)]


def single_plan(d_out, d_in, n, seed=0):
    rows, cols = spectral_positions(d_out, d_in, n, seed)
    return (Block(0, d_out, rows, cols, 0),)


def fused_plan(d_out, d_in, n, chunks, adapt):
    m = d_out // chunks
    rows, cols = spectral_positions(m, d_in, n, 1)
    return tuple(Block(a * m, (a + 1) * m, rows, cols, i * n) for i, a in enumerate(adapt))


def two_adapter_plan(d_out, d_in, n):
    """Two adapters over the same grid: positions overlap and rows repeat (n > d_out)."""
    r1, c1 = spectral_positions(d_out, d_in, n, 0)
    r2, c2 = spectral_positions(d_out, d_in, n, 1)
    return (Block(0, d_out, r1, c1, 0), Block(0, d_out, r2, c2, n))


def reference_dense(coeffs, plan, d_out, d_in):
    dw = torch.zeros(d_out, d_in, dtype=torch.float64)
    for b in plan:
        dw[b.start : b.stop] += delta_weight(coeffs[b.offset : b.offset + b.n].double(), b.rows, b.cols, b.stop - b.start, d_in, 1.0)
    return dw


PLANS = {
    "single": lambda: (single_plan(9, 6, 20), 9, 6, 20),
    "full-grid": lambda: (single_plan(5, 7, 35), 5, 7, 35),
    "n=1": lambda: (single_plan(6, 4, 1), 6, 4, 1),
    "fused": lambda: (fused_plan(12, 5, 7, 3, (0, 2)), 12, 5, 14),
    "two-adapters": lambda: (two_adapter_plan(4, 9, 20), 4, 9, 40),
}


@pytest.mark.parametrize("plan_name", sorted(PLANS))
def test_plan_delta_weight_matches_reference(plan_name):
    plan, d_out, d_in, total = PLANS[plan_name]()
    coeffs = torch.randn(total, dtype=torch.float64)
    torch.testing.assert_close(plan_delta_weight(coeffs, plan, d_out, d_in), reference_dense(coeffs, plan, d_out, d_in), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("plan_name", sorted(PLANS))
@pytest.mark.parametrize("mode", ["merged", "separate", "fft", "reference"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_float64(plan_name, mode, bias):
    plan, d_out, d_in, total = PLANS[plan_name]()
    torch.manual_seed(0)
    x = torch.randn(2, 3, d_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(d_out, d_in, dtype=torch.float64)
    b = torch.randn(d_out, dtype=torch.float64, requires_grad=True) if bias else None
    c = torch.randn(total, dtype=torch.float64, requires_grad=True)
    inputs = (x, c) + ((b,) if bias else ())
    fn = lambda x, c, *b: fourier_linear(x, w, b[0] if b else None, c, plan, mode)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("sddmm", [True, False], ids=["sddmm", "gather"])
@pytest.mark.parametrize("shape", SHAPES + [(1, 6), (6, 1), (2, 2)])
def test_coeff_grad_equals_weight_gradient_route(shape, sddmm, monkeypatch):
    monkeypatch.setattr(kernels, "SDDMM_DEVICES", {"cpu"} if sddmm else set())
    d_out, d_in = shape
    n = min(13, d_out * d_in - 1) or 1
    plan = single_plan(d_out, d_in, n)
    g = torch.randn(17, d_out, dtype=torch.float64)
    x = torch.randn(17, d_in, dtype=torch.float64)
    c = torch.randn(n, dtype=torch.float64, requires_grad=True)
    # autograd through the dense reference: dL/dc via the (d_out, d_in) weight gradient g^T x
    dw = delta_weight(c, plan[0].rows, plan[0].cols, d_out, d_in, 1.0)
    (dw * (g.T @ x)).sum().backward()
    torch.testing.assert_close(plan_coeff_grad(g, x, plan, n), c.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["merged", "separate", "fft"])
def test_float32_matches_float64_reference(mode):
    torch.manual_seed(0)
    plan, d_out, d_in, total = PLANS["fused"]()
    x = torch.randn(4, d_in)
    w = torch.randn(d_out, d_in)
    b = torch.randn(d_out)
    c = torch.randn(total, requires_grad=True)
    y = fourier_linear(x, w, b, c, plan, mode)
    y64 = x.double() @ (w.double() + reference_dense(c.detach(), plan, d_out, d_in)).T + b.double()
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)


def bf16_case(seed=0, d_out=256, d_in=320, tokens=512, n=400, scaling=5.0):
    torch.manual_seed(seed)
    rows, cols = spectral_positions(d_out, d_in, n, 0)
    plan = (Block(0, d_out, rows, cols, 0),)
    w = (torch.randn(d_out, d_in) * 0.05).bfloat16()
    x = torch.randn(tokens, d_in).bfloat16()
    c = torch.randn(n) * scaling
    dw64 = reference_dense(c, plan, d_out, d_in)
    base64 = x.double() @ w.double().T
    adapter64 = x.double() @ dw64.T
    return plan, w, x, c, base64, adapter64, dw64


def adapter_error(y, base64, adapter64):
    return ((y.double() - base64 - adapter64).norm() / adapter64.norm()).item()


def test_bf16_adapter_term_no_worse_than_output_rounding():
    plan, w, x, c, base64, adapter64, dw64 = bf16_case()
    assert dw64.abs().mean() < 0.1 * w.float().abs().mean()  # dW is a few bf16 ulps of W
    rounding = adapter_error((base64 + adapter64).bfloat16(), base64, adapter64)  # the bf16 output's own rounding
    ours = adapter_error(fourier_linear(x, w, None, c, plan, "auto"), base64, adapter64)
    rounded_weight = adapter_error(F.linear(x, (w.double() + dw64).bfloat16()), base64, adapter64)
    assert ours <= 1.25 * rounding, (ours, rounding)
    assert adapter_error(fourier_linear(x, w, None, c, plan, "fft"), base64, adapter64) <= 1.25 * rounding
    assert rounded_weight > 1.3 * ours, (rounded_weight, ours)  # ~sqrt(2): a second rounding


def test_bf16_gradients_close_to_float64():
    plan, w, x, c, *_ = bf16_case(d_out=64, d_in=96, tokens=128, n=100)
    x = x.requires_grad_()
    c = c.requires_grad_()
    y = fourier_linear(x, w, None, c, plan, "auto")
    assert y.dtype == torch.bfloat16
    g = torch.randn_like(y)
    y.backward(g)
    x64 = x.detach().double().requires_grad_()
    c64 = c.detach().double().requires_grad_()
    fourier_linear(x64, w.double(), None, c64, plan, "reference").backward(g.double())
    assert x.grad.dtype == torch.bfloat16 and c.grad.dtype == torch.float32
    torch.testing.assert_close(c.grad.double(), c64.grad, rtol=2e-2, atol=1e-3 * c64.grad.abs().max().item())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=2e-2, atol=2e-2 * x64.grad.abs().max().item())


def test_autocast_keeps_adapter_term_separate():
    plan, w, x, c, base64, adapter64, dw64 = bf16_case(d_out=64, d_in=96, tokens=64, n=100)
    w32, x32 = w.float(), x.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fourier_linear(x32, w32, None, c, plan, "auto")
    assert y.dtype == torch.bfloat16
    rounding = adapter_error((base64 + adapter64).bfloat16(), base64, adapter64)
    assert adapter_error(y, base64, adapter64) <= 1.25 * rounding
    y.float().sum().backward()
    assert x32.grad.dtype == torch.float32


def test_unknown_mode_rejected():
    plan = single_plan(4, 4, 3)
    with pytest.raises(ValueError, match="unknown mode"):
        fourier_linear(torch.randn(2, 4), torch.randn(4, 4), None, torch.randn(3), plan, "fast")


def test_trainable_base_weight_uses_reference_and_gets_gradient():
    plan = single_plan(5, 6, 7)
    w = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(7, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda w, c: fourier_linear(x, w, None, c, plan), (w, c))
