"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors``, in PEFT's layout.

Adapters PEFT can express (Linear / Conv1D targets, uniform positions, one scaling, no fused
slices, no clamped n) are written exactly as PEFT writes them (peft_type "FOURIERFT"), so
``peft.PeftModel.from_pretrained`` loads them. Others get peft_type "FOURIERFT_EXTENDED", which
PEFT refuses loudly. The safetensors metadata records, per distinct position set, the sampler
and a fingerprint of the positions; loading regenerates the positions and checks them.

Files are written to a temporary file in the target directory and renamed over the old one, so an
interrupted save never leaves a half-written adapter. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import EXTENDED_PEFT_TYPE, PEFT_TYPE, FourierFTConfig
from .functional import SAMPLERS, positions_fingerprint
from .inject import adapter_layers, pattern_value

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "write_adapter", "read_adapter", "positions_metadata", "check_positions"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = "1"
_PEFT_FIELDS = (
    "n_frequency scaling random_loc_seed target_modules exclude_modules fan_in_fan_out bias modules_to_save "
    "layers_to_transform layers_pattern n_frequency_pattern init_weights base_model_name_or_path task_type "
    "inference_mode revision"
).split()


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    """JSON {layer: {d_out, d_in, grid_rows, n, slices, scaling, seed, sampler}} for tools that read files alone."""
    layers = {}
    for name, layer in adapter_layers(model):
        spec = layer.specs.get(adapter_name)
        if spec is not None:
            layers[name] = {
                "d_out": layer.d_out, "d_in": layer.d_in, "grid_rows": spec.grid, "n": spec.n, "slices": [list(s) for s in spec.slices],
                "scaling": spec.scaling, "seed": spec.seed, "sampler": spec.sampler, "f_c": spec.f_c, "width": spec.width, "type": type(layer).__name__,
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


def write_adapter(directory, config: FourierFTConfig, state: dict[str, torch.Tensor], model, adapter_name: str) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    compatible = peft_expressible(model, config, adapter_name)
    full = config.to_dict()
    payload = {k: full[k] for k in _PEFT_FIELDS} if compatible else full
    payload["peft_type"] = PEFT_TYPE if compatible else EXTENDED_PEFT_TYPE
    if any(getattr(layer, "transposed", False) for _, layer in adapter_layers(model) if adapter_name in layer.specs):
        payload["fan_in_fan_out"] = True  # what PEFT records for GPT-2 Conv1D targets
    metadata = {"format": "pt", "fourierft_format": FORMAT_VERSION, **positions_metadata(model, adapter_name), "fourierft.layers": layers_metadata(model, adapter_name)}
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=metadata))
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def _resolve(path_or_id: str, subfolder: str | None, **hub_kwargs) -> Path:
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        directory = local / subfolder if subfolder else local
        if not directory.is_dir():
            raise FileNotFoundError(f"adapter directory {directory} does not exist")
        return directory
    if path_or_id.startswith((".", "/", "~")) or local.exists() or path_or_id.count("/") > 1:
        raise FileNotFoundError(f"adapter directory {local} does not exist")
    try:  # a hub id such as "user/my-adapter"
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise FileNotFoundError(
            f"{path_or_id!r} is not a local directory; to load it from the Hugging Face Hub, pip install 'fourierft[hf]'"
        ) from err
    pattern = [f"{subfolder}/{CONFIG_NAME}", f"{subfolder}/{WEIGHTS_NAME}"] if subfolder else [CONFIG_NAME, WEIGHTS_NAME]
    root = Path(snapshot_download(path_or_id, allow_patterns=pattern, **hub_kwargs))
    return root / subfolder if subfolder else root


def read_adapter(path_or_id, subfolder: str | None = None, **hub_kwargs) -> tuple[FourierFTConfig, dict[str, torch.Tensor], dict[str, str], Path]:
    """Config, tensors and safetensors metadata of a saved adapter (local directory or hub id)."""
    directory = _resolve(str(path_or_id), subfolder, **hub_kwargs)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not an adapter directory")
    if not weights_path.is_file():
        pickled = [p.name for p in directory.glob("adapter_model.*") if p.suffix != ".safetensors"]
        hint = f" Found {pickled}: pickle files are never loaded; re-save them as safetensors." if pickled else ""
        raise FileNotFoundError(f"{weights_path} not found.{hint}")
    raw = json.loads(config_path.read_text())
    if raw.get("peft_type") not in (PEFT_TYPE, EXTENDED_PEFT_TYPE):
        raise ValueError(f"{config_path}: peft_type is {raw.get('peft_type')!r}, not a FourierFT adapter")
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as f:
        metadata = f.metadata() or {}
    return FourierFTConfig.from_dict(raw), load_file(str(weights_path)), metadata, directory
