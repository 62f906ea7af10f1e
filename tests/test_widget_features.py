"""The Inspector's Features panel, kernel side: neurons and SAE payloads decode to what ``mmviz.features`` computed,
every request from the browser is validated (bad units, layers, kinds, no SAE, hostile strings) with one
well-formed ``ok: false`` reply, and a clamp reply is :func:`mmviz.features.clamp`'s Δ log p."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from ipywidgets.widgets.widget import _put_buffers

import mmviz
from mmviz import wire
from mmviz.features import clamp, encode, load_sae, neurons
from mmviz.widget.features import TOP_K
from mmviz.zoo import scene
from tests.features.planted import planted_sae

pytestmark = pytest.mark.slow

LONE_SURROGATE = "\ud800"


@pytest.fixture(scope="module")
def shapes_vlm():
    return mmviz.zoo.load("shapes-vlm")


@pytest.fixture(scope="module")
def sae(shapes_vlm, tmp_path_factory):
    return load_sae(planted_sae(*shapes_vlm, tmp_path_factory.mktemp("sae") / "red"))


@pytest.fixture(scope="module")
def red_trace(shapes_vlm):
    """The first held-out scene with a question answered "red"."""
    model, processor = shapes_vlm
    for seed in range(300, 330):
        s = scene(seed)
        for question in s.questions:
            if question.answer == "red":
                return mmviz.trace(model, processor, s.image, question.text, answer=question.answer)
    raise AssertionError("no red question in scenes 300…329")


class Browser:
    """The browser's end of the comm: custom messages in, replies (strictly JSON-encoded, as a kernel does) out."""

    def __init__(self, inspector: mmviz.Inspector) -> None:
        self.inspector = inspector
        self.sent: list[tuple[dict, list]] = []
        inspector.send = lambda content, buffers=None: self.sent.append(
            (json.loads(json.dumps(content, ensure_ascii=False, allow_nan=False)), list(buffers or []))
        )

    def ask(self, request: object) -> tuple[dict, dict | None]:
        """The one reply to ``request`` and, when it succeeded, its payload with the buffers put back."""
        before = len(self.sent)
        self.inspector._handle_msg({"content": {"data": {"method": "custom", "content": request}}, "buffers": []})
        assert len(self.sent) == before + 1, f"{str(request)[:100]} got {len(self.sent) - before} replies"
        content, buffers = self.sent[-1]
        if content.get("ok") is not True:
            return content, None
        payload = content["payload"]
        _put_buffers(payload, content["buffer_paths"], buffers)
        return content, payload


@pytest.fixture(scope="module")
def browser(red_trace, sae):
    return Browser(mmviz.Inspector(red_trace, sae=sae))


def test_meta_says_what_the_panel_can_show(browser, red_trace, sae):
    features = browser.inspector.meta["features"]
    assert features == {"neurons": True, "sae": {"layer": sae.depth - 1, "width": sae.d_sae}, "k": TOP_K}
    assert mmviz.Inspector(red_trace).meta["features"]["sae"] is None


def test_the_sae_payload_decodes_to_the_encoded_top_k(browser, red_trace, sae):
    content, payload = browser.ask({"type": "fetch", "what": "sae", "request": "s"})
    assert content["type"] == "fetched" and content["ok"] is True
    codes = encode(red_trace, sae, k=TOP_K)
    n, k = codes.indices.shape
    assert (payload["kind"], payload["layer"], payload["width"], payload["k"]) == ("sae", -1, sae.d_sae, k)
    indices = np.frombuffer(bytes(payload["indices"]), "<i4").reshape(n, k)
    np.testing.assert_array_equal(indices, codes.indices)
    np.testing.assert_array_equal(wire.decode(payload["values"]), codes.values.astype(np.float32))
    error = wire.decode(payload["reconstruction_error"])
    np.testing.assert_allclose(error, codes.reconstruction_error, rtol=1e-3, atol=1e-4)  # float16
    assert payload["labels"]["0"] == "red object" and payload["labels"]["1"] == "<b>never fires</b>"
    assert set(payload["labels"]) <= {str(u) for u in np.unique(codes.indices)}


def test_a_neurons_payload_decodes_to_that_layers_top_k(browser, red_trace):
    content, payload = browser.ask({"type": "fetch", "what": "neurons", "layer": 1.0, "request": "n"})
    assert content["ok"] is True and content["layer"] == 1.0
    mlp = neurons(red_trace, 1, k=TOP_K)
    n = len(red_trace.tokens)
    assert (payload["kind"], payload["layer"], payload["width"], payload["n_positions"]) == ("neurons", 1, mlp.width, n)
    np.testing.assert_array_equal(np.frombuffer(bytes(payload["indices"]), "<i4").reshape(n, -1), mlp.indices)
    np.testing.assert_array_equal(wire.decode(payload["values"]), mlp.values.astype(np.float32))
    assert payload["reconstruction_error"] is None and payload["labels"] == {}


def test_a_unit_fetch_is_its_exact_activation_and_card(browser, red_trace, sae):
    _, payload = browser.ask({"type": "fetch", "what": "unit", "kind": "sae", "unit": 0, "request": "u"})
    codes = encode(red_trace, sae, k=TOP_K)
    np.testing.assert_array_equal(wire.decode(payload["activation"]), codes.activation(0))
    card = codes.card(0)
    assert payload["card"]["label"] == "red object" and payload["card"]["top_tokens"] == card.top_tokens
    assert payload["card"]["peak_position"] == card.peak_position
    request = {"type": "fetch", "what": "unit", "kind": "neurons", "layer": 2, "unit": 5, "request": "v"}
    _, payload = browser.ask(request)
    np.testing.assert_array_equal(wire.decode(payload["activation"]), neurons(red_trace, 2).activation(5))


def test_the_clamp_reply_is_mmviz_features_clamp(browser, red_trace, sae):
    content, payload = browser.ask({"type": "clamp", "latent": 0, "value": 0, "request": "c"})
    assert content["type"] == "clamped" and content["ok"] is True and content["latent"] == 0
    effect = clamp(red_trace, sae, 0, 0.0, positions=red_trace.image_positions.tolist())
    np.testing.assert_array_equal(np.frombuffer(bytes(payload["positions"]), "<i4"), effect.positions)
    np.testing.assert_allclose(wire.decode(payload["delta"]), effect.delta, rtol=1e-5, atol=1e-5)
    assert wire.decode(payload["delta"])[0] < 0, "switching the red feature off lowers 'red'"
    np.testing.assert_array_equal(
        np.frombuffer(bytes(payload["positions"]), "<i4"),
        np.arange(red_trace.answer_start, red_trace.answer_start + len(red_trace.answer_logprobs)),
    )


BAD_REQUESTS = [
    ({"type": "fetch", "what": "neurons"}, "needs a decoder layer"),
    ({"type": "fetch", "what": "neurons", "layer": 99}, "out of range"),
    ({"type": "fetch", "what": "neurons", "layer": -1}, "out of range"),
    ({"type": "fetch", "what": "neurons", "layer": True}, "must be an integer"),
    ({"type": "fetch", "what": "neurons", "layer": 1.5}, "must be an integer"),
    ({"type": "fetch", "what": "neurons", "layer": "mean"}, "must be an integer"),
    ({"type": "fetch", "what": "neurons", "layer": [0]}, "must be an integer"),
    ({"type": "fetch", "what": "sae", "layer": 3}, "no codes at layer 3"),
    ({"type": "fetch", "what": "sae", "layer": True}, "no codes at layer True"),
    ({"type": "fetch", "what": "unit", "kind": "sae", "unit": 16}, "out of range"),
    ({"type": "fetch", "what": "unit", "kind": "sae", "unit": -1}, "out of range"),
    ({"type": "fetch", "what": "unit", "kind": "sae", "unit": "0"}, "must be an integer"),
    ({"type": "fetch", "what": "unit", "kind": "sae"}, "must be an integer"),
    ({"type": "fetch", "what": "unit", "kind": "neurons", "unit": 0}, "needs a decoder layer"),
    ({"type": "fetch", "what": "unit", "kind": "attention", "unit": 0}, "kind 'neurons' or 'sae'"),
    ({"type": "fetch", "what": "unit", "kind": LONE_SURROGATE, "unit": 0}, "kind 'neurons' or 'sae'"),
    ({"type": "fetch", "what": "unit", "kind": "<img src=x onerror=alert(1)>", "unit": 0}, "kind"),
    ({"type": "clamp", "latent": 16}, "out of range"),
    ({"type": "clamp", "latent": None}, "must be an integer"),
    ({"type": "clamp", "latent": 0, "value": float("nan")}, "finite number"),
    ({"type": "clamp", "latent": 0, "value": True}, "finite number"),
    ({"type": "clamp", "latent": 0, "value": "0"}, "finite number"),
    ({"type": "clamp", "latent": 0, "value": LONE_SURROGATE}, "finite number"),
]


@pytest.mark.parametrize(("request_", "message"), BAD_REQUESTS, ids=[str(i) for i in range(len(BAD_REQUESTS))])
def test_bad_requests_are_refused_with_one_clear_reply(browser, request_, message):
    content, _ = browser.ask({**request_, "request": "bad"})
    assert content["ok"] is False and content["request"] == "bad", content
    assert message in content["error"], content["error"]
    assert content["type"] == ("clamped" if request_["type"] == "clamp" else "fetched")


def test_without_an_sae_the_sae_requests_say_so_and_a_bad_sae_is_refused(red_trace):
    plain = Browser(mmviz.Inspector(red_trace))
    for request in (
        {"type": "fetch", "what": "sae"},
        {"type": "fetch", "what": "unit", "kind": "sae", "unit": 0},
        {"type": "clamp", "latent": 0},
    ):
        content, _ = plain.ask({**request, "request": "x"})
        assert content["ok"] is False and "no SAE was given" in content["error"], content
    with pytest.raises(mmviz.InputError, match="load_sae"):
        mmviz.Inspector(red_trace, sae="saes/red")


def test_inspect_keeps_the_sae_apart_from_the_trace_options(shapes_vlm, sae, red_trace):
    model, processor = shapes_vlm
    shown = mmviz.inspect(red_trace, sae=sae)
    assert shown.meta["features"]["sae"]["width"] == sae.d_sae
    s = scene(300)
    traced = mmviz.inspect(model, processor, s.image, s.questions[0].text, answer=s.questions[0].answer, sae=sae)
    assert traced.meta["features"]["sae"] is not None


def test_fuzzed_feature_requests_keep_the_kernel_working(browser):
    """Random feature requests: each answered exactly once, and the panel's own requests still work after."""
    rng = random.Random(3)
    values = [None, True, 0, 1, -1, 15, 16, 99, 2.0, 0.5, float("inf"), "", "sae", "neurons", LONE_SURROGATE, [], {}]
    for _ in range(300):
        request: dict = {"type": rng.choice(["fetch", "clamp"]), "request": rng.choice(["f", LONE_SURROGATE, 3])}
        request["what"] = rng.choice(["neurons", "sae", "unit", LONE_SURROGATE])
        for key in ("layer", "kind", "unit", "latent", "value"):
            if rng.random() < 0.6:
                request[key] = rng.choice(values)
        if request["type"] == "clamp" and request.get("value") in (None, 0, 1, -1, 15, 16, 99, 2.0, 0.5):
            request["latent"] = 99  # keep the fuzz fast: a valid clamp runs the model
        browser.ask(request)
    content, payload = browser.ask({"type": "fetch", "what": "sae", "request": "after"})
    assert content["ok"] is True and payload["kind"] == "sae"
