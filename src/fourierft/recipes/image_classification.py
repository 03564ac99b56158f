"""Image classification with FourierFT: Transformers image models (ViT, the paper's setting) and plain
PyTorch CNNs, from image folders or arrays, on HF Trainer. Adapters go on Linear and Conv2d layers.

Images are resized and normalised here (PIL and torch only; no torchvision).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fourierft import FourierFTConfig, default_target_modules, get_fourierft_model, param_groups


from .baselines import prepare_baseline
from .config import RunSettings
from .data import DataError
from .engine import count_trainable, finish_run, mixed_precision, read_run_info, resume_checkpoint, save_merged, start_run, trainer_classes, warmup

__all__ = ["ImageConfig", "IMAGE_PRESETS", "ImageSet", "read_image_folder", "read_arrays", "train"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclasses.dataclass
class ImageConfig(RunSettings):
    model: str = ""
    """A Transformers image-classification model (directory or hub id), or "module:function" returning an
    nn.Module that maps (B, C, H, W) images to logits, called with num_classes=<classes>."""
    train_file: str | None = None
    """An image folder (one sub-folder per class) or a .npz file with arrays images (N, H, W[, C]) and labels (N,)."""
    eval_file: str | None = None
    output_dir: str = "runs/image-classification"
    image_size: int = 224
    channels: int = 3
    mean: list[float] | None = None
    """Normalisation; None: the model's preprocessor_config.json, else 0.5."""
    std: list[float] | None = None
    n_frequency: int = 3000
    scaling: float | str = "auto"
    """dW scale: "auto" (150 at 768 x 768, per layer size) or one number for every layer (the paper: 300)."""
    coefficient_scale: float = 512.0
    """Trained parameter = coefficient / coefficient_scale: 512 trains at LoRA's rates; 1 is the paper's (rates 0.2-0.3)."""
    target_modules: list[str] | None = None
    """None: the model type's query and value projections (ViT); all-linear: every linear layer but the head."""
    n_frequency_pattern: dict[str, int] | None = None
    init_weights: bool = False
    """True: coefficients start at zero, so training starts from the pretrained network."""
    clamp_n_frequency: bool = True
    """Small layers (e.g. 1x1 convolutions) use all their spectral entries rather than failing."""
    head: list[str] | None = None
    """Modules trained fully (the new classifier); None: "classifier" if the model has one."""
    lr: float = 1e-3
    """Learning rate of the FourierFT coefficients (and of the head unless head_lr is given)."""
    head_lr: float | None = None
    """Learning rate of the head; None: lr (the paper's presets use 7e-4 - 1e-3)."""
    weight_decay: float = 1e-4
    warmup_ratio: float = 0.06
    epochs: float = 10.0
    batch_size: int = 32
    eval_batch_size: int = 64


# ViT-base (in21k) recipes of the paper: n = 3000, scaling 300, 10 epochs, effective batch 200.
NAME = "image-classification"
TASKS = {"image"}


def merge(adapter: str, out_dir: str, model: str | None = None) -> Path:
    """A plain Transformers model directory with the adapter merged in (Transformers models only)."""
    wrapped, _, _ = load_for_inference(adapter, model)
    return save_merged(wrapped, out_dir)


IMAGE_PRESETS = {
    f"vit-base-{name}": dict(model="google/vit-base-patch16-224-in21k", n_frequency=3000, scaling=300.0, coefficient_scale=1.0, epochs=10, batch_size=40, grad_accum=5, lr=lr, head_lr=head_lr, weight_decay=wd, image_size=224)
    for name, lr, head_lr, wd in [
        ("pets", 0.3, 1e-3, 8e-4), ("cars", 0.3, 1e-3, 4e-5), ("cifar10", 0.3, 1e-3, 9e-5), ("dtd", 0.3, 1e-3, 7e-5),
        ("fgvc", 0.3, 1e-3, 7e-5), ("resisc45", 0.3, 1e-3, 3e-4), ("eurosat", 0.2, 8e-4, 3e-4), ("cifar100", 0.2, 7e-4, 1e-4),
    ]
}


@dataclasses.dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]
    source: str


def read_image_folder(path: str | Path, channels: int = 3, size: int | None = None) -> ImageSet:
    from PIL import Image

    root = Path(path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataError(f"{root}: expected one sub-folder of images per class")
    images, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                img = Image.open(file).convert("RGB" if channels == 3 else "L")
                if size:
                    img = img.resize((size, size), Image.BILINEAR)
                array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(img.height, img.width, channels)
                images.append(array.permute(2, 0, 1))
                labels.append(index)
    if not images:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    if len({tuple(i.shape) for i in images}) > 1:
        raise DataError(f"{root}: images differ in size; set image_size to resize them")
    return ImageSet(torch.stack(images), torch.tensor(labels), classes, str(root))


def read_arrays(path: str | Path, channels: int = 3) -> ImageSet:
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data or "labels" not in data:
            raise DataError(f"{path}: needs the arrays 'images' (N, H, W[, C]) and 'labels' (N,); found {list(data.keys())}")
        images, labels = torch.from_numpy(data["images"].copy()), torch.from_numpy(data["labels"].copy()).long()
        classes = [str(c) for c in data["classes"]] if "classes" in data else [str(i) for i in range(int(labels.max()) + 1)]
    if images.dtype != torch.uint8:
        raise DataError(f"{path}: images must be uint8 (0-255), got {images.dtype}")
    images = images.unsqueeze(-1) if images.ndim == 3 else images
    images = images.permute(0, 3, 1, 2)  # (N, C, H, W)
    if images.shape[1] != channels:
        images = images.expand(-1, channels, -1, -1) if images.shape[1] == 1 else images.float().mean(1, keepdim=True).to(torch.uint8)
    return ImageSet(images.contiguous(), labels, classes, str(path))


def read_images(path: str, cfg: ImageConfig) -> ImageSet:
    return read_arrays(path, cfg.channels) if str(path).endswith(".npz") else read_image_folder(path, cfg.channels, cfg.image_size)


class _Batches:
    """Resize + normalise in the collator: uint8 (N, C, H, W) -> float pixel_values."""

    def __init__(self, size: int, mean, std):
        self.size, self.mean, self.std = size, torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, rows):
        x = torch.stack([r["image"] for r in rows]).float() / 255.0
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return {"pixel_values": (x - self.mean) / self.std, "labels": torch.tensor([r["label"] for r in rows])}


def load_model(cfg: ImageConfig, num_classes: int):
    """(model, is_transformers, normalisation) for a Transformers model path / id or a "module:function" factory."""
    if ":" in cfg.model and not Path(cfg.model).exists():
        module, _, function = cfg.model.partition(":")
        model = getattr(importlib.import_module(module), function)(num_classes=num_classes)
        return model, False, (cfg.mean or [0.5] * cfg.channels, cfg.std or [0.5] * cfg.channels)
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(cfg.model, num_labels=num_classes, ignore_mismatched_sizes=True)
    except OSError as err:
        raise DataError(f"cannot load model {cfg.model!r}: give a local directory, a hub id (needs internet) or module:function. ({str(err).splitlines()[0]})") from None
    pre = Path(cfg.model) / "preprocessor_config.json"
    stats = json.loads(pre.read_text()) if pre.is_file() else {}
    return model, True, (cfg.mean or stats.get("image_mean", [0.5] * cfg.channels), cfg.std or stats.get("image_std", [0.5] * cfg.channels))


def wrap(model, cfg: ImageConfig):
    head = cfg.head if cfg.head is not None else [n for n in ("classifier",) if hasattr(model, n)]
    adapter_cfg = FourierFTConfig(
        n_frequency=cfg.n_frequency, scaling=cfg.scaling, coefficient_scale=cfg.coefficient_scale, target_modules=cfg.target_modules, n_frequency_pattern=cfg.n_frequency_pattern or {},
        clamp_n_frequency=cfg.clamp_n_frequency, modules_to_save=head or None, init_weights=cfg.init_weights,
    )
    return get_fourierft_model(model, adapter_cfg)


def _image_trainer(base_trainer):
    class ImageTrainer(base_trainer):
        """Cross-entropy on the logits, for Transformers models and plain modules alike."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(inputs["pixel_values"])
            logits = outputs.logits if hasattr(outputs, "logits") else outputs
            loss = F.cross_entropy(logits.float(), inputs["labels"])
            return (loss, {"logits": logits}) if return_outputs else loss

    return ImageTrainer


def train(cfg: ImageConfig, quiet: bool = False) -> dict:
    import numpy as np
    from transformers import TrainingArguments

    if not cfg.model or not cfg.train_file or not cfg.eval_file:
        raise DataError("give model=, train_file= and eval_file= (image folders or .npz arrays)")
    run_dir = start_run(cfg, quiet)
    train_set, eval_set = read_images(cfg.train_file, cfg), read_images(cfg.eval_file, cfg)
    classes = train_set.classes
    model, _, (mean, std) = load_model(cfg, len(classes))
    fourier = cfg.method == "fourierft"
    if fourier:
        model = wrap(model, cfg)
        groups = param_groups(model, lr=cfg.lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    else:
        heads = cfg.head if cfg.head is not None else [n for n in ("classifier",) if hasattr(model, n)]
        targets = cfg.target_modules or default_target_modules(model)
        model, groups = prepare_baseline(cfg.method, model, targets, heads, cfg.lr, cfg.lr if cfg.head_lr is None else cfg.head_lr, cfg.weight_decay, cfg.lora_rank)
    model.accepts_loss_kwargs = False
    info = {"model": cfg.model, "classes": classes, "image_size": cfg.image_size, "mean": mean, "std": std, "auto_class": "AutoModelForImageClassification", "recipe": NAME}

    def rows(images: ImageSet, limit):
        n = len(images.labels) if limit is None else min(limit, len(images.labels))
        return [{"image": images.images[i], "label": int(images.labels[i])} for i in range(n)]

    def accuracy(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float((np.asarray(logits).argmax(-1) == labels).mean())}

    base_trainer, RunLog = trainer_classes()
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.grad_accum, lr_scheduler_type="linear",
        **warmup(TrainingArguments, cfg.warmup_ratio), eval_strategy="epoch", save_strategy="epoch" if fourier else "no", save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=fourier, metric_for_best_model="accuracy", greater_is_better=True, logging_steps=cfg.logging_steps,
        report_to=[], seed=cfg.seed, use_cpu=not torch.cuda.is_available(), disable_tqdm=quiet, remove_unused_columns=False,
        label_names=["labels"], **mixed_precision(cfg.mixed_precision),
    )
    trainer = _image_trainer(base_trainer)(
        model=model, args=args, train_dataset=rows(train_set, cfg.max_train_samples), eval_dataset=rows(eval_set, cfg.max_eval_samples),
        data_collator=_Batches(cfg.image_size, mean, std), compute_metrics=accuracy,
        optimizers=(torch.optim.AdamW(groups), None),
        callbacks=[RunLog(run_dir, info)], shuffle=cfg.shuffle,
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=resume_checkpoint(run_dir, cfg.resume))
    seconds = time.time() - start
    metrics = trainer.evaluate()
    trainable = count_trainable(model)
    summary = {"eval": metrics, "train_seconds": seconds, "method": cfg.method, "trainable_parameters": trainable}
    summary["saved_bytes"] = finish_run(trainer, model, run_dir / "best-adapter", info, cfg.method, summary)
    return {**summary, "run_dir": str(run_dir), "model": model}


# ---------------------------------------------------------------- using a saved adapter
def load_for_inference(adapter: str, model_name: str | None = None):
    from fourierft import FourierFTModel

    info, model_name = read_run_info(adapter, model_name)
    cfg = ImageConfig(model=model_name, image_size=info["image_size"], mean=info["mean"], std=info["std"])
    base, _, _ = load_model(cfg, len(info["classes"]))
    return FourierFTModel.from_pretrained(base, adapter).eval(), cfg, info


@torch.no_grad()
def _logits(model, images: ImageSet, cfg: ImageConfig, batch_size: int = 64) -> torch.Tensor:
    collate = _Batches(cfg.image_size, cfg.mean, cfg.std)
    out = []
    for i in range(0, len(images.labels), batch_size):
        batch = collate([{"image": img, "label": 0} for img in images.images[i : i + batch_size]])
        y = model(batch["pixel_values"])
        out.append((y.logits if hasattr(y, "logits") else y).float())
    return torch.cat(out)


def evaluate(adapter: str, data: str, model: str | None = None) -> dict:
    """Accuracy of a saved adapter on an image folder or .npz arrays."""
    model, cfg, info = load_for_inference(adapter, model)
    images = read_images(data, cfg)
    if images.classes != info["classes"]:
        raise DataError(f"{data}: classes {images.classes} differ from the adapter's {info['classes']}")
    predictions = _logits(model, images, cfg).argmax(-1)
    return {"accuracy": float((predictions == images.labels).float().mean()), "examples": len(images.labels)}


def predict(adapter: str, data: str, out_file: str, model: str | None = None) -> int:
    """One JSON line per image: predicted class and class probabilities."""
    model, cfg, info = load_for_inference(adapter, model)
    images = read_images(data, cfg)
    probs = _logits(model, images, cfg).softmax(-1)
    with open(out_file, "w") as f:
        for i, p in enumerate(probs):
            f.write(json.dumps({"index": i, "label": info["classes"][int(p.argmax())], "probabilities": {c: round(float(v), 6) for c, v in zip(info["classes"], p)}}) + "\n")
    return len(probs)


Config = ImageConfig
PRESETS = IMAGE_PRESETS
