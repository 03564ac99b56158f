"""Optimizer parameter groups with separate learning rates for coefficients and everything else.

With the default parametrization (``coefficient_scale=512``) one rate fits coefficients and heads
alike, so any optimizer over ``model.parameters()`` works (HF Trainer's defaults included). These
groups are for separate rates, e.g. the paper's recipes: ``coefficient_scale=1`` with coefficient
rates of 0.04-0.3 and head rates of ~1e-3.
"""

from __future__ import annotations

import warnings

from torch import nn

__all__ = ["param_groups"]

# Adam moves each trained parameter by about lr per step, i.e. each coefficient c by lr * coefficient_scale.
# The paper's recipes move c by at most 0.3 per step; far beyond that the run diverges.
_MAX_COEFFICIENT_STEP = 1.0


def param_groups(
    model: nn.Module,
    lr: float = 2e-4,
    head_lr: float | None = None,
    weight_decay: float = 0.0,
    head_weight_decay: float | None = None,
) -> list[dict]:
    """Trainable parameters split into {FourierFT coefficients at ``lr``} and {heads, biases at ``head_lr``
    (default: ``lr``)}. The rates are the optimizer's, for the parameters as trained (c / coefficient_scale).

    >>> optimizer = torch.optim.AdamW(fourierft.param_groups(model, lr=2e-4, head_lr=1e-3))
    """
    coeffs, others, scales = [], [], set()
    for module in model.modules():
        for spec in getattr(module, "specs", {}).values():
            scales.add(spec.coefficient_scale)
    for name, param in model.named_parameters():
        if param.requires_grad:
            (coeffs if "fourierft_spectrum" in name.split(".") else others).append(param)
    if not coeffs and not others:
        raise ValueError("the model has no trainable parameters; was the adapter loaded with is_trainable=False?")
    step = lr * max(scales, default=1.0)
    if coeffs and step > _MAX_COEFFICIENT_STEP:
        warnings.warn(
            f"lr={lr:g} with coefficient_scale={max(scales):g} moves each coefficient by about {step:.3g} per Adam step, "
            f"beyond the paper's largest rate (0.3); this will not train. Use lr 1e-4 - 1e-3, or coefficient_scale=1 for "
            "the paper's coefficient rates",
            stacklevel=2,
        )
    groups = [{"params": coeffs, "lr": lr, "weight_decay": weight_decay, "name": "fourierft_coefficients"}]
    if others:
        wd = weight_decay if head_weight_decay is None else head_weight_decay
        groups.append({"params": others, "lr": lr if head_lr is None else head_lr, "weight_decay": wd, "name": "head"})
    return [g for g in groups if g["params"]]
