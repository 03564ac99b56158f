"""Image classification recipe: tiny ViT (Transformers) and a small CNN (plain PyTorch, Conv2d adapters)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("PIL")

from fourierft.layer import FourierFTConv2d, FourierFTLayer  # noqa: E402
from fourierft.recipes import image_classification as ic  # noqa: E402
from fourierft.recipes.data import DataError  # noqa: E402


def synthetic(n, seed):
    """Class 0: bright left half; class 1: bright right half; noise elsewhere. uint8 (n, 16, 16, 3)."""
    g = np.random.default_rng(seed)
    images = g.integers(0, 90, (n, 16, 16, 3), dtype=np.uint8)
    labels = g.integers(0, 2, n)
    for i, y in enumerate(labels):
        images[i, :, (8 if y else 0) : (16 if y else 8)] += 150
    return images, labels


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    d = tmp_path_factory.mktemp("arrays")
    for split, n, seed in (("train", 160, 0), ("eval", 40, 1)):
        images, labels = synthetic(n, seed)
        np.savez(d / f"{split}.npz", images=images, labels=labels, classes=np.array(["left", "right"]))
    return d


def cnn_factory(num_classes):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, num_classes)
    )


def test_cnn_with_conv2d_adapters_from_arrays(arrays, tmp_path):
    cfg = ic.ImageConfig(model="test_image_classification:cnn_factory", train_file=str(arrays / "train.npz"), eval_file=str(arrays / "eval.npz"),
                         output_dir=str(tmp_path / "cnn"), image_size=16, target_modules=["0", "2"], head=["6"], n_frequency=500,
                         epochs=4, batch_size=16, logging_steps=2)  # the recipe's defaults: scaling "auto", one lr
    result = ic.train(cfg, quiet=True)
    layers = {n: m for n, m in result["model"].model.named_modules() if isinstance(m, FourierFTLayer)}
    assert set(layers) == {"0", "2"} and all(isinstance(m, FourierFTConv2d) for m in layers.values())
    assert layers["2"].specs["default"].n == 16 * 8  # clamped to the 1x1 conv's grid
    assert result["eval"]["eval_accuracy"] > 0.8
    assert (tmp_path / "cnn" / "best-adapter" / "adapter_model.safetensors").exists()


def test_tiny_vit_from_an_image_folder(tmp_path):
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification

    for split, n, seed in (("train", 96, 0), ("eval", 32, 1)):
        images, labels = synthetic(n, seed)
        for i, (img, y) in enumerate(zip(images, labels)):
            folder = tmp_path / split / ("left", "right")[y]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, image_size=16, patch_size=4, num_labels=3)).save_pretrained(tmp_path / "vit")
    cfg = ic.ImageConfig(model=str(tmp_path / "vit"), train_file=str(tmp_path / "train"), eval_file=str(tmp_path / "eval"), output_dir=str(tmp_path / "run"),
                         image_size=16, n_frequency=200, epochs=8, batch_size=16, logging_steps=2)  # the recipe's defaults
    result = ic.train(cfg, quiet=True)
    names = [n for n, m in result["model"].model.named_modules() if isinstance(m, FourierFTLayer)]
    assert len(names) == 4 and all(n.endswith(("q_proj", "v_proj", "query", "value")) for n in names)
    assert result["model"].model.classifier.modules_to_save["default"].out_features == 2  # re-headed for 2 classes
    majority = max(np.bincount(synthetic(32, 1)[1])) / 32
    print("vit accuracy", result["eval"]["eval_accuracy"], majority)
    assert result["eval"]["eval_accuracy"] >= majority + 0.15  # learned the bright half, not the majority class


def test_image_data_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="one sub-folder of images per class"):
        ic.read_image_folder(tmp_path / "empty")
    np.savez(tmp_path / "x.npz", pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"needs the arrays 'images' .* found \['pixels'\]"):
        ic.read_arrays(tmp_path / "x.npz")
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4), np.float32), labels=np.zeros(2))
    with pytest.raises(DataError, match="images must be uint8"):
        ic.read_arrays(tmp_path / "f.npz")


def test_train_cli_routes_image_tasks(arrays, tmp_path, capsys):
    from fourierft.recipes import cli

    cli.main(["train", "--task", "image", "--model", "test_image_classification:cnn_factory", "--train-file", str(arrays / "train.npz"), "--eval-file", str(arrays / "eval.npz"),
              "--output-dir", str(tmp_path / "run"), "image_size=16", "target_modules=0,2", "head=6", "n_frequency=100", "scaling=20", "epochs=1", "batch_size=32"])
    printed = capsys.readouterr().out
    assert "image_size: 16" in printed and '"eval_accuracy"' in printed


@pytest.mark.parametrize("method", ["lora", "head", "full"])
def test_image_comparison_methods(arrays, tmp_path, method):
    cfg = ic.ImageConfig(model="test_image_classification:cnn_factory", train_file=str(arrays / "train.npz"), eval_file=str(arrays / "eval.npz"),
                         output_dir=str(tmp_path / method), image_size=16, target_modules=["0", "2"], head=["6"], method=method, lr=1e-3, epochs=1, batch_size=32)
    result = ic.train(cfg, quiet=True)
    head = 256 * 2 + 2
    expected = {"lora": 8 * (27 + 8) + 8 * (8 + 16) + head, "head": head, "full": sum(p.numel() for p in cnn_factory(2).parameters())}[method]
    assert result["trainable_parameters"] == expected and result["saved_bytes"] > 0


def test_eval_and_predict_with_a_saved_image_adapter(arrays, tmp_path, capsys):
    from fourierft.recipes import cli

    cfg = ic.ImageConfig(model="test_image_classification:cnn_factory", train_file=str(arrays / "train.npz"), eval_file=str(arrays / "eval.npz"),
                         output_dir=str(tmp_path / "run"), image_size=16, target_modules=["0", "2"], head=["6"], n_frequency=500,
                         scaling=20.0, lr=0.05, head_lr=0.01, epochs=2, batch_size=16)
    result = ic.train(cfg, quiet=True)
    adapter = str(tmp_path / "run" / "best-adapter")
    capsys.readouterr()
    # the run records a module:function factory: loading never imports it unless asked with --model
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--adapter", adapter, "--file", str(arrays / "eval.npz")])
    assert exit_info.value.code == 2
    assert "never imports code" in capsys.readouterr().err
    factory = ["--model", "test_image_classification:cnn_factory"]
    cli.main(["eval", "--adapter", adapter, "--file", str(arrays / "eval.npz"), *factory])
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result["eval"]["eval_accuracy"])
    cli.main(["predict", "--adapter", adapter, "--file", str(arrays / "eval.npz"), "--out", str(tmp_path / "p.jsonl"), *factory])
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and {r["label"] for r in rows} <= {"left", "right"}


def test_only_the_main_process_writes_the_run_outputs(arrays, tmp_path, monkeypatch):
    from transformers import Trainer

    monkeypatch.setattr(Trainer, "is_world_process_zero", lambda self: False)
    cfg = ic.ImageConfig(model="test_image_classification:cnn_factory", train_file=str(arrays / "train.npz"), eval_file=str(arrays / "eval.npz"),
                         output_dir=str(tmp_path / "cnn"), image_size=16, target_modules=["0", "2"], head=["6"], n_frequency=100, epochs=1, batch_size=16)
    result = ic.train(cfg, quiet=True)
    assert result["saved_bytes"] is None
    for name in ("best-adapter", "results.json", "plots"):
        assert not (tmp_path / "cnn" / name).exists(), name


def test_two_processes_finish_one_run(arrays, tmp_path):
    """torchrun with 2 CPU processes (gloo): the run completes and its outputs are written once, whole."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import fourierft
    paths = [str(Path(fourierft.__file__).parents[1]), str(Path(__file__).parent)]  # the package, and cnn_factory
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    out = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fourierft.cli", "train",
         "--task", "image", "--model", "test_image_classification:cnn_factory", "--train-file", str(arrays / "train.npz"), "--eval-file", str(arrays / "eval.npz"),
         "--output-dir", str(out), "image_size=16", "target_modules=0,2", "head=6", "n_frequency=100", "scaling=20", "epochs=1", "batch_size=16", "mixed_precision=no"],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"eval_accuracy"') == 2
    summary = json.loads((out / "results.json").read_text())
    assert summary["saved_bytes"] == (out / "best-adapter" / "adapter_model.safetensors").stat().st_size
    from fourierft import read_adapter_files

    read_adapter_files(out / "best-adapter")
