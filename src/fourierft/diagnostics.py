"""Will these settings train? Sizes of dW and of one optimizer step against the base weights.

For one adapted slice with grid (R, C), n trained values p and factor = scaling * coefficient_scale,
dW = factor * Re(ifft2(ToDense(E, p))), so ||dW||_F ~= factor * ||p|| / sqrt(2 R C) (Parseval; exact
up to the few self-conjugate positions). Adam moves each p entry by about lr per step, so one step
changes dW by about factor * lr * sqrt(n / (2 R C)) in Frobenius norm. Everything is reported
relative to ||W||_F of the same rows, and nothing here forms dW.

The thresholds below sit far from the paper's recipes (one step changes W by ~0.6 % on RoBERTa-base)
and near runs that do not train (PEFT's defaults at lr 1e-4 on Llama-3.2-3B: ~2e-6 of W per step;
coefficients moving ~0.5 per step on a 64 x 64 layer: diverges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerScale", "layer_scales", "start_warnings", "movement_warnings", "snapshot"]

STEP_NEGLIGIBLE = 1e-4  # one step changes W by less than this (relative): no visible training
STEP_HUGE = 0.5  # one step may change W by more than this: diverges
INIT_HUGE = 1.0  # the initial dW (c ~ N(0, 1)) is larger than W itself
MOVED_NEGLIGIBLE = 1e-3  # after the check's steps, dW moved by less than this against W


@dataclass(frozen=True)
class LayerScale:
    layer: str
    adapter: str
    weight_norm: float  # ||W||_F of the adapted rows
    delta_norm: float  # ||dW||_F now
    step_norm: float | None  # ||change of dW|| one Adam step at lr can make (None: no lr given)


def _adapted(model: nn.Module):
    from .inject import adapter_layers

    for name, layer in adapter_layers(model):
        for adapter, spec in layer.specs.items():
            if adapter in layer.fourierft_spectrum and layer.fourierft_spectrum[adapter].requires_grad:
                yield name, layer, adapter, spec


def _readable(layer, adapter):
    """(W as a plain tensor or None, the coefficients), whole even when sharded (FSDP2, ZeRO-3):
    every process calls this together."""
    from .state import gathered, whole

    coeffs = layer.fourierft_spectrum[adapter]
    with gathered([coeffs, *layer.base_layer.parameters(recurse=False)]):
        weight = layer.readable_weight()
        return (None if weight is None else whole(weight).float().clone()), whole(coeffs.detach()).float().cpu().clone()


def _dw_norm(spec, layer, p_norm: float) -> float:
    """||factor * Re(ifft2(ToDense(E, p)))||_F for ||p|| = p_norm (Parseval)."""
    return spec.factor * p_norm / math.sqrt(2 * spec.grid * layer.d_in)


def _rows_norm(weight: torch.Tensor, spec) -> float:
    """||W||_F of the adapted output rows."""
    return torch.cat([weight[a:b] for a, b in spec.slices]).norm().item()


def _rates(k: float) -> str:
    return "1e-4 - 5e-4" if k >= 64 else "the paper's 0.04-0.3"


@torch.no_grad()
def layer_scales(model: nn.Module, lr: float | None = None) -> list[LayerScale]:
    """Per trained adapter and layer: ||W||, ||dW|| and, given Adam's lr, the size of one step.
    Under FSDP / ZeRO-3 every process calls this (the weights are gathered one layer at a time)."""
    out = []
    for name, layer, adapter, spec in _adapted(model):
        weight, p = _readable(layer, adapter)
        if weight is None:  # packed weights that cannot be read back (bitsandbytes)
            continue
        step = None if lr is None else _dw_norm(spec, layer, lr * math.sqrt(p.numel()))  # every entry moves ~lr
        out.append(LayerScale(name, adapter, _rows_norm(weight, spec), _dw_norm(spec, layer, p.norm().item()), step))
    return out


def start_warnings(model: nn.Module, lr: float) -> list[str]:
    """Messages for settings that will not train: one step at ``lr`` negligible or huge against W, or
    an initial dW larger than W. Empty when all is plausible."""
    scales = [s for s in layer_scales(model, lr) if s.weight_norm > 0]
    if not scales:
        return []
    messages = []
    steps = [s.step_norm / s.weight_norm for s in scales]
    k = next(spec.coefficient_scale for _, _, _, spec in _adapted(model))
    if max(steps) < STEP_NEGLIGIBLE:
        messages.append(
            f"FourierFT: at lr={lr:g} one optimizer step changes the adapted weights by at most {max(steps):.1e} of their norm; "
            f"the coefficients will barely move. Raise lr (with coefficient_scale={k:g}: {_rates(k)}) or the scaling"
        )
    worst = max(range(len(steps)), key=steps.__getitem__)
    if steps[worst] > STEP_HUGE:
        messages.append(
            f"FourierFT: at lr={lr:g} one optimizer step may change {scales[worst].layer} by {steps[worst]:.0%} of its norm; "
            f"training will diverge. Lower lr (with coefficient_scale={k:g}: {_rates(k)}) or the scaling"
        )
    init = max(scales, key=lambda s: s.delta_norm / s.weight_norm)
    if init.delta_norm > INIT_HUGE * init.weight_norm:
        messages.append(
            f"FourierFT: dW of {init.layer} is {init.delta_norm / init.weight_norm:.1f}x the base weight before training; "
            "the scaling is too large for this layer (or use init_weights=True to start from dW = 0)"
        )
    return messages


def snapshot(model: nn.Module) -> dict[tuple[str, str], torch.Tensor]:
    """The trained coefficients now, for ``movement_warnings`` later (every process calls it together)."""
    return {(name, adapter): _readable(layer, adapter)[1] for name, layer, adapter, _ in _adapted(model)}


@torch.no_grad()
def movement_warnings(model: nn.Module, before: dict[tuple[str, str], torch.Tensor], steps: int) -> list[str]:
    """A message if, since ``before``, no adapter moved its dW by MOVED_NEGLIGIBLE of the weight."""
    moved = []
    for name, layer, adapter, spec in _adapted(model):
        if (name, adapter) not in before:
            continue
        readable, coeffs = _readable(layer, adapter)
        if readable is None:
            continue
        weight = _rows_norm(readable, spec)
        if weight > 0:
            moved.append(_dw_norm(spec, layer, (coeffs - before[name, adapter]).norm().item()) / weight)
    if moved and max(moved) < MOVED_NEGLIGIBLE:
        return [
            f"FourierFT: after {steps} steps the adapters changed the weights by at most {max(moved):.1e} of their norm; "
            "the coefficients did not move. The learning rate is too small for this parametrization (see FourierFTConfig."
            "coefficient_scale), or the coefficients get no gradient (are they in the optimizer?)"
        ]
    return []
