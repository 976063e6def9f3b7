"""DGC training: the authors' progressive channel deactivation and their lasso term on saliency."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from eca_serve.models.dgc import lasso_term, set_inactive_channels

# NOTE: the lasso weight is ours (a small value that leaves the cross-entropy dominant); the term is the authors'.
DEFAULT_LASSO = 1e-5

StepFn = Callable[[nn.Module, tuple[Tensor, Tensor], torch.device], tuple[Tensor, int]]


def dgc_classification_step(total_steps: int, lasso_weight: float = DEFAULT_LASSO) -> StepFn:
    """A training step that first moves every DGC head's dropped-channel count along the schedule.

    Args:
        total_steps: Optimiser steps of the whole run (progress = step / total_steps).
        lasso_weight: Weight of the lasso term (sum over heads and layers of the mean saliency).

    Returns:
        ``step(model, (images [B, 3, H, W], labels [B]), device) -> (loss, images)``: cross-entropy
        (label smoothing 0.1, as the other classifiers) plus ``lasso_weight * lasso``.
    """
    done = [0]

    def step(model: nn.Module, batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, int]:
        set_inactive_channels(model, done[0] / max(total_steps, 1))
        done[0] += 1
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        logits, attention = model.forward_with_attention(images)
        loss = nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
        return loss + lasso_weight * lasso_term(attention), images.shape[0]

    return step


def finish_dgc(model: nn.Module) -> None:
    """Leave every head at the schedule's final count, which inference reads from the saved buffer."""
    set_inactive_channels(model, 1.0)
