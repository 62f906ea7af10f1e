"""The Inspector's Interventions panel, kernel side: every ``intervene`` / ``curve`` / ``generate`` / ``reliance``
request is validated (kinds, fields, types, ranges, non-image positions, hostile strings and shapes) with one
well-formed ``ok: false`` reply and nothing kept; replies equal the Python API (and, for the greedy answers,
references that do not use mmviz's edit machinery: ``model.generate`` with the image tokens zeroed by a hook, a
4-D attention mask); the model is left as found; kept runs reach ``meta`` and the standalone page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmviz
from mmviz import interventions
from mmviz.interventions import MAX_NEW_TOKENS, Ablate, Knockout, knockout_curve
from mmviz.methods import ablate, image_reliance, knockout
from mmviz.zoo import scene
from tests.test_widget_features import LONE_SURROGATE, Browser

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes_vlm():
    return mmviz.zoo.load("shapes-vlm")


@pytest.fixture()
def trace(shapes_vlm):
    model, processor = shapes_vlm
    s = scene(303)
    q = next(q for q in s.questions if q.text.startswith("What color"))
    return mmviz.trace(model, processor, s.image, q.text, answer=q.answer)


@pytest.fixture()
def browser(trace):
    return Browser(mmviz.Inspector(trace))


def intervene(intervention):
    return {"type": "intervene", "intervention": intervention, "request": "r1"}


def test_meta_says_what_the_panel_can_do(browser, trace):
    meta = browser.inspector.meta["interventions"]
    assert meta["can_run"] is True and meta["history"] == [] and meta["curve"] is None
    # "other" needs an image to take tokens from: offered only with Inspector(other_image=...)
    assert meta["fills"] == [f for f in interventions.FILLS if f != "other"]
    assert meta["default_fill"] == interventions.default_fill(trace) == "paint"  # every column has a box
    assert meta["presets"] == ["answer", "last_prompt"]
    assert meta["max_new_tokens"] == MAX_NEW_TOKENS
    assert meta["reliance"] == {
        "can_measure": True, "baselines": ["blur", "blank", "mean"], "default_baseline": "blank", "kept": [],
    }  # fmt: skip


def test_ablate_reply_equals_the_api(browser, trace):
    chosen = trace.image_positions[5:15].tolist()
    for fill in ("mean", "zero", "blur"):
        as_floats = [float(p) for p in chosen]  # JSON numbers may arrive as floats
        reply, payload = browser.ask(intervene({"kind": "ablate", "positions": as_floats, "fill": fill}))
        assert reply["type"] == "intervened" and reply["ok"] is True and reply["request"] == "r1"
        expected = ablate(trace, chosen, baseline=fill)
        assert payload["positions"] == expected.positions.tolist()
        np.testing.assert_allclose(payload["delta"], expected.delta, atol=1e-6)
        np.testing.assert_allclose(payload["clean"], expected.clean, atol=1e-6)
        assert payload["intervention"] == Ablate(chosen, fill).to_dict()
    history = browser.inspector.meta["interventions"]["history"]
    assert [entry["index"] for entry in history] == [0, 1, 2]
    assert history[-1]["delta"] == payload["delta"]


def test_knockout_and_curve_replies_equal_the_api(browser, trace):
    reply, payload = browser.ask(intervene({"kind": "knockout", "layers": [0, 1], "sources": "image", "to": "answer"}))
    assert reply["ok"] is True
    np.testing.assert_allclose(payload["delta"], knockout(trace, layers=[0, 1]).delta, atol=1e-6)
    _, last = browser.ask(intervene({"kind": "knockout", "layers": [1], "to": "last_prompt"}))
    np.testing.assert_allclose(last["delta"], Knockout([1], to="last_prompt").apply(trace).delta, atol=1e-6)
    reply, curve = browser.ask({"type": "curve", "width": 2, "to": "answer", "request": "c"})
    assert reply["type"] == "curved" and reply["ok"] is True
    assert curve["starts"] == list(range(trace.num_layers - 1))
    kept = trace.results[interventions.CURVE_KEY]
    np.testing.assert_allclose(curve["delta"], kept.delta, atol=1e-6)
    np.testing.assert_allclose(curve["delta"], knockout_curve(trace, 2).delta, atol=1e-6)
    assert browser.inspector.meta["interventions"]["curve"]["width"] == 2


HOSTILE = [
    None,
    "ablate",
    [1, 2],
    {},
    {"kind": "steer", "positions": [5]},
    {"kind": LONE_SURROGATE, "positions": [5]},
    {"kind": "ablate"},
    {"kind": "ablate", "positions": []},
    {"kind": "ablate", "positions": "5,6"},
    {"kind": "ablate", "positions": {"0": 5}},
    {"kind": "ablate", "positions": [[5]]},
    {"kind": "ablate", "positions": [5.5]},
    {"kind": "ablate", "positions": [True]},
    {"kind": "ablate", "positions": [-3]},
    {"kind": "ablate", "positions": [0]},  # a prompt token, not an image position
    {"kind": "ablate", "positions": [10**30]},
    {"kind": "ablate", "positions": [5] * 100_000},
    {"kind": "ablate", "positions": [5], "fill": "noise"},
    {"kind": "ablate", "positions": [5], "fill": LONE_SURROGATE},
    {"kind": "ablate", "positions": [5], "fill": ["mean"]},
    {"kind": "ablate", "positions": [5], "extra": 1},
    {"kind": "knockout"},
    {"kind": "knockout", "layers": []},
    {"kind": "knockout", "layers": [99]},
    {"kind": "knockout", "layers": [-1]},
    {"kind": "knockout", "layers": ["0"]},
    {"kind": "knockout", "layers": [0], "to": "everything"},
    {"kind": "knockout", "layers": [0], "to": [3, 4]},
    {"kind": "knockout", "layers": [0], "sources": [3, 4]},
    {"kind": "knockout", "layers": [0], "sources": "text"},
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_interventions_are_refused_and_nothing_is_kept(browser, trace, hostile):
    reply, payload = browser.ask(intervene(hostile))
    assert reply["type"] == "intervened" and reply["ok"] is False and payload is None
    assert isinstance(reply["error"], str) and 0 < len(reply["error"]) <= 2000
    assert interventions.history(trace) == []
    assert browser.inspector.meta["interventions"]["history"] == []


@pytest.mark.parametrize(
    "request_",
    [
        {"type": "curve"},
        {"type": "curve", "width": 0},
        {"type": "curve", "width": 2.5},
        {"type": "curve", "width": True},
        {"type": "curve", "width": 99},
        {"type": "curve", "width": "2"},
        {"type": "curve", "width": 1, "to": LONE_SURROGATE},
        {"type": "intervene"},
    ],
)
def test_hostile_curves_are_refused(browser, trace, request_):
    reply, _ = browser.ask({**request_, "request": "x"})
    assert reply["ok"] is False and reply["error"]
    assert interventions.CURVE_KEY not in trace.results


def test_loaded_trace_shows_kept_runs_and_refuses_new_ones(browser, trace, tmp_path):
    browser.ask(intervene({"kind": "ablate", "positions": trace.image_positions[:4].tolist(), "fill": "zero"}))
    loaded = mmviz.load(trace.save(tmp_path / "t.mmviz"))
    viewer = Browser(mmviz.Inspector(loaded))
    meta = viewer.inspector.meta["interventions"]
    assert meta["can_run"] is False and len(meta["history"]) == 1
    assert meta["history"][0]["delta"] == browser.inspector.meta["interventions"]["history"][0]["delta"]
    reply, _ = viewer.ask(intervene({"kind": "ablate", "positions": loaded.image_positions[:4].tolist()}))
    assert reply["ok"] is False and "no model attached" in reply["error"]
    page = viewer.inspector.to_html()
    assert '"interventions"' in page and '"can_run": false' in page


def test_exports_carry_the_kept_runs(browser, trace):
    browser.ask(intervene({"kind": "knockout", "layers": [0]}))
    page = browser.inspector.to_html()
    assert "knockout image \\u2192 answer in layer 0" in page  # the page's JSON escapes non-ASCII


# -- new greedy answers -------------------------------------------------------------------------------------------


def generate(intervention, **fields):
    return {"type": "generate", "intervention": intervention, "request": "g", **fields}


def model_state(model):
    """What "left as found" means: flags, attention implementation, every hook of every module."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    flags = [(m.training, tuple(p.requires_grad for p in m.parameters(recurse=False))) for m in model.modules()]
    return model.config._attn_implementation, model.model.language_model.config._attn_implementation, hooks, flags


def reference_generate(model, trace, max_new_tokens):
    """``model.generate``'s greedy answer after the trace's prompt (its own loop, with a KV cache)."""
    run = trace.run
    prompt = run.input_ids[:, : trace.answer_start]
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=run.inputs["pixel_values"],
            max_new_tokens=max_new_tokens, do_sample=False,
        )  # fmt: skip
    return out[0, prompt.shape[1] :].tolist()


def test_the_clean_greedy_answer_is_generates(browser, trace, shapes_vlm):
    reply, payload = browser.ask(generate(None, max_new_tokens=8))
    assert reply["type"] == "generated" and reply["ok"] is True
    assert payload["token_ids"] == reference_generate(shapes_vlm[0], trace, 8)
    assert payload["token_ids"][:-1] == trace.token_ids[trace.answer_start :].tolist()  # "green", then </s>
    assert payload["text"] == payload["original"] == trace.answer and payload["stopped"] == "eos"
    assert payload["tokens"][-1] == "</s>" and payload["intervention"] is None
    assert interventions.history(trace) == []  # a greedy answer is not kept
    reply, short = browser.ask(generate(None, max_new_tokens=1))
    assert short["token_ids"] == payload["token_ids"][:1] and short["stopped"] == "length"


def test_greedy_answer_with_zeroed_patches_equals_generate_with_a_hook(browser, trace, shapes_vlm):
    """Reference: ``model.generate`` (KV cache, its own decoding loop) with a pre-hook on the language model that zeroes
    the chosen image positions of the prompt's embeddings: no mmviz code involved."""
    model, _ = shapes_vlm
    before = model_state(model)
    chosen = trace.image_positions.tolist()
    reply, payload = browser.ask(generate({"kind": "ablate", "positions": chosen, "fill": "zero"}, max_new_tokens=6))
    assert reply["ok"] is True and model_state(model) == before

    def zero(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        if embeds.shape[1] > max(chosen):  # the prompt step; later steps feed one token
            embeds = embeds.clone()
            embeds[:, chosen] = 0
        return args, {**kwargs, "inputs_embeds": embeds}

    handle = model.model.language_model.register_forward_pre_hook(zero, with_kwargs=True)
    try:
        expected = reference_generate(model, trace, 6)
    finally:
        handle.remove()
    assert expected != reference_generate(model, trace, 6)  # zeroing every patch does change the answer
    assert payload["token_ids"] == expected
    assert payload["text"] == trace.run.adapter.tokenizer.decode(expected, skip_special_tokens=True)
    assert payload["intervention"] == {"kind": "ablate", "positions": chosen, "fill": "zero"}


def test_greedy_answer_with_the_image_knocked_out_everywhere_equals_a_4d_mask(browser, trace, shapes_vlm):
    """Reference: a greedy loop over the model with a 4-D additive attention mask in which every row from the last
    prompt token on cannot see an image position, in every layer (what a knockout of all layers cuts)."""
    model, _ = shapes_vlm
    before = model_state(model)
    layers = list(range(trace.num_layers))
    reply, payload = browser.ask(generate({"kind": "knockout", "layers": layers, "to": "answer"}, max_new_tokens=6))
    assert reply["ok"] is True and model_state(model) == before
    run = trace.run
    prompt = run.input_ids[:, : trace.answer_start]
    image = torch.as_tensor(trace.layout.positions("image", "image_newline", "image_sep"))
    ids: list[int] = []
    for _ in range(6):
        x = torch.cat([prompt, torch.tensor(ids, dtype=prompt.dtype).reshape(1, -1)], dim=1)
        n = x.shape[1]
        allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
        rows = torch.arange(n) >= trace.answer_start - 1
        allowed[rows[:, None] & torch.isin(torch.arange(n), image)[None, :]] = False
        mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        with torch.no_grad():
            logits = model(input_ids=x, attention_mask=mask, pixel_values=run.inputs["pixel_values"], use_cache=False)
        ids.append(int(logits.logits[0, -1].argmax()))
        if ids[-1] == run.adapter.tokenizer.eos_token_id:
            break
    assert payload["token_ids"] == ids
    # and the first new token is the argmax of the distribution whose Δ log p the panel shows
    changed = knockout(trace, [trace.answer_start], to=[trace.answer_start - 1], layers=layers).changed
    assert np.isfinite(changed).all()


def test_the_other_fill_needs_other_image_and_equals_the_api(trace):
    other = scene(5).image
    bare = Browser(mmviz.Inspector(trace))
    chosen = trace.image_positions[:12].tolist()
    reply, _ = bare.ask(intervene({"kind": "ablate", "positions": chosen, "fill": "other"}))
    assert reply["ok"] is False and "other_image" in reply["error"]
    viewer = Browser(mmviz.Inspector(trace, other_image=other))
    assert viewer.inspector.meta["interventions"]["fills"] == list(interventions.FILLS)
    reply, payload = viewer.ask(intervene({"kind": "ablate", "positions": chosen, "fill": "other"}))
    assert reply["ok"] is True
    expected = ablate(trace, chosen, baseline="other", other_image=other)
    np.testing.assert_allclose(payload["delta"], expected.delta, atol=1e-6)
    assert payload["intervention"] == {"kind": "ablate", "positions": chosen, "fill": "other"}  # no pixels sent
    assert "other_image" not in str(viewer.inspector.meta["interventions"]["history"])
    reply, answer = viewer.ask(generate({"kind": "ablate", "positions": chosen, "fill": "other"}, max_new_tokens=4))
    assert reply["ok"] is True and 1 <= len(answer["token_ids"]) <= 4
    reply, answer = viewer.ask(generate({"kind": "ablate", "positions": chosen, "fill": "paint"}, max_new_tokens=4))
    assert reply["ok"] is True and 1 <= len(answer["token_ids"]) <= 4


def test_reliance_reply_equals_the_api_and_is_kept(browser, trace):
    reply, payload = browser.ask({"type": "reliance", "baseline": "blank", "request": "r"})
    assert reply["type"] == "relied" and reply["ok"] is True
    expected = image_reliance(trace, "blank")
    assert payload["positions"] == expected.positions.tolist() and payload["baseline"] == "blank"
    np.testing.assert_allclose(payload["kl"], expected.kl, atol=1e-9)
    np.testing.assert_allclose(payload["pcxmi"], expected.pcxmi, atol=1e-9)
    assert browser.inspector.meta["interventions"]["reliance"]["kept"] == [payload]
    assert len(payload["kl"]) == 1 and payload["kl"][0] > 1  # the answer is the colour word: read off the image


def test_reliance_at_inspect_time_and_in_a_loaded_trace(trace, tmp_path):
    shown = mmviz.Inspector(trace, reliance="blank")
    kept = shown.meta["interventions"]["reliance"]["kept"]
    assert [k["baseline"] for k in kept] == ["blank"]
    loaded = mmviz.load(trace.save(tmp_path / "t.mmviz"))
    viewer = Browser(mmviz.Inspector(loaded))
    meta = viewer.inspector.meta["interventions"]["reliance"]
    assert meta["can_measure"] is False and meta["kept"] == kept
    reply, payload = viewer.ask({"type": "reliance", "baseline": "blank", "request": "r"})
    assert reply["ok"] is True and payload == kept[0]  # kept: answered without the model
    reply, _ = viewer.ask({"type": "reliance", "baseline": "blur", "request": "r"})
    assert reply["ok"] is False and "no model attached" in reply["error"]
    reply, _ = viewer.ask(generate(None))
    assert reply["ok"] is False and "no model attached" in reply["error"]


HOSTILE_GENERATE = [
    generate(None, max_new_tokens=0),
    generate(None, max_new_tokens=MAX_NEW_TOKENS + 1),
    generate(None, max_new_tokens=10**30),
    generate(None, max_new_tokens=2.5),
    generate(None, max_new_tokens="4"),
    generate(None, max_new_tokens=True),
    generate(None, max_new_tokens=[4]),
    *[generate(h) for h in HOSTILE if h is not None],
    {"type": "reliance", "baseline": "noise", "request": "g"},
    {"type": "reliance", "baseline": LONE_SURROGATE, "request": "g"},
    {"type": "reliance", "baseline": ["blank"], "request": "g"},
]


@pytest.mark.parametrize("request_", HOSTILE_GENERATE, ids=range(len(HOSTILE_GENERATE)))
def test_hostile_generate_and_reliance_requests_are_refused(browser, trace, shapes_vlm, request_):
    model, _ = shapes_vlm
    before = model_state(model)
    reply, payload = browser.ask(request_)
    assert reply["ok"] is False and payload is None
    assert isinstance(reply["error"], str) and 0 < len(reply["error"]) <= 2000
    assert model_state(model) == before
    assert interventions.history(trace) == [] and not any(k.startswith("image_reliance") for k in trace.results)


def test_a_failing_generation_leaves_the_model_as_found(browser, trace, shapes_vlm, monkeypatch):
    model, _ = shapes_vlm
    before = model_state(model)
    calls = {"n": 0}
    original = type(trace.run).forward

    def failing(self, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return original(self, **kwargs)

    monkeypatch.setattr(type(trace.run), "forward", failing)
    reply, _ = browser.ask(generate({"kind": "knockout", "layers": [0, 1]}, max_new_tokens=4))
    assert reply["ok"] is False and "simulated" in reply["error"]
    monkeypatch.undo()
    assert model_state(model) == before
    reply, payload = browser.ask(generate(None, max_new_tokens=4))  # and it still works
    assert reply["ok"] is True and payload["text"] == trace.answer


def test_per_token_inputs_are_cut_back_to_the_prompt(trace):
    """Each greedy step runs on prompt + the new tokens: the per-token side inputs recorded over prompt + traced
    answer are cut back to the prompt before the family's ``analysis_inputs`` extends them again."""
    import dataclasses

    from mmviz.interventions import _prompt_inputs

    n = trace.run.length
    extra = {"token_type_ids": torch.arange(n)[None], "cross_attention_mask": torch.ones(1, n, 1, 4)}
    run = dataclasses.replace(trace.run, inputs={**trace.run.inputs, **extra})
    cut = _prompt_inputs(trace, run, 0)
    assert cut["token_type_ids"].tolist() == [list(range(trace.answer_start))]
    assert tuple(cut["cross_attention_mask"].shape) == (1, trace.answer_start, 1, 4)
    assert cut["pixel_values"] is trace.run.inputs["pixel_values"]


def _fuzz_value(rng, trace, depth=0):
    """A value a broken or hostile browser might send where a field is expected."""
    choices = [
        None, True, 0, -1, 1, 2.5, 1e308, float(trace.num_layers), 10**30, "", LONE_SURROGATE, "image", "answer",
        "zero", "other", "blank", [], {}, [float("nan")],
        trace.image_positions[: rng.integers(1, 6)].tolist(), [int(trace.answer_start)], list(range(trace.num_layers)),
    ]  # fmt: skip
    if depth < 2 and rng.random() < 0.2:
        return {str(rng.choice(["kind", "positions", "fill", "layers"])): _fuzz_value(rng, trace, depth + 1)}
    return choices[rng.integers(len(choices))]


def test_fuzzed_generate_reliance_and_intervene_requests_leave_a_valid_state(browser, trace, shapes_vlm):
    """300 generated requests (kinds, fields and values mixed from valid and hostile ones): each gets exactly one
    well-formed reply, the model is left as found, and everything kept still reads back (meta is valid JSON)."""
    import json

    model, _ = shapes_vlm
    before = model_state(model)
    rng = np.random.default_rng(15)
    answered = {"ok": 0, "refused": 0}
    for _ in range(300):
        intervention = {
            key: _fuzz_value(rng, trace)
            for key in rng.choice(["kind", "positions", "fill", "layers", "to", "sources", "x"], rng.integers(0, 4))
        }
        if rng.random() < 0.5:
            intervention["kind"] = str(rng.choice(["ablate", "knockout"]))
        kind = str(rng.choice(["generate", "reliance", "intervene"]))
        request = {"type": kind, "request": "f"}
        if kind == "reliance":
            request["baseline"] = _fuzz_value(rng, trace)
        else:
            request["intervention"] = None if rng.random() < 0.1 else intervention
        if kind == "generate":
            request["max_new_tokens"] = [1, 2, 0, 65, "3", 1.0, True][rng.integers(7)]
        reply, payload = browser.ask(request)
        assert reply["request"] == "f" and isinstance(reply["ok"], bool)
        answered["ok" if reply["ok"] else "refused"] += 1
        if not reply["ok"]:
            assert payload is None and 0 < len(reply["error"]) <= 2000
    assert answered["ok"] > 5 and answered["refused"] > 100
    assert model_state(model) == before
    for kept in interventions.history(trace):
        assert interventions.from_dict(kept.intervention.to_dict()) == kept.intervention
    json.dumps(browser.inspector.meta, allow_nan=False)
