"""Reading SAEs from disk: both layouts against an encode written out here, activations honoured, pickles refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mmviz.errors import InputError
from mmviz.features import load_sae

D_IN, D_SAE = 12, 40


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
        "threshold": torch.rand(D_SAE, generator=g),
    }


def write_sae_lens(folder, weights, **config):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, **config}))
    return folder


def write_sparsify(folder, weights, k):
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "encoder.weight": weights["W_enc"].T.contiguous(),
        "encoder.bias": weights["b_enc"],
        "W_dec": weights["W_dec"],
        "b_dec": weights["b_dec"],
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 4, "num_latents": D_SAE, "k": k, "d_in": D_IN}))
    return folder


@pytest.fixture()
def x():
    return torch.randn(7, D_IN, generator=torch.Generator().manual_seed(3))


def test_sae_lens_standard_relu_matches_the_written_out_encode(tmp_path, x):
    w = _weights()
    sae = load_sae(write_sae_lens(tmp_path / "blocks.3.hook_resid_post", w, architecture="standard"))
    expected = torch.relu(x @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.decode(expected), expected @ w["W_dec"] + w["b_dec"])
    assert (sae.layout, sae.activation, sae.depth) == ("sae_lens", "relu", 4)


def test_sae_lens_subtracts_the_decoder_bias_when_its_config_says_so(tmp_path, x):
    w = _weights()
    sae = load_sae(write_sae_lens(tmp_path / "s", w, architecture="standard", apply_b_dec_to_input=True))
    torch.testing.assert_close(sae.encode(x), torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]))


def test_jumprelu_keeps_a_latent_only_above_its_threshold(tmp_path, x):
    w = _weights()
    sae = load_sae(write_sae_lens(tmp_path / "s", w, architecture="jumprelu"))
    pre = x @ w["W_enc"] + w["b_enc"]
    expected = torch.where(pre > w["threshold"], pre, torch.zeros_like(pre)).clamp(min=0)
    torch.testing.assert_close(sae.encode(x), expected)
    assert ((sae.encode(x) > 0).sum(-1) < (torch.relu(pre) > 0).sum(-1)).any(), "the threshold removes something"


@pytest.mark.parametrize("style", ["architecture", "activation_fn"])
def test_topk_keeps_exactly_the_k_largest(tmp_path, x, style):
    w = _weights()
    config = (
        {"architecture": "topk", "k": 5}
        if style == "architecture"
        else {
            "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 5},
        }
    )
    sae = load_sae(write_sae_lens(tmp_path / "s", w, **config))
    codes = sae.encode(x)
    pre = torch.relu(x @ w["W_enc"] + w["b_enc"])
    assert ((codes > 0).sum(-1) <= 5).all()
    for row in range(len(x)):
        top = pre[row].topk(5)
        torch.testing.assert_close(codes[row, top.indices], top.values)
        assert codes[row].sum() == pytest.approx(float(top.values.sum()), rel=1e-5)


def test_sparsify_layout_matches_its_written_out_topk_encode(tmp_path, x):
    w = _weights(1)
    sae = load_sae(write_sparsify(tmp_path / "layers.2", w, k=6))
    pre = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])  # sparsify: relu(encoder(x − b_dec)), top k
    top = pre.topk(6, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.decode(expected), expected @ w["W_dec"] + w["b_dec"])
    assert (sae.layout, sae.activation, sae.k, sae.depth) == ("sparsify", "topk", 6, 3)


@pytest.mark.parametrize(
    ("config", "folder", "depth"),
    [
        ({"hook_name": "blocks.8.hook_resid_post"}, "x", 9),
        ({"hook_name": "blocks.8.hook_resid_pre"}, "x", 8),
        ({"metadata": {"hook_name": "model.language_model.layers.2"}}, "x", 3),
        ({"hook_layer": 4}, "x", 5),
        ({}, "layers.0", 1),
        ({}, "somewhere", None),
    ],
)
def test_the_depth_is_read_from_the_hook_name(tmp_path, config, folder, depth):
    sae = load_sae(write_sae_lens(tmp_path / folder, _weights(), architecture="standard", **config))
    assert sae.depth == depth
    assert load_sae(tmp_path / folder, depth=2).depth == 2, "the caller's depth wins"


def test_labels_are_read_as_text(tmp_path):
    folder = write_sae_lens(tmp_path / "s", _weights(), architecture="standard")
    (folder / "labels.json").write_text(json.dumps({"3": "<img src=x onerror=alert(1)>", "7": "red things"}))
    assert load_sae(folder).labels == {3: "<img src=x onerror=alert(1)>", 7: "red things"}


def test_pickles_hub_names_and_broken_files_are_refused_with_what_to_do(tmp_path):
    torch.save(_weights(), tmp_path / "sae.pt")
    with pytest.raises(InputError, match="does not read pickled files"):
        load_sae(tmp_path / "sae.pt")
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(InputError, match=r"neither sae_weights\.safetensors"):
        load_sae(tmp_path)  # a cfg.json beside a pickle is still no SAE
    with pytest.raises(InputError, match="never downloads"):
        load_sae("google/gemma-scope-2b-pt-res")
    bad = write_sae_lens(tmp_path / "bad", {**_weights(), "b_enc": torch.zeros(3)}, architecture="standard")
    with pytest.raises(InputError, match="b_enc has shape"):
        load_sae(bad)
    for config, message in [
        ({"architecture": "gated"}, "not supported"),
        ({"architecture": "standard", "normalize_activations": "expected_average_only_in"}, "normalised"),
        ({"architecture": "standard", "hook_name": "blocks.2.hook_mlp_out"}, "residual stream"),
        ({"architecture": "topk"}, "needs k"),
    ]:
        with pytest.raises(InputError, match=message):
            load_sae(write_sae_lens(tmp_path / "c", _weights(), **config))
    (tmp_path / "c" / "cfg.json").write_text("not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_sae(tmp_path / "c")
