"""``encode(trace, sae)``: a sparse autoencoder's latents at every position of a trace, top k kept."""

from __future__ import annotations

import numpy as np
import torch

from mmviz.capture.plan import CaptureBudgetError, default_budget
from mmviz.errors import InputError
from mmviz.features.codes import TopActivations, check_k, top_k
from mmviz.features.sae import SparseAutoencoder
from mmviz.features.states import check_depth, direction_tokens, residual_stream
from mmviz.records import Trace

FLOAT_BYTES = 4


def encode(trace: Trace, sae: SparseAutoencoder, *, k: int = 32, budget_bytes: int | None = None) -> TopActivations:
    """Encode the residual stream the SAE reads and keep the ``k`` most active latents at every position.

    The dense codes ``(positions, d_sae)`` exist only one block of positions at a time, sized so that the block's
    codes and reconstruction stay within ``budget_bytes`` (default: :func:`mmviz.capture.default_budget`).

    Example:
        >>> sae = mmviz.features.load_sae("saes/layer-2")                  # doctest: +SKIP
        >>> codes = mmviz.features.encode(trace, sae, k=32)                # doctest: +SKIP
        >>> codes.card(codes.top_at(trace.image_positions[0])[0][0]).top_tokens   # doctest: +SKIP
        ['purple', ' violet', ...]
    """
    if not isinstance(sae, SparseAutoencoder):
        raise InputError(f"sae must come from mmviz.features.load_sae(path), not {type(sae).__name__}")
    k = check_k(k)
    if sae.depth is None:
        raise InputError("this SAE's file does not say which layer it reads: load it with load_sae(path, depth=...)")
    depth = check_depth(trace, sae.depth)
    states = residual_stream(trace, depth)
    if states.shape[-1] != sae.d_in:
        raise InputError(f"the SAE reads {sae.d_in}-wide states, this model's residual stream is {states.shape[-1]}")
    rows = _rows_per_block(sae, budget_bytes)
    indices, values, errors = [], [], []
    with torch.no_grad():
        for start in range(0, len(states), rows):
            block = states[start : start + rows]
            codes = sae.encode(block)
            index, value = top_k(codes, k)
            indices.append(index)
            values.append(value)
            error = (block.float() - sae.decode(codes)).norm(dim=-1) / block.float().norm(dim=-1).clamp(min=1e-12)
            errors.append(error.cpu().numpy().astype(np.float32))

    def exact(unit: int) -> np.ndarray:
        with torch.no_grad():
            parts = [sae.encode(states[s : s + rows])[:, unit] for s in range(0, len(states), rows)]
        return torch.cat(parts).cpu().numpy().astype(np.float32)

    return TopActivations(
        kind="sae",
        layer=depth - 1,
        width=sae.d_sae,
        indices=np.concatenate(indices),
        values=np.concatenate(values),
        reconstruction_error=np.concatenate(errors),
        labels=dict(sae.labels),
        _exact=exact,
        _direction=lambda unit: direction_tokens(trace, sae.W_dec[unit]),
    )


def _rows_per_block(sae: SparseAutoencoder, budget_bytes: int | None) -> int:
    """Positions per block: the block's pre-activations, codes and top-k work (≈ 3 × d_sae floats per position)
    plus its reconstruction fit in the budget."""
    budget = default_budget() if budget_bytes is None else budget_bytes
    per_row = (3 * sae.d_sae + sae.d_in) * FLOAT_BYTES
    if per_row > budget:
        raise CaptureBudgetError(
            f"encoding even one position with this SAE needs {per_row:,} bytes, over the budget of {budget:,}; "
            f"raise budget_bytes"
        )
    return max(1, budget // per_row)
