"""The adapter term and its gradients from row FFTs only: dW is never formed ("fft" mode).

With c already scaled, a block of output rows [start, stop) (m rows) over d_in columns and
X = rfft(x) along features (one row per token), the three products a training step needs are
(see ``functional`` for dW; derivations in the comments below):

    x dW^T   = irfft_m(H) / d_in,   H = A_c(X)         (forward,  (T, d_in) -> (T, m))
    g dW     = irfft_d_in(H') / m,  H' = B_c(G)        (backward, (T, m) -> (T, d_in)), G = rfft(g)
    dL/dc_l  = Re(sum_t G[t, j_l] X[t, k_l]) / (m d_in)

A_c and B_c are sparse real-linear maps between half spectra, linear in c: each position l
contributes c_l / 2 times X at its folded column (conjugated or not) to at most two bins of H,
the Hermitian part of Z[t, j] = sum_{l: j_l = j} c_l conj(X[t, k_l]), because Re(ifft(Z)) =
irfft(H) with H[j] = (Z[j] + conj(Z[-j])) / 2. Everything is O(T d log d + T n): no d_out x d_in
matrix, no second matmul, and in bf16 the term is added to x W^T in float32 before the single
rounding of the output.

A map is stored as a CSR pattern over destination columns of the real view (re, im interleaved,
``torch.view_as_real``), with, per entry, the source column, the coefficient it multiplies and a
sign (times 1/2 over the normalisation). ``SpectralIndex`` holds, per output-row range, the forward
map, the transposed map and the folded pairs of the coefficient gradient; layers build one per
position set (``build_index``) when an adapter is added, and ``combine`` joins several adapters'.

Pure-PyTorch implementations run everywhere (float64 too) and are the reference for the Triton
kernels in ``triton_kernels``, used on CUDA when Triton is installed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = ["SpectralMap", "RangeIndex", "SpectralIndex", "build_index", "combine", "apply_map", "apply_map_rows", "sampled_grad", "use_triton"]


@dataclass(frozen=True, eq=False)
class SpectralMap:
    """out[:, d] = scale * sum_{e in ptr[d]:ptr[d+1]} sign[e] * c[coef[e]] * v[:, src[e]] on real views."""

    ptr: torch.Tensor  # (dst_width + 1,) int32
    dst: torch.Tensor  # (nnz,) int64, the destination of each entry (ptr expanded)
    src: torch.Tensor  # (nnz,) int64
    coef: torch.Tensor  # (nnz,) int64
    sign: torch.Tensor  # (nnz,) float32, +-1
    scale: float  # 1 / (2 norm)
    dst_width: int  # 2 * (dst_size // 2 + 1)
    max_per_dst: int


@dataclass(frozen=True, eq=False)
class RangeIndex:
    start: int
    stop: int
    forward: SpectralMap  # X (d_in half spectrum) -> H (m half spectrum)
    transpose: SpectralMap  # G (m half spectrum) -> H' (d_in half spectrum)
    grad_g: torch.Tensor  # (n,) int64: real-view column 2 * jf of G
    grad_x: torch.Tensor  # (n,) int64: real-view column 2 * kf of X
    grad_sign: torch.Tensor  # (n,) float: -1 when exactly one of j, k is mirrored, else +1
    grad_coef: torch.Tensor  # (n,) int64: coefficient of each pair
    grad_scale: float  # 1 / (m d_in)
    offset: int = 0  # added to every coefficient index: where this range's adapter starts in the flat vector


@dataclass(frozen=True, eq=False)
class SpectralIndex:
    d_out: int
    d_in: int
    n_coeffs: int
    ranges: tuple[RangeIndex, ...]

    @property
    def full(self) -> bool:
        """One range covering every output row."""
        return len(self.ranges) == 1 and self.ranges[0].start == 0 and self.ranges[0].stop == self.d_out


def _fold(idx: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index into the rfft half: (folded, mirrored); X[k] = conj(X[size - k]) when mirrored."""
    mirrored = idx > size // 2
    return torch.where(mirrored, size - idx, idx), mirrored


def _build_map(src_idx, dst_idx, coef, src_size, dst_size, norm) -> SpectralMap:
    """Entries of the map taking the src half spectrum to H, the Hermitian part over dst.

    Position l: v = c_l conj(S[src_l]) = c_l (S[sf] if mirrored else conj(S[sf])) adds v / 2 at
    H[dst_l] (if dst_l <= dst_size / 2) and conj(v) / 2 at H[-dst_l] (if -dst_l mod dst_size <= dst_size / 2).
    """
    sf, mirrored = _fold(src_idx, src_size)
    im_sign = torch.where(mirrored, 1.0, -1.0).to(torch.float64)  # sign of Im(S[sf]) in v
    half = dst_size // 2
    parts = []
    for bins, conj in ((dst_idx, 1.0), ((-dst_idx) % dst_size, -1.0)):
        keep = bins <= half
        b, s, c, sign = bins[keep], sf[keep], coef[keep], im_sign[keep]
        parts.append((2 * b, 2 * s, c, torch.ones_like(sign)))  # real part
        parts.append((2 * b + 1, 2 * s + 1, c, sign * conj))  # imaginary part
    dst = torch.cat([p[0] for p in parts])
    src = torch.cat([p[1] for p in parts])
    cf = torch.cat([p[2] for p in parts])
    sign = torch.cat([p[3] for p in parts])
    order = torch.sort(dst * (2 * (src_size // 2 + 1)) + src, stable=True).indices  # CSR by dst, then src
    dst, src, cf, sign = dst[order], src[order], cf[order], sign[order]
    width = 2 * (half + 1)
    counts = torch.bincount(dst, minlength=width)
    ptr = torch.zeros(width + 1, dtype=torch.int64)
    ptr[1:] = counts.cumsum(0)
    return SpectralMap(ptr.to(torch.int32), dst, src, cf, sign.to(torch.float32), 0.5 / norm, width, int(counts.max()) if counts.numel() else 0)


def build_index(plan, d_out: int, d_in: int, n_coeffs: int, device) -> SpectralIndex:
    """The maps of a plan (``kernels.Block`` tuple), built on the CPU and moved to ``device`` once."""
    groups: dict[tuple[int, int], list] = {}
    for b in plan:
        groups.setdefault((b.start, b.stop), []).append(b)
    ranges = []
    for (start, stop), blocks in groups.items():
        m = stop - start
        rows = torch.cat([b.rows.cpu() for b in blocks])
        cols = torch.cat([b.cols.cpu() for b in blocks])
        coef = torch.cat([torch.arange(b.offset, b.offset + b.n) for b in blocks])
        fwd = _build_map(cols, rows, coef, d_in, m, d_in)
        bwd = _build_map(rows, cols, coef, m, d_in, m)
        jf, mj = _fold(rows, m)
        kf, mk = _fold(cols, d_in)
        sign = 1.0 - 2.0 * (mj ^ mk).to(torch.float32)
        order = torch.sort(jf * (d_in // 2 + 1) + kf, stable=True).indices  # neighbours read neighbouring columns
        ranges.append(RangeIndex(start, stop, fwd, bwd, 2 * jf[order], 2 * kf[order], sign[order], coef[order], 1.0 / (m * d_in)))
    return _to(SpectralIndex(d_out, d_in, n_coeffs, tuple(ranges)), device)


def _to(index: SpectralIndex, device) -> SpectralIndex:
    def move(obj):
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(obj).items()}
        return type(obj)(**fields)

    ranges = tuple(
        RangeIndex(r.start, r.stop, move(r.forward), move(r.transpose), r.grad_g.to(device), r.grad_x.to(device), r.grad_sign.to(device), r.grad_coef.to(device), r.grad_scale, r.offset)
        for r in index.ranges
    )
    return SpectralIndex(index.d_out, index.d_in, index.n_coeffs, ranges)


def combine(indices: list[tuple[SpectralIndex, int]]) -> SpectralIndex:
    """One index for several adapters' indices, each with the offset of its coefficients in the flat vector."""
    first = indices[0][0]
    ranges = tuple(dataclasses.replace(r, offset=r.offset + offset) for index, offset in indices for r in index.ranges)
    return SpectralIndex(first.d_out, first.d_in, sum(index.n_coeffs for index, _ in indices), ranges)


def use_triton(t: torch.Tensor) -> bool:
    """Triton kernels for CUDA tensors of float32 when Triton is importable (eager only: under
    torch.compile the PyTorch code below is traced and Inductor generates its own kernels)."""
    if t.device.type != "cuda" or t.dtype != torch.float32 or torch.compiler.is_compiling():
        return False
    from . import triton_kernels

    return triton_kernels.AVAILABLE


def apply_map(v: torch.Tensor, smap: SpectralMap, coeffs: torch.Tensor) -> torch.Tensor:
    """The map on a real view v (T, 2 * src_half) -> (T, dst_width), in v's dtype."""
    if use_triton(v):
        from .triton_kernels import spectral_map

        return spectral_map(v, smap, coeffs)
    weights = smap.sign.to(v.dtype) * coeffs.to(v.dtype)[smap.coef] * smap.scale  # (nnz,)
    out = v.new_zeros(v.shape[0], smap.dst_width)
    return out.index_add_(1, smap.dst, v[:, smap.src] * weights)


def sampled_grad(gv: torch.Tensor, xv: torch.Tensor, r: RangeIndex, n_coeffs: int) -> torch.Tensor:
    """dL/dc of one range from real views gv (T, 2 (m//2+1)) and xv (T, 2 (d_in//2+1)): (n_coeffs,)."""
    if use_triton(gv) and use_triton(xv):
        from .triton_kernels import sampled_cross

        per_pair = sampled_cross(gv, xv, r)
    else:
        real = (gv[:, r.grad_g] * xv[:, r.grad_x]).sum(0)
        imag = (gv[:, r.grad_g + 1] * xv[:, r.grad_x + 1]).sum(0)
        per_pair = (real - r.grad_sign.to(gv.dtype) * imag) * r.grad_scale
    return gv.new_zeros(n_coeffs).index_add_(0, r.grad_coef + r.offset if r.offset else r.grad_coef, per_pair)


def apply_map_rows(v: torch.Tensor, smap: SpectralMap, table: torch.Tensor, which: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The map with per-token coefficients: token t uses row ``which[t]`` of ``table`` (k, n_coeffs).

    Serving many adapters that share positions in one batch: the row spectrum v is shared, only the
    gathered weights differ. v (T, 2 * src_half) -> (T, dst_width), in v's dtype; chunked over tokens.
    """
    weights = table.to(v.dtype)[:, smap.coef] * (smap.sign.to(v.dtype) * smap.scale)  # (k, nnz)
    out = v.new_zeros(v.shape[0], smap.dst_width)
    for start in range(0, v.shape[0], chunk):
        stop = min(start + chunk, v.shape[0])
        out[start:stop].index_add_(1, smap.dst, v[start:stop, smap.src] * weights[which[start:stop]])
    return out
