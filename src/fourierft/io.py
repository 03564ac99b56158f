"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors``, in PEFT's layout. Dicts in,
dicts out: ``write_adapter(directory, config_dict, tensors, metadata)`` and ``read_adapter(path)``;
what goes in them (PEFT's fields, the layer records) is decided by ``config`` and ``state``.

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

from .config import EXTENDED_PEFT_TYPE, PEFT_TYPE

__all__ = ["AdapterFileError", "CONFIG_NAME", "WEIGHTS_NAME", "CHECKSUM_KEY", "write_adapter", "read_adapter", "tensors_checksum"]


class AdapterFileError(ValueError):
    """An adapter directory or file that cannot be loaded as it is: the message names the file and the problem."""


CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = "1"
MAX_CONFIG_BYTES = 1 << 20  # an adapter_config.json is a few hundred bytes
CHECKSUM_KEY = "fourierft.sha256"  # of the tensors' names, dtypes, shapes and bytes


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










def tensors_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in key order: name, dtype, shape, then the raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()






def write_adapter(directory, config: dict, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``adapter_config.json`` (``config``) and ``adapter_model.safetensors`` (``tensors`` with
    ``metadata`` plus the format version and a checksum of the tensors) into ``directory``, together."""
    directory = Path(directory)
    metadata = {"format": "pt", "fourierft_format": FORMAT_VERSION, **metadata, CHECKSUM_KEY: tensors_checksum(tensors)}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _replace_files(directory, {WEIGHTS_NAME: lambda path: save_file(tensors, str(path), metadata=metadata), CONFIG_NAME: lambda path: path.write_text(text)})
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




def read_adapter(path_or_id, subfolder: str | None = None, **hub_kwargs) -> tuple[dict, dict[str, torch.Tensor], dict[str, str], Path]:
    """(config dict, tensors, safetensors metadata, directory) of a saved adapter (local directory or hub id).

    The bytes are checked here (size, UTF-8 JSON, a FourierFT peft_type, readable safetensors, float
    tensors, the recorded checksum); what they mean is checked against the model by ``state``. Every
    problem is an ``AdapterFileError`` (a ValueError) naming the file, or FileNotFoundError.
    """
    directory = _resolve(str(path_or_id), subfolder, **hub_kwargs)
    raw = _read_config(directory / CONFIG_NAME)
    tensors, metadata = _read_weights(directory / WEIGHTS_NAME)
    return raw, tensors, metadata, directory
