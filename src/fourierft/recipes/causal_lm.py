"""Causal-LM fine-tuning with FourierFT: data-to-text (E2E NLG) and instruction tuning (Alpaca-style).

data -> prompt / response pairs -> token ids with the loss on the response only -> FourierFT wrap ->
HF Trainer -> generation (greedy or beam) -> BLEU / chrF (sacrebleu) and ROUGE-L (rouge-score).
NIST, METEOR and CIDEr are not reported: no maintained package computes them offline (NLTK's METEOR
needs a WordNet download).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fourierft import FourierFTConfig, FourierFTModel, default_target_modules, get_fourierft_model, param_groups


from .baselines import prepare_baseline
from .config import RunSettings
from .data import DataError
from .engine import checkpointing, count_trainable, finish_run, mixed_precision, read_run_info, resume_checkpoint, save_merged, start_run, trainer_classes, warmup

__all__ = ["LMConfig", "LM_PRESETS", "read_e2e", "read_instructions", "build_prompt", "encode_pair", "train", "generate"]

ALPACA = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


@dataclasses.dataclass
class LMConfig(RunSettings):
    """A causal-LM run: task "e2e" (CSV with mr,ref) or "instruction" (JSON / JSONL instruction, input, output)."""

    model: str = ""
    gguf_file: str | None = None
    """A GGUF file inside ``model`` (transformers dequantises it; needs the gguf package)."""
    task: str = "instruction"
    train_file: str | None = None
    eval_file: str | None = None
    output_dir: str = "runs/causal-lm"
    n_frequency: int = 1000
    scaling: float | str = "auto"
    """dW scale: "auto" (150 at 768 x 768, per layer size) or one number for every layer (the paper: 300)."""
    coefficient_scale: float = 512.0
    """Trained parameter = coefficient / coefficient_scale: 512 trains at LoRA's rates; 1 is the paper's (rates 0.02-0.1)."""
    target_modules: list[str] | None = None
    """None: q and v projections (GPT-2: the q and v slices of c_attn); all-linear: every linear layer but lm_head."""
    random_loc_seed: int = 777
    init_weights: bool = False
    lr: float = 2e-4
    """Learning rate of the trained parameters."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    epochs: float = 1.0
    batch_size: int = 8
    eval_batch_size: int = 8
    max_length: int = 256
    label_smoothing: float = 0.0
    gradient_checkpointing: bool = False
    quantize: str = "none"
    """"int8": the base's linear layers (not lm_head) in torchao int8 weight-only before adapting them; "none"."""
    num_beams: int = 1
    max_new_tokens: int = 64


# The paper's E2E recipe (GPT-2 Medium / Large) and its instruction-tuning scripts (LLaMA).
NAME = "causal-lm"
TASKS = {"e2e", "instruction"}

LM_PRESETS = {
    "e2e-gpt2-medium": dict(model="openai-community/gpt2-medium", task="e2e", lr=2e-2, weight_decay=0.01, batch_size=128, epochs=5, n_frequency=1000, scaling=300.0, coefficient_scale=1.0, label_smoothing=0.1, num_beams=10),
    "e2e-gpt2-large": dict(model="openai-community/gpt2-large", task="e2e", lr=5e-2, weight_decay=0.03, batch_size=128, epochs=5, n_frequency=1000, scaling=300.0, coefficient_scale=1.0, label_smoothing=0.1, num_beams=10),
    "alpaca-llama2-7b": dict(model="meta-llama/Llama-2-7b-hf", task="instruction", lr=3e-2, batch_size=4, grad_accum=4, epochs=1, max_length=512, n_frequency=1000, scaling=300.0, coefficient_scale=1.0, target_modules=["q_proj", "v_proj"], warmup_ratio=0.05),
}


# ---------------------------------------------------------------- data
def read_e2e(path: str | Path) -> list[tuple[str, str]]:
    """(mr, ref) rows of an E2E CSV (header mr,ref; references may contain line breaks)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"{path} is missing or empty; give the E2E CSV (header mr,ref)")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"mr", "ref"} <= set(reader.fieldnames):
            raise DataError(f"{path}: E2E files need the columns mr and ref; found {reader.fieldnames}")
        rows = [(r["mr"], r["ref"]) for r in reader]
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def read_instructions(path: str | Path) -> list[dict]:
    """Alpaca-style records: instruction, optional input, output (JSON list or JSONL)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise DataError(f"{path} is missing or empty")
    text = path.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
    for i, r in enumerate(records):
        if not isinstance(r, dict) or "instruction" not in r or "output" not in r:
            raise DataError(f"{path}: record {i + 1} needs the keys instruction and output (input is optional)")
    return records


def build_prompt(tokenizer, task: str, example) -> str:
    """The text the model is conditioned on; the response follows it directly."""
    if task == "e2e":
        return f"Table: {example}\nText:"
    instruction, context = example["instruction"], example.get("input") or ""
    if getattr(tokenizer, "chat_template", None):
        content = instruction if not context else f"{instruction}\n\n{context}"
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return ALPACA.format(
        ctx=", paired with an input that provides further context" if context else "",
        instruction=instruction,
        input_block=f"### Input:\n{context}\n\n" if context else "",
    )


def encode_pair(tokenizer, prompt: str, response: str, max_length: int, templated: bool) -> dict:
    """input_ids of prompt + response (+ EOS); labels are -100 on the prompt (loss on the response only)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + response_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


def _pairs(cfg: LMConfig, path: str, tokenizer) -> list[tuple[str, str]]:
    if cfg.task == "e2e":
        return [(build_prompt(tokenizer, "e2e", mr), f" {ref}") for mr, ref in read_e2e(path)]
    if cfg.task == "instruction":
        return [(build_prompt(tokenizer, "instruction", r), r["output"]) for r in read_instructions(path)]
    raise DataError(f"unknown task {cfg.task!r}; choose e2e or instruction")


class _Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ---------------------------------------------------------------- model
def load_base(cfg_model: str, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg_model, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(cfg_model, dtype=torch.float32, **kwargs)
    except OSError as err:
        raise DataError(f"cannot load model {cfg_model!r}: give a local directory or a hub id (needs internet). ({str(err).splitlines()[0]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


def quantize_base(model, kind: str) -> None:
    """Quantize the model's linear layers in place (torchao), except the output head (often tied to the embeddings)."""
    if kind != "int8":
        raise DataError(f"quantize={kind!r}: use int8 (torchao int8 weight-only) or none")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise DataError("quantize=int8 needs torchao: pip install 'fourierft[quant]'") from None
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))


def wrap(model, cfg: LMConfig) -> FourierFTModel:
    model_type = getattr(model.config, "model_type", None)
    fused = {}
    targets = cfg.target_modules
    if targets is None and model_type == "gpt2":
        targets, fused = ["c_attn"], {"c_attn": {"chunks": 3, "adapt": [0, 2]}}  # q and v of the fused q, k, v
    adapter_cfg = FourierFTConfig(
        n_frequency=cfg.n_frequency, scaling=cfg.scaling, coefficient_scale=cfg.coefficient_scale, target_modules=targets, random_loc_seed=cfg.random_loc_seed,
        init_weights=cfg.init_weights, fused_slices=fused, task_type="CAUSAL_LM",
    )
    return get_fourierft_model(model, adapter_cfg)


def _lm_trainer(base_trainer):
    class LMTrainer(base_trainer):
        """Shifted cross-entropy on the response tokens, with optional label smoothing."""

        def __init__(self, *args, label_smoothing: float = 0.0, **kwargs):
            self.label_smoothing = label_smoothing
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits[:, :-1].float()  # (B, L-1, V)
            loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, label_smoothing=self.label_smoothing)
            return (loss, outputs) if return_outputs else loss

    return LMTrainer


# ---------------------------------------------------------------- train, generate, score
def train(cfg: LMConfig, quiet: bool = False) -> dict:
    from transformers import TrainingArguments

    if not cfg.model:
        raise DataError("no model: give model=<local directory or hub id>")
    if not cfg.train_file:
        raise DataError("no data: give train_file=<E2E CSV or instruction JSON/JSONL> (and eval_file=)")
    run_dir = start_run(cfg, quiet)
    tokenizer, base = load_base(cfg.model, cfg.gguf_file)
    if cfg.quantize != "none":
        quantize_base(base, cfg.quantize)
    templated = cfg.task == "instruction" and bool(getattr(tokenizer, "chat_template", None))
    train_pairs = _pairs(cfg, cfg.train_file, tokenizer)[: cfg.max_train_samples]
    eval_pairs = _pairs(cfg, cfg.eval_file, tokenizer) if cfg.eval_file else []
    fourier = cfg.method == "fourierft"
    if fourier:
        model = wrap(base, cfg)
        groups = param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        targets = cfg.target_modules or (["c_attn"] if base.config.model_type == "gpt2" else default_target_modules(base))
        model, groups = prepare_baseline(cfg.method, base, targets, [], cfg.lr, cfg.lr, cfg.weight_decay, cfg.lora_rank)
    model.accepts_loss_kwargs = False  # compute_loss returns a per-batch mean
    info = {"model": cfg.model, "gguf_file": cfg.gguf_file, "task": cfg.task, "auto_class": "AutoModelForCausalLM", "recipe": NAME, "max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams}

    base_trainer, RunLog = trainer_classes()
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size, gradient_accumulation_steps=cfg.grad_accum, lr_scheduler_type="linear",
        **warmup(TrainingArguments, cfg.warmup_ratio), eval_strategy="epoch" if eval_pairs else "no", save_strategy="epoch" if fourier else "no",
        save_total_limit=cfg.save_total_limit, logging_steps=cfg.logging_steps, report_to=[], seed=cfg.seed,
        **checkpointing(TrainingArguments, cfg.gradient_checkpointing), use_cpu=not torch.cuda.is_available(), disable_tqdm=quiet,
        remove_unused_columns=False, prediction_loss_only=True, **mixed_precision(cfg.mixed_precision),
    )
    trainer = _lm_trainer(base_trainer)(
        model=model, args=args,
        train_dataset=[encode_pair(tokenizer, p, r, cfg.max_length, templated) for p, r in train_pairs],
        eval_dataset=[encode_pair(tokenizer, p, r, cfg.max_length, templated) for p, r in eval_pairs] or None,
        data_collator=_Collator(tokenizer.pad_token_id), optimizers=(torch.optim.AdamW(groups), None),
        callbacks=[RunLog(run_dir, info)], shuffle=cfg.shuffle, label_smoothing=cfg.label_smoothing,
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=resume_checkpoint(run_dir, cfg.resume))
    seconds = time.time() - start
    trainable = count_trainable(model)
    results = {"train_seconds": seconds, "method": cfg.method, "trainable_parameters": trainable}
    if eval_pairs:
        results["eval_loss"] = trainer.evaluate()["eval_loss"]  # every process takes part
    generations = (lambda r: r.update(score(model, tokenizer, cfg, run_dir / "generations.jsonl"))) if eval_pairs else None
    results["saved_bytes"] = finish_run(trainer, model, run_dir / "adapter", info, cfg.method, results, tokenizer, before_write=generations)
    return {**results, "run_dir": str(run_dir), "model": model}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, num_beams: int = 1, batch_size: int = 8, templated: bool = False) -> list[str]:
    """Greedy (num_beams=1) or beam-search continuations of the prompts, decoded without special tokens."""
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=not templated)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [o.strip() for o in out]


def score(model, tokenizer, cfg: LMConfig, out_file: Path) -> dict:
    """Generation metrics on the eval file: E2E groups the references of each meaning representation."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if cfg.task == "e2e":
        refs: dict[str, list[str]] = {}
        for mr, ref in read_e2e(cfg.eval_file):
            refs.setdefault(mr, []).append(ref)
        sources = list(refs)[: cfg.max_eval_samples]
        prompts = [build_prompt(tokenizer, "e2e", mr) for mr in sources]
        references = [refs[mr] for mr in sources]
        templated = False
    else:
        records = read_instructions(cfg.eval_file)[: cfg.max_eval_samples]
        sources = [r["instruction"] for r in records]
        prompts = [build_prompt(tokenizer, "instruction", r) for r in records]
        references = [[r["output"]] for r in records]
        templated = bool(getattr(tokenizer, "chat_template", None))
    hyps = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.num_beams, cfg.eval_batch_size, templated)
    width = max(len(r) for r in references)
    ref_streams = [[r[k] if k < len(r) else r[0] for r in references] for k in range(width)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge_l = sum(max(scorer.score(ref, hyp)["rougeL"].fmeasure for ref in refs_) for hyp, refs_ in zip(hyps, references)) / len(hyps)
    with open(out_file, "w") as f:
        for src, hyp, refs_ in zip(sources, hyps, references):
            f.write(json.dumps({"source": src, "generated": hyp, "references": refs_}) + "\n")
    return {
        "bleu": sacrebleu.corpus_bleu(hyps, ref_streams).score,
        "chrf": sacrebleu.corpus_chrf(hyps, ref_streams).score,
        "rougeL": 100 * rouge_l,
        "generated": len(hyps),
        "metrics_from": "sacrebleu (BLEU, chrF), rouge-score (ROUGE-L F1, best reference)",
    }


def dequantized_gguf(source: Path, gguf_file: str, target: Path) -> Path:
    """A GGUF checkpoint dequantised once by transformers into a plain float32 model directory (``target``)."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized and will not save them: copy into a plain model
    settings = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def load_for_generation(adapter: str, model_name: str | None = None):
    info, model_name = read_run_info(adapter, model_name)
    tokenizer, base = load_base(model_name, info.get("gguf_file"))
    return tokenizer, FourierFTModel.from_pretrained(base, adapter).eval(), info


def evaluate(adapter: str, data: str, model: str | None = None, out_file: str | None = None) -> dict:
    """Generation metrics (BLEU, chrF, ROUGE-L) of a saved adapter on an eval file of its task."""
    tokenizer, wrapped, info = load_for_generation(adapter, model)
    cfg = LMConfig(model=model or info.get("model", ""), task=info.get("task", "instruction"), eval_file=data, max_new_tokens=info.get("max_new_tokens", 64), num_beams=info.get("num_beams", 1))
    target = Path(out_file) if out_file else Path(tempfile.mkdtemp()) / "generations.jsonl"
    return score(wrapped, tokenizer, cfg, target)


def predict(adapter: str, data: str, out_file: str, model: str | None = None) -> int:
    """One JSON line per example of ``data`` (E2E CSV or instruction JSON/JSONL): the generated text and references."""
    evaluate(adapter, data, model, out_file=out_file)
    return sum(1 for line in Path(out_file).read_text().splitlines() if line.strip())


def merge(adapter: str, out_dir: str, model: str | None = None) -> Path:
    """A plain model directory (save_pretrained layout, tokenizer included) with the adapter merged in."""
    tokenizer, wrapped, _ = load_for_generation(adapter, model)
    return save_merged(wrapped, out_dir, tokenizer)


Config = LMConfig
PRESETS = LM_PRESETS
