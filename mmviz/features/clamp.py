"""``clamp(trace, sae, latent, value)``: set one SAE latent and run the model again; the answer's change."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from mmviz.errors import InputError, UnsupportedModelError
from mmviz.features.sae import SparseAutoencoder
from mmviz.features.states import check_depth
from mmviz.methods.common import Effect, effect, model_run, scores
from mmviz.methods.target import TargetLike, resolve_targets
from mmviz.records import Trace


def clamp(
    trace: Trace,
    sae: SparseAutoencoder,
    latent: int,
    value: float = 0.0,
    *,
    positions: Sequence[int] | None = None,
    targets: TargetLike = None,
) -> Effect:
    """Set SAE ``latent`` to ``value`` (0 = switch it off) at ``positions`` (default: all) and report each target's
    score change (default: every answer token's log-probability), from one forward.

    The edited reconstruction plus the SAE's error term replaces the residual stream at the SAE's depth:
    h′ = x̂(f′) + (h − x̂(f)) = h + (f′_latent − f_latent)·W_dec[latent], so everything the SAE does not explain is
    kept exactly. The model is left as found (the hook is removed, also on error).

    Example:
        >>> mmviz.features.clamp(trace, sae, latent=17, value=0.0).delta  # doctest: +SKIP
        array([-3.1, 0.02])
    """
    if not isinstance(sae, SparseAutoencoder):
        raise InputError(f"sae must come from mmviz.features.load_sae(path), not {type(sae).__name__}")
    if isinstance(latent, bool) or not isinstance(latent, (int, np.integer)) or not 0 <= latent < sae.d_sae:
        raise InputError(f"latent must be an index in 0 … {sae.d_sae - 1}, not {latent!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not np.isfinite(value):
        raise InputError(f"value must be a finite number, not {value!r}")
    if sae.depth is None:
        raise InputError("this SAE's file does not say which layer it reads: load it with load_sae(path, depth=...)")
    depth = check_depth(trace, sae.depth)
    run = model_run(trace)
    resolved = resolve_targets(trace, targets)
    chosen = np.arange(run.length) if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= run.length:
        raise InputError(f"positions must be sequence positions in 0 … {run.length - 1}")
    with _editing(run.adapter.decoder_layers(), depth, sae, int(latent), float(value), chosen):
        changed = scores(run, resolved)
    where = "every position" if positions is None else f"{chosen.size} positions"
    return effect(run, resolved, changed, f"SAE latent {latent} set to {value:g} at {where} (depth {depth})")


@contextmanager
def _editing(
    decoder_layers: Sequence[torch.nn.Module],
    depth: int,
    sae: SparseAutoencoder,
    latent: int,
    value: float,
    positions: np.ndarray,
) -> Iterator[None]:
    def edit(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.ndim != 3:
            raise UnsupportedModelError(
                f"clamping an SAE latent edits the one (B, N, d) residual stream of a layer; this model's layers carry "
                f"{hidden.shape[0]} stacked streams (AltUp), so there is no single state to edit. Read the latents "
                f"(they are read from the merged state) without clamping"
            )
        index = torch.as_tensor(positions, device=hidden.device)
        current = sae.encode(hidden[:, index])[..., latent]  # (B, P)
        direction = sae.W_dec[latent].to(hidden.device)
        edited = hidden.clone()
        edited[:, index] += ((value - current)[..., None] * direction).to(hidden.dtype)
        return edited

    if depth < len(decoder_layers):  # the state entering layer `depth`, as recording_hidden_states reads it

        def before(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (edit(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

        handle = decoder_layers[depth].register_forward_pre_hook(before, with_kwargs=True)
    else:

        def after(module: torch.nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (edit(output[0]), *output[1:])
            return edit(output)

        handle = decoder_layers[depth - 1].register_forward_hook(after)
    try:
        yield
    finally:
        handle.remove()
