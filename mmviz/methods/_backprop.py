"""Shared plumbing of the gradient methods: one forward with a gradient leaf, one fresh backward per target."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from mmviz.capture.model_state import preserved
from mmviz.capture.run import ModelRun
from mmviz.errors import InputError
from mmviz.methods.target import Target
from mmviz.progress import progress

if TYPE_CHECKING:
    from mmviz.tracing import Trace


def model_run(trace: Trace) -> ModelRun:
    """The trace's model handle, or a clear error for traces without one."""
    if trace.run is None:
        raise InputError(
            "this trace has no model attached (it was rebuilt or pickled); run mmviz.trace(model, processor, ...) "
            "again to use methods that run the model"
        )
    return trace.run


@contextmanager
def frozen_with_grad(run: ModelRun) -> Iterator[None]:
    """Eval mode, every parameter frozen (gradients reach only the chosen leaf), autograd on; all restored after."""
    with preserved(run.model):
        run.model.eval()
        run.model.requires_grad_(False)
        with torch.enable_grad():
            yield


class EmbeddingLeaf:
    """An edit that swaps the language model's input embeddings for a float32 leaf that collects gradients.

    Example:
        >>> leaf = EmbeddingLeaf()
        >>> logits = run.forward(edit=leaf)          # doctest: +SKIP
        >>> leaf.tensor.grad                           # after a backward   # doctest: +SKIP
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        self.tensor = embeds.detach().float().requires_grad_(True)
        return self.tensor


def backward_per_target(
    targets: Sequence[Target],
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    first_logit: int,
    leaves: Sequence[torch.Tensor],
    after: Callable[[int, Target], None],
    desc: str,
) -> None:
    """For each target: clear the leaves' gradients, backpropagate F alone (graph kept), then call ``after``.

    Gradients are never accumulated across targets: every backward starts from cleared leaves, and tensor hooks
    see only the current backward's gradient.
    """
    for index, target in enumerate(progress(targets, desc=desc, unit="target", disable=len(targets) < 2)):
        for leaf in leaves:
            leaf.grad = None
        value = target(logits, input_ids, first_logit)
        value.sum().backward(retain_graph=index < len(targets) - 1)
        after(index, target)


def first_logit_of(targets: Sequence[Target]) -> int:
    return min(target.first_logit for target in targets)
