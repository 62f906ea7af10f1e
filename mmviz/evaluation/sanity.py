"""Model-randomisation sanity check (Adebayo et al. 2018, arXiv 1810.03292).

Re-initialise the language model's decoder layers from the top down (cascading), trace the same input again and
recompute a method's map after each step, and compare with the original map by rank correlation. A method whose
maps barely change is showing the input, not the model. The weights are restored afterwards, also on error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmviz.methods.common import model_run
from mmviz.progress import progress
from mmviz.records import Map, Trace
from mmviz.tracing import trace as trace_again


@dataclass(frozen=True)
class SanityResult:
    """Rank correlation between the original map and the map after randomising the top k layers.

    Attributes:
        method: the method checked.
        randomised: ``(S,)`` number of top layers re-initialised at each step.
        correlation: ``(S,)`` mean over targets of the Spearman correlation with the original map.
        passed: the fully randomised map correlates below ``threshold`` (the method depends on the weights).
    """

    method: str
    randomised: np.ndarray
    correlation: np.ndarray
    passed: bool


def randomization_check(
    trace: Trace, method: Callable[[Trace], Map], *, steps: int = 3, threshold: float = 0.5, seed: int = 0
) -> SanityResult:
    """Cascading randomisation of decoder layers, top → bottom, in ``steps`` steps; weights restored afterwards.

    Example:
        >>> result = randomization_check(trace, mmviz.methods.gradient_x_input)      # doctest: +SKIP
        >>> randomization_check(trace, lambda t: t.compute("occlusion", window=1))    # doctest: +SKIP
        >>> result.passed, result.correlation.round(2)                              # doctest: +SKIP
        (True, array([0.41, 0.12, 0.03]))
    """
    run = model_run(trace)
    layers = list(run.adapter.decoder_layers())
    original = _flat(method(trace))
    answer = trace.token_ids[trace.answer_start :].tolist()

    def rerun() -> Trace:  # the same prompt, images and answer through the changed weights
        return trace_again(run.model, run.adapter.processor, list(run.images), trace.prompt, answer=answer)

    saved = [{name: p.detach().clone() for name, p in layer.named_parameters()} for layer in layers]
    counts = np.unique(np.linspace(0, len(layers), steps + 1).round().astype(int)[1:])
    generator = torch.Generator().manual_seed(seed)
    correlations = []
    try:
        randomised = 0
        for count in progress(counts, desc="mmviz: sanity check"):
            with torch.no_grad():
                for layer in layers[len(layers) - count : len(layers) - randomised]:
                    for parameter in layer.parameters():
                        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                        scale = float(parameter.float().std()) if parameter.numel() > 1 else 1.0
                        parameter.copy_((noise * (scale or 0.02)).to(parameter.dtype))
            randomised = int(count)
            correlations.append(_spearman_rows(original, _flat(method(rerun()))))
    finally:
        with torch.no_grad():
            for layer, values in zip(layers, saved, strict=True):
                for name, parameter in layer.named_parameters():
                    parameter.copy_(values[name])
    correlation = np.array(correlations, dtype=np.float32)
    return SanityResult(
        method=method.__name__,
        randomised=counts,
        correlation=correlation,
        passed=bool(correlation[-1] < threshold),
    )


def _flat(result: Map) -> np.ndarray:
    values = result.values if result.layers is None else result.values[-1]
    return values.reshape(values.shape[0], -1)


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a = a.argsort(axis=1).argsort(axis=1).astype(np.float64)
    ranks_b = b.argsort(axis=1).argsort(axis=1).astype(np.float64)
    ranks_a -= ranks_a.mean(axis=1, keepdims=True)
    ranks_b -= ranks_b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ranks_a**2).sum(axis=1) * (ranks_b**2).sum(axis=1))
    return float(np.mean((ranks_a * ranks_b).sum(axis=1) / np.maximum(denominator, 1e-12)))
