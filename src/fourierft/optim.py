"""Optimizer parameter groups with separate learning rates for coefficients and everything else.

FourierFT coefficients need a learning rate hundreds of times larger than a task head's: each dW
entry is about scaling * sqrt(n / 2) / (d_out * d_in) per unit of coefficient. At a LoRA-style
1e-4 for everything, the coefficients barely move (the paper's recipes use 0.04-0.3 with AdamW).
"""

from __future__ import annotations

from torch import nn

__all__ = ["param_groups"]


def param_groups(
    model: nn.Module,
    lr: float = 5e-2,
    head_lr: float = 1e-3,
    weight_decay: float = 0.0,
    head_weight_decay: float | None = None,
) -> list[dict]:
    """Trainable parameters split into {FourierFT coefficients at ``lr``} and {heads, biases at ``head_lr``}.

    >>> optimizer = torch.optim.AdamW(fourierft.param_groups(model, lr=5e-2, head_lr=1e-3))
    """
    coeffs, others = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (coeffs if "fourierft_spectrum" in name.split(".") else others).append(param)
    if not coeffs and not others:
        raise ValueError("the model has no trainable parameters; was the adapter loaded with is_trainable=False?")
    groups = [{"params": coeffs, "lr": lr, "weight_decay": weight_decay, "name": "fourierft_coefficients"}]
    if others:
        wd = weight_decay if head_weight_decay is None else head_weight_decay
        groups.append({"params": others, "lr": head_lr, "weight_decay": wd, "name": "head"})
    return [g for g in groups if g["params"]]
