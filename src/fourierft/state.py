"""Adapter state dicts in memory, keyed the way PEFT keys FourierFT files.

Keys (adapter name removed, as in PEFT):
- ``base_model.model.<path>.fourierft_spectrum``        coefficients, (n,) or (slices, n) for fused layers
- ``base_model.model.<path>.base_layer.bias``          trained biases of adapted layers
- ``base_model.model.<path>.bias``                     other trained biases (bias="all")
- ``base_model.model.<path>.<param>``                  modules_to_save (e.g. classifier.weight)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .inject import adapter_layers, modules_to_save_wrappers

__all__ = ["PREFIX", "adapter_state_dict", "load_adapter_state_dict"]

PREFIX = "base_model.model."


def _slots(model: nn.Module, adapter_name: str, bias: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(file key, live tensor) for everything the adapter learned."""
    seen = set()
    for name, layer in adapter_layers(model):
        if adapter_name not in layer.specs:
            continue
        yield f"{PREFIX}{name}.fourierft_spectrum", layer.fourierft_spectrum[adapter_name]
        layer_bias = getattr(layer.base_layer, "bias", None)
        if bias == "fourier_only" and layer_bias is not None:
            seen.add(f"{name}.base_layer.bias")
            yield f"{PREFIX}{name}.base_layer.bias", layer_bias
    for name, wrapper in modules_to_save_wrappers(model):
        if adapter_name in wrapper.modules_to_save:
            for key, tensor in wrapper.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                yield f"{PREFIX}{name}.{key}", tensor
    if bias == "all":
        for name, param in model.named_parameters():
            parts = set(name.split("."))
            if name.endswith("bias") and name not in seen and parts.isdisjoint({"modules_to_save", "original_module"}):
                yield f"{PREFIX}{name}", param
        # PEFT also writes the biases of saved modules under their wrapper paths (the copy's again)
        for name, wrapper in modules_to_save_wrappers(model):
            if adapter_name in wrapper.modules_to_save:
                for pname, param in wrapper.original_module.named_parameters():
                    if pname.endswith("bias"):
                        yield f"{PREFIX}{name}.original_module.{pname}", param
                for pname, param in wrapper.modules_to_save[adapter_name].named_parameters():
                    if pname.endswith("bias"):
                        yield f"{PREFIX}{name}.modules_to_save.{pname}", param


def adapter_state_dict(model: nn.Module, adapter_name: str, bias: str = "none") -> dict[str, torch.Tensor]:
    """What ``adapter_name`` learned, as contiguous CPU tensors."""
    return {key: t.detach().to("cpu", copy=True).contiguous() for key, t in _slots(model, adapter_name, bias)}


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str, bias: str = "none", source: str = "state dict") -> None:
    """Copy ``state`` into the adapter's tensors; every key must be expected and present, with the right shape."""
    pairs = list(_slots(model, adapter_name, bias))
    slots = dict(pairs)
    seen: dict[int, str] = {}
    for key, target in pairs:  # one tensor under two keys (PEFT's bias="all" files): both values must agree
        first = seen.setdefault(id(target), key)
        if first != key and key in state and first in state and not torch.equal(state[key], state[first]):
            raise ValueError(f"{source}: {key} and {first} hold the same parameter but different values; the file is inconsistent")
    missing = sorted(set(slots) - set(state))
    unexpected = sorted(set(state) - set(slots))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit this model's adapter {adapter_name!r}: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}. "
            "Was it trained on another base model, or with other target_modules / modules_to_save / bias?"
        )
    for key, target in slots.items():
        value = state[key]
        if value.shape != target.shape:
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}")
        target.copy_(value.to(target.dtype))
