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

import warnings
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .functional import delta_weight

__all__ = [
    "Block",
    "MODES",
    "plan_delta_weight",
    "plan_coeff_grad",
    "fourier_linear",
    "needs_separate_term",
    "resolve_mode",
    "effective_weight",
    "apply_effective",
]

MODES = ("auto", "merged", "separate", "fft", "reference")


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


_MEMO: dict[int, tuple] = {}  # id(tensor) -> (weakref to it, {kind: (key, value)}); dropped with the tensor


def _memo(owner: torch.Tensor, kind: str, key: tuple, build):
    """``build()``, computed once per live tensor ``owner`` and ``kind`` while ``key`` is unchanged."""
    slot = _MEMO.get(id(owner))
    if slot is None or slot[0]() is not owner:
        weakref.finalize(owner, _MEMO.pop, id(owner), None)
        slot = _MEMO[id(owner)] = (weakref.ref(owner), {})
    hit = slot[1].get(kind)
    if hit is None or hit[0] != key:
        hit = slot[1][kind] = (key, build())
    return hit[1]


def _positions_key(rows, cols, m, n):
    return (id(cols), rows._version, cols._version, m, n)


def _hermitian_index(rows, cols, m, n):
    """Where c_l / 2 lands in the flattened left half (m, n//2 + 1) of H = (F + F[-j, -k]) / 2."""
    half = n // 2 + 1
    keep, mirrored = cols < half, (-cols) % n < half
    mrows, mcols = (-rows) % m, (-cols) % n
    flat = torch.cat([rows[keep] * half + cols[keep], mrows[mirrored] * half + mcols[mirrored]])
    source = torch.cat([keep.nonzero().flatten(), mirrored.nonzero().flatten()])
    return flat, source


def _block_delta(coeffs, rows, cols, d_out, d_in):
    """Re(ifft2(ToDense)) of one grid via irfft2 of its Hermitian part's left half: (d_out, d_in).

    For real F, Re(ifft2(F)) = ifft2(H) with H = (F + F[-j, -k]) / 2 Hermitian, i.e. irfft2 of H's half.
    """
    flat, source = _memo(rows, "hermitian", _positions_key(rows, cols, d_out, d_in), lambda: _hermitian_index(rows, cols, d_out, d_in))
    half = coeffs.new_zeros(d_out * (d_in // 2 + 1)).index_add_(0, flat, coeffs[source] * 0.5)
    complex_dtype = torch.complex128 if coeffs.dtype == torch.float64 else torch.complex64
    return torch.fft.irfft2(half.view(d_out, -1).to(complex_dtype), s=(d_out, d_in))


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


def _fold(rows: torch.Tensor, cols: torch.Tensor, m: int, n: int) -> _Folded:
    def build():
        mh, nh = m // 2 + 1, n // 2 + 1
        mirror_j, mirror_k = rows > m // 2, cols > n // 2
        jf = torch.where(mirror_j, m - rows, rows)
        kf = torch.where(mirror_k, n - cols, cols)
        sign = 1.0 - 2.0 * (mirror_j ^ mirror_k).to(torch.float64)
        uniq, inverse = torch.unique(jf * nh + kf, sorted=True, return_inverse=True)
        crow = torch.zeros(mh + 1, dtype=torch.long, device=rows.device)
        crow[1:] = torch.bincount(uniq // nh, minlength=mh).cumsum(0)
        return _Folded(jf, kf, sign, crow, uniq % nh, inverse, (mh, nh))

    return _memo(rows, "folded", _positions_key(rows, cols, m, n), build)


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

    dL/dc_l = Re(sum_t G[t, j_l] X[t, k_l]) / (m d_in), G / X: FFTs of g / x along features. The
    spectrum of x is kept while x lives, so sibling layers reading the same input (q, k, v) share it.
    """
    compute = _compute_dtype(g, x)
    d_in = x.shape[-1]
    g = g.reshape(-1, g.shape[-1])  # (T, d_out)
    xp = _memo(x, "planes", (x._version, compute), lambda: _planes(x.reshape(-1, d_in), compute))
    grad = torch.zeros(n_coeffs, dtype=compute, device=x.device)
    for (start, stop), blocks in _by_range(plan).items():
        m = stop - start
        gp = _planes(g[:, start:stop], compute)  # (2, m//2 + 1, T)
        for b in blocks:
            grad[b.offset : b.offset + b.n] = _sampled_cross(_fold(b.rows, b.cols, m, d_in), gp, xp) / (m * d_in)
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


def _spectral_apply(v, src, dst, coeffs, dst_size, norm):
    """Rows of v (T, size) through the sampled spectrum without forming it: (T, dst_size).

    Forward (y = x dW^T): src = cols, dst = rows, norm = d_in. Transposed (g dW): src = rows,
    dst = cols, norm = m. Z[t, d] = sum_{l: dst_l = d} c_l conj(V[t, src_l]); out = Re(ifft(Z)) / norm.
    """
    spectrum = torch.fft.fft(v, dim=-1)  # (T, size)
    z = spectrum.new_zeros(v.shape[0], dst_size).index_add_(1, dst, spectrum[:, src].conj() * coeffs)
    return torch.fft.ifft(z, dim=-1).real / norm


def plan_apply_fft(x2, coeffs, plan, d_out, d_in, transpose=False):
    """x2 dW^T (T, d_out), or with ``transpose`` g2 dW (T, d_in), from row FFTs only: O(T d log d + T n)."""
    compute = _compute_dtype(x2, coeffs)
    coeffs = coeffs.to(compute)
    out = x2.new_zeros(x2.shape[0], d_in if transpose else d_out, dtype=compute)
    for (start, stop), blocks in _by_range(plan).items():
        m = stop - start
        for b in blocks:
            c = coeffs[b.offset : b.offset + b.n]
            if transpose:
                out += _spectral_apply(x2[:, start:stop].to(compute), b.rows, b.cols, c, d_in, m)
            else:
                out[:, start:stop] += _spectral_apply(x2.to(compute), b.cols, b.rows, c, m, d_in)
    return out


class _FourierLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, coeffs, plan, mode):
        # x (..., d_in), weight (d_out, d_in), coeffs (n_total,) already scaled
        d_out, d_in = weight.shape
        w_eff = None
        if mode == "fft":
            term = plan_apply_fft(x.reshape(-1, d_in), coeffs, plan, d_out, d_in).to(x.dtype)
            y = _plus_base(term if bias is None else term + bias.to(x.dtype), x, weight)
        else:
            w_eff = effective_weight(weight, plan_delta_weight(coeffs, plan, d_out, d_in), mode == "merged", x.dtype)
            y = apply_effective(x, weight, bias, w_eff, mode == "merged")
        ctx.plan, ctx.mode, ctx.has_bias = plan, mode, bias is not None
        # CPU: keep W_eff for grad_x (no rebuild). GPU: rebuild it, keeping peak memory at the base model's.
        ctx.save_for_backward(x, weight, coeffs, w_eff if x.device.type == "cpu" else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, coeffs, w_eff = ctx.saved_tensors
        d_out, d_in = weight.shape
        g = grad_out.reshape(-1, d_out)  # (T, d_out)
        grad_x = grad_bias = grad_coeffs = None
        if ctx.needs_input_grad[0]:
            if ctx.mode == "fft":
                term = plan_apply_fft(g, coeffs, ctx.plan, d_out, d_in, transpose=True).to(grad_out.dtype)
                grad_x = _plus_base(term, grad_out, weight.t())
            else:
                if w_eff is None:
                    w_eff = effective_weight(weight, plan_delta_weight(coeffs, ctx.plan, d_out, d_in), ctx.mode == "merged", x.dtype)
                w_eff = w_eff.to(grad_out.dtype)
                grad_x = grad_out @ w_eff if ctx.mode == "merged" else _separate(grad_out, weight.t(), None, w_eff.t())
            grad_x = grad_x.to(x.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        if ctx.needs_input_grad[3]:
            grad_coeffs = plan_coeff_grad(g, x, ctx.plan, coeffs.numel()).to(coeffs.dtype)
        return grad_x, None, grad_bias, grad_coeffs, None, None


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
    return "separate" if needs_separate_term(x, weight) else "merged"


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
    own matmul; for bf16/fp16), "fft" (dW never formed: row FFTs of x forward and of g backward,
    O(T d log d + T n)), "reference" (autograd through ``functional.delta_weight``), or "auto"
    (merged when x and W are fp32/fp64, else separate; reference when W needs a gradient).
    """
    mode = resolve_mode(mode, x, weight)
    if mode == "reference":
        return _reference(x, weight, bias, coeffs, plan)
    return _FourierLinear.apply(x, weight, bias, coeffs, plan, mode)
