"""Adapter layers. Each holds a frozen base layer and any number of named FourierFT adapters.

The layers only hold state (coefficients, positions, which adapters are active or merged) and
call the math in ``functional`` / ``kernels``. Every layer reads its base weight as a matrix
(d_out, d_in) and adapts that matrix:
- ``nn.Linear``: weight (out, in) as is.
- GPT-2 ``Conv1D``: weight stored (in, out); the matrix is its transpose (detected, no flag needed).
- ``nn.Conv2d``: weight (out, in/groups, kh, kw) flattened row-major to (out, in/groups*kh*kw),
  i.e. column q = (c * kh + i) * kw + j for input channel c (within its group) and tap (i, j).
- ``nn.Embedding``: weight (num_embeddings, embedding_dim) as is.
"""

from __future__ import annotations

import copy
import re
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .functional import delta_rows, spectral_positions
from .kernels import MODES, Block, adapter_term, base_plus, fold, fourier_linear, hermitian_index, needs_separate_term, plan_delta_weight, resolve_mode, spectral_term_rows
from .spectral import SpectralIndex, build_index, combine

__all__ = [
    "BASE_ADAPTER",
    "AdapterSpec",
    "FourierFTLayer",
    "FourierFTLinear",
    "FourierFTConv2d",
    "FourierFTEmbedding",
    "ModulesToSave",
    "per_example_adapters",
]

BASE_ADAPTER = "__base__"  # in per-example adapter lists: no adapter for this row
_ROW_ADAPTERS: ContextVar[RowAdapters | None] = ContextVar("fourierft_row_adapters", default=None)


class RowAdapters(tuple):
    """Per-row adapter names; ``expands``: a batch k times as long repeats each name k times in a row
    (generate's beams and returned sequences: transformers expands inputs with repeat_interleave)."""

    expands = False
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


_OPEN_ROW_CONTEXTS = [0]  # per_example_adapters blocks open in any thread; compiled code guards on it
_LOCK = threading.Lock()


@contextmanager
def per_example_adapters(names, expands: bool = False):
    """Within the block, row i of every batch uses adapter names[i] (BASE_ADAPTER: none). With
    ``expands`` (generation), a batch k times longer gives row i the name names[i // k]."""
    rows = RowAdapters(names)
    rows.expands = expands
    token = _ROW_ADAPTERS.set(rows)
    with _LOCK:
        _OPEN_ROW_CONTEXTS[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _OPEN_ROW_CONTEXTS[0] -= 1
        _ROW_ADAPTERS.reset(token)


def _row_names():
    """The per-example adapter names in effect, or None. torch.compile cannot read a ContextVar, so
    compiled code runs without per-example selection and refuses to trace while one is open."""
    if torch.compiler.is_compiling():
        if _OPEN_ROW_CONTEXTS[0]:
            raise RuntimeError("per-example adapter selection (adapter_names=...) is not supported under torch.compile; call the model without compiling it")
        return None
    return _ROW_ADAPTERS.get()


def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name == BASE_ADAPTER:
        raise ValueError(f"invalid adapter name {name!r}: use letters, digits, '_' or '-' (not {BASE_ADAPTER!r})")
    return name


def _expanded(names, n_rows):
    """Per-row names for a batch of n_rows (generate's expansion: each name repeated in a row)."""
    if len(names) != n_rows:
        if getattr(names, "expands", False) and names and n_rows % len(names) == 0:
            return [n for n in names for _ in range(n_rows // len(names))]
        raise ValueError(f"adapter_names has {len(names)} entries but the batch has {n_rows} rows; give one name per row")
    return list(names)


def _row_groups(names, n_rows, device):
    names = _expanded(names, n_rows)
    for name in dict.fromkeys(names):
        yield name, torch.tensor([i for i, n in enumerate(names) if n == name], device=device)


@dataclass(frozen=True)
class AdapterSpec:
    """What one adapter of one layer is: n coefficients per adapted slice, positions from the seed."""

    n: int
    scaling: float  # dW = scaling * Re(ifft2(ToDense(E, c)))
    seed: int
    sampler: str  # a key of functional.SAMPLERS
    slices: tuple[tuple[int, int], ...]  # adapted output-row ranges [start, stop) of the weight matrix
    f_c: float = 0.0
    width: float = 200.0
    coefficient_scale: float = 1.0  # c = coefficient_scale * p, p the trained parameter
    file_scaling: float | None = None  # the scaling the saved c is multiplied by (None: scaling)

    @classmethod
    def make(cls, d_out: int, n: int, scaling: float, seed: int, sampler: str = "uniform", f_c: float = 0.0, width: float = 200.0, chunks: int = 1, adapt=(0,), coefficient_scale: float = 1.0, file_scaling: float | None = None) -> AdapterSpec:
        """The spec of an adapter on ``adapt`` of ``chunks`` equal output slices of a d_out-row weight."""
        if d_out % chunks:
            raise ValueError(f"cannot split {d_out} output rows into {chunks} equal fused slices")
        rows = d_out // chunks
        file_scaling = float(scaling if file_scaling is None else file_scaling)
        return cls(int(n), float(scaling), int(seed), sampler, tuple((a * rows, (a + 1) * rows) for a in adapt), float(f_c), float(width), float(coefficient_scale), file_scaling)

    @property
    def factor(self) -> float:
        """dW per unit of the trained parameter: dW = factor * Re(ifft2(ToDense(E, p)))."""
        return self.scaling * self.coefficient_scale

    @property
    def file_factor(self) -> float:
        """Saved coefficient per unit of the trained parameter (exact when it is a power of two)."""
        return self.factor / (self.scaling if self.file_scaling is None else self.file_scaling)

    @property
    def grid(self) -> int:
        """Rows of each slice's spectral grid."""
        start, stop = self.slices[0]
        return stop - start


@dataclass(frozen=True, eq=False)
class Positions:
    """Spectral positions of one grid and the kernel indices built from them. Shared by every adapter of
    a layer with the same grid, n, seed and sampler (they differ only in coefficients and scaling), so
    a thousand such adapters cost their coefficients only. Built on the layer's device; rebuilt when
    the layer moves."""

    rows: torch.Tensor  # (n,) int64 positions on the grid of one slice
    cols: torch.Tensor
    hermitian: tuple[torch.Tensor, torch.Tensor]  # kernels.hermitian_index
    folded: object  # kernels.fold
    spectral: SpectralIndex  # the fft path's maps, coefficients counted from 0

    @classmethod
    def build(cls, spec: AdapterSpec, d_out: int, d_in: int, device) -> Positions:
        m = spec.grid
        rows, cols = (t.to(device) for t in spectral_positions(m, d_in, spec.n, spec.seed, spec.sampler, spec.f_c, spec.width))
        plan = tuple(Block(start, stop, rows, cols, i * spec.n) for i, (start, stop) in enumerate(spec.slices))
        spectral = build_index(plan, d_out, d_in, spec.n * len(spec.slices), device)
        return cls(rows, cols, hermitian_index(rows, cols, m, d_in), fold(rows, cols, m, d_in), spectral)


def _positions_key(spec: AdapterSpec) -> tuple:
    return (spec.n, spec.seed, spec.sampler, spec.slices, spec.f_c, spec.width)


@dataclass(frozen=True, eq=False)
class AdapterRecord:
    """One adapter of one layer: its spec and its (shared) positions with their kernel indices."""

    spec: AdapterSpec
    positions: Positions

    @property
    def spectral(self) -> SpectralIndex:
        return self.positions.spectral

    def blocks(self, offset: int) -> list[Block]:
        """This adapter's blocks, its coefficients starting at ``offset`` of the flat vector."""
        p = self.positions
        return [Block(start, stop, p.rows, p.cols, offset + i * self.spec.n, p.hermitian, p.folded) for i, (start, stop) in enumerate(self.spec.slices)]


class FourierFTLayer(nn.Module):
    """Base class: adapter bookkeeping shared by all layer types. Subclasses give the geometry and forward."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.fourierft_spectrum = nn.ParameterDict()  # name -> (n,) or (slices, n) coefficients
        self.specs: dict[str, AdapterSpec] = {}
        self.records: dict[str, AdapterRecord] = {}  # name -> spec, positions, kernel indices
        self._positions: dict[tuple, Positions] = {}  # positions key -> the Positions its adapters share
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self._before_merge: list[torch.Tensor] = []  # weights below float32 as they were before each merge
        self.disabled = False
        self.mode = "auto"  # kernels.fourier_linear mode, for linear layers
        self.d_out, self.d_in = self._shape()

    # ---- geometry (subclasses) ----
    def _shape(self) -> tuple[int, int]:
        return tuple(self.weight_matrix().shape)

    def weight_scale(self) -> float | None:
        """The largest |entry| of the base weight (dequantized), or None where it cannot be read."""
        weight = self.readable_weight()
        return None if weight is None else float(weight.abs().max())

    def readable_weight(self) -> torch.Tensor | None:
        """The base weight as a plain (d_out, d_in) tensor (dequantized), or None where it cannot be read."""
        return self.weight_matrix().detach()

    def weight_matrix(self) -> torch.Tensor:
        """The base weight viewed as (d_out, d_in), sharing storage."""
        raise NotImplementedError

    def _forward_with(self, x, names, *args, **kwargs):
        raise NotImplementedError

    # ---- adapters ----
    def add_adapter(self, name: str, spec: AdapterSpec, init_zeros: bool = False):
        """Add an adapter described by ``spec`` (see ``AdapterSpec.make``): c ~ N(0, 1), or zeros."""
        check_adapter_name(name)
        if name in self.specs:
            raise ValueError(f"adapter {name!r} already exists in this layer")
        rows_per = spec.grid
        if any(stop - start != rows_per or not 0 <= start < stop <= self.d_out for start, stop in spec.slices):
            raise ValueError(f"adapter slices {spec.slices} must be equal output-row ranges within the layer's {self.d_out} rows")
        weight = self.weight_matrix()
        key = _positions_key(spec)
        positions = self._positions.get(key) or Positions.build(spec, self.d_out, self.d_in, weight.device)
        self._positions[key] = positions
        shape = (spec.n,) if len(spec.slices) == 1 and rows_per == self.d_out else (len(spec.slices), spec.n)
        coeffs = torch.zeros(shape) if init_zeros else torch.randn(shape) / spec.coefficient_scale  # c ~ N(0, 1)
        self.fourierft_spectrum[name] = nn.Parameter(coeffs.to(weight.device))
        self.specs[name] = spec
        self.records[name] = AdapterRecord(spec, positions)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        device = self.weight_matrix().device
        for name, record in list(self.records.items()):  # follow the weights to their device
            if record.positions.rows.device != device:
                key = _positions_key(record.spec)
                if self._positions[key].rows.device != device:
                    self._positions[key] = Positions.build(record.spec, self.d_out, self.d_in, device)
                self.records[name] = AdapterRecord(record.spec, self._positions[key])
        return out

    def delete_adapter(self, name):
        if name in self.merged_adapters:
            raise RuntimeError(f"adapter {name!r} is merged into the base weight; unmerge it before deleting")
        key = _positions_key(self.specs[name])
        del self.fourierft_spectrum[name], self.specs[name], self.records[name]
        if all(_positions_key(r.spec) != key for r in self.records.values()):
            del self._positions[key]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def set_active(self, names):
        self.active_adapters = [n for n in names if n in self.specs]

    def positions(self, name) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.records[name].positions
        return p.rows, p.cols

    def coeffs_and_plan(self, names) -> tuple[torch.Tensor, tuple[Block, ...]]:
        """Scaled coefficients of the named adapters, flattened, and the blocks they fill."""
        coeffs, plan, offset = [], [], 0
        for name in names:
            record = self.records[name]
            coeffs.append((self.fourierft_spectrum[name] * record.spec.factor).reshape(-1))
            plan += record.blocks(offset)
            offset += coeffs[-1].numel()
        return (coeffs[0] if len(coeffs) == 1 else torch.cat(coeffs)), tuple(plan)

    def spectral_index(self, names) -> SpectralIndex:
        """The fft path's index maps for these adapters (``spectral.combine`` of their records')."""
        if len(names) == 1:
            return self.records[names[0]].spectral
        indices, offset = [], 0
        for name in names:
            record = self.records[name]
            indices.append((record.spectral, offset))
            offset += record.spec.n * len(record.spec.slices)
        return combine(indices)

    def delta_weight(self, name) -> torch.Tensor:
        """dW of one adapter as the (d_out, d_in) matrix, float32 (float64 for float64 coefficients)."""
        coeffs, plan = self.coeffs_and_plan([name])
        return plan_delta_weight(coeffs, plan, self.d_out, self.d_in)

    # ---- merge ----
    def _merge_dtype(self) -> torch.dtype:
        """float64 for float64 weights, else float32: the sum W + dW is formed in this dtype."""
        return torch.float64 if self.weight_matrix().dtype == torch.float64 else torch.float32

    def _delta_for_merge(self, name) -> torch.Tensor:
        coeffs, plan = self.coeffs_and_plan([name])
        return plan_delta_weight(coeffs.to(self._merge_dtype()), plan, self.d_out, self.d_in)

    @torch.no_grad()
    def merge(self, names=None, safe_merge=True, requantize=None):
        """Add dW of the named (default: active, unmerged) adapters to the base weight.

        The sum is formed in float32 (float64 for float64 weights) into a new tensor; with
        ``safe_merge`` a non-finite result is refused before the base weight is touched. Below
        float32 the weight as it was is kept (on its device) until unmerge, which restores it
        exactly: subtracting dW again from a rounded sum would not give the base weight back.

        Quantized layers refuse, unless ``requantize`` (a torchao quantization config, e.g.
        ``Int8WeightOnlyConfig()``) asks to dequantize, add dW and quantize again; that returns, per
        adapter, the error it introduces: {"dw_norm", "error_norm", "max_error"} (Frobenius norms of dW
        and of requantized minus (W + dW)). Unmerge restores the packed weight exactly.
        """
        names = [n for n in (self.active_adapters if names is None else names) if n in self.specs and n not in self.merged_adapters]
        if names and getattr(self, "quantized", None):
            if requantize is None or self.quantized != "torchao":
                raise RuntimeError(
                    f"cannot merge into this layer's {self.quantized}-quantized weight: a packed weight cannot hold dW. "
                    "Load the base model in bf16 / fp32, load the adapter onto it and merge there (merge_and_unload)"
                    + (", or requantize: merge_and_unload(requantize=<the torchao config>) dequantizes, adds dW and quantizes again, "
                       "reporting the error" if self.quantized == "torchao" else "")
                )
            return [self._merge_requantized(name, requantize) for name in names]
        for name in names:
            weight = self.weight_matrix()
            merged = weight.to(self._merge_dtype()) + self._delta_for_merge(name)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"merging adapter {name!r} gives non-finite weights; the adapter seems broken")
            if weight.dtype not in (torch.float32, torch.float64):
                self._before_merge.append(weight.detach().clone())
            weight.copy_(merged)
            self.merged_adapters.append(name)

    def _merge_requantized(self, name, config) -> dict:
        from torchao.quantization import quantize_

        packed = self.base_layer.weight
        dense = packed.dequantize()  # (d_out, d_in)
        target = dense.float() + self._delta_for_merge(name)
        if not torch.isfinite(target).all():
            raise ValueError(f"merging adapter {name!r} gives non-finite weights; the adapter seems broken")
        scratch = nn.Linear(self.d_in, self.d_out, bias=False, device=dense.device, dtype=dense.dtype)
        scratch.weight.copy_(target.to(dense.dtype))
        quantize_(scratch, config)
        error = scratch.weight.dequantize().float() - target
        self._before_merge.append(packed)
        self.base_layer.weight = nn.Parameter(scratch.weight, requires_grad=False)
        self.merged_adapters.append(name)
        delta = target - dense.float()
        return {"dw_norm": delta.norm().item(), "error_norm": error.norm().item(), "max_error": error.abs().max().item()}

    def unmerge(self):
        """Remove all merged adapters: exact below float32 (the kept weight comes back), one rounding otherwise."""
        while self.merged_adapters:
            self.unmerge_last()

    @torch.no_grad()
    def unmerge_last(self):
        name = self.merged_adapters.pop()
        if getattr(self, "quantized", None):  # a requantized merge: the packed weight as it was
            self.base_layer.weight = nn.Parameter(self._before_merge.pop(), requires_grad=False)
            return
        weight = self.weight_matrix()
        if self._before_merge:
            weight.copy_(self._before_merge.pop())
        else:
            weight.copy_(weight.to(self._merge_dtype()) - self._delta_for_merge(name))

    # ---- forward ----
    def forward(self, x, *args, **kwargs):
        if self.disabled:
            if self.merged_adapters:
                raise RuntimeError("adapters are merged into this layer's weight; unmerge them before disabling")
            return self.base_layer(x, *args, **kwargs)
        row_names = _row_names()
        if row_names is not None:
            return self._forward_per_example(x, row_names, *args, **kwargs)
        todo = [a for a in self.active_adapters if a not in self.merged_adapters]
        if not todo:
            return self.base_layer(x, *args, **kwargs)
        return self._forward_with(x, todo, *args, **kwargs)

    def _forward_per_example(self, x, row_names, *args, **kwargs):
        if self.merged_adapters:
            raise RuntimeError("per-example adapter selection needs unmerged adapters; call unmerge_adapter() first")
        if self._rows_batched(x, row_names):
            return self._forward_rows(x, row_names)
        out = None
        for name, idx in _row_groups(row_names, x.shape[0], x.device):
            sub = x.index_select(0, idx)
            y = self._forward_with(sub, [name], *args, **kwargs) if name in self.specs else self.base_layer(sub, *args, **kwargs)
            out = y.new_zeros((x.shape[0], *y.shape[1:])) if out is None else out
            out = out.index_copy(0, idx, y)
        return out

    def _rows_batched(self, x, row_names) -> bool:
        """Subclasses that can serve a mixed batch in one pass say so (inference only)."""
        return False

    def extra_repr(self) -> str:
        return f"d_out={self.d_out}, d_in={self.d_in}, adapters={list(self.specs)}, active={self.active_adapters}"


def _is_conv1d(module) -> bool:
    """GPT-2's transformers Conv1D, detected without importing transformers."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def quantization(module: nn.Module) -> str | None:
    """"torchao" or "bitsandbytes" for a linear layer whose weight is stored quantized, else None."""
    cls = type(module)
    if cls.__module__.startswith("bitsandbytes") and cls.__name__ in ("Linear4bit", "Linear8bitLt"):
        return "bitsandbytes"
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and type(weight).__module__.startswith("torchao"):
        return "torchao"
    return None


class FourierFTLinear(FourierFTLayer):
    """nn.Linear, or transformers' Conv1D (weight stored transposed), or a quantized linear layer
    (bitsandbytes 4/8-bit, torchao): the base layer then computes x W^T itself and the adapter term
    is added beside it (``kernels.adapter_term``); dW is never merged into packed weights."""

    def __init__(self, base_layer):
        self.transposed = _is_conv1d(base_layer)
        self.quantized = quantization(base_layer)
        super().__init__(base_layer)

    def _shape(self):
        if self.quantized:  # packed storage: the layer knows its logical shape
            return self.base_layer.out_features, self.base_layer.in_features
        return super()._shape()

    def readable_weight(self):
        if self.quantized == "torchao":
            return self.base_layer.weight.dequantize()
        return None if self.quantized else super().readable_weight()

    def weight_matrix(self):
        w = self.base_layer.weight
        return w.t() if self.transposed else w

    def _forward_quantized(self, x, names):
        base = self.base_layer(x)
        coeffs, _ = self.coeffs_and_plan(names)
        term = adapter_term(x, coeffs, self.spectral_index(names))  # float32
        return (base.to(term.dtype) + term).to(base.dtype)

    def _forward_with(self, x, names):
        if self.quantized:
            return self._forward_quantized(x, names)
        weight, bias = self.weight_matrix(), self.base_layer.bias
        mode = resolve_mode(self.mode, x, weight)
        tokens = x.numel() // max(x.shape[-1], 1)
        if self.mode == "auto" and mode in ("merged", "separate") and tokens * _FFT_TOKENS_PER_DIM < min(self.d_out, self.d_in):
            mode = "fft"  # a few tokens (decoding): row FFTs cost less than building dW
        coeffs, plan = self.coeffs_and_plan(names)
        index = self.spectral_index(names) if mode == "fft" else None
        return fourier_linear(x, weight, bias, coeffs, plan, mode, index)

    def _rows_batched(self, x, row_names) -> bool:
        return not torch.is_grad_enabled() and self.mode in ("auto", "fft") and x.dim() >= 2 and not self.quantized

    @torch.no_grad()
    def _forward_rows(self, x, row_names):
        """A batch whose rows use different adapters, in one pass: one base GEMM for every row and, per
        group of adapters sharing positions, one row FFT of x with each token's coefficients gathered
        from a table (adapters differ only in coefficients). Row i of the result equals running row i
        alone with its adapter."""
        names = _expanded(row_names, x.shape[0])
        weight, bias = self.weight_matrix(), self.base_layer.bias
        x2 = x.reshape(-1, self.d_in)
        per_row = x2.shape[0] // x.shape[0]
        groups: dict[tuple, list[str]] = {}
        for name in dict.fromkeys(n for n in names if n in self.specs):
            groups.setdefault(_positions_key(self.specs[name]), []).append(name)
        compute = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
        term = torch.zeros(x2.shape[0], self.d_out, dtype=compute, device=x.device)
        for members in groups.values():
            table = torch.stack([self.fourierft_spectrum[n].detach().reshape(-1).to(compute) * self.specs[n].factor for n in members])
            table = torch.cat([table, table.new_zeros(1, table.shape[1])])  # the last row: rows of other groups / the base
            slot = {n: i for i, n in enumerate(members)}
            which = torch.tensor([slot.get(n, len(members)) for n in names], device=x.device).repeat_interleave(per_row)
            term += spectral_term_rows(x2, table, which, self.records[members[0]].spectral)
        return base_plus(term, x2, weight, bias, x.dtype).reshape(*x.shape[:-1], self.d_out)


# "auto" uses the fft path when tokens * this < min(d_out, d_in): building dW costs about
# d_out d_in log(d) per call, the fft path about tokens (d_out + d_in) log(d).
_FFT_TOKENS_PER_DIM = 4


class FourierFTConv2d(FourierFTLayer):
    """nn.Conv2d (or a subclass with its own forward, e.g. "same" padding) with dW over
    out_channels x (in_channels/groups * kh * kw)."""

    def weight_matrix(self):
        w = self.base_layer.weight
        return w.view(w.shape[0], -1)

    def _conv(self, x, weight, with_bias: bool):
        conv = self.base_layer
        if type(conv).forward is nn.Conv2d.forward:
            return conv._conv_forward(x, weight, conv.bias if with_bias else None)
        params = {"weight": weight}
        if not with_bias and conv.bias is not None:
            params["bias"] = torch.zeros_like(conv.bias)
        return functional_call(conv, params, (x,))  # the subclass's own forward, with this weight

    def _forward_with(self, x, names):
        conv = self.base_layer
        coeffs, plan = self.coeffs_and_plan(names)
        dw = plan_delta_weight(coeffs, plan, self.d_out, self.d_in).view(conv.weight.shape)
        if needs_separate_term(x, conv.weight):  # keep dW out of the rounded weight
            return conv(x) + self._conv(x, dw.to(x.dtype), with_bias=False)
        return self._conv(x, (conv.weight.to(dw.dtype) + dw).to(x.dtype), with_bias=True)


class FourierFTEmbedding(FourierFTLayer):
    """nn.Embedding; dW rows are computed only for the looked-up ids (``functional.delta_rows``)."""

    def weight_matrix(self):
        return self.base_layer.weight

    def _forward_with(self, ids, names):
        out = self.base_layer(ids)
        for name in names:
            spec = self.specs[name]
            rows, cols = self.positions(name)
            coeffs = self.fourierft_spectrum[name] * spec.factor
            out = out + delta_rows(coeffs, rows, cols, self.d_out, self.d_in, 1.0, ids).to(out.dtype)
        return out


LAYER_TYPES: dict[type, type[FourierFTLayer]] = {
    nn.Linear: FourierFTLinear,
    nn.Conv2d: FourierFTConv2d,
    nn.Embedding: FourierFTEmbedding,
}


def adapter_class_for(module: nn.Module) -> type[FourierFTLayer] | None:
    """The adapter class for a module, or None. Linear / Embedding subclasses that change forward are not
    supported, except the quantized linear layers of bitsandbytes."""
    if _is_conv1d(module) or quantization(module):
        return FourierFTLinear
    if isinstance(module, nn.Conv2d):  # subclasses run their own forward (see FourierFTConv2d._conv)
        return FourierFTConv2d
    for base_type, cls in LAYER_TYPES.items():
        if isinstance(module, base_type) and type(module).forward is base_type.forward:
            return cls
    return None


class ModulesToSave(nn.Module):
    """A module trained fully and saved with the adapter (task head): one trainable copy per adapter."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False

    def add_adapter(self, name):
        self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def delete_adapter(self, name):
        del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def set_active(self, names):
        self.active_adapter = next((n for n in names if n in self.modules_to_save), None)

    def forward(self, x, *args, **kwargs):
        row_names = _row_names()
        if row_names is not None and not self.disabled:
            out = None
            for name, idx in _row_groups(row_names, x.shape[0], x.device):
                module = self.modules_to_save[name] if name in self.modules_to_save else self.original_module
                y = module(x.index_select(0, idx), *args, **kwargs)
                out = y.new_zeros((x.shape[0], *y.shape[1:])) if out is None else out
                out = out.index_copy(0, idx, y)
            return out
        if self.disabled or self.active_adapter is None:
            return self.original_module(x, *args, **kwargs)
        return self.modules_to_save[self.active_adapter](x, *args, **kwargs)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    return mode
