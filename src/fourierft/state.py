"""Adapter state dicts in memory, keyed the way PEFT keys FourierFT files.

Keys (adapter name removed, as in PEFT):
- ``base_model.model.<path>.fourierft_spectrum``        coefficients, (n,) or (slices, n) for fused layers
- ``base_model.model.<path>.base_layer.bias``          trained biases of adapted layers
- ``base_model.model.<path>.bias``                     other trained biases (bias="all")
- ``base_model.model.<path>.<param>``                  modules_to_save (e.g. classifier.weight)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import nullcontext

import torch
from torch import nn

from .config import FourierFTConfig
from .functional import SAMPLERS, positions_fingerprint
from .inject import adapter_layers, modules_to_save_wrappers, pattern_value
from .io import AdapterFileError

__all__ = [
    "PREFIX", "gathered", "whole", "adapter_state_dict", "load_adapter_state_dict", "adapter_metadata", "restore_parametrization", "peft_expressible",
    "check_file", "check_layers", "check_positions", "check_values",
]

PREFIX = "base_model.model."


def _slots(model: nn.Module, adapter_name: str, bias: str) -> Iterator[tuple[str, torch.Tensor, float]]:
    """(file key, live tensor, file value per unit of the tensor) for everything the adapter learned.
    Coefficients are saved as the c that PEFT multiplies by the file's scaling (``AdapterSpec.file_factor``)."""
    seen = set()
    for name, layer in adapter_layers(model):
        if adapter_name not in layer.specs:
            continue
        yield f"{PREFIX}{name}.fourierft_spectrum", layer.fourierft_spectrum[adapter_name], layer.specs[adapter_name].file_factor
        layer_bias = getattr(layer.base_layer, "bias", None)
        if bias == "fourier_only" and layer_bias is not None:
            seen.add(f"{name}.base_layer.bias")
            yield f"{PREFIX}{name}.base_layer.bias", layer_bias, 1.0
    for name, wrapper in modules_to_save_wrappers(model):
        if adapter_name in wrapper.modules_to_save:
            for key, tensor in wrapper.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                yield f"{PREFIX}{name}.{key}", tensor, 1.0
    if bias == "all":
        for name, param in model.named_parameters():
            parts = set(name.split("."))
            if name.endswith("bias") and name not in seen and parts.isdisjoint({"modules_to_save", "original_module"}):
                yield f"{PREFIX}{name}", param, 1.0
        # PEFT also writes the biases of saved modules under their wrapper paths (the copy's again)
        for name, wrapper in modules_to_save_wrappers(model):
            if adapter_name in wrapper.modules_to_save:
                for pname, param in wrapper.original_module.named_parameters():
                    if pname.endswith("bias"):
                        yield f"{PREFIX}{name}.original_module.{pname}", param, 1.0
                for pname, param in wrapper.modules_to_save[adapter_name].named_parameters():
                    if pname.endswith("bias"):
                        yield f"{PREFIX}{name}.modules_to_save.{pname}", param, 1.0


def whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor (FSDP2 / DTensor) gathered whole; every rank must call this together."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def gathered(tensors, modifier_rank=None):
    """DeepSpeed ZeRO-3 partitions parameters into per-rank pieces (``ds_id``); gather them whole for
    the block (every rank calls this). ``modifier_rank``: whose writes are kept (None: read only)."""
    partitioned = [t for t in tensors if hasattr(t, "ds_id")]
    if not partitioned:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)


def adapter_state_dict(model: nn.Module, adapter_name: str, bias: str = "none") -> dict[str, torch.Tensor]:
    """What ``adapter_name`` learned, as contiguous CPU tensors (sharded parameters gathered: under
    FSDP or DeepSpeed ZeRO-3 every rank calls this)."""
    slots, out = list(_slots(model, adapter_name, bias)), {}
    with gathered([t for _, t, _ in slots]):
        for key, t, factor in slots:
            t = whole(t.detach()).to("cpu", copy=True).contiguous()
            out[key] = t.mul_(factor) if factor != 1.0 else t
    return out


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str, bias: str = "none", source: str = "state dict") -> None:
    """Copy ``state`` into the adapter's tensors; every key must be expected and present, with the right shape."""
    triples = list(_slots(model, adapter_name, bias))
    with gathered([t for _, t, _ in triples], modifier_rank=0):  # every rank loads the same file
        _copy_into(triples, state, source, adapter_name)


def _copy_into(triples, state, source, adapter_name):
    slots = {key: (target, factor) for key, target, factor in triples}
    seen: dict[int, str] = {}
    for key, target, _ in triples:  # one tensor under two keys (PEFT's bias="all" files): both values must agree
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
    for key, (target, factor) in slots.items():
        value = state[key]
        if value.shape != target.shape:
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}")
        target.copy_(_like(target, value.to(target.dtype) / factor if factor != 1.0 else value.to(target.dtype)))


def _like(target: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (whole) laid out as ``target``: its shard for a sharded (FSDP2 / DTensor) parameter.
    Every rank holds the same whole value, so each takes its own shard without communication."""
    if hasattr(target, "device_mesh") and hasattr(target, "placements"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(target.device), target.device_mesh, target.placements, src_data_rank=None)
    return value


# ---- what the files record about the model, and the checks against it ----
def adapter_metadata(model: nn.Module, adapter_name: str, config: FourierFTConfig) -> dict[str, str]:
    """Safetensors metadata describing the adapter's layers (position fingerprints, layer records) and the
    parametrization training continues from (scaling "auto", coefficient_scale), which PEFT's config lacks."""
    return {
        **positions_metadata(model, adapter_name),
        "fourierft.layers": layers_metadata(model, adapter_name),
        "fourierft.parametrization": json.dumps(config.parametrization, sort_keys=True),
    }


def restore_parametrization(config: FourierFTConfig, metadata: dict[str, str], source: str) -> FourierFTConfig:
    """The config with the parametrization the file's metadata records (a PEFT-format config holds only
    the file scaling). Files without it (PEFT's) keep their number and this package's coefficient_scale."""
    recorded = metadata.get("fourierft.parametrization")
    if recorded is None:
        return config
    try:
        recorded = json.loads(recorded)
        assert isinstance(recorded, dict) and set(recorded) == {"scaling", "coefficient_scale"}
        restored = config.replace(**recorded)
    except (json.JSONDecodeError, AssertionError, TypeError, ValueError):
        raise AdapterFileError(f"{source}: the weights file's fourierft.parametrization metadata is damaged") from None
    if restored.file_scaling != config.file_scaling:
        raise AdapterFileError(
            f"{source}: adapter_config.json gives scaling {config.scaling!r} but the weights were written with scaling "
            f"{recorded['scaling']!r} (file scaling {restored.file_scaling:g}); the config was edited or the files do not belong together"
        )
    return restored


def peft_expressible(model, config: FourierFTConfig, adapter_name: str) -> bool:
    """True if PEFT's FourierFT would rebuild exactly this adapter from its config."""
    from .layer import FourierFTLinear

    if config.uses_extensions:
        return False
    for name, layer in adapter_layers(model):
        spec = layer.specs.get(adapter_name)
        if spec is None:
            continue
        if type(layer) is not FourierFTLinear or spec.n != pattern_value(config.n_frequency_pattern, name, config.n_frequency):
            return False
    return True


def positions_metadata(model, adapter_name: str) -> dict[str, str]:
    """{"fourierft.positions.<d_out>x<d_in>.n<n>.seed<s>.<sampler id>": fingerprint} for the adapter's layers."""
    meta = {}
    for _, layer in adapter_layers(model):
        spec = layer.specs.get(adapter_name)
        if spec is not None:
            rows, cols = layer.positions(adapter_name)
            key = f"fourierft.positions.{spec.grid}x{layer.d_in}.n{spec.n}.seed{spec.seed}.{SAMPLERS[spec.sampler]}"
            if spec.sampler == "frequency-bias":
                key += f".fc{spec.f_c:g}.w{spec.width:g}"
            meta[key] = positions_fingerprint(rows, cols)
    return meta


def layers_metadata(model, adapter_name: str) -> str:
    """JSON {layer: {d_out, d_in, grid_rows, n, slices, scaling, seed, sampler}} for tools that read files alone
    (``scaling``: what the saved coefficients are multiplied by)."""
    layers = {}
    for name, layer in adapter_layers(model):
        spec = layer.specs.get(adapter_name)
        if spec is not None:
            layers[name] = {
                "d_out": layer.d_out, "d_in": layer.d_in, "grid_rows": spec.grid, "n": spec.n, "slices": [list(s) for s in spec.slices],
                "scaling": spec.file_scaling, "seed": spec.seed, "sampler": spec.sampler, "f_c": spec.f_c, "width": spec.width, "type": type(layer).__name__,
            }
    return json.dumps(layers, sort_keys=True)


def check_positions(model, adapter_name: str, metadata: dict[str, str], source: str) -> None:
    recorded = {k: v for k, v in metadata.items() if k.startswith("fourierft.positions.")}
    if not recorded:
        return  # a PEFT-written file: positions come from PEFT's own seeded randperm
    current = positions_metadata(model, adapter_name)
    bad = sorted(k for k in current if recorded.get(k) != current[k])
    if bad:
        raise ValueError(
            f"{source}: the spectral positions regenerated from the seed differ from those the adapter was trained "
            f"with ({bad[0]}{' and others' if len(bad) > 1 else ''}). The random number generator or sampler changed; "
            "load it with the torch / fourierft version that wrote it"
        )


def check_layers(model, adapter_name: str, metadata: dict[str, str], source: str) -> None:
    """The adapter built from the config must be the one the file was written from (shapes, n, slices,
    scaling, seed, sampler per layer), when the file records it."""
    recorded = metadata.get("fourierft.layers")
    if recorded is None:
        return  # a PEFT-written file
    try:
        recorded = json.loads(recorded)
    except json.JSONDecodeError:
        raise AdapterFileError(f"{source}: the weights file's fourierft.layers metadata is not valid JSON; the file is damaged") from None
    current = json.loads(layers_metadata(model, adapter_name))
    if not isinstance(recorded, dict) or set(recorded) != set(current):
        raise AdapterFileError(f"{source}: adapter_config.json adapts other layers than the weights file was written for; the two files do not belong together")
    for layer, fields in current.items():
        theirs = recorded[layer] if isinstance(recorded[layer], dict) else {}
        for key, value in fields.items():
            if theirs.get(key) != value:
                raise AdapterFileError(
                    f"{source}: layer {layer}: {key} is {value!r} from adapter_config.json but {theirs.get(key)!r} in the weights "
                    "file's metadata; the config was edited or the files do not belong together"
                )


def check_values(model, adapter_name: str, source: str) -> None:
    """Finite coefficients, and a dW no larger than 1e6 x the base weight's largest entry (bounded
    without forming dW: |dW[p, q]| <= scaling * sum |c| / (grid_rows * d_in), c in file units)."""
    for name, layer in adapter_layers(model):
        spec = layer.specs.get(adapter_name)
        if spec is None:
            continue
        param = layer.fourierft_spectrum[adapter_name]
        with gathered([param, *layer.base_layer.parameters(recurse=False)]):  # every process, when sharded
            coeffs = whole(param.detach()).double()
            largest = layer.weight_scale()
        if not torch.isfinite(coeffs).all():
            raise AdapterFileError(f"{source}: {name}: the coefficients hold NaN or Inf values; the adapter is broken")
        bound = spec.factor * coeffs.abs().sum(-1).max().item() / (spec.grid * layer.d_in)
        if largest is None:  # a weight that cannot be read back (bitsandbytes 4-bit): a fixed bound
            largest = 1.0
        if not bound <= 1e6 * max(largest, 1e-6):
            raise AdapterFileError(
                f"{source}: {name}: scaling {spec.file_scaling:g} times these coefficients gives weight updates up to {bound:.3g}, "
                f"against base weights of at most {largest:.3g}; the adapter or its scaling is broken"
            )


def check_file(config: FourierFTConfig, state: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> None:
    """What can be checked without the base model: finite coefficients and, when the file records its
    layers, the config's per-layer n, scaling and seed against that record and the tensor shapes."""
    for key, t in state.items():
        if key.endswith("fourierft_spectrum") and not torch.isfinite(t).all():
            raise AdapterFileError(f"{source}: {key} holds NaN or Inf values; the adapter is broken")
    recorded = metadata.get("fourierft.layers")
    if recorded is None:
        return
    try:
        layers = json.loads(recorded)
        assert isinstance(layers, dict) and all(isinstance(v, dict) for v in layers.values())
    except (json.JSONDecodeError, AssertionError):
        raise AdapterFileError(f"{source}: the weights file's fourierft.layers metadata is damaged") from None
    spectra = {k.removeprefix("base_model.model.").removesuffix(".fourierft_spectrum") for k in state if k.endswith("fourierft_spectrum")}
    if spectra != set(layers):
        raise AdapterFileError(f"{source}: the coefficient tensors do not match the layers the file records; the file is damaged")
    for name, rec in layers.items():
        n = pattern_value(config.n_frequency_pattern, name, config.n_frequency)
        if config.clamp_n_frequency and isinstance(rec.get("grid_rows"), int) and isinstance(rec.get("d_in"), int):
            n = min(n, rec["grid_rows"] * rec["d_in"])
        expected = {"scaling": float(pattern_value(config.scaling_pattern, name, config.file_scaling)), "n": n, "seed": config.random_loc_seed}
        for field, value in expected.items():
            if rec.get(field) != value:
                raise AdapterFileError(
                    f"{source}: layer {name}: adapter_config.json gives {field} {value!r} but the weights were written with "
                    f"{rec.get(field)!r}; the config was edited or the files do not belong together"
                )
        shape = tuple(state[f"base_model.model.{name}.fourierft_spectrum"].shape)
        slices = rec.get("slices") or [None]
        if shape != ((n,) if len(slices) == 1 else (len(slices), n)):
            raise AdapterFileError(f"{source}: {name} coefficients have shape {shape}, not the recorded {len(slices)} x {n}")
