"""The math: positions, the dense reference against explicit DFT matrices, samplers, row lookups."""

import math

import pytest
import torch
from conftest import dft

from fourierft import functional as Fn

SHAPES = [(8, 8), (6, 10), (10, 6), (7, 5), (9, 13), (1, 7), (5, 1)]


def peft_positions(d_out, d_in, n, seed):
    idx = torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(seed))[:n]
    return idx // d_in, idx % d_in


@pytest.mark.parametrize("shape", SHAPES + [(384, 1536)])
def test_uniform_positions_equal_peft(shape):
    d_out, d_in = shape
    n = min(1000, d_out * d_in)
    rows, cols = Fn.spectral_positions(d_out, d_in, n, 777)
    ref_rows, ref_cols = peft_positions(d_out, d_in, n, 777)
    assert torch.equal(rows, ref_rows) and torch.equal(cols, ref_cols)
    assert rows.dtype == torch.int64 and rows.max() < d_out and cols.max() < d_in


def test_positions_cached_and_not_shared_mutably():
    a_rows, _ = Fn.spectral_positions(64, 48, 100, 5)
    a_rows[0] = -1  # the caller's copy only
    b_rows, _ = Fn.spectral_positions(64, 48, 100, 5)
    assert b_rows[0] >= 0
    assert Fn._cached_positions.cache_info().hits >= 1


def test_positions_differ_by_seed_and_bad_n_rejected():
    assert not torch.equal(Fn.spectral_positions(16, 16, 20, 1)[0], Fn.spectral_positions(16, 16, 20, 2)[0])
    with pytest.raises(ValueError, match="n must be in"):
        Fn.spectral_positions(4, 4, 17, 0)
    with pytest.raises(ValueError, match="unknown sampler"):
        Fn.spectral_positions(4, 4, 3, 0, sampler="nope")


def explicit_delta(coeffs, rows, cols, d_out, d_in, scaling):
    """scaling * Re(F_m^-1 S F_n^-1) with explicit DFT matrices, float64."""
    spectrum = torch.zeros(d_out, d_in, dtype=torch.complex128)
    spectrum[rows, cols] = coeffs.to(torch.complex128)
    return (dft(d_out, inverse=True) @ spectrum @ dft(d_in, inverse=True)).real * scaling


def cosine_delta(coeffs, rows, cols, d_out, d_in, scaling):
    p = torch.arange(d_out, dtype=torch.float64)[:, None, None]
    q = torch.arange(d_in, dtype=torch.float64)[None, :, None]
    phase = 2 * math.pi * (rows.double() * p / d_out + cols.double() * q / d_in)
    return scaling / (d_out * d_in) * (coeffs.double() * torch.cos(phase)).sum(-1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n_kind", ["one", "some", "all"])
def test_reference_equals_explicit_dft(shape, n_kind):
    d_out, d_in = shape
    n = {"one": 1, "some": max(1, d_out * d_in // 3), "all": d_out * d_in}[n_kind]
    rows, cols = Fn.spectral_positions(d_out, d_in, n, 3)
    coeffs = torch.randn(n, dtype=torch.float64)
    ref = Fn.delta_weight(coeffs, rows, cols, d_out, d_in, 2.5)
    assert ref.dtype == torch.float64 and ref.shape == (d_out, d_in)
    torch.testing.assert_close(ref, explicit_delta(coeffs, rows, cols, d_out, d_in, 2.5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref, cosine_delta(coeffs, rows, cols, d_out, d_in, 2.5), rtol=1e-10, atol=1e-12)


def test_reference_float32_and_bf16_coefficients_compute_in_float32():
    rows, cols = Fn.spectral_positions(12, 20, 30, 0)
    coeffs = torch.randn(30)
    out = Fn.delta_weight(coeffs.bfloat16(), rows, cols, 12, 20, 1.0)
    assert out.dtype == torch.float32
    exact = explicit_delta(coeffs.bfloat16().double(), rows, cols, 12, 20, 1.0)
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(8, 8), (7, 12), (30, 11)])
def test_delta_rows_match_dense(shape):
    d_out, d_in = shape
    rows, cols = Fn.spectral_positions(d_out, d_in, 25, 1, sampler="uniform-fast")
    coeffs = torch.randn(25, dtype=torch.float64)
    ids = torch.randint(0, d_out, (3, 5))
    dense = Fn.delta_weight(coeffs, rows, cols, d_out, d_in, 3.0)
    torch.testing.assert_close(Fn.delta_rows(coeffs, rows, cols, d_out, d_in, 3.0, ids), dense[ids], rtol=1e-10, atol=1e-12)


def test_uniform_fast_sampler_is_exactly_uniform_without_replacement():
    rows, cols = Fn.spectral_positions(50, 40, 2000, 9, sampler="uniform-fast")
    flat = rows * 40 + cols
    assert flat.unique().numel() == 2000  # no repeats
    again = Fn.spectral_positions(50, 40, 2000, 9, sampler="uniform-fast")
    assert torch.equal(again[0], rows)
    # every position equally likely: count hits over seeds on a small grid
    hits = torch.zeros(12)
    for seed in range(3000):
        r, c = Fn.spectral_positions(3, 4, 2, seed, sampler="uniform-fast")
        hits[r * 4 + c] += 1
    expected = 3000 * 2 / 12
    assert ((hits - expected).abs() / expected).max() < 0.12
    # the full grid is reachable (n = d_out * d_in)
    r, c = Fn.spectral_positions(5, 3, 15, 1, sampler="uniform-fast")
    assert (r * 3 + c).sort().values.tolist() == list(range(15))


def test_frequency_bias_weights_follow_eq5():
    p = Fn.frequency_bias_weights(6, 9, f_c=2.0, width=3.0)
    # (j, k) = (5, 2): signed frequencies (-1, 2), D^2 = 5
    assert p[5, 2].item() == pytest.approx(math.exp(-(((5 - 4) / (math.sqrt(5) * 3)) ** 2)))
    assert p[0, 0] == 0.0  # D = 0 with f_c != 0
    assert Fn.frequency_bias_weights(6, 9, f_c=0.0, width=3.0)[0, 0] == 1.0
    # even size: index d/2 is frequency -d/2 (fftshift convention), so D = 3 for (3, 0)
    assert p[3, 0].item() == pytest.approx(math.exp(-(((9 - 4) / (3 * 3)) ** 2)))


def test_frequency_bias_sampler_prefers_band_and_is_deterministic():
    d, n = 64, 200
    rows, cols = Fn.spectral_positions(d, d, n, 0, sampler="frequency-bias", f_c=20.0, width=3.0)
    assert (rows * d + cols).unique().numel() == n
    du = (rows + d // 2) % d - d // 2
    dv = (cols + d // 2) % d - d // 2
    dist = torch.sqrt((du**2 + dv**2).double())
    assert (dist - 20).abs().median() < 4  # concentrated near f_c
    again = Fn.spectral_positions(d, d, n, 0, sampler="frequency-bias", f_c=20.0, width=3.0)
    assert torch.equal(again[0], rows) and torch.equal(again[1], cols)
    with pytest.raises(ValueError, match="non-zero probability"):
        Fn.spectral_positions(4, 4, 16, 0, sampler="frequency-bias", f_c=1.0, width=1e-9)


def test_frequency_bias_sampler_matches_successive_sampling_distribution():
    # first draw of Efraimidis-Spirakis is a draw proportional to p
    p = Fn.frequency_bias_weights(3, 3, f_c=1.0, width=1.0).flatten()
    counts = torch.zeros(9)
    for seed in range(4000):
        r, c = Fn.spectral_positions(3, 3, 1, seed, sampler="frequency-bias", f_c=1.0, width=1.0)
        counts[r * 3 + c] += 1
    torch.testing.assert_close(counts / 4000, (p / p.sum()).float(), atol=0.03, rtol=0)


def test_fingerprint_changes_with_positions():
    r, c = Fn.spectral_positions(10, 10, 7, 0)
    assert Fn.positions_fingerprint(r, c) == Fn.positions_fingerprint(r.clone(), c.clone())
    assert Fn.positions_fingerprint(r, c) != Fn.positions_fingerprint(c, r)
