"""Recipe configuration: a dataclass filled from a preset, a YAML file, flags and key=value overrides
(in that order, later wins), printed and saved in the run directory."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunSettings", "TrainConfig", "PRESETS", "resolve_config", "coerce", "save_config"]


@dataclasses.dataclass
class RunSettings:
    """Settings every recipe shares (same meaning, same default)."""

    method: str = "fourierft"
    """fourierft, or a comparison: lora (PEFT, same targets, rank lora_rank), head (head only), full."""
    lora_rank: int = 8
    grad_accum: int = 1
    mixed_precision: str = "auto"
    """auto (bf16 on GPUs that support it), no, bf16 or fp16."""
    seed: int = 42
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    """Evaluation examples used (causal-LM E2E: distinct meaning representations)."""
    shuffle: bool = True
    logging_steps: int = 10
    save_total_limit: int = 2
    resume: bool = False
    """Resume from the last checkpoint in output_dir."""


@dataclasses.dataclass
class TrainConfig(RunSettings):
    """Everything a text classification / regression run needs. Defaults train out of the box."""

    model: str = ""
    """Base model: a local directory or a Hugging Face hub id."""
    task: str = "auto"
    """GLUE task (cola, sst2, mrpc, stsb, rte, qnli), "classification" or "regression"; "auto": from the data folder name."""
    data: str | None = None
    """A folder in GLUE's layout with train.tsv and dev.tsv."""
    train_file: str | None = None
    """CSV / TSV / JSON / JSONL training file with named columns."""
    eval_file: str | None = None
    dataset: str | None = None
    """Hugging Face dataset name ("name" or "name/config"), with train_split / eval_split."""
    train_split: str = "train"
    eval_split: str = "validation"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    output_dir: str = "runs/text-classification"
    # adapter
    n_frequency: int = 1000
    scaling: float | str = "auto"
    """dW scale: "auto" (150 at 768 x 768, per layer size) or one number for every layer (the paper's)."""
    coefficient_scale: float = 512.0
    """Trained parameter = coefficient / coefficient_scale: 512 trains at LoRA's rates; 1 is the paper's (rates 0.04-0.3)."""
    target_modules: list[str] | None = None
    """None: the model type's attention query and value projections; all-linear: every linear layer but the head."""
    random_loc_seed: int = 777
    init_weights: bool = False
    # optimisation
    lr: float = 5e-4
    """Learning rate of the FourierFT coefficients (and of the head unless head_lr is given)."""
    head_lr: float | None = None
    """Learning rate of the task head; None: lr (the paper's presets use 0.001-0.011)."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    gradient_checkpointing: bool = False
    eval_before: bool = False
    """Also evaluate once before training."""


# The paper's GLUE recipes (../paper.md): epochs, batch, max_len, coefficient lr, head lr, scaling.
_GLUE = {
    ("sst2", "base"): (40, 32, 512, 0.05, 0.006, 140.0),
    ("mrpc", "base"): (30, 32, 512, 0.05, 0.006, 141.0),
    ("cola", "base"): (100, 32, 512, 0.12, 0.008, 49.0),
    ("qnli", "base"): (40, 32, 512, 0.1, 0.001, 29.0),
    ("rte", "base"): (90, 32, 512, 0.09, 0.011, 110.0),
    ("stsb", "base"): (60, 32, 512, 0.09, 0.009, 84.0),
    ("sst2", "large"): (10, 32, 128, 0.043, 0.001, 99.0),
    ("mrpc", "large"): (40, 32, 512, 0.06, 0.003, 99.0),
    ("cola", "large"): (80, 128, 256, 0.043, 0.011, 120.0),
    ("qnli", "large"): (30, 32, 512, 0.06, 0.005, 69.0),
    ("rte", "large"): (60, 32, 512, 0.08, 0.005, 90.0),
    ("stsb", "large"): (30, 32, 512, 0.07, 0.001, 121.0),
}
PRESETS: dict[str, dict[str, Any]] = {
    f"glue-{task}-roberta-{size}": dict(
        model=f"FacebookAI/roberta-{size}", task=task, epochs=e, batch_size=b, max_length=l, lr=lr, head_lr=hlr,
        scaling=s, coefficient_scale=1.0, n_frequency=1000, target_modules=["query", "value"], warmup_ratio=0.06, weight_decay=0.0,
    )
    for (task, size), (e, b, l, lr, hlr, s) in _GLUE.items()
}


def _field_type(name: str, cls: type):
    hints = typing.get_type_hints(cls)
    if name not in hints:
        close = difflib.get_close_matches(name, list(hints), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown setting {name!r}; {hint}see `fourierft train --help` for the settings")
    return hints[name]


# (lowest allowed, whether the lowest itself is allowed) for numeric settings of any recipe config
_RANGES = {
    "epochs": (0, False), "lr": (0, False), "head_lr": (0, False), "weight_decay": (0, True),
    "warmup_ratio": (0, True), "batch_size": (1, True), "eval_batch_size": (1, True), "max_length": (1, True),
    "n_frequency": (1, True), "grad_accum": (1, True), "lora_rank": (1, True), "logging_steps": (1, True),
    "save_total_limit": (1, True), "max_train_samples": (1, True), "max_eval_samples": (1, True),
    "max_new_tokens": (1, True), "num_beams": (1, True), "image_size": (1, True),
}


def validate(config) -> None:
    """Refuse settings that cannot train: non-finite numbers, and values below each setting's range."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            raise ValueError(f"setting {f.name}={value!r} is not a finite number")
        if f.name in _RANGES:
            low, inclusive = _RANGES[f.name]
            if value < low or (value == low and not inclusive):
                raise ValueError(f"setting {f.name}={value!r} must be {'>=' if inclusive else '>'} {low}")
    if getattr(config, "warmup_ratio", 0) >= 1:
        raise ValueError(f"setting warmup_ratio={config.warmup_ratio!r} must be below 1")


def coerce(name: str, value: Any, cls: type = TrainConfig) -> Any:
    """Convert a YAML / command-line value to the type of setting ``name`` of the recipe config ``cls``."""
    hint = _field_type(name, cls)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint) or isinstance(hint, types.UnionType) and type(None) in hint.__args__
    if isinstance(value, str):
        if optional and value.lower() in ("none", "null", ""):
            return None
        if value.startswith("[") or value.startswith("{"):
            value = yaml.safe_load(value)
    base = args[0] if args else hint
    origin = typing.get_origin(base)
    if set(args) == {float, str} and value == "auto":  # scaling
        return value
    try:
        if origin is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return list(value)
        if origin is dict or base is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
        if base is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if base in (int, float):
            return base(value)
        return str(value) if value is not None else None
    except (TypeError, ValueError):
        raise ValueError(f"setting {name!r} expects {hint}, got {value!r}") from None


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases (the string literal after each field)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def settings_help(recipes: dict[str, type]) -> str:
    """Every key=value setting of the given config classes ({recipe: class}), with defaults and docs."""
    rows: dict[str, list] = {}
    for recipe, cls in recipes.items():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            entry = rows.setdefault(f.name, [[], {}, docs.get(f.name, "")])
            entry[0].append(recipe)
            entry[1][recipe] = default
            entry[2] = entry[2] or docs.get(f.name, "")
    lines = ["settings (key=value; also in a --config YAML file):"]
    for name, (where, defaults, doc) in rows.items():
        values = set(map(repr, defaults.values()))
        default = next(iter(values)) if len(values) == 1 else ", ".join(f"{r}: {defaults[r]!r}" for r in where)
        scope = "" if len(where) == len(recipes) else f" [{', '.join(where)}]"
        lines.append(f"  {name}={default}{scope}" + (f"\n      {doc}" if doc else ""))
    return "\n".join(lines)


def load_yaml(yaml_file) -> dict:
    """A YAML file of settings as a dict; a clear ValueError when missing or malformed."""
    path = Path(yaml_file)
    if not path.is_file():
        raise ValueError(f"config file {yaml_file} not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{yaml_file} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{yaml_file}: expected a mapping of setting: value")
    return loaded


def resolve_config(preset=None, yaml_file=None, flags=None, overrides=None, cls: type = TrainConfig, presets: dict | None = None):
    """An instance of the recipe config ``cls``: preset, then YAML, then flags, then key=value overrides."""
    presets = PRESETS if presets is None else presets
    values: dict[str, Any] = {}
    if preset:
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}; available: {', '.join(sorted(presets))}")
        values.update(presets[preset])
    if yaml_file:
        values.update(load_yaml(yaml_file))
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        values[key.strip()] = value
    config = cls(**{k: coerce(k, v, cls) for k, v in values.items()})
    validate(config)
    return config


def save_config(config, path: Path) -> str:
    """The resolved settings as YAML: the recipe's own first, then those every recipe shares."""
    values = dataclasses.asdict(config)
    shared = {f.name for f in dataclasses.fields(RunSettings)}
    ordered = {k: v for k, v in values.items() if k not in shared} | {k: v for k, v in values.items() if k in shared}
    text = yaml.safe_dump(ordered, sort_keys=False)
    path.write_text(text)
    return text
