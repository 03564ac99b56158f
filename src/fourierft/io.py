"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors``, in PEFT's layout.

Adapters PEFT can express (Linear / Conv1D targets, uniform positions, one scaling, no fused
slices, no clamped n) are written exactly as PEFT writes them (peft_type "FOURIERFT"), so
``peft.PeftModel.from_pretrained`` loads them. Others get peft_type "FOURIERFT_EXTENDED", which
PEFT refuses loudly. The safetensors metadata records, per distinct position set, the sampler
and a fingerprint of the positions; loading regenerates the positions and checks them.

A save replaces the config and the weights together: both are written into a temporary sibling
directory that is swapped in atomically (``_replace_files``), so a crash leaves the old or the new
adapter, never a mix. Nothing is ever unpickled.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import EXTENDED_PEFT_TYPE, PEFT_TYPE, FourierFTConfig
from .functional import SAMPLERS, positions_fingerprint
from .inject import adapter_layers, pattern_value

__all__ = ["AdapterFileError", "CONFIG_NAME", "WEIGHTS_NAME", "write_adapter", "read_adapter", "positions_metadata", "check_positions", "check_layers", "check_values"]


class AdapterFileError(ValueError):
    """An adapter directory or file that cannot be loaded as it is: the message names the file and the problem."""


CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = "1"
MAX_CONFIG_BYTES = 1 << 20  # an adapter_config.json is a few hundred bytes
CHECKSUM_KEY = "fourierft.sha256"  # of the tensors' names, dtypes, shapes and bytes
_PEFT_FIELDS = (
    "n_frequency scaling random_loc_seed target_modules exclude_modules fan_in_fan_out bias modules_to_save "
    "layers_to_transform layers_pattern n_frequency_pattern init_weights base_model_name_or_path task_type "
    "inference_mode revision"
).split()


_TMP_MARK = ".fourierft-tmp-"  # temporary siblings of an adapter directory while it is replaced


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False  # e.g. EINVAL on a filesystem without exchange support


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links (copies where links fail) of everything in src under dst; src is not changed."""
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            target.mkdir()
            _link_tree(entry, target)
        elif entry.is_symlink():
            target.symlink_to(os.readlink(entry))
        else:
            try:
                os.link(entry, target)
            except OSError:
                shutil.copy2(entry, target)


_MAX_LINKED_ENTRIES = 1000


def _more_entries_than(directory: Path, limit: int) -> bool:
    count = 0
    for _, dirs, names in os.walk(directory):
        count += len(dirs) + len(names)
        if count > limit:
            return True
    return False


def _replace_one(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _fsync(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _sweep(directory: Path) -> None:
    """Remove temporary siblings left by an interrupted save of ``directory``."""
    for stale in directory.parent.glob(f".{directory.name}{_TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _replace_files(directory: Path, files: dict[str, object]) -> None:
    """Put ``files`` ({name: write(path)}) into ``directory`` as one change: a reader (or a crash) sees
    the directory wholly before or wholly after. The new files are written into a temporary sibling
    holding hard links to everything else in the directory, which is then swapped in with one
    atomic rename (an exchange when the directory exists) and the old copy removed. Without an
    atomic exchange (not Linux) each file is still replaced atomically, one after the other."""
    directory = directory.resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    _sweep(directory)
    if directory.is_dir() and _more_entries_than(directory, _MAX_LINKED_ENTRIES):
        for name, write in files.items():  # a large folder (".", a project root): per-file replacement
            _replace_one(directory / name, write)
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}{_TMP_MARK}", dir=directory.parent))
    try:
        if directory.is_dir():
            _link_tree(directory, staging)
        for name, write in files.items():
            (staging / name).unlink(missing_ok=True)  # a link to the old file: never write through it
            write(staging / name)
            _fsync(staging / name)
        _fsync(staging)
        if not directory.exists():
            os.rename(staging, directory)
        elif _exchange(staging, directory):
            pass  # staging now holds the old directory
        else:
            for name in files:
                os.replace(staging / name, directory / name)
        _fsync(directory.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def tensors_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in key order: name, dtype, shape, then the raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


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
    without forming dW: |dW[p, q]| <= scaling * sum |c| / (grid_rows * d_in))."""
    for name, layer in adapter_layers(model):
        spec = layer.specs.get(adapter_name)
        if spec is None:
            continue
        coeffs = layer.fourierft_spectrum[adapter_name].detach().double()
        if not torch.isfinite(coeffs).all():
            raise AdapterFileError(f"{source}: {name}: the coefficients hold NaN or Inf values; the adapter is broken")
        bound = spec.scaling * coeffs.abs().sum(-1).max().item() / (spec.grid * layer.d_in)
        largest = layer.weight_matrix().detach().abs().max().item()
        if not bound <= 1e6 * max(largest, 1e-6):
            raise AdapterFileError(
                f"{source}: {name}: scaling {spec.scaling:g} times these coefficients gives weight updates up to {bound:.3g}, "
                f"against base weights of at most {largest:.3g}; the adapter or its scaling is broken"
            )


def write_adapter(directory, config: FourierFTConfig, state: dict[str, torch.Tensor], model, adapter_name: str) -> Path:
    directory = Path(directory)
    compatible = peft_expressible(model, config, adapter_name)
    full = config.to_dict()
    payload = {k: full[k] for k in _PEFT_FIELDS} if compatible else full
    payload["peft_type"] = PEFT_TYPE if compatible else EXTENDED_PEFT_TYPE
    if any(getattr(layer, "transposed", False) for _, layer in adapter_layers(model) if adapter_name in layer.specs):
        payload["fan_in_fan_out"] = True  # what PEFT records for GPT-2 Conv1D targets
    metadata = {
        "format": "pt", "fourierft_format": FORMAT_VERSION, **positions_metadata(model, adapter_name),
        "fourierft.layers": layers_metadata(model, adapter_name), CHECKSUM_KEY: tensors_checksum(state),
    }
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    _replace_files(directory, {WEIGHTS_NAME: lambda path: save_file(state, str(path), metadata=metadata), CONFIG_NAME: lambda path: path.write_text(text)})
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
    try:
        root = Path(snapshot_download(path_or_id, allow_patterns=pattern, **hub_kwargs))
    except Exception as err:  # invalid id, no network, not found, gated: one message for all
        raise FileNotFoundError(
            f"{path_or_id!r} is not a local directory, and fetching it from the Hugging Face Hub failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the path"
        ) from None
    return root / subfolder if subfolder else root


_FLOAT_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an adapter directory (it needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise AdapterFileError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; not an adapter config")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterFileError(f"{path} is not valid UTF-8 JSON ({err}); the file is damaged") from None
    if not isinstance(raw, dict):
        raise AdapterFileError(f"{path} must hold a JSON object, found {type(raw).__name__}")
    if raw.get("peft_type") not in (PEFT_TYPE, EXTENDED_PEFT_TYPE):
        raise AdapterFileError(f"{path}: peft_type is {raw.get('peft_type')!r}, not a FourierFT adapter")
    return raw


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        pickled = [p.name for p in path.parent.glob("adapter_model.*") if p.suffix != ".safetensors"]
        hint = f" Found {pickled}: pickle files are never loaded; re-save them as safetensors." if pickled else ""
        raise FileNotFoundError(f"{path} not found.{hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError) as err:
        raise AdapterFileError(f"{path} is not a readable safetensors file ({err}); the file is damaged or truncated") from None
    bad = sorted(k for k, t in state.items() if t.dtype not in _FLOAT_DTYPES)
    if bad:
        raise AdapterFileError(f"{path}: {bad[0]} is stored as {state[bad[0]].dtype}; adapter tensors are floating point, so the file is damaged")
    recorded = metadata.get(CHECKSUM_KEY)
    if recorded is not None and recorded != tensors_checksum(state):
        raise AdapterFileError(f"{path}: the tensors do not match the checksum recorded when the file was written; the file is damaged")
    return state, metadata


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
        expected = {"scaling": float(pattern_value(config.scaling_pattern, name, config.scaling)), "n": n, "seed": config.random_loc_seed}
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


def read_adapter(path_or_id, subfolder: str | None = None, **hub_kwargs) -> tuple[FourierFTConfig, dict[str, torch.Tensor], dict[str, str], Path]:
    """Config, tensors and safetensors metadata of a saved adapter (local directory or hub id).

    Every problem with the files is an ``AdapterFileError`` (a ValueError) that names the file.
    """
    directory = _resolve(str(path_or_id), subfolder, **hub_kwargs)
    raw = _read_config(directory / CONFIG_NAME)
    try:
        config = FourierFTConfig.from_dict(raw)
    except (TypeError, ValueError, AttributeError, OverflowError, RecursionError) as err:
        raise AdapterFileError(f"{directory / CONFIG_NAME}: {err}") from None
    state, metadata = _read_weights(directory / WEIGHTS_NAME)
    check_file(config, state, metadata, str(directory))
    return config, state, metadata, directory
