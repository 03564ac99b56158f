"""``TrainingCheck``: a transformers ``TrainerCallback`` that says in the training log when FourierFT
settings will not train (see ``fourierft.diagnostics``). The recipes add it; with a plain Trainer:

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[fourierft.TrainingCheck()])
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from .diagnostics import movement_warnings, snapshot, start_warnings

__all__ = ["TrainingCheck"]

logger = logging.getLogger("fourierft")


def _coefficient_lr(optimizer, model) -> float | None:
    """The peak learning rate of the optimizer group holding FourierFT coefficients."""
    coeffs = {id(p) for n, p in model.named_parameters() if "fourierft_spectrum" in n.split(".")}
    rates = [g.get("initial_lr", g["lr"]) for g in getattr(optimizer, "param_groups", []) if any(id(p) in coeffs for p in g["params"])]
    return max(rates) if rates else None


class TrainingCheck(TrainerCallback):
    """Warns at the start when one step at the learning rate is negligible or huge against the adapted
    weights, and after ``check_after`` steps (default: min(100, a tenth of training), at least 10) when
    the coefficients have not moved. The messages are kept in ``messages``."""

    def __init__(self, check_after: int | None = None):
        self.check_after = check_after
        self.messages: list[str] = []
        self._before = None
        self._at = None

    def _say(self, messages):
        for m in messages:
            logger.warning(m)
        self.messages += messages

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            return
        lr = _coefficient_lr(optimizer, model) if optimizer is not None else args.learning_rate
        if lr is not None:  # every process: sharded weights are gathered together
            messages = start_warnings(model, lr)
            if state.is_world_process_zero:
                self._say(messages)
        self._before = snapshot(model)
        self._at = self.check_after or max(10, min(100, state.max_steps // 10))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._before is not None and model is not None and state.global_step == self._at:
            messages = movement_warnings(model, self._before, state.global_step)
            if state.is_world_process_zero:
                self._say(messages)
            self._before = None
