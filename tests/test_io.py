"""Adapter files: atomic writes, fingerprints, no pickle, clear errors."""

import copy
import json

import pytest
import torch
from conftest import tiny_bert
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model
from fourierft import read_adapter_files


def saved(tmp_path, **kwargs):
    base = tiny_bert()
    model = get_fourierft_model(copy.deepcopy(base), FourierFTConfig(**{"n_frequency": 30, "target_modules": ["query", "value"], **kwargs}))
    model.save_pretrained(tmp_path)
    return base, model


def test_files_hold_only_what_was_learned_and_metadata(tmp_path):
    _, model = saved(tmp_path, modules_to_save=["classifier"])
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(tensors) == sorted(
        [f"base_model.model.bert.encoder.layer.{i}.attention.self.{p}.fourierft_spectrum" for i in range(2) for p in ("query", "value")]
        + ["base_model.model.classifier.weight", "base_model.model.classifier.bias"]
    )
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["fourierft_format"] == "1"
    assert list(k for k in meta if k.startswith("fourierft.positions.")) == ["fourierft.positions.32x32.n30.seed777.uniform-randperm-v1"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left


def test_saving_replaces_own_files_atomically_and_keeps_others(tmp_path, monkeypatch):
    _, model = saved(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    before = (tmp_path / "adapter_model.safetensors").read_bytes()

    import fourierft.io as io

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", broken)
    with torch.no_grad():
        model.model.bert.encoder.layer[0].attention.self.query.fourierft_spectrum["default"].add_(1)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == before  # old adapter intact
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() != before
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_position_fingerprint_mismatch_is_refused(tmp_path):
    base, _ = saved(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    key = next(k for k in meta if k.startswith("fourierft.positions."))
    meta[key] = "0" * 16
    save_file(load_file(path), path, metadata=meta)
    with pytest.raises(ValueError, match="spectral positions regenerated from the seed differ"):
        FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path)


def test_pickle_is_never_loaded(tmp_path):
    base, _ = saved(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    torch.save({}, tmp_path / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pickle files are never loaded"):
        FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path)


def test_wrong_type_missing_dir_and_mismatched_model(tmp_path):
    base, _ = saved(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
    (tmp_path / "lora" / "adapter_model.safetensors").write_bytes((tmp_path / "a" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="peft_type is 'LORA', not a FourierFT adapter"):
        FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FourierFTModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "nowhere"))
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    tensors.pop(next(iter(tensors)))
    tensors["base_model.model.extra.fourierft_spectrum"] = torch.zeros(3)
    save_file(tensors, tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['base_model.model.bert.*unexpected keys \['base_model.model.extra"):
        FourierFTModel.from_pretrained(copy.deepcopy(base), tmp_path / "a")


def test_unknown_config_keys_warn_and_hub_ids_go_to_the_hub(tmp_path, monkeypatch):
    base, model = saved(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "future_option": 1, "auto_mapping": None}))
    with pytest.warns(UserWarning, match="future_option"):
        read_adapter_files(tmp_path)

    calls = {}

    def fake_download(repo_id, allow_patterns, **kwargs):
        calls["repo"] = repo_id
        return str(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.warns(UserWarning):
        loaded = FourierFTModel.from_pretrained(copy.deepcopy(base), "someone/my-adapter")
    assert calls["repo"] == "someone/my-adapter"
    ids = torch.randint(1, 100, (2, 5))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
