"""A seeded mutation fuzzer of the adapter loader: every mutated adapter directory either loads
exactly (same outputs as the original adapter) or is refused with fourierft's documented errors
(ValueError / AdapterFileError, FileNotFoundError) naming the problem. Never another exception
type, a hang, or a silently different model. A few hundred cases by default, thousands under -m slow."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model
from fourierft.io import CHECKSUM_KEY, tensors_checksum

DOCUMENTED = (ValueError, FileNotFoundError)
VALUES = [None, -1, 0, 1, 2**64, 10**12, "", "abc", "(.*)*z", [], {}, [""], ["query"], {"a": 3}, 1e30, -1e30, float("nan"), True, 3.5, [1, "x"], {"chunks": 3}]


def _base(kind):
    return tiny_bert() if kind == "bert" else tiny_gpt2()


def _inputs():
    return {"input_ids": torch.randint(1, 100, (2, 9), generator=torch.Generator().manual_seed(5))}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """kind -> (directory, reference logits) of a saved adapter with non-trivial coefficients."""
    out = {}
    for kind, config in (
        ("bert", FourierFTConfig(n_frequency=40, scaling=60.0, target_modules=["query", "value"], modules_to_save=["classifier"])),
        ("gpt2", FourierFTConfig(n_frequency=30, scaling=60.0, target_modules=["c_attn", "c_fc"], fused_slices={"c_attn": {"chunks": 3, "adapt": [0, 2]}})),
    ):
        torch.manual_seed(0)
        model = get_fourierft_model(_base(kind), config).eval()
        directory = tmp_path_factory.mktemp(kind)
        model.save_pretrained(directory)
        with torch.no_grad():
            out[kind] = (directory, model(**_inputs()).logits)
    return out


def _resave(directory: Path, edit) -> None:
    """Rewrite the weights file after ``edit(tensors, metadata)``, with a checksum that matches the new tensors."""
    path = directory / "adapter_model.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    tensors = load_file(path)
    edit(tensors, metadata)
    metadata[CHECKSUM_KEY] = tensors_checksum(tensors)
    save_file(tensors, path, metadata=metadata)


def _mutate(directory: Path, rng: random.Random) -> str:
    """Apply one random mutation; return its description."""
    weights, config_path = directory / "adapter_model.safetensors", directory / "adapter_config.json"
    kind = rng.choice(["truncate", "flip", "header", "dtype-label", "config-field", "config-drop", "config-bytes", "nonfinite", "tensor-dtype", "tensor-shape", "rename-key", "drop-key", "extra-key", "delete", "empty-dir", "symlink", "scale-coeffs", "metadata"])
    data = weights.read_bytes()
    if kind == "truncate":
        weights.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "flip":
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        weights.write_bytes(bytes(buf))
    elif kind in ("header", "dtype-label"):
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        key = rng.choice([k for k in header if k != "__metadata__"])
        if kind == "dtype-label":
            header[key]["dtype"] = rng.choice(["I32", "U32", "I64", "BOOL", "F16", "F64", "U8"])
        else:
            field = rng.choice(["shape", "data_offsets"])
            header[key][field] = [rng.choice([0, 1, 3, 2**40, -1]) for _ in header[key][field]]
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    elif kind == "config-field":
        config = json.loads(config_path.read_text())
        config[rng.choice(sorted(config))] = rng.choice(VALUES)
        config_path.write_text(json.dumps(config))
    elif kind == "config-drop":
        config = json.loads(config_path.read_text())
        config.pop(rng.choice(sorted(config)))
        config_path.write_text(json.dumps(config))
    elif kind == "config-bytes":
        text = config_path.read_bytes()
        config_path.write_bytes(rng.choice([text[: rng.randrange(len(text))], b"\xff\xfe" + text, b"[1, 2]", b"", b"{" * 5000]))
    elif kind == "nonfinite":
        _resave(directory, lambda t, m: _first_spectrum(t, rng).view(-1).__setitem__(0, rng.choice([float("nan"), float("inf"), -float("inf")])))
    elif kind == "tensor-dtype":
        def edit(t, m):
            key = rng.choice(sorted(t))
            t[key] = t[key].to(rng.choice([torch.int32, torch.int64, torch.bool, torch.uint8]))
        _resave(directory, edit)
    elif kind == "tensor-shape":
        def edit(t, m):
            key = rng.choice(sorted(t))
            t[key] = torch.cat([t[key].reshape(-1), torch.zeros(rng.randint(1, 5))])
        _resave(directory, edit)
    elif kind == "rename-key":
        def edit(t, m):
            key = rng.choice(sorted(t))
            t[key.replace("fourierft_spectrum", "fourierft_spectrvm").replace("classifier", "classifyer") + rng.choice(["", ".x"])] = t.pop(key)
        _resave(directory, edit)
    elif kind == "drop-key":
        _resave(directory, lambda t, m: t.pop(rng.choice(sorted(t))))
    elif kind == "extra-key":
        _resave(directory, lambda t, m: t.__setitem__("base_model.model.extra.fourierft_spectrum", torch.zeros(3)))
    elif kind == "delete":
        rng.choice([weights, config_path]).unlink()
    elif kind == "empty-dir":
        for p in directory.iterdir():
            p.unlink()
    elif kind == "symlink":
        target = rng.choice([weights, config_path])
        target.unlink()
        target.symlink_to(rng.choice(["/dev/zero", "/dev/null", "/nonexistent"]))
    elif kind == "scale-coeffs":
        _resave(directory, lambda t, m: _first_spectrum(t, rng).mul_(rng.choice([1e30, 1e38, -1e35])))
    elif kind == "metadata":
        def edit(t, m):
            key = rng.choice([k for k in m if k != CHECKSUM_KEY])
            m[key] = rng.choice(["", "{}", "[]", "not json", m[key][::-1]])
        _resave(directory, edit)
    return kind


def _first_spectrum(tensors, rng):
    return tensors[rng.choice(sorted(k for k in tensors if k.endswith("fourierft_spectrum")))]


def run_cases(originals, tmp_path, count, seed):
    rng = random.Random(seed)
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(count):
        kind = rng.choice(sorted(originals))
        source, want = originals[kind]
        directory = tmp_path / f"case{i}"
        shutil.copytree(source, directory)
        what = _mutate(directory, rng)
        start = time.monotonic()
        base = _base(kind)
        pristine = {k: v.clone() for k, v in base.state_dict().items()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = FourierFTModel.from_pretrained(base, directory).eval()
        except DOCUMENTED as err:
            assert str(err), what
            outcomes["refused"] += 1
            # a refused load leaves the caller's model untouched
            assert all(torch.equal(v, pristine[k]) for k, v in base.state_dict().items()), what
            assert not any(type(m).__module__.startswith("fourierft") for m in base.modules()), what
        else:
            with torch.no_grad():
                got = model(**_inputs()).logits
            assert torch.equal(got, want), f"case {i} ({what}) loaded a different model"
            outcomes["loaded"] += 1
        assert time.monotonic() - start < 10, what
        shutil.rmtree(directory, ignore_errors=True)
    return outcomes


def test_mutated_adapters_load_exactly_or_are_refused(originals, tmp_path):
    outcomes = run_cases(originals, tmp_path, count=int(os.environ.get("FOURIERFT_FUZZ_CASES", 250)), seed=0)
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 0, outcomes


@pytest.mark.slow
def test_mutated_adapters_many(originals, tmp_path):
    outcomes = run_cases(originals, tmp_path, count=3000, seed=1)
    assert outcomes["refused"] > 1000, outcomes
