"""Speed up existing PEFT FourierFT models in place: ``fourierft.accelerate_peft(peft_model)``.

PEFT's FourierFT layers rebuild a dense complex spectrum, run an ifft2 and a second matmul each
forward, and get their coefficient gradient from the full weight gradient. This swaps the forward
of each PEFT FourierFT layer for fourierft's exact kernels (same positions, coefficients and
scaling; PEFT's own parameters keep training), so outputs and gradients stay the same up to
float rounding. Merged, disabled and per-example (``adapter_names``) calls keep PEFT's forward.
peft is not imported here; its layers are recognised by class.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from .kernels import Block, fourier_linear, resolve_mode
from .spectral import build_index

__all__ = ["accelerate_peft"]

_ORIGINAL = "_fourierft_original_forward"


def _is_peft_fourierft_layer(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "FourierFTLinear" and cls.__module__.startswith("peft.tuners.fourierft")


def _on_device(indices: torch.Tensor, device: torch.device, cache: dict) -> torch.Tensor:
    key = (id(indices), indices._version, device)
    if key not in cache:
        cache.clear()
        cache[key] = indices.to(device)
    return cache[key]


def _fast_forward(self, x, *args, **kwargs):
    original = getattr(self, _ORIGINAL)
    active = [a for a in self.active_adapters if a in self.fourierft_spectrum]
    if args or kwargs or self.disable_adapters or self.merged or not active:
        return original(x, *args, **kwargs)
    base = self.get_base_layer()
    weight = base.weight.t() if self.fan_in_fan_out else base.weight  # (out, in)
    coeffs, plan, offset = [], [], 0
    for name in active:
        spectrum = self.fourierft_spectrum[name]
        indices = _on_device(self.indices[name], spectrum.device, self._fourierft_index_cache.setdefault(name, {}))
        coeffs.append(spectrum.float() * self.fourierft_scaling[name])
        plan.append(Block(0, weight.shape[0], indices[0], indices[1], offset))
        offset += spectrum.numel()
    coeffs, plan = torch.cat(coeffs), tuple(plan)
    mode = resolve_mode(self._fourierft_mode, x, weight)
    index = None
    if mode == "fft":  # the index maps, built once per adapter set and device
        key = (tuple(active), x.device) + tuple((id(b.rows), b.rows._version) for b in plan)
        cached = self.__dict__.get("_fourierft_spectral_index")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_fourierft_spectral_index"] = (key, build_index(plan, weight.shape[0], weight.shape[1], coeffs.numel(), x.device))
        index = cached[1]
    y = fourier_linear(x, weight, base.bias, coeffs, plan, mode, index)
    return y.to(x.dtype)


def accelerate_peft(model: nn.Module, enable: bool = True, mode: str = "auto") -> int:
    """Swap (``enable=False``: restore) the forward of every PEFT FourierFT layer. Returns how many."""
    count = 0
    for module in model.modules():
        if not _is_peft_fourierft_layer(module):
            continue
        if enable:
            if not hasattr(module, _ORIGINAL):
                object.__setattr__(module, _ORIGINAL, module.forward)
                module._fourierft_index_cache = {}
            module._fourierft_mode = mode
            module.forward = types.MethodType(_fast_forward, module)
        elif hasattr(module, _ORIGINAL):
            module.forward = getattr(module, _ORIGINAL)
            delattr(module, _ORIGINAL)
        count += 1
    if count == 0 and enable:
        raise ValueError("no PEFT FourierFT layer found in the model; pass the model returned by peft.get_peft_model")
    return count
