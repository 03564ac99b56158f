"""Fast exact paths for y = x (W + dW)^T + b with dW = Re(ifft2(ToDense(E, c))) (see ``functional``).

The coefficients c reaching these functions are the trained parameters already multiplied by their
adapter's scaling x coefficient_scale (``AdapterSpec.factor``; autograd handles that product), so dW
here carries no scaling factor.

Why this is faster than autograd through the reference, with no change in the result:
- dW is built with a half-size inverse real FFT. For real F, Re(ifft2(F)) = ifft2(H) with the
  Hermitian part H[j, k] = (F[j, k] + F[-j, -k]) / 2, so it is irfft2 of H's left half.
- The coefficient gradient never forms the (d_out, d_in) weight gradient g^T x. With
  G = fft(g) over d_out and X = fft(x) over d_in (one row FFT per token):
      dL/dc_l = 1 / (d_out d_in) * Re( sum_t G[t, j_l] X[t, k_l] )
  a sampled product costing O(T n) after two row FFTs (rfft: the other half is the conjugate).
- fp32/fp64 ("merged"): one matmul forward, y = x (W + dW)^T, and one backward, g (W + dW).
  Lower precision: W + dW rounded to bf16 would lose most of dW (a few ulps of W). "fft" (the
  default on CUDA) never forms dW: the adapter term comes from row FFTs and the sparse maps of
  ``spectral`` and is added to a float32 x W^T before the output's one rounding. "separate" (the
  default on CPUs) runs the adapter term as its own matmul with dW rounded on its own.

A weight may hold several spectral blocks (fused projections such as GPT-2's c_attn, and several
active adapters): each ``Block`` covers output rows [start, stop) with its own grid of
(stop - start) x d_in and a slice of the flat coefficient vector.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .functional import delta_weight
from .spectral import SpectralIndex, apply_map, apply_map_rows, build_index, sampled_grad

__all__ = [
    "Block",
    "MODES",
    "plan_delta_weight",
    "plan_coeff_grad",
    "fourier_linear",
    "adapter_term",
    "needs_separate_term",
    "resolve_mode",
    "effective_weight",
    "apply_effective",
]

MODES = ("auto", "merged", "separate", "fft", "reference")


@dataclass(frozen=True, eq=False)
class Block:
    """A spectral grid covering output rows [start, stop) of a (d_out, d_in) weight.

    ``hermitian`` and ``folded`` are the positions' kernel indices (``hermitian_index``, ``fold``);
    adapter layers build them once per adapter and device, other callers may leave them out.
    """

    start: int
    stop: int
    rows: torch.Tensor  # (n,) int64, in [0, stop - start)
    cols: torch.Tensor  # (n,) int64, in [0, d_in)
    offset: int  # first coefficient of this block in the flat coefficient vector
    hermitian: tuple[torch.Tensor, torch.Tensor] | None = None
    folded: _Folded | None = None

    @property
    def n(self) -> int:
        return self.rows.numel()

    def hermitian_index(self, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hermitian if self.hermitian is not None else hermitian_index(self.rows, self.cols, self.stop - self.start, d_in)

    def fold(self, d_in: int) -> _Folded:
        return self.folded if self.folded is not None else fold(self.rows, self.cols, self.stop - self.start, d_in)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def hermitian_index(rows, cols, m, n):
    """Where c_l / 2 lands in the flattened left half (m, n//2 + 1) of H = (F + F[-j, -k]) / 2:
    (flat destinations, source coefficient of each)."""
    half = n // 2 + 1
    keep, mirrored = cols < half, (-cols) % n < half
    mrows, mcols = (-rows) % m, (-cols) % n
    flat = torch.cat([rows[keep] * half + cols[keep], mrows[mirrored] * half + mcols[mirrored]])
    source = torch.cat([keep.nonzero().flatten(), mirrored.nonzero().flatten()])
    return flat, source


def _range_delta(coeffs, blocks, m, d_in):
    """Re(ifft2(ToDense)) of the blocks sharing one grid of m rows, via one irfft2 of the Hermitian
    part's left half: (m, d_in). For real F, Re(ifft2(F)) = ifft2(H) with H = (F + F[-j, -k]) / 2."""
    half = coeffs.new_zeros(m * (d_in // 2 + 1))
    for b in blocks:
        flat, source = b.hermitian_index(d_in)
        half.index_add_(0, flat, coeffs[b.offset : b.offset + b.n][source] * 0.5)
    complex_dtype = torch.complex128 if coeffs.dtype == torch.float64 else torch.complex64
    return torch.fft.irfft2(half.view(m, -1).to(complex_dtype), s=(m, d_in))


def plan_delta_weight(coeffs: torch.Tensor, plan: tuple[Block, ...], d_out: int, d_in: int) -> torch.Tensor:
    """Dense dW (d_out, d_in) of all blocks of a plan, in float32 (float64 for float64 coefficients)."""
    coeffs = coeffs.to(_compute_dtype(coeffs))
    groups = _by_range(plan)
    if len(groups) == 1 and next(iter(groups)) == (0, d_out):
        return _range_delta(coeffs, plan, d_out, d_in)
    dw = coeffs.new_zeros(d_out, d_in)
    for (start, stop), blocks in groups.items():
        dw[start:stop] += _range_delta(coeffs, blocks, stop - start, d_in)
    return dw


def _by_range(plan):
    groups: dict[tuple[int, int], list[Block]] = {}
    for b in plan:
        groups.setdefault((b.start, b.stop), []).append(b)
    return groups


@dataclass(frozen=True, eq=False)
class _Folded:
    """Positions folded onto rfft halves: G[j] = conj(G[m - j]) for j > m/2 (same for k).

    Re(G[j] X[k]) = Gr[jf] Xr[kf] - sign * Gi[jf] Xi[kf], sign = -1 when exactly one side is mirrored.
    ``crow`` / ``col`` hold the unique (jf, kf) pairs as a CSR pattern; ``inverse`` maps positions to them.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    sign: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    inverse: torch.Tensor
    shape: tuple[int, int]


# Devices where the coefficient gradient uses torch.sparse.sampled_addmm; elsewhere a gather.
SDDMM_DEVICES = {"cpu"}


def fold(rows: torch.Tensor, cols: torch.Tensor, m: int, n: int) -> _Folded:
    """The positions folded onto the rfft halves of an m x n grid (see ``_Folded``)."""
    mh, nh = m // 2 + 1, n // 2 + 1
    mirror_j, mirror_k = rows > m // 2, cols > n // 2
    jf = torch.where(mirror_j, m - rows, rows)
    kf = torch.where(mirror_k, n - cols, cols)
    sign = 1.0 - 2.0 * (mirror_j ^ mirror_k).to(torch.float64)
    uniq, inverse = torch.unique(jf * nh + kf, sorted=True, return_inverse=True)
    crow = torch.zeros(mh + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(uniq // nh, minlength=mh).cumsum(0)
    return _Folded(jf, kf, sign, crow, uniq % nh, inverse, (mh, nh))


def _planes(t: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """rfft of t (T, size) along features as real and imaginary planes (2, size//2 + 1, T), T contiguous."""
    return torch.view_as_real(torch.fft.rfft(t.to(compute), dim=-1)).permute(2, 1, 0).contiguous()


def _sampled_cross(f: _Folded, gp: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
    """Re(sum_t G[t, j_l] X[t, k_l]) for every position l, from planes gp (2, m//2+1, T), xp (2, n//2+1, T)."""
    if gp.device.type in SDDMM_DEVICES:  # sampled dense-dense product over the unique folded pairs
        zeros = gp.new_zeros(f.col.numel())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            pattern = torch.sparse_csr_tensor(f.crow, f.col, zeros, f.shape, check_invariants=False)
            real = torch.sparse.sampled_addmm(pattern, gp[0], xp[0].T).values()[f.inverse]
            imag = torch.sparse.sampled_addmm(pattern, gp[1], xp[1].T).values()[f.inverse]
    else:  # gather whole rows: bandwidth-bound, fine on GPUs
        real = (gp[0][f.rows] * xp[0][f.cols]).sum(-1)
        imag = (gp[1][f.rows] * xp[1][f.cols]).sum(-1)
    return real - f.sign.to(real.dtype) * imag


def plan_coeff_grad(g: torch.Tensor, x: torch.Tensor, plan: tuple[Block, ...], n_coeffs: int) -> torch.Tensor:
    """dL/dc for y = x dW^T: g (..., d_out), x (..., d_in) -> (n_coeffs,), without forming g^T x.

    dL/dc_l = Re(sum_t G[t, j_l] X[t, k_l]) / (m d_in), G / X: FFTs of g / x along features.
    """
    compute = _compute_dtype(g, x)
    d_in = x.shape[-1]
    g = g.reshape(-1, g.shape[-1])  # (T, d_out)
    xp = _planes(x.reshape(-1, d_in), compute)
    grad = torch.zeros(n_coeffs, dtype=compute, device=x.device)
    for (start, stop), blocks in _by_range(plan).items():
        m = stop - start
        gp = _planes(g[:, start:stop], compute)  # (2, m//2 + 1, T)
        for b in blocks:
            grad[b.offset : b.offset + b.n] = _sampled_cross(b.fold(d_in), gp, xp) / (m * d_in)
    return grad


def _plus_base(term, x, weight):
    """term + x W^T as one addmm (float32 accumulation, one rounding). term (T, d_out) in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    return torch.addmm(term, x2, weight.t().to(term.dtype)).reshape(*x.shape[:-1], weight.shape[0])


def _separate(x, weight, bias, dw):
    """x W^T + (x dW^T + b): the adapter term rounded on its own, then one fused multiply-add,
    no worse than the output's own rounding."""
    return _plus_base(F.linear(x.reshape(-1, x.shape[-1]), dw.to(x.dtype), bias), x, weight)


def effective_weight(weight: torch.Tensor, dw: torch.Tensor, merged: bool, dtype: torch.dtype) -> torch.Tensor:
    """What multiplies x besides W: W + dW in ``dtype`` (merged) or dW alone in ``dtype`` (separate)."""
    return (weight.to(dw.dtype) + dw).to(dtype) if merged else dw.to(dtype)


def apply_effective(x, weight, bias, w_eff, merged):
    """y = x W_eff^T + b (merged) or x W^T + (x dW^T + b) (separate)."""
    return F.linear(x, w_eff, bias) if merged else _separate(x, weight, bias, w_eff)


_MM_OUT_DTYPE = None  # whether torch.addmm(..., out_dtype=float32) runs here (CUDA, recent torch)


def _plus_base_f32(term, x2, weight_t, out_dtype):
    """(x2 @ weight_t + term) rounded once to ``out_dtype``: x2 (T, a), weight_t (a, b), term (T, b) in float32/64.

    In float32/64 this is one addmm. Below float32 the product is accumulated and kept in float32
    (CUDA: a GEMM with a float32 output; elsewhere a float32 GEMM), so the adapter term is added
    before the only rounding of the output.
    """
    global _MM_OUT_DTYPE
    if x2.dtype == term.dtype:
        return torch.addmm(term, x2, weight_t.to(x2.dtype))
    weight_t = weight_t.to(x2.dtype)
    if x2.device.type == "cuda" and _MM_OUT_DTYPE is not False:
        try:
            y = torch.addmm(term, x2, weight_t, out_dtype=term.dtype)
            _MM_OUT_DTYPE = True
            return y.to(out_dtype)
        except (RuntimeError, TypeError, NotImplementedError):
            _MM_OUT_DTYPE = False
    return torch.addmm(term, x2.to(term.dtype), weight_t.to(term.dtype)).to(out_dtype)


def _half_spectrum(t2: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """rfft of rows of t2 (T, size) as a real view (T, 2 * (size // 2 + 1))."""
    return torch.view_as_real(torch.fft.rfft(t2.to(compute), dim=-1)).flatten(1)


def _irfft_rows(h: torch.Tensor, size: int) -> torch.Tensor:
    """irfft along rows of a real-view half spectrum h (T, 2 * (size // 2 + 1)): (T, size)."""
    return torch.fft.irfft(torch.view_as_complex(h.view(h.shape[0], -1, 2)), n=size, dim=-1)


def spectral_term(xv: torch.Tensor, coeffs: torch.Tensor, index: SpectralIndex) -> torch.Tensor:
    """x dW^T (T, d_out) from x's half spectrum xv (``spectral`` module docstring)."""
    if index.full:
        r = index.ranges[0]
        return _irfft_rows(apply_map(xv, r.forward, coeffs[r.offset :]), index.d_out)
    out = xv.new_zeros(xv.shape[0], index.d_out)
    for r in index.ranges:
        out[:, r.start : r.stop] += _irfft_rows(apply_map(xv, r.forward, coeffs[r.offset :]), r.stop - r.start)
    return out


def spectral_term_t(gvs: list[torch.Tensor], coeffs: torch.Tensor, index: SpectralIndex) -> torch.Tensor:
    """g dW (T, d_in) from the half spectra of g's row ranges: the maps add up before one irfft."""
    h = None
    for gv, r in zip(gvs, index.ranges):
        part = apply_map(gv, r.transpose, coeffs[r.offset :])
        h = part if h is None else h.add_(part)
    return _irfft_rows(h, index.d_in)


def spectral_term_rows(x2: torch.Tensor, table: torch.Tensor, which: torch.Tensor, index: SpectralIndex) -> torch.Tensor:
    """x2 dW_t^T (T, d_out) where token t uses the coefficients ``table[which[t]]`` (adapters that share
    ``index``'s positions, scaled): one row FFT of x for every adapter in the batch. No gradient."""
    compute = _compute_dtype(x2, table)
    xv = _half_spectrum(x2, compute)
    out = xv.new_zeros(x2.shape[0], index.d_out)
    for r in index.ranges:
        h = apply_map_rows(xv, r.forward, table[:, r.offset :], which)
        out[:, r.start : r.stop] += _irfft_rows(h, r.stop - r.start)
    return out


def base_plus(term: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """(x2 W^T + b + term) with one rounding to ``out_dtype``: term (T, d_out) in float32/64."""
    if bias is not None:
        term = term + bias.to(term.dtype)
    return _plus_base_f32(term, x2, weight.t(), out_dtype)


def spectral_backward(g2, x2, coeffs, index, want_x: bool, want_c: bool):
    """The fft path's backward from g2 (T, d_out) and x2 (T, d_in): (g dW in float32/64 or None,
    dL/dc in the coefficients' dtype or None). The spectrum of x is recomputed: keeping it from the
    forward would cost more memory than the rFFT costs time."""
    compute = _compute_dtype(x2, coeffs, g2)
    gvs = [_half_spectrum(g2 if index.full else g2[:, r.start : r.stop], compute) for r in index.ranges]
    term = spectral_term_t(gvs, coeffs.to(compute), index) if want_x else None
    grad_c = None
    if want_c:
        xv = _half_spectrum(x2, compute)
        grad_c = sum(sampled_grad(gv, xv, r, index.n_coeffs) for gv, r in zip(gvs, index.ranges)).to(coeffs.dtype)
    return term, grad_c


class _SpectralTerm(torch.autograd.Function):
    """x dW^T alone (T, d_out) in float32 (float64), differentiable in x and the coefficients: the
    adapter term beside a base layer that computes x W^T itself (quantized weights)."""

    @staticmethod
    def forward(ctx, x2, coeffs, index):
        compute = _compute_dtype(x2, coeffs)
        ctx.index = index
        ctx.save_for_backward(x2, coeffs)
        return spectral_term(_half_spectrum(x2, compute), coeffs.to(compute), index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_term):
        x2, coeffs = ctx.saved_tensors
        term, grad_c = spectral_backward(grad_term, x2, coeffs, ctx.index, *ctx.needs_input_grad[:2])
        return (None if term is None else term.to(x2.dtype)), grad_c, None


def adapter_term(x: torch.Tensor, coeffs: torch.Tensor, index: SpectralIndex) -> torch.Tensor:
    """x dW^T for x (..., d_in): (..., d_out) in float32 (float64 for float64 inputs), from row FFTs."""
    return _SpectralTerm.apply(x.reshape(-1, index.d_in), coeffs, index).reshape(*x.shape[:-1], index.d_out)


class _FourierLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, coeffs, plan, mode, index):
        # x (..., d_in), weight (d_out, d_in), coeffs (n_total,) already scaled
        d_out, d_in = weight.shape
        ctx.plan, ctx.mode, ctx.index, ctx.has_bias = plan, mode, index, bias is not None
        if mode == "fft":
            compute = _compute_dtype(x, coeffs)
            x2 = x.reshape(-1, d_in)
            xv = _half_spectrum(x2, compute)
            term = spectral_term(xv, coeffs.to(compute), index)  # (T, d_out)
            y = base_plus(term, x2, weight, bias, x.dtype).reshape(*x.shape[:-1], d_out)
            ctx.save_for_backward(x, weight, coeffs)
            return y
        w_eff = effective_weight(weight, plan_delta_weight(coeffs, plan, d_out, d_in), mode == "merged", x.dtype)
        y = apply_effective(x, weight, bias, w_eff, mode == "merged")
        # CPU: keep W_eff for grad_x (no rebuild). GPU: rebuild it, keeping peak memory at the base model's.
        ctx.save_for_backward(x, weight, coeffs, w_eff if x.device.type == "cpu" else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.mode == "fft":
            return _FourierLinear._backward_fft(ctx, grad_out)
        x, weight, coeffs, w_eff = ctx.saved_tensors
        d_out, d_in = weight.shape
        g = grad_out.reshape(-1, d_out)  # (T, d_out)
        grad_x = grad_bias = grad_coeffs = None
        if ctx.needs_input_grad[0]:
            if w_eff is None:
                w_eff = effective_weight(weight, plan_delta_weight(coeffs, ctx.plan, d_out, d_in), ctx.mode == "merged", x.dtype)
            w_eff = w_eff.to(grad_out.dtype)
            grad_x = grad_out @ w_eff if ctx.mode == "merged" else _separate(grad_out, weight.t(), None, w_eff.t())
            grad_x = grad_x.to(x.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        if ctx.needs_input_grad[3]:
            grad_coeffs = plan_coeff_grad(g, x, ctx.plan, coeffs.numel()).to(coeffs.dtype)
        return grad_x, None, grad_bias, grad_coeffs, None, None, None

    @staticmethod
    def _backward_fft(ctx, grad_out):
        x, weight, coeffs = ctx.saved_tensors
        d_out, d_in = weight.shape
        g2 = grad_out.reshape(-1, d_out)  # (T, d_out)
        term, grad_coeffs = spectral_backward(g2, x.reshape(-1, d_in), coeffs, ctx.index, ctx.needs_input_grad[0], ctx.needs_input_grad[3])
        grad_x = None if term is None else _plus_base_f32(term, g2, weight, x.dtype).reshape(x.shape)  # term: (T, d_in)
        grad_bias = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, grad_coeffs, None, None, None


def needs_separate_term(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when W + dW would be rounded below float32 (bf16/fp16 inputs or weights, or autocast)."""
    device = x.device.type
    autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) not in (torch.float32, torch.float64)
    return autocast or x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype


def resolve_mode(mode: str, x: torch.Tensor, weight: torch.Tensor) -> str:
    """The concrete path "auto" stands for with these operands."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if mode != "auto":
        return mode
    if weight.requires_grad:
        return "reference"
    if not needs_separate_term(x, weight):
        return "merged"
    return "fft" if x.device.type == "cuda" else "separate"


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The lower-precision dtype autocast would run a linear layer in here, or None."""
    device = x.device.type
    if device not in ("cuda", "cpu") or not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    return None if dtype in (torch.float32, torch.float64) else dtype


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
    index: SpectralIndex | None = None,
) -> torch.Tensor:
    """y = x (W + dW)^T + b, x (..., d_in) -> (..., d_out). ``weight`` is (d_out, d_in) (a view is fine).

    ``mode``: "merged" (one matmul; exact in fp32/fp64 only), "separate" (the adapter term as its
    own matmul; for bf16/fp16), "fft" (dW never formed: row FFTs of x forward and of g backward,
    O(T d log d + T n)), "reference" (autograd through ``functional.delta_weight``), or "auto"
    (merged when x and W are fp32/fp64; below that fft on CUDA and separate elsewhere; reference
    when W needs a gradient). Under autocast the layer runs in autocast's dtype, as ``F.linear`` would,
    with the adapter term still added before the output's single rounding.
    """
    mode = resolve_mode(mode, x, weight)
    low = _autocast_dtype(x) if mode != "reference" else None
    if low is not None:
        x, weight = x.to(low), weight.to(low)
        bias = None if bias is None else bias.to(low)
        with torch.autocast(x.device.type, enabled=False):
            return fourier_linear(x, weight, bias, coeffs, plan, mode, index)
    if mode == "reference":
        return _reference(x, weight, bias, coeffs, plan)
    if mode == "fft" and index is None:
        index = build_index(plan, weight.shape[0], weight.shape[1], coeffs.numel(), x.device)
    return _FourierLinear.apply(x, weight, bias, coeffs, plan, mode, index)
