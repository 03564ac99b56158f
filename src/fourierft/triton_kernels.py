"""Triton kernels for the two sparse steps of ``spectral`` (float32, CUDA; reference: its PyTorch code).

- ``spectral_map``: out (T, D) = the CSR map of a real-view spectrum v (T, S), one program per
  (BLOCK_T tokens, BLOCK_D destination columns); every output element is written once (no zero
  fill, no atomics, deterministic). Programs along D run next to each other so the BLOCK_T rows
  of v they gather from stay in L2.
- ``sampled_cross``: per pair l, sum_t G[t, g_l] X[t, x_l] - sign_l G[t, g_l + 1] X[t, x_l + 1],
  as partial sums over token chunks (one program per (BLOCK_L pairs, chunk)), then a sum over
  chunks: deterministic, no atomics.

``AVAILABLE`` is False when Triton cannot be imported; callers then use the PyTorch code.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the installation
    AVAILABLE = False

__all__ = ["AVAILABLE", "spectral_map", "sampled_cross"]

if AVAILABLE:

    @triton.jit
    def _map_kernel(v_ptr, out_ptr, ptr_ptr, src_ptr, coef_ptr, sign_ptr, c_ptr, scale, T, S, D, max_per_dst, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_d = tl.program_id(0)
        pid_t = tl.program_id(1)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_t = offs_t < T
        mask_d = offs_d < D
        rows = offs_t.to(tl.int64)[:, None]
        start = tl.load(ptr_ptr + offs_d, mask=mask_d, other=0)
        stop = tl.load(ptr_ptr + offs_d + 1, mask=mask_d, other=0)
        acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for i in range(0, max_per_dst):
            e = start + i
            live = e < stop
            src = tl.load(src_ptr + e, mask=live, other=0)
            coef = tl.load(coef_ptr + e, mask=live, other=0)
            w = tl.load(sign_ptr + e, mask=live, other=0.0) * tl.load(c_ptr + coef, mask=live, other=0.0)
            vals = tl.load(v_ptr + rows * S + src[None, :], mask=mask_t[:, None] & live[None, :], other=0.0)
            acc += vals * w[None, :]
        tl.store(out_ptr + rows * D + offs_d[None, :], acc * scale, mask=mask_t[:, None] & mask_d[None, :])

    @triton.jit
    def _cross_kernel(g_ptr, x_ptr, gi_ptr, xi_ptr, sign_ptr, out_ptr, T, SG, SX, n, rows_per_chunk, BLOCK_L: tl.constexpr, BLOCK_T: tl.constexpr):
        pid_l = tl.program_id(0)
        pid_c = tl.program_id(1)
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_l = offs_l < n
        gi = tl.load(gi_ptr + offs_l, mask=mask_l, other=0)
        xi = tl.load(xi_ptr + offs_l, mask=mask_l, other=0)
        sign = tl.load(sign_ptr + offs_l, mask=mask_l, other=0.0)
        acc = tl.zeros((BLOCK_T, BLOCK_L), dtype=tl.float32)
        first = pid_c * rows_per_chunk
        for t0 in range(0, rows_per_chunk, BLOCK_T):
            offs_t = first + t0 + tl.arange(0, BLOCK_T)
            m = (offs_t < T)[:, None] & mask_l[None, :]
            rows = offs_t.to(tl.int64)[:, None]
            g_re = tl.load(g_ptr + rows * SG + gi[None, :], mask=m, other=0.0)
            g_im = tl.load(g_ptr + rows * SG + gi[None, :] + 1, mask=m, other=0.0)
            x_re = tl.load(x_ptr + rows * SX + xi[None, :], mask=m, other=0.0)
            x_im = tl.load(x_ptr + rows * SX + xi[None, :] + 1, mask=m, other=0.0)
            acc += g_re * x_re - sign[None, :] * (g_im * x_im)
        tl.store(out_ptr + pid_c * n + offs_l, tl.sum(acc, axis=0), mask=mask_l)


def spectral_map(v: torch.Tensor, smap, coeffs: torch.Tensor) -> torch.Tensor:
    """``spectral.apply_map`` for float32 v (T, S) contiguous: (T, smap.dst_width)."""
    v = v.contiguous()
    T, S = v.shape
    out = torch.empty(T, smap.dst_width, device=v.device, dtype=torch.float32)
    if T == 0:
        return out
    c = coeffs.detach().to(torch.float32).contiguous()
    BLOCK_T, BLOCK_D = 32, 64
    grid = (triton.cdiv(smap.dst_width, BLOCK_D), triton.cdiv(T, BLOCK_T))
    _map_kernel[grid](v, out, smap.ptr, smap.src, smap.coef, smap.sign, c, smap.scale, T, S, smap.dst_width, smap.max_per_dst, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D)
    return out


def sampled_cross(gv: torch.Tensor, xv: torch.Tensor, r) -> torch.Tensor:
    """Per-pair (grad_g, grad_x) real cross sums times grad_scale, pairs in ``r``'s order: (n,)."""
    gv, xv = gv.contiguous(), xv.contiguous()
    T = gv.shape[0]
    n = r.grad_g.numel()
    BLOCK_L, BLOCK_T = 64, 32
    rows_per_chunk = 256
    chunks = max(1, triton.cdiv(T, rows_per_chunk))
    partial = torch.empty(chunks, n, device=gv.device, dtype=torch.float32)
    grid = (triton.cdiv(n, BLOCK_L), chunks)
    _cross_kernel[grid](gv, xv, r.grad_g, r.grad_x, r.grad_sign, partial, T, gv.shape[1], xv.shape[1], n, rows_per_chunk, BLOCK_L=BLOCK_L, BLOCK_T=BLOCK_T)
    return partial.sum(0) * r.grad_scale
