"""What every recipe shares on top of HF Trainer: adapter-only checkpoints, the run log, precision,
plots. Recipes stay flat files; this holds no training loop of its own."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

__all__ = ["RUN_INFO", "count_trainable", "save_merged", "checkpointing", "finish_run", "resume_checkpoint", "trainer_classes", "save_adapter", "save_outcome", "read_run_info", "start_run", "warmup", "mixed_precision", "plot_run"]

RUN_INFO = "run_info.json"


def trainer_classes():
    from transformers import Trainer

    from fourierft import FourierFTModel, TrainingCheck

    class FourierFTTrainer(Trainer):
        """Checkpoints hold only the adapter (safetensors); resuming and best-model loading read it back.
        ``shuffle=False`` keeps the training data in file order."""

        def __init__(self, *args, shuffle: bool = True, **kwargs):
            self.shuffle = shuffle
            super().__init__(*args, **kwargs)

        def save_model(self, output_dir=None, _internal_call=False):
            # A FourierFT adapter is saved by every process together (sharded coefficients are gathered;
            # the main process writes), whatever the distribution: never the whole model's state dict.
            model = self.accelerator.unwrap_model(self.model)
            if not isinstance(model, FourierFTModel):
                return super().save_model(output_dir, _internal_call)
            output_dir = output_dir or self.args.output_dir
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
            model.save_pretrained(output_dir, is_main_process=self.args.should_save)

        def _save(self, output_dir=None, state_dict=None):
            output_dir = output_dir or self.args.output_dir
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                model = self.accelerator.unwrap_model(self.model)
                if hasattr(model, "save_pretrained"):  # PEFT LoRA, or a transformers model
                    model.save_pretrained(output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            unwrapped = self.accelerator.unwrap_model(self.model)
            if not isinstance(unwrapped, FourierFTModel):
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            unwrapped.load_adapter_weights(resume_from_checkpoint)

        def _load_best_model(self):
            unwrapped = self.accelerator.unwrap_model(self.model)
            if not isinstance(unwrapped, FourierFTModel):
                return super()._load_best_model()
            unwrapped.load_adapter_weights(self.state.best_model_checkpoint)

        def _get_train_sampler(self, *args, **kwargs):
            if not self.shuffle:
                dataset = args[0] if args else kwargs.get("train_dataset", self.train_dataset)
                return torch.utils.data.SequentialSampler(dataset if dataset is not None else self.train_dataset)
            return super()._get_train_sampler(*args, **kwargs)

    class RunLog(TrainingCheck):
        """metrics.jsonl of every log and evaluation, and of the warnings of settings that will not train
        (``fourierft.TrainingCheck``); the newest adapter in last-adapter/."""

        def __init__(self, run_dir: Path, info: dict):
            super().__init__()
            self.run_dir, self.info = run_dir, info
            self._step = 0

        def _write(self, record: dict):
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

        def _say(self, messages):
            super()._say(messages)
            for m in messages:
                self._write({"step": self._step, "warning": m})

        def on_step_end(self, args, state, control, **kwargs):
            self._step = state.global_step
            super().on_step_end(args, state, control, **kwargs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                self._write({"step": state.global_step, "epoch": state.epoch, **logs})

        def on_save(self, args, state, control, model=None, **kwargs):
            if isinstance(model, FourierFTModel):  # every process: sharded coefficients are gathered together
                save_adapter(model, self.run_dir / "last-adapter", self.info, is_main_process=state.is_world_process_zero)
            elif state.is_world_process_zero and model is not None:
                save_adapter(model, self.run_dir / "last-adapter", self.info)

    return FourierFTTrainer, RunLog


def count_trainable(model) -> int:
    """Trained parameters, counted whole also when DeepSpeed ZeRO-3 holds only a partition (ds_numel)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def resume_checkpoint(run_dir: Path, resume: bool) -> str | None:
    """The newest complete checkpoint under run_dir/checkpoints when resuming, else None.

    A checkpoint is complete when its trainer state (written last) parses and its adapter loads;
    a kill while one was written leaves it incomplete, and the one before it is used instead.
    """
    if not resume:
        return None
    from fourierft import read_adapter_files

    found = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1, reverse=True)
    for checkpoint in found:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            read_adapter_files(checkpoint)
        except (OSError, ValueError):
            print(f"skipping incomplete checkpoint {checkpoint}")
            continue
        return str(checkpoint)
    print(f"resume=true but {run_dir / 'checkpoints'} holds no complete checkpoint: starting from the beginning")
    return None


def save_merged(model, out_dir: str, tokenizer=None) -> Path:
    """``model.merge_and_unload()`` written as a plain model directory (with the tokenizer) into a new
    or empty ``out_dir``."""
    from .data import DataError

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    plain = model.merge_and_unload()
    if not hasattr(plain, "save_pretrained"):
        raise DataError("this adapter's base model is a plain nn.Module (module:function); merge it in Python: FourierFTModel.from_pretrained(...).merge_and_unload()")
    plain.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def save_adapter(model, directory: Path, info: dict, is_main_process: bool = True) -> None:
    """The adapter and its run info. FourierFT models: call on every process (``is_main_process`` on one)."""
    model.save_pretrained(directory, is_main_process=is_main_process)
    if is_main_process:
        (directory / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")


def start_run(cfg, quiet: bool) -> Path:
    """Create the run directory, save the resolved config there, print it (rank 0 only), seed everything."""
    from transformers import set_seed

    from .config import save_config

    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = save_config(cfg, run_dir / "config.yaml")
    if not quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"resolved config (saved to {run_dir / 'config.yaml'}):\n{resolved}")
    set_seed(cfg.seed)
    return run_dir


def finish_run(trainer, model, directory: Path, info: dict, method: str, summary: dict, tokenizer=None, before_write=None) -> int | None:
    """The one place a run's outputs are written, on the main process only (torchrun / accelerate):
    the adapter (or a comparison method's tensors), results.json and plots. Returns the bytes saved
    (None on other processes). ``before_write(summary)`` adds rank-0-only results (e.g. generations).
    Call it on every process: a sharded (FSDP) adapter is gathered by all of them."""
    if not trainer.is_world_process_zero():
        if method == "fourierft":
            save_adapter(model, directory, info, is_main_process=False)
        return None
    saved = save_outcome(model, directory, info, method, tokenizer)
    summary["saved_bytes"] = saved
    warned = [m for cb in trainer.callback_handler.callbacks for m in getattr(cb, "messages", [])]
    if warned:
        summary["warnings"] = warned
    if before_write is not None:
        before_write(summary)
    (Path(directory).parent / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_run(Path(directory).parent)
    return saved


def save_outcome(model, directory: Path, info: dict, method: str, tokenizer=None) -> int:
    """Save what training produced: the FourierFT adapter with its run info (and tokenizer), or, for a
    comparison method, its trained tensors next to it. Returns the bytes that method has to store."""
    if method != "fourierft":
        from .baselines import save_trained

        return save_trained(model, directory.parent / "trained", method)
    save_adapter(model, directory, info)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return (directory / "adapter_model.safetensors").stat().st_size


def read_run_info(adapter: str, model_name: str | None = None) -> tuple[dict, str]:
    """(run info written with the adapter, base model: ``model_name`` or the recorded one)."""
    from .data import DataError

    if not Path(adapter).is_dir() or not (Path(adapter) / "adapter_config.json").is_file():
        raise DataError(f"{adapter} is not an adapter directory (no adapter_config.json); give the run's best-adapter/ or last-adapter/")
    path = Path(adapter) / RUN_INFO
    try:
        info = json.loads(path.read_text()) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); pass --model <base model> and fix or remove the file") from None
    if not isinstance(info, dict):
        raise DataError(f"{path} must hold a JSON object")
    if model_name is None:
        model_name = info.get("model")
        if isinstance(model_name, str) and ":" in model_name and not Path(model_name).exists():
            # a "module:function" factory: loading an adapter never imports code on its own
            raise DataError(
                f"{adapter} was trained on a model built by the Python function {model_name!r}; loading an adapter "
                f"never imports code by itself: pass --model {model_name} to run it"
            )
    if not model_name or not isinstance(model_name, str):
        raise DataError(f"{adapter} has no {RUN_INFO} naming its base model; pass --model <base model> too")
    return info, model_name


def warmup(arguments_class, ratio: float) -> dict:
    """transformers < 5 has warmup_ratio; 5 takes a float < 1 in warmup_steps as a ratio."""
    names = {f.name for f in dataclasses.fields(arguments_class)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": ratio}


def checkpointing(arguments_class, enabled: bool) -> dict:
    """transformers 5 renamed TrainingArguments.gradient_checkpointing to activation_checkpointing."""
    names = {f.name for f in dataclasses.fields(arguments_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def mixed_precision(choice: str) -> dict:
    if choice == "auto":
        choice = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if choice not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {choice!r}")
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def plot_run(run_dir: Path) -> list[Path]:
    """loss.png and eval.png from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = []
    series = {
        "loss.png": [(r["step"], r["loss"]) for r in records if "loss" in r],
        "eval.png": [(r["epoch"], v, k.removeprefix("eval_")) for r in records for k, v in r.items() if k.startswith("eval_") and k[5:] in ("accuracy", "f1", "matthews", "pearson", "spearman")],
    }
    for name, points in series.items():
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        if name == "loss.png":
            ax.plot(*zip(*points))
            ax.set(xlabel="step", ylabel="training loss")
        else:
            for metric in sorted({p[2] for p in points}):
                xs, ys = zip(*[(p[0], p[1]) for p in points if p[2] == metric])
                ax.plot(xs, ys, marker="o", label=metric)
            ax.set(xlabel="epoch", ylabel="eval metric")
            ax.legend()
        fig.tight_layout()
        (run_dir / "plots").mkdir(exist_ok=True)
        fig.savefig(run_dir / "plots" / name, dpi=100)
        plt.close(fig)
        out.append(run_dir / "plots" / name)
    return out
