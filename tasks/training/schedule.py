"""How the weights move over a training run: the learning-rate schedule and weight averaging.

``lr_factor`` scales the base learning rate by the run's progress ``t`` (0 at the first step,
1 at the end of ``max_epochs``): constant, or decayed to 0 along a cosine or a line. It is a
function of the step's place in the run, not a stateful scheduler, so a resumed run continues
on the same curve.

``WeightAverage`` keeps an exponential moving average of the parameters, updated after every
optimizer step (Polyak averaging). Evaluating the averaged weights instead of the last ones
smooths out the noise of the last steps; each epoch's validation accuracy and checkpoint are
the averaged weights', so selection picks among averaged models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

Schedule = Literal["constant", "cosine", "linear"]


def lr_factor(schedule: Schedule, t: float) -> float:
    """The learning rate's multiplier at progress ``t`` in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return 1.0 - t
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class WeightAverage:
    """An exponential moving average of ``model``'s parameters with per-step ``decay``. Early
    on the effective decay is ``min(decay, (1 + n) / (10 + n))`` after n updates, so the average
    follows the first, fast-moving steps instead of holding on to the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in model.parameters()], 1.0 - decay)

    @contextmanager
    @torch.no_grad()
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``model`` holding the averaged weights inside the block, its own weights after."""
        params = list(model.parameters())
        saved = [p.detach().clone() for p in params]
        for p, s in zip(params, self.shadow):
            p.copy_(s)
        try:
            yield model
        finally:
            for p, s in zip(params, saved):
                p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"]):
                s.copy_(v)
