"""The fft path's sparse spectral maps (``fourierft.spectral``) against explicit DFT matrices in
float64, and the Triton kernels against the PyTorch maps (Triton's interpreter, on the CPU)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import dft

from fourierft.functional import spectral_positions
from fourierft.kernels import Block, _half_spectrum, fourier_linear, spectral_term, spectral_term_t
from fourierft.spectral import build_index, sampled_grad

# (d_out, d_in, n): odd and even, non-square, n = 1 and n = d_out * d_in
CASES = [(9, 6, 20), (6, 9, 20), (5, 7, 35), (7, 5, 1), (8, 8, 64), (11, 13, 40), (16, 3, 48), (1, 6, 4), (6, 1, 3)]


def explicit_dw(coeffs, rows, cols, m, n):
    """Re(F_m^-1 S F_n^-1) with explicit DFT matrices (S: c scattered at (rows, cols)), float64."""
    s = torch.zeros(m, n, dtype=torch.complex128)
    s.index_put_((rows, cols), coeffs.to(torch.complex128), accumulate=True)
    return (dft(m, inverse=True) @ s @ dft(n, inverse=True)).real


def index_for(m, n, count, seed=0):
    rows, cols = spectral_positions(m, n, count, seed)
    return build_index((Block(0, m, rows, cols, 0),), m, n, count, "cpu"), rows, cols


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_maps_equal_explicit_dft_products(case):
    m, n, count = case
    index, rows, cols = index_for(m, n, count)
    torch.manual_seed(0)
    c = torch.randn(count, dtype=torch.float64, requires_grad=True)
    x = torch.randn(23, n, dtype=torch.float64)
    g = torch.randn(23, m, dtype=torch.float64)
    dw = explicit_dw(c, rows, cols, m, n)
    xv, gv = _half_spectrum(x, torch.float64), _half_spectrum(g, torch.float64)
    torch.testing.assert_close(spectral_term(xv, c.detach(), index), x @ dw.detach().T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(spectral_term_t([gv], c.detach(), index), g @ dw.detach(), rtol=1e-12, atol=1e-12)
    (g * (x @ dw.T)).sum().backward()  # dL/dc through the explicit matrices
    torch.testing.assert_close(sampled_grad(gv, xv, index.ranges[0], count), c.grad, rtol=1e-10, atol=1e-12)


def test_fused_ranges_and_two_adapters_share_the_output():
    """Blocks over different row ranges and two adapters over the same range, against the dense sum."""
    torch.manual_seed(1)
    r1, c1 = spectral_positions(4, 9, 12, 0)
    r2, c2 = spectral_positions(4, 9, 12, 1)
    plan = (Block(0, 4, r1, c1, 0), Block(8, 12, r1, c1, 12), Block(8, 12, r2, c2, 24))
    coeffs = torch.randn(36, dtype=torch.float64)
    dw = torch.zeros(12, 9, dtype=torch.float64)
    for b in plan:
        dw[b.start : b.stop] += explicit_dw(coeffs[b.offset : b.offset + b.n], b.rows, b.cols, 4, 9)
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 9, dtype=torch.float64)
    c = coeffs.clone().requires_grad_()
    y = fourier_linear(x, w, None, c, plan, "fft")
    torch.testing.assert_close(y, x @ (w + dw).T, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, c: fourier_linear(x, w, None, c, plan, "fft"), (x, c))


def test_adapter_term_alone_gradchecks_in_float64():
    """kernels.adapter_term (the term beside a quantized base layer) against explicit DFT matrices."""
    from fourierft.kernels import adapter_term

    index, rows, cols = index_for(7, 10, 30)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    c = torch.randn(30, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(adapter_term(x, c, index), x @ explicit_dw(c, rows, cols, 7, 10).T, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, c: adapter_term(x, c, index), (x, c))


def test_bf16_fft_path_rounds_once_on_cpu():
    """bf16 operands: the float32 adapter term is added to a float32 x W^T before the one rounding."""
    torch.manual_seed(0)
    m, n, count = 192, 160, 300
    rows, cols = spectral_positions(m, n, count, 0)
    plan = (Block(0, m, rows, cols, 0),)
    w = (torch.randn(m, n) * 0.05).bfloat16()
    x = torch.randn(256, n).bfloat16()
    c = torch.randn(count) * 5
    dw = explicit_dw(c.double(), rows, cols, m, n)
    base, adapter = x.double() @ w.double().T, x.double() @ dw.T
    rounding = ((base + adapter).bfloat16().double() - base - adapter).norm()
    y = fourier_linear(x, w, None, c, plan, "fft")
    assert y.dtype == torch.bfloat16
    assert (y.double() - base - adapter).norm() <= 1.02 * rounding


def test_autocast_runs_in_autocast_dtype_with_one_rounding():
    torch.manual_seed(0)
    m, n, count = 96, 80, 200
    rows, cols = spectral_positions(m, n, count, 0)
    plan = (Block(0, m, rows, cols, 0),)
    w, x, c = torch.randn(m, n) * 0.05, torch.randn(64, n), torch.randn(count) * 5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for mode in ("auto", "fft", "separate"):
            y = fourier_linear(x, w, None, c, plan, mode)
            assert y.dtype == torch.bfloat16
            xb, wb = x.bfloat16().double(), w.bfloat16().double()
            want = xb @ (wb + explicit_dw(c.double(), rows, cols, m, n)).T
            assert ((y.double() - want).norm() / want.norm()) < 5e-3


TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from fourierft import triton_kernels as tk
    from fourierft.functional import spectral_positions
    from fourierft.kernels import Block, _half_spectrum
    from fourierft.spectral import apply_map, build_index, sampled_grad
    assert tk.AVAILABLE
    for m, n, count, T in [(9, 6, 20, 5), (5, 7, 35, 40), (6, 4, 1, 70), (33, 17, 200, 300), (1, 6, 4, 3), (64, 40, 2560, 33)]:
        rows, cols = spectral_positions(m, n, count, 0)
        r = build_index((Block(0, m, rows, cols, 0),), m, n, count, "cpu").ranges[0]
        c, x, g = torch.randn(count), torch.randn(T, n), torch.randn(T, m)
        xv, gv = _half_spectrum(x, torch.float32), _half_spectrum(g, torch.float32)
        for got, want in ((tk.spectral_map(xv, r.forward, c), apply_map(xv, r.forward, c)), (tk.spectral_map(gv, r.transpose, c), apply_map(gv, r.transpose, c))):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        got = torch.zeros(count).index_add_(0, r.grad_coef, tk.sampled_cross(gv, xv, r))
        torch.testing.assert_close(got, sampled_grad(gv, xv, r, count), rtol=1e-5, atol=1e-4)
    print("ok")
    """
)


def test_triton_kernels_equal_pytorch_maps_in_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
