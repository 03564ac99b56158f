"""Comparison methods for results tables, on the same recipes: PEFT's LoRA on the same target modules,
PEFT's own FourierFT with its defaults, the task head alone, and full fine-tuning. FourierFT itself goes
through each recipe's own wrap()."""

from __future__ import annotations

from pathlib import Path

from torch import nn

__all__ = ["METHODS", "prepare_baseline", "save_trained"]

METHODS = ("fourierft", "lora", "peft-fourierft", "head", "full")


def _head_params(model: nn.Module, heads: list[str]) -> list[nn.Parameter]:
    return [p for h in heads for p in model.get_submodule(h).parameters()]


def prepare_baseline(method: str, model: nn.Module, targets, heads: list[str], lr: float, head_lr: float, weight_decay: float, lora_rank: int = 8):
    """(model, optimizer parameter groups) for "lora", "peft-fourierft", "head" or "full"; ``lr`` is the
    adapter / body rate."""
    if method in ("lora", "peft-fourierft"):
        import peft

        targets = "all-linear" if [str(t).lower() for t in targets] == ["all-linear"] else list(targets)  # PEFT's shorthand is a str
        if method == "lora":
            config, marker = peft.LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0, target_modules=targets, modules_to_save=list(heads) or None), "lora_"
        else:  # PEFT's defaults: n_frequency 1000, scaling 150, c ~ N(0, 1)
            config, marker = peft.FourierFTConfig(target_modules=targets, modules_to_save=list(heads) or None), "fourierft_"
        model = peft.get_peft_model(model, config)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if marker in n], "lr": lr}, {"params": [p for n, p in named if marker not in n], "lr": head_lr}]
    elif method == "head":
        if not heads:
            raise ValueError("method=head needs a head module (e.g. head=classifier)")
        model.requires_grad_(False)
        params = _head_params(model, heads)
        for p in params:
            p.requires_grad_(True)
        groups = [{"params": params, "lr": head_lr}]
    elif method == "full":
        model.requires_grad_(True)
        head = {id(p) for p in _head_params(model, heads)}
        groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": lr}, {"params": [p for p in model.parameters() if id(p) in head], "lr": head_lr}]
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return model, [dict(g, weight_decay=weight_decay) for g in groups if g["params"]]


def save_trained(model: nn.Module, directory: Path, method: str) -> int:
    """Save what the method trained; returns the bytes written (LoRA: PEFT's adapter file)."""
    directory.mkdir(parents=True, exist_ok=True)
    if method in ("lora", "peft-fourierft"):
        model.save_pretrained(directory)
        return (directory / "adapter_model.safetensors").stat().st_size
    from safetensors.torch import save_file

    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, directory / "trained.safetensors")
    return (directory / "trained.safetensors").stat().st_size
