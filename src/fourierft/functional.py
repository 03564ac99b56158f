"""FourierFT math as pure functions: tensors in, tensors out.

A FourierFT adapter learns n real coefficients c at n fixed positions E = {(j_l, k_l)} of the 2-D
spectrum of a weight update. For a weight read as a matrix W of shape (d_out, d_in):

    F  = ToDense(E, c)                  (d_out, d_in) complex, F[j_l, k_l] = c_l, zero elsewhere
    dW = scaling * Re(ifft2(F))         torch's default ("backward") norm: ifft2 divides by d_out*d_in

or written out, dW[p, q] = scaling / (d_out d_in) * sum_l c_l cos(2 pi (j_l p / d_out + k_l q / d_in)).

Conventions used everywhere in the package:
- rows index the output dimension (j in [0, d_out)), cols the input dimension (k in [0, d_in));
  dW is always (d_out, d_in), whatever the base layer stores (GPT-2's Conv1D stores W transposed).
- positions are a function of (d_out, d_in, n, seed, sampler) only, so they are regenerated on
  load instead of being saved. Samplers are named and versioned (``SAMPLERS``); the name is saved.

Samplers:
- ``uniform``  ("uniform-randperm-v1"): PEFT's draw, bit for bit:
  ``idx = randperm(d_out*d_in, generator=Generator().manual_seed(seed))[:n]``,
  rows = idx // d_in, cols = idx % d_in.
- ``uniform-fast`` ("uniform-rejection-v1"): uniform without replacement without materialising a
  permutation of the grid (for huge grids such as vocab x dim embeddings). Integers are drawn with
  ``randint(0, d_out*d_in, (max(2*(n - have), 1024),), generator)`` in rounds; the first n distinct
  values in draw order are kept.
- ``frequency-bias`` ("frequency-bias-es-v1"): paper Eq. 5. Each position (j, k) gets the weight
  p = exp(-((D^2 - f_c^2) / (D * width))^2), where D is the Euclidean distance (in grid cells)
  of (j, k) from the centre of the fftshift-ed grid: with u = (j + d_out//2) mod d_out and
  v = (k + d_in//2) mod d_in (torch.fft.fftshift's convention), D = sqrt((u - d_out//2)^2 +
  (v - d_in//2)^2), i.e. the distance of the signed frequency pair from zero. At D = 0, p is its
  limit: 1 when f_c = 0, else 0. n positions are drawn without replacement with probabilities
  proportional to p (successive sampling), exactly, by the Efraimidis-Spirakis method: with
  U ~ Uniform(0, 1) per position from ``rand(d_out*d_in, dtype=float64, generator)``, keep the n
  smallest keys -log(U) / p, in increasing key order.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import torch

__all__ = [
    "SAMPLERS",
    "spectral_positions",
    "frequency_bias_weights",
    "positions_fingerprint",
    "dense_spectrum",
    "delta_weight",
    "delta_rows",
]

# sampler name -> versioned identifier written to adapter metadata
SAMPLERS = {
    "uniform": "uniform-randperm-v1",
    "uniform-fast": "uniform-rejection-v1",
    "frequency-bias": "frequency-bias-es-v1",
}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _uniform_randperm(d_out: int, d_in: int, n: int, seed: int) -> torch.Tensor:
    return torch.randperm(d_out * d_in, generator=_generator(seed))[:n]


def _uniform_rejection(d_out: int, d_in: int, n: int, seed: int) -> torch.Tensor:
    total, gen = d_out * d_in, _generator(seed)
    draws: list[torch.Tensor] = []
    have = 0
    while have < n:
        draws.append(torch.randint(0, total, (max(2 * (n - have), 1024),), generator=gen))
        values = torch.cat(draws)
        uniq, inverse = torch.unique(values, return_inverse=True)
        first = torch.full((uniq.numel(),), values.numel(), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(values.numel()), reduce="amin")
        have = uniq.numel()
    return uniq[first.argsort()][:n]


def frequency_bias_weights(d_out: int, d_in: int, f_c: float, width: float) -> torch.Tensor:
    """Paper Eq. 5 sampling weights on the (unshifted) (d_out, d_in) grid, float64."""
    if width <= 0:
        raise ValueError(f"frequency-bias width must be > 0, got {width}")
    du = (torch.arange(d_out, dtype=torch.float64) + d_out // 2) % d_out - d_out // 2
    dv = (torch.arange(d_in, dtype=torch.float64) + d_in // 2) % d_in - d_in // 2
    dist = torch.sqrt(du[:, None] ** 2 + dv[None, :] ** 2)  # (d_out, d_in)
    with torch.no_grad():
        p = torch.exp(-(((dist**2 - f_c**2) / (dist * width)) ** 2))
    p[0, 0] = 1.0 if f_c == 0 else 0.0  # D = 0: the limit of the formula
    return p


def _frequency_bias(d_out: int, d_in: int, n: int, seed: int, f_c: float, width: float) -> torch.Tensor:
    p = frequency_bias_weights(d_out, d_in, f_c, width).flatten()
    support = int((p > 0).sum())
    if support < n:
        raise ValueError(
            f"frequency-bias sampler (f_c={f_c}, width={width}) gives only {support} positions with "
            f"non-zero probability on a {d_out}x{d_in} grid, fewer than n_frequency={n}; "
            "widen the band (larger width) or lower n_frequency"
        )
    u = torch.rand(p.numel(), dtype=torch.float64, generator=_generator(seed))
    keys = -torch.log(u) / p  # p == 0 -> inf, never chosen
    return torch.topk(keys, n, largest=False, sorted=True).indices


@lru_cache(maxsize=512)
def _cached_positions(d_out, d_in, n, seed, sampler, f_c, width):
    if sampler == "uniform":
        idx = _uniform_randperm(d_out, d_in, n, seed)
    elif sampler == "uniform-fast":
        idx = _uniform_rejection(d_out, d_in, n, seed)
    else:
        idx = _frequency_bias(d_out, d_in, n, seed, f_c, width)
    return idx // d_in, idx % d_in


def spectral_positions(
    d_out: int,
    d_in: int,
    n: int,
    seed: int,
    sampler: str = "uniform",
    f_c: float = 0.0,
    width: float = 200.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The n spectral positions (rows, cols), int64 CPU tensors of shape (n,). Cached per argument set.

    ``f_c`` and ``width`` are used by the ``frequency-bias`` sampler only.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if not 0 < n <= d_out * d_in:
        raise ValueError(f"n must be in [1, {d_out * d_in}] for a {d_out}x{d_in} grid, got {n}")
    if sampler != "frequency-bias":
        f_c, width = 0.0, 200.0  # irrelevant: keep one cache entry
    rows, cols = _cached_positions(int(d_out), int(d_in), int(n), int(seed), sampler, float(f_c), float(width))
    return rows.clone(), cols.clone()


def positions_fingerprint(rows: torch.Tensor, cols: torch.Tensor) -> str:
    """A short, platform-independent hash of a position set (sha256 of little-endian int64 pairs)."""
    pairs = torch.stack([rows.cpu(), cols.cpu()]).to(torch.int64).contiguous()
    return hashlib.sha256(pairs.numpy().astype("<i8").tobytes()).hexdigest()[:16]


def dense_spectrum(coeffs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """F = ToDense(E, c): (d_out, d_in) real tensor with c scattered (added) at (rows, cols)."""
    spectrum = coeffs.new_zeros(d_out, d_in)
    return spectrum.index_put((rows, cols), coeffs, accumulate=True)


def delta_weight(
    coeffs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, d_out: int, d_in: int, scaling: float
) -> torch.Tensor:
    """The readable reference: dW = scaling * Re(ifft2(ToDense(E, c))), shape (d_out, d_in).

    FFTs run in float32 (float64 for float64 coefficients): torch has no bf16 FFT.
    """
    compute = torch.float64 if coeffs.dtype == torch.float64 else torch.float32
    spectrum = dense_spectrum(coeffs.to(compute), rows, cols, d_out, d_in)
    return torch.fft.ifft2(spectrum).real * scaling


def delta_rows(
    coeffs: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    d_out: int,
    d_in: int,
    scaling: float,
    index: torch.Tensor,
) -> torch.Tensor:
    """dW[index] without forming dW: shape (*index.shape, d_in). Used for embeddings.

    dW[p, :] = scaling / d_out * Re(ifft_{d_in}(Z_p)),  Z_p[k] = sum_{l: k_l = k} c_l exp(2 pi i j_l p / d_out).
    """
    compute = torch.float64 if coeffs.dtype == torch.float64 else torch.float32
    flat = index.reshape(-1)  # (T,)
    angle = ((flat[:, None] * rows[None, :]) % d_out).to(compute) * (2 * math.pi / d_out)  # (T, n), exact mod
    phase = torch.polar(torch.ones_like(angle), angle) * coeffs.to(compute)  # (T, n) complex
    z = phase.new_zeros(flat.numel(), d_in).index_add_(1, cols, phase)  # (T, d_in)
    out = torch.fft.ifft(z, dim=-1).real * (scaling / d_out)
    return out.reshape(*index.shape, d_in)
