"""Text classification and regression with FourierFT on HF Trainer: train, evaluate, predict, merge.

setup -> data -> model -> FourierFT wrap -> Trainer (separate coefficient / head learning rates,
linear schedule with warmup) -> best and last adapters, metrics.jsonl, plots in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from pathlib import Path

import torch

from fourierft import FourierFTConfig, FourierFTModel, default_target_modules, get_fourierft_model, param_groups


from .baselines import prepare_baseline
from .config import PRESETS, TrainConfig  # noqa: F401 (PRESETS: part of the recipe interface)
from .engine import checkpointing, count_trainable, finish_run, mixed_precision, read_run_info, resume_checkpoint, save_merged, start_run, trainer_classes, warmup
from .data import GLUE_TASKS, DataError, TextExamples, glue_task_for, read_glue, read_hf_dataset, read_table

__all__ = ["LabelSpace", "load_splits", "train", "evaluate", "predict", "merge"]

NAME = "text-classification"
Config = TrainConfig
TASKS = {"auto", "classification", "regression", *GLUE_TASKS}


# ---------------------------------------------------------------- data and labels
@dataclasses.dataclass
class LabelSpace:
    names: list[str] | None  # None: regression

    @property
    def regression(self) -> bool:
        return self.names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.names)

    @classmethod
    def infer(cls, task: str, examples: TextExamples) -> LabelSpace:
        layout = GLUE_TASKS.get(task)
        if task == "regression" or (layout and layout["labels"] == "regression"):
            return cls(None)
        if layout:
            return cls(list(layout["labels"]))
        values = sorted({str(v) for v in examples.labels})
        try:
            values = sorted(values, key=float)
        except ValueError:
            pass
        if len(values) < 2:
            raise DataError(
                f"{examples.source}: the label column holds one class only ({values}); a classifier needs at least two "
                "(for a real-valued target, use task=regression)"
            )
        return cls(values)

    def encode(self, examples: TextExamples) -> list:
        if self.regression:
            out = []
            for i, v in enumerate(examples.labels):
                try:
                    out.append(float(v))
                except (TypeError, ValueError):
                    raise DataError(f"{examples.source}: row {i + 1} has label {v!r}, but a regression task needs numbers; check the label column or use task=classification") from None
            return out
        index = {name: i for i, name in enumerate(self.names)}
        bad = next((v for v in examples.labels if str(v) not in index), None)
        if bad is not None:
            raise DataError(f"{examples.source}: label {bad!r} is not one of the task's labels {self.names}; fix the label column or the task")
        return [index[str(v)] for v in examples.labels]


def load_splits(cfg: TrainConfig) -> tuple[TextExamples, TextExamples, str]:
    """(train, eval, task) from a GLUE folder, files or a HF dataset."""
    task = cfg.task
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    if cfg.data:
        folder = Path(cfg.data)
        if task == "auto":
            task = glue_task_for(folder) or ""
        if task not in GLUE_TASKS:
            raise DataError(f"{folder}: cannot tell the GLUE task from the folder name; pass task= one of {sorted(GLUE_TASKS)}")
        return read_glue(folder / "train.tsv", task), read_glue(folder / "dev.tsv", task), task
    columns = dict(text_column=cfg.text_column, pair_column=cfg.text_pair_column, label_column=cfg.label_column)
    if cfg.dataset:
        train = read_hf_dataset(cfg.dataset, cfg.train_split, **columns)
        evaluation = read_hf_dataset(cfg.dataset, cfg.eval_split, **columns)
    elif cfg.train_file:
        train = read_table(cfg.train_file, **columns)
        evaluation = read_table(cfg.eval_file, **columns) if cfg.eval_file else None
        if evaluation is None:  # hold out 10%, seeded
            order = list(range(len(train)))
            random.Random(cfg.seed).shuffle(order)
            cut = max(1, len(order) // 10)
            evaluation, train = _subset(train, order[:cut]), _subset(train, order[cut:])
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"no eval_file: holding out {cut} of {len(order)} training rows (10%, seed {cfg.seed}) for evaluation")
    else:
        raise DataError("no data: give data=<GLUE folder>, train_file=<file> (and eval_file=), or dataset=<HF name>")
    return train, evaluation, ("classification" if task == "auto" else task)


def _subset(ex: TextExamples, idx: list[int]) -> TextExamples:
    return TextExamples([ex.text_a[i] for i in idx], [ex.text_b[i] for i in idx] if ex.text_b else None, [ex.labels[i] for i in idx], ex.source)


def encode(tokenizer, examples: TextExamples, labels: list | None, max_length: int) -> list[dict]:
    enc = tokenizer(examples.text_a, examples.text_b, truncation=True, max_length=max_length)
    rows = [{k: enc[k][i] for k in enc.keys()} for i in range(len(examples))]
    if labels is not None:
        for row, label in zip(rows, labels):
            row["labels"] = label
    return rows


# ---------------------------------------------------------------- model
def load_base(model_name: str, space: LabelSpace, head_restored: bool = False):
    """Tokenizer and sequence-classification model. ``head_restored``: the head comes from a saved
    adapter next, so transformers' report of a newly initialised classifier is not shown."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    kwargs = dict(num_labels=space.num_labels)
    if space.regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(space.names))
        kwargs["label2id"] = {n: i for i, n in enumerate(space.names)}
    level = hf_logging.get_verbosity()
    try:
        if head_restored:
            hf_logging.set_verbosity_error()
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForSequenceClassification.from_pretrained(model_name, **kwargs)
    except OSError as err:
        raise DataError(
            f"cannot load model {model_name!r}: give a local directory with config.json and weights, or a Hugging Face hub id "
            f"(needs internet). ({str(err).splitlines()[0]})"
        ) from None
    finally:
        hf_logging.set_verbosity(level)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def head_names(model) -> list[str]:
    return [name for name in ("classifier", "score") if hasattr(model, name)]


def wrap(model, cfg: TrainConfig) -> FourierFTModel:
    adapter_cfg = FourierFTConfig(
        n_frequency=cfg.n_frequency,
        scaling=cfg.scaling,
        coefficient_scale=cfg.coefficient_scale,
        target_modules=cfg.target_modules,
        random_loc_seed=cfg.random_loc_seed,
        init_weights=cfg.init_weights,
        modules_to_save=head_names(model),
        task_type="SEQ_CLS",
    )
    return get_fourierft_model(model, adapter_cfg)


def compute_metrics_fn(space: LabelSpace, task: str):
    def compute(eval_pred):
        import numpy as np
        from scipy.stats import pearsonr, spearmanr
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        if space.regression:
            preds = np.asarray(logits).reshape(-1)
            return {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}
        preds = np.asarray(logits).argmax(-1)
        average = "binary" if space.num_labels == 2 else "macro"
        return {
            "accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, average=average, zero_division=0)),
            "matthews": float(matthews_corrcoef(labels, preds)),
        }

    return compute


def best_metric(space: LabelSpace, task: str) -> str:
    return "pearson" if space.regression else ("matthews" if task == "cola" else "accuracy")


# ---------------------------------------------------------------- trainer
def train(cfg: TrainConfig, quiet: bool = False) -> dict:
    """Run one training job; returns the final evaluation metrics and paths."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    if not cfg.model:
        raise DataError("no model: give model=<local directory or hub id>")
    run_dir = start_run(cfg, quiet)
    train_ex, eval_ex, task = load_splits(cfg)
    train_ex, eval_ex = train_ex.take(cfg.max_train_samples), eval_ex.take(cfg.max_eval_samples)
    space = LabelSpace.infer(task, train_ex)
    if space.num_labels == 2 and not quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"labels {space.names}: F1 is reported for {space.names[1]!r} as the positive class")
    train_labels, eval_labels = space.encode(train_ex), space.encode(eval_ex)
    tokenizer, base = load_base(cfg.model, space)
    fourier = cfg.method == "fourierft"
    if fourier:
        model = wrap(base, cfg)
        groups = param_groups(model, lr=cfg.lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    else:
        targets = cfg.target_modules or default_target_modules(base)
        model, groups = prepare_baseline(cfg.method, base, targets, head_names(base), cfg.lr, cfg.lr if cfg.head_lr is None else cfg.head_lr, cfg.weight_decay, cfg.lora_rank)
    # Sequence-classification losses are per-process means that ignore num_items_in_batch; without this,
    # Trainer would scale the loss by the number of processes under DDP and clip different gradients.
    model.accepts_loss_kwargs = False
    info = {"model": cfg.model, "task": task, "labels": space.names, "max_length": cfg.max_length, "auto_class": "AutoModelForSequenceClassification", "recipe": NAME}

    FourierFTTrainer, RunLog = trainer_classes()
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type="linear",
        **warmup(TrainingArguments, cfg.warmup_ratio),
        eval_strategy="epoch",
        save_strategy="epoch" if fourier else "no",
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=fourier,
        metric_for_best_model=best_metric(space, task),
        greater_is_better=True,
        logging_steps=cfg.logging_steps,
        report_to=[],
        seed=cfg.seed,
        **checkpointing(TrainingArguments, cfg.gradient_checkpointing),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=quiet,
        **mixed_precision(cfg.mixed_precision),
    )
    optimizer = torch.optim.AdamW(groups)
    trainer = FourierFTTrainer(
        model=model,
        args=args,
        train_dataset=encode(tokenizer, train_ex, train_labels, cfg.max_length),
        eval_dataset=encode(tokenizer, eval_ex, eval_labels, cfg.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(space, task),
        optimizers=(optimizer, None),
        callbacks=[RunLog(run_dir, info)], shuffle=cfg.shuffle,
    )
    before = trainer.evaluate() if cfg.eval_before else None
    start = time.time()
    trainer.train(resume_from_checkpoint=resume_checkpoint(run_dir, cfg.resume))
    seconds = time.time() - start
    metrics = trainer.evaluate()
    trainable = count_trainable(model)
    summary = {"eval": metrics, "eval_before": before, "train_seconds": seconds, "method": cfg.method, "trainable_parameters": trainable}
    if space.num_labels == 2:  # sklearn's binary F1 counts the second label as the positive class
        summary["f1_positive_label"] = space.names[1]
    saved = finish_run(trainer, model, run_dir / "best-adapter", info, cfg.method, summary, tokenizer)
    return {"eval": metrics, "eval_before": before, "train_seconds": seconds, "run_dir": str(run_dir), "model": model, "trainable_parameters": trainable, "saved_bytes": saved}


# ---------------------------------------------------------------- using a saved adapter
def load_for_inference(adapter: str, model_name: str | None = None):
    info, model_name = read_run_info(adapter, model_name)
    space = LabelSpace(info.get("labels")) if "labels" in info else None
    if space is None:
        raise DataError(f"{adapter}: unknown label space; it was not written by `fourierft train`")
    tokenizer, base = load_base(model_name, space, head_restored=True)
    model = FourierFTModel.from_pretrained(base, adapter).eval()
    return tokenizer, model, space, info


def _examples_for(data: str | None, file: str | None, task: str, columns: dict, split: str = "dev") -> TextExamples:
    if data:
        return read_glue(Path(data) / f"{split}.tsv", task)
    if file:
        return read_table(file, **columns)
    raise DataError("no data: give --data <GLUE folder> or --file <CSV/TSV/JSON/JSONL>")


@torch.no_grad()
def _logits(model, tokenizer, examples: TextExamples, max_length: int, batch_size: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(examples), batch_size):
        enc = tokenizer(examples.text_a[i : i + batch_size], examples.text_b[i : i + batch_size] if examples.text_b else None, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        out.append(model(**enc).logits.float())
    return torch.cat(out)


def _split_data(data: str) -> tuple[str | None, str | None]:
    """(GLUE folder, file): a directory is a GLUE folder (dev.tsv is read), anything else a file."""
    return (data, None) if Path(data).is_dir() else (None, data)


def evaluate(adapter: str, data: str, model: str | None = None, **columns) -> dict:
    """Metrics of a saved adapter on labelled data: a GLUE folder (dev.tsv) or a CSV / TSV / JSON / JSONL file."""
    tokenizer, model, space, info = load_for_inference(adapter, model)
    examples = _examples_for(*_split_data(data), info.get("task", ""), columns)
    labels = space.encode(examples)
    logits = _logits(model, tokenizer, examples, info.get("max_length", 128))
    return compute_metrics_fn(space, info.get("task", ""))((logits.numpy(), labels))


def predict(adapter: str, data: str, out_file: str, model: str | None = None, **columns) -> int:
    """Write one JSON line per example: text(s), predicted label (or score) and class probabilities."""
    tokenizer, model, space, info = load_for_inference(adapter, model)
    data, file = _split_data(data)
    if file:  # labels are optional for prediction
        from .data import _read_records

        records = _read_records(Path(file))
        if not records:
            raise DataError(f"{file} has no rows")
        text_column, pair = columns.get("text_column", "text"), columns.get("pair_column")
        if text_column not in records[0]:
            raise DataError(f"{file}: no column {text_column!r}; the columns are {list(records[0])}. Pass --text-column")
        examples = TextExamples([str(r[text_column]) for r in records], [str(r[pair]) for r in records] if pair else None, [None] * len(records), file)
    else:
        examples = _examples_for(data, None, info.get("task", ""), columns)
    logits = _logits(model, tokenizer, examples, info.get("max_length", 128))
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w") as f:
        for i in range(len(examples)):
            row = {"text": examples.text_a[i]}
            if examples.text_b:
                row["text_pair"] = examples.text_b[i]
            if space.regression:
                row["score"] = float(logits[i, 0])
            else:
                probs = logits[i].softmax(-1)
                row["label"] = space.names[int(probs.argmax())]
                row["probabilities"] = {name: round(float(p), 6) for name, p in zip(space.names, probs)}
            f.write(json.dumps(row) + "\n")
    return len(examples)


def merge(adapter: str, out_dir: str, model: str | None = None) -> Path:
    """A plain model directory (save_pretrained layout) with the adapter merged in."""
    tokenizer, model, _, _ = load_for_inference(adapter, model)
    return save_merged(model, out_dir, tokenizer)


