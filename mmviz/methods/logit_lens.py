"""Logit lens (nostalgebraist 2020) on text AND image positions, with the final norm applied exactly once.

LL_ℓ(pos) = softmax(W_U · norm(h_ℓ[pos])) for ℓ = 0 (embeddings) … L (last layer, whose lens equals the model's
logits). Computed in chunks keeping only the top-k; the probability of each answer token at every image position
and layer gives a map (image tokens that already "read as" the answer word, arXiv 2410.02762).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmviz.capture.hidden import recording_hidden_states
from mmviz.capture.run import module_device
from mmviz.methods.common import inference_context, model_run, sequence_image_positions
from mmviz.progress import progress
from mmviz.records import Map, Trace, kept_result, method

LABEL = "Logit lens (answer word at image tokens)"
MEANING = (
    "Logit lens: the probability of this answer token when each image token's hidden state at the chosen layer "
    "is decoded as if it were the last layer. Early layers are uncalibrated."
)


@kept_result("logit_lens")
@dataclass(frozen=True, repr=False)
class LogitLens:
    """Top-k decodings of every position at every depth.

    Attributes:
        top_ids: int ``(L + 1, N, k)`` token ids, best first; depth 0 = embeddings, ℓ = after decoder layer ℓ − 1.
        top_probs: float32 ``(L + 1, N, k)``.
        top_tokens: ``(L + 1) × N × k`` display strings.
        answer_ranks: int ``(L + 1, A)`` rank (0 = top) of answer token t at the position predicting it.
        answer_probs: float32 ``(L + 1, A)`` its probability there.
        entropy: float32 ``(L + 1, N)`` entropy of each lens distribution (nats).
        target_ids: int ``(N,)`` the token each position is read against: the next token of the analysed
            sequence at text positions (at position t − 1: answer token t), the first answer token at image
            positions (does this patch already "read as" the answer?), the final top-1 at the last position.
        target_ranks: int ``(L + 1, N)`` rank (0 = top) of ``target_ids`` under the lens at every depth.
        map: :class:`Map` of each answer token's probability at the image positions after every decoder layer
            (``layers`` 0 … L−1; the embeddings' depth 0 is in the arrays above, not in the map).
    """

    top_ids: np.ndarray
    top_probs: np.ndarray
    top_tokens: list[list[list[str]]]
    answer_ranks: np.ndarray
    answer_probs: np.ndarray
    entropy: np.ndarray
    target_ids: np.ndarray
    target_ranks: np.ndarray
    map: Map

    def __repr__(self) -> str:
        depths, n, k = self.top_ids.shape
        return f"<mmviz.LogitLens {depths} depths × {n} positions, top-{k}>"


def logit_lens(trace: Trace, *, k: int = 5) -> LogitLens:
    """Decode the residual stream of every position at every depth (0 = the embeddings, d = after decoder layer
    d − 1).

    Uses the trace's hidden states when captured (``CapturePlan(hidden_states=True)``), else runs one forward; the
    result is kept on the trace (the widget's lens panel, the plots and the ``"logit_lens"`` map share it).

    Example:
        >>> lens = logit_lens(trace, k=5)                              # doctest: +SKIP
        >>> lens.top_tokens[-1][trace.answer_start - 1][0]     # the next-token guess   # doctest: +SKIP
        ' red'
    """
    return trace.computed(lens_key(k), lambda: _decode(trace, k))


def lens_key(k: int) -> str:
    """The key under which :func:`logit_lens` keeps its result in ``trace.results`` (and trace files keep it)."""
    return f"logit_lens:k={k}"


def _decode(trace: Trace, k: int) -> LogitLens:
    run = model_run(trace)
    adapter = run.adapter
    if trace.hidden_states is not None:
        states = torch.from_numpy(trace.hidden_states)
    else:
        layers = adapter.decoder_layers()
        with inference_context(run), recording_hidden_states(layers, readout=adapter.residual) as hidden:
            run.forward(first_logit=run.length - 1)
        states = torch.stack([hidden[i][0] for i in sorted(hidden)])
    unembedding = adapter.unembedding()
    device, dtype = module_device(unembedding), next(unembedding.parameters()).dtype
    ids = run.input_ids[0].to(device)  # everything read against the lens logits lives where the head runs
    answer = torch.arange(trace.answer_start, run.length, device=device)
    # a cross-attention family has no image position: its lens reads the text, its image map is NaN
    on_image = trace.layout.keys is None
    columns = torch.as_tensor(trace.image_positions if on_image else [], dtype=torch.long, device=device)
    depths, n = states.shape[0], states.shape[1]
    top_ids = np.zeros((depths, n, k), np.int64)
    top_probs = np.zeros((depths, n, k), np.float32)
    ranks = np.zeros((depths, len(answer)), np.int64)
    answer_probs = np.zeros((depths, len(answer)), np.float32)
    entropy = np.zeros((depths, n), np.float32)
    image_probs = np.full((depths, len(answer), len(trace.image_positions)), 0.0 if on_image else np.nan, np.float32)
    target_ranks = np.zeros((depths, n), np.int64)
    with torch.no_grad():
        final_guess = int(adapter.lens_logits(states[-1, -1:].to(device, dtype)).argmax())
    targets = _lens_targets(ids, trace, final_guess)
    with torch.no_grad():
        for depth in progress(range(depths), desc="mmviz: logit lens", unit="layer"):
            logits = adapter.lens_logits(states[depth].to(device, dtype)).float()  # (N, V)
            log_probs = torch.log_softmax(logits, dim=-1)
            probs = log_probs.exp()
            best = probs.topk(k, dim=-1)
            top_ids[depth], top_probs[depth] = best.indices.cpu().numpy(), best.values.cpu().numpy()
            entropy[depth] = -(probs * log_probs).sum(dim=-1).cpu().numpy()
            predicting = log_probs[answer - 1]
            picked = predicting.gather(1, ids[answer][:, None])
            ranks[depth] = (predicting > picked).sum(dim=-1).cpu().numpy()
            answer_probs[depth] = picked[:, 0].exp().cpu().numpy()
            if on_image:
                image_probs[depth] = probs[columns][:, ids[answer]].T.cpu().numpy()
            target = log_probs.gather(1, targets[:, None])
            target_ranks[depth] = (log_probs > target).sum(dim=-1).cpu().numpy()
    top_tokens = [[adapter.display_tokens(row.tolist()) for row in layer] for layer in top_ids]
    return LogitLens(
        top_ids=top_ids,
        top_probs=top_probs,
        top_tokens=top_tokens,
        answer_ranks=ranks,
        answer_probs=answer_probs,
        entropy=entropy,
        target_ids=targets.cpu().numpy(),
        target_ranks=target_ranks,
        map=logit_lens_map.spec.map(  # type: ignore[attr-defined]
            values=image_probs[1:],  # like Grad-CAM: slice ℓ = after decoder layer ℓ
            positions=answer.cpu().numpy(),
            columns=trace.image_positions,
            layers=np.arange(depths - 1),
            info={"k": k, "final_norm": "applied once"},
        ),
    )


@method("logit_lens", label=LABEL, meaning=MEANING, per_layer=True, targeted=False, sequence_positions=True)
def logit_lens_map(trace: Trace, *, k: int = 5) -> Map:
    """The logit lens's :class:`Map`: each answer token's probability at every image token after every layer."""
    sequence_image_positions(trace, "the logit lens map")  # no position of a cross-attention family holds the image
    return logit_lens(trace, k=k).map


def _lens_targets(ids: torch.Tensor, trace: Trace, final_guess: int) -> torch.Tensor:
    """The token every position is read against (see :class:`LogitLens`)."""
    targets = torch.full_like(ids, final_guess)
    targets[:-1] = ids[1:]
    columns = torch.as_tensor(
        trace.image_positions if trace.layout.keys is None else [], dtype=torch.long, device=ids.device
    )
    if trace.answer_start < len(ids):
        targets[columns] = ids[trace.answer_start]
    return targets
