"""Fast exact paths for y = x (W + dW)^T + b with dW = Re(ifft2(ToDense(E, c))) (see ``functional``).

The coefficients c reaching these functions are already multiplied by their adapter's scaling
(autograd handles that product), so dW here carries no scaling factor.

Why this is faster than autograd through the reference, with no change in the result:
- dW is built with a half-size inverse real FFT. For real F, Re(ifft2(F)) = ifft2(H) with the
  Hermitian part H[j, k] = (F[j, k] + F[-j, -k]) / 2, so it is irfft2 of H's left half.
- The coefficient gradient never forms the (d_out, d_in) weight gradient g^T x. With
  G = fft(g) over d_out and X = fft(x) over d_in (one row FFT per token):
      dL/dc_l = 1 / (d_out d_in) * Re( sum_t G[t, j_l] X[t, k_l] )
  a sampled product costing O(T n) after two row FFTs (rfft: the other half is the conjugate).
- fp32/fp64 ("merged"): one matmul forward, y = x (W + dW)^T, and one backward, g (W + dW).
  Lower precision ("separate"): W + dW rounded to bf16 would lose most of dW (a few ulps of W),
  so the adapter term is its own matmul with dW rounded on its own, forward and backward.

A weight may hold several spectral blocks (fused projections such as GPT-2's c_attn, and several
active adapters): each ``Block`` covers output rows [start, stop) with its own grid of
(stop - start) x d_in and a slice of the flat coefficient vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .functional import delta_weight

__all__ = ["Block", "MODES", "plan_delta_weight", "plan_coeff_grad", "fourier_linear", "needs_separate_term"]

MODES = ("auto", "merged", "separate", "reference")


@dataclass(frozen=True, eq=False)
class Block:
    """A spectral grid covering output rows [start, stop) of a (d_out, d_in) weight."""

    start: int
    stop: int
    rows: torch.Tensor  # (n,) int64, in [0, stop - start)
    cols: torch.Tensor  # (n,) int64, in [0, d_in)
    offset: int  # first coefficient of this block in the flat coefficient vector

    @property
    def n(self) -> int:
        return self.rows.numel()


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _hermitian_half(coeffs, rows, cols, d_out, d_in):
    """Left half (d_out, d_in//2 + 1) of H = (F + F[-j, -k]) / 2, real-valued."""
    half = d_in // 2 + 1
    h = coeffs.new_zeros(d_out, half)
    keep = cols < half
    h.index_put_((rows[keep], cols[keep]), coeffs[keep] / 2, accumulate=True)
    mrows, mcols = (-rows) % d_out, (-cols) % d_in
    keep = mcols < half
    return h.index_put_((mrows[keep], mcols[keep]), coeffs[keep] / 2, accumulate=True)


def _block_delta(coeffs, rows, cols, d_out, d_in):
    """Re(ifft2(ToDense)) of one grid via irfft2 of the Hermitian half: (d_out, d_in)."""
    h = _hermitian_half(coeffs, rows, cols, d_out, d_in)
    return torch.fft.irfft2(h.to(torch.complex128 if h.dtype == torch.float64 else torch.complex64), s=(d_out, d_in))


def plan_delta_weight(coeffs: torch.Tensor, plan: tuple[Block, ...], d_out: int, d_in: int) -> torch.Tensor:
    """Dense dW (d_out, d_in) of all blocks of a plan, in float32 (float64 for float64 coefficients)."""
    compute = _compute_dtype(coeffs)
    coeffs = coeffs.to(compute)
    if len(plan) == 1 and plan[0].start == 0 and plan[0].stop == d_out:
        b = plan[0]
        return _block_delta(coeffs[b.offset : b.offset + b.n], b.rows, b.cols, d_out, d_in)
    dw = coeffs.new_zeros(d_out, d_in)
    for (start, stop), blocks in _by_range(plan).items():
        c = torch.cat([coeffs[b.offset : b.offset + b.n] for b in blocks])
        rows = torch.cat([b.rows for b in blocks])
        cols = torch.cat([b.cols for b in blocks])
        dw[start:stop] += _block_delta(c, rows, cols, stop - start, d_in)
    return dw


def _by_range(plan):
    groups: dict[tuple[int, int], list[Block]] = {}
    for b in plan:
        groups.setdefault((b.start, b.stop), []).append(b)
    return groups


def _full_spectrum_at(half: torch.Tensor, idx: torch.Tensor, size: int):
    """Real and imaginary parts of the full FFT at idx, from an rfft (T, size//2 + 1): (T, n) each."""
    mirror = idx > size // 2
    value = half[:, torch.where(mirror, size - idx, idx)]  # (T, n) complex
    sign = 1.0 - 2.0 * mirror.to(value.real.dtype)  # conj for mirrored indices
    return value.real, value.imag * sign


def plan_coeff_grad(g: torch.Tensor, x: torch.Tensor, plan: tuple[Block, ...], n_coeffs: int) -> torch.Tensor:
    """dL/dc for y = x dW^T: g (T, d_out), x (T, d_in) -> (n_coeffs,), without forming g^T x."""
    compute = _compute_dtype(g, x)
    d_in = x.shape[-1]
    xf = torch.fft.rfft(x.to(compute), dim=-1)  # (T, d_in//2 + 1)
    grad = torch.zeros(n_coeffs, dtype=compute, device=x.device)
    for (start, stop), blocks in _by_range(plan).items():
        m = stop - start
        gf = torch.fft.rfft(g[:, start:stop].to(compute), dim=-1)  # (T, m//2 + 1)
        for b in blocks:
            g_re, g_im = _full_spectrum_at(gf, b.rows, m)
            x_re, x_im = _full_spectrum_at(xf, b.cols, d_in)
            value = (g_re * x_re).sum(0) - (g_im * x_im).sum(0)  # Re(sum_t G X), (n,)
            grad[b.offset : b.offset + b.n] = value / (m * d_in)
    return grad


def _separate(x, weight, bias, dw):
    """x W^T + (x dW^T + b), the adapter term rounded on its own, then one fused multiply-add
    (addmm accumulates in float32 and rounds once): no worse than the output's own rounding."""
    x2 = x.reshape(-1, x.shape[-1])
    term = F.linear(x2, dw.to(x.dtype), bias)
    return torch.addmm(term, x2, weight.t().to(term.dtype)).reshape(*x.shape[:-1], weight.shape[0])


class _FourierLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, coeffs, plan, merged):
        # x (..., d_in), weight (d_out, d_in), coeffs (n_total,) already scaled
        d_out, d_in = weight.shape
        dw = plan_delta_weight(coeffs, plan, d_out, d_in)
        if merged:
            y = F.linear(x, (weight.to(dw.dtype) + dw).to(x.dtype), bias)
        else:
            y = _separate(x, weight, bias, dw)
        ctx.plan, ctx.merged = plan, merged
        ctx.save_for_backward(x, weight, coeffs)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, coeffs = ctx.saved_tensors
        d_out, d_in = weight.shape
        g = grad_out.reshape(-1, d_out)  # (T, d_out)
        grad_x = grad_bias = grad_coeffs = None
        if ctx.needs_input_grad[0]:
            dw = plan_delta_weight(coeffs, ctx.plan, d_out, d_in)
            if ctx.merged:
                grad_x = grad_out @ (weight.to(dw.dtype) + dw).to(grad_out.dtype)
            else:
                grad_x = _separate(grad_out, weight.t(), None, dw.t())
            grad_x = grad_x.to(x.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        if ctx.needs_input_grad[3]:
            grad_coeffs = plan_coeff_grad(g, x.reshape(-1, d_in), ctx.plan, coeffs.numel()).to(coeffs.dtype)
        return grad_x, None, grad_bias, grad_coeffs, None, None


def needs_separate_term(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when W + dW would be rounded below float32 (bf16/fp16 inputs or weights, or autocast)."""
    device = x.device.type
    autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) not in (torch.float32, torch.float64)
    return autocast or x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype


def _reference(x, weight, bias, coeffs, plan):
    d_out, d_in = weight.shape
    blocks = []
    for b in plan:
        c = coeffs[b.offset : b.offset + b.n]
        dw_b = delta_weight(c, b.rows, b.cols, b.stop - b.start, d_in, 1.0)
        blocks.append(F.pad(dw_b, (0, 0, b.start, d_out - b.stop)))
    dw = torch.stack(blocks).sum(0)
    return F.linear(x, weight, bias) + F.linear(x, dw.to(x.dtype))


def fourier_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    coeffs: torch.Tensor,
    plan: tuple[Block, ...],
    mode: str = "auto",
) -> torch.Tensor:
    """y = x (W + dW)^T + b, x (..., d_in) -> (..., d_out). ``weight`` is (d_out, d_in) (a view is fine).

    ``mode``: "merged" (one matmul; exact in fp32/fp64 only), "separate" (the adapter term as its
    own matmul; for bf16/fp16), "reference" (autograd through ``functional.delta_weight``), or
    "auto" (merged when x and W are fp32/fp64, else separate; reference when W needs a gradient).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if mode == "auto":
        if weight.requires_grad:
            mode = "reference"
        else:
            mode = "separate" if needs_separate_term(x, weight) else "merged"
    if mode == "reference":
        return _reference(x, weight, bias, coeffs, plan)
    return _FourierLinear.apply(x, weight, bias, coeffs, plan, mode == "merged")
