"""A planted feature: an SAE whose latent 0 is the shapes model's direction for one colour, found by a probe.

The probe is a least-squares fit, over the image tokens of held-out scenes, of the fraction of each token's box
covered by an object of that colour, from the residual stream at depth 0 (the image features as the language model
reads them). Latent 0 encodes with the probe (firing above 0.05) and decodes to the mean difference between
fully-covered tokens and background tokens, so switching it off moves the object's tokens to the background.
The other latents are random and never fire (bias −5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import mmviz
from mmviz.features.states import residual_stream
from mmviz.zoo import scene

DEPTH = 0
LATENTS = 16


def covered_fraction(trace: mmviz.Trace, mask: np.ndarray) -> np.ndarray:
    """For every image token of ``trace``: the fraction of its box's pixels inside ``mask``."""
    fractions = []
    for box in trace.layout.boxes[trace.image_positions]:
        x0, y0, x1, y1 = (max(round(float(v)), 0) for v in box)
        window = mask[y0:y1, x0:x1]
        fractions.append(window.mean() if window.size else 0.0)
    return np.asarray(fractions)


def probe(model, processor, color: str, seeds: range) -> tuple[np.ndarray, float, np.ndarray]:
    """(weights, bias, mean difference) of the least-squares probe for ``color`` at :data:`DEPTH`."""
    states, targets = [], []
    for seed in seeds:
        s = scene(seed)
        question = s.questions[0]
        trace = mmviz.trace(model, processor, s.image, question.text, answer=question.answer)
        states.append(residual_stream(trace, DEPTH)[trace.image_positions].numpy())
        target = np.zeros(len(trace.image_positions))
        for obj in s.objects:
            if obj.color == color:
                target = covered_fraction(trace, obj.mask)
        targets.append(target)
    x, y = np.concatenate(states), np.concatenate(targets)
    solution, *_ = np.linalg.lstsq(np.concatenate([x, np.ones((len(x), 1))], axis=1), y, rcond=None)
    difference = x[y > 0.9].mean(axis=0) - x[y == 0].mean(axis=0)
    return solution[:-1], float(solution[-1]), difference


def planted_sae(model, processor, folder: Path, color: str = "red", seeds: range = range(200, 230)) -> Path:
    """Write the planted SAE in the sae_lens layout to ``folder`` (and the same SAE in the sparsify layout to
    ``folder.with_name(folder.name + "-sparsify")``); returns ``folder``."""
    weights, bias, difference = probe(model, processor, color, seeds)
    width = len(weights)
    generator = torch.Generator().manual_seed(0)
    w_enc = torch.randn(width, LATENTS, generator=generator) * 0.01
    b_enc = torch.full((LATENTS,), -5.0)
    w_dec = torch.randn(LATENTS, width, generator=generator) * 0.01
    w_enc[:, 0], b_enc[0] = torch.as_tensor(weights, dtype=torch.float32), bias - 0.05
    w_dec[0] = torch.as_tensor(difference / 0.9, dtype=torch.float32)  # a fully covered token encodes to ≈ 0.9
    b_dec = torch.zeros(width)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"W_enc": w_enc.contiguous(), "b_enc": b_enc, "W_dec": w_dec.contiguous(), "b_dec": b_dec},
        str(folder / "sae_weights.safetensors"),
    )
    config = {"architecture": "standard", "d_in": width, "d_sae": LATENTS, "hook_name": "blocks.0.hook_resid_pre"}
    (folder / "cfg.json").write_text(json.dumps(config))
    (folder / "labels.json").write_text(json.dumps({"0": f"{color} object", "1": "<b>never fires</b>"}))
    sparsify = folder.with_name(folder.name + "-sparsify")
    sparsify.mkdir(parents=True, exist_ok=True)
    save_file(
        {"encoder.weight": w_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": w_dec.contiguous(), "b_dec": b_dec},
        str(sparsify / "sae.safetensors"),
    )
    (sparsify / "cfg.json").write_text(json.dumps({"k": 4, "num_latents": LATENTS, "d_in": width}))
    return folder
