"""Trace files: save → load without the model, lazy reading, re-linking a model, and hostile files.

Every family's round trip is in ``tests/families/test_families.py``; the page of a loaded trace in a real browser is
in ``tests/browser/test_inspector_page.py``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import mmviz
from mmviz.capture import snapshot
from mmviz.methods import logit_lens, projection
from mmviz.records import StoredArray
from mmviz.records.trace_file import ARRAYS, SIDECAR
from tests.families.build_qwen_idefics import build_qwen2_vl

FUZZ_EXAMPLES = 1500  # per campaign; three campaigns


@pytest.fixture(scope="module")
def kept(llava_small, photo):
    """A trace with hidden states, two maps, the lens and the projection kept."""
    model, processor = llava_small
    trace = mmviz.trace(
        model, processor, photo, "What is in the picture?", answer="A red square.",
        capture=mmviz.CapturePlan(hidden_states=True),
    )  # fmt: skip
    trace.compute("relevancy")
    trace.compute("attention_max")
    logit_lens(trace)
    projection(trace)
    return trace


@pytest.fixture(scope="module")
def saved(kept, tmp_path_factory) -> Path:
    return kept.save(tmp_path_factory.mktemp("saved") / "kept.mmviz")


def test_a_loaded_trace_has_everything_back_without_the_model(kept, saved):
    loaded = mmviz.load(saved)
    assert loaded.run is None
    assert loaded.provenance["model"]["fingerprint"] == mmviz.records.model_fingerprint(kept.run.model)
    assert loaded.provenance["written_by"]["mmviz"] == mmviz.__version__
    np.testing.assert_array_equal(loaded.token_ids, kept.token_ids)
    np.testing.assert_array_equal(loaded.answer_logprobs, kept.answer_logprobs)
    states = np.asarray(loaded.hidden_states)
    np.testing.assert_allclose(states, kept.hidden_states, rtol=2**-10, atol=1e-6)  # float16
    for name in ("relevancy", "attention_max"):
        original, back = kept.maps[name], loaded.maps[name]
        np.testing.assert_array_equal(back.values, original.values)
        assert (back.label, back.meaning, back.signed, back.rows) == (
            original.label, original.meaning, original.signed, original.rows
        )  # fmt: skip
        assert back.info.keys() == original.info.keys()
    lens, lens_back = logit_lens(kept), logit_lens(loaded)  # kept: served without the model
    np.testing.assert_array_equal(lens_back.top_ids, lens.top_ids)
    assert lens_back.top_tokens == lens.top_tokens
    np.testing.assert_array_equal(projection(loaded).coords, projection(kept).coords)
    inspector = mmviz.inspect(saved)
    assert inspector.meta["extras"] == {"heads": True, "lens": True, "projection": True}
    served, original = inspector.extra("lens"), mmviz.Inspector(kept).extra("lens")
    assert served["depths"] == lens.top_ids.shape[0] and served["vocab"] == original["vocab"], "the same strings"


def test_the_arrays_are_read_lazily_one_layer_at_a_time(kept, saved):
    loaded = mmviz.load(saved)
    rows = loaded.attention_rows
    assert isinstance(rows, StoredArray) and rows.shape == kept.attention_rows.shape
    assert rows.bytes_read == 0, "opening reads no array"
    layer = loaded.attention(layer=1)
    one_layer = int(np.prod(rows.shape[1:]))  # uint8 codes of one layer
    assert rows.bytes_read == one_layer
    step = 1 / 255 + 1e-6
    assert np.abs(layer - kept.attention(layer=1)).max() <= step / 2
    loaded.attention(layer=2)
    assert rows.bytes_read == 2 * one_layer, "the next layer costs one layer"
    np.testing.assert_allclose(rows[1:3, 0], np.asarray(rows)[1:3, 0])


def test_to_html_works_from_a_loaded_trace(saved):
    html = mmviz.Inspector(mmviz.load(saved)).to_html()
    assert '"lens"' in html and '"projection"' in html


def test_attach_relinks_the_same_model_and_refuses_another(llava_small, kept, saved, photo):
    model, processor = llava_small
    linked = mmviz.load(saved).attach(model, processor)
    fresh = dataclasses.replace(linked, maps={})
    np.testing.assert_allclose(
        fresh.compute("gradient_x_input").values, dataclasses.replace(kept, maps={}).compute("gradient_x_input").values
    )
    other, other_processor = mmviz.zoo.tiny_llava(image_size=56, patch_size=14, num_layers=3, seed=2)
    before = snapshot(other)
    with pytest.raises(mmviz.ProcessorMismatchError, match="not the model that made the trace"):
        mmviz.load(saved).attach(other, other_processor)
    assert snapshot(other) == before
    other_family, qwen_processor = build_qwen2_vl()
    with pytest.raises(mmviz.ProcessorMismatchError, match=r"from a LLaVA-1\.5 model, not a Qwen2-VL one"):
        mmviz.load(saved).attach(other_family, qwen_processor)


def test_methods_that_need_the_model_say_so(saved):
    loaded = mmviz.load(saved)
    with pytest.raises(mmviz.InputError, match=r"attach\(model, processor\)"):
        loaded.compute("integrated_gradients")
    assert loaded.compute("attention_sinks_masked").values.shape[-1] == len(loaded.image_positions)


def test_a_directory_and_a_zip_hold_the_same_trace(kept, tmp_path):
    directory = kept.save(tmp_path / "as-directory")
    zipped = kept.save(tmp_path / "as.mmviz")
    assert sorted(path.name for path in directory.iterdir()) == sorted(zipfile.ZipFile(zipped).namelist())
    a, b = mmviz.load(directory), mmviz.load(zipped)
    np.testing.assert_array_equal(np.asarray(a.attention_rows), np.asarray(b.attention_rows))
    assert not list(tmp_path.glob("*.partial")), "no half-written file is left behind"


# -- damaged and hostile files ---------------------------------------------------------------------------------
def _unpack(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _pack(members: dict[str, bytes], path: Path, *, names: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr((names or {}).get(name, name), data)
    return path


def _with_sidecar(members: dict[str, bytes], change) -> dict[str, bytes]:
    sidecar = json.loads(members[SIDECAR])
    change(sidecar)
    return {**members, SIDECAR: json.dumps(sidecar).encode()}


def _with_tensor(members: dict[str, bytes], tmp_path: Path, change) -> dict[str, bytes]:
    (tmp_path / "in.safetensors").write_bytes(members[ARRAYS])
    tensors = load_file(str(tmp_path / "in.safetensors"))
    change(tensors)
    save_file(tensors, str(tmp_path / "out.safetensors"))
    return {**members, ARRAYS: (tmp_path / "out.safetensors").read_bytes()}


HOSTILE = {
    "a missing key": (lambda m, t: _with_sidecar(m, lambda s: s.pop("tokens")), r"lacks 'tokens'"),
    "a version from the future": (
        lambda m, t: _with_sidecar(m, lambda s: s.update(schema=99)), r"newer mmviz \(schema 99.*upgrade mmviz"
    ),
    "not a trace": (lambda m, t: _with_sidecar(m, lambda s: s.update(format="x")), r"not an mmviz trace"),
    "a wrong shape": (
        lambda m, t: _with_tensor(m, t, lambda a: a.update(token_ids=a["token_ids"][:-1])), r"'token_ids' is int64"
    ),
    "a wrong dtype": (
        lambda m, t: _with_tensor(
            m, t, lambda a: a.update({"attention_rows.codes": a["attention_rows.codes"].astype(np.float32)})
        ),
        r"'attention_rows.codes' is float32",
    ),
    "a truncated tensor file": (lambda m, t: {**m, ARRAYS: m[ARRAYS][:-100]}, r"not a readable safetensors"),
    "out-of-range positions": (
        lambda m, t: _with_tensor(m, t, lambda a: a.update(query_positions=a["query_positions"] + 10**6)),
        r"'query_positions' holds values outside",
    ),
    "a missing image": (lambda m, t: {k: v for k, v in m.items() if k != "image-0.png"}, r"image-0.png is missing"),
    "an image that is not a PNG": (lambda m, t: {**m, "image-0.png": b"GIF89a" + b"\0" * 40}, r"not a readable PNG"),
    "a sidecar that is not JSON": (lambda m, t: {**m, SIDECAR: b"{not json"}, r"is not JSON"),
    "a deeply nested sidecar": (
        lambda m, t: {**m, SIDECAR: b"[" * 100_000 + b"]" * 100_000}, r"not an mmviz trace|nested"
    ),
    "an unknown layout source": (
        lambda m, t: _with_sidecar(m, lambda s: s["layout"].update(source="guessed")),
        r"layout's source must be one of \['adapter', 'measured'\]",
    ),
    "an unknown kept result": (
        lambda m, t: _with_sidecar(m, lambda s: s["results"].update(x={"type": "os.system", "fields": {}})),
        r"unknown kept result type 'os.system'",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_damaged_file_says_what_is_wrong(saved, tmp_path, case):
    damage, message = HOSTILE[case]
    path = _pack(damage(_unpack(saved), tmp_path), tmp_path / "damaged.mmviz")
    with pytest.raises(mmviz.TraceFormatError, match=message):
        mmviz.load(path)


def test_a_measured_layout_stays_labelled_measured(kept, saved, tmp_path):
    assert mmviz.load(saved).layout.source == "adapter" == kept.layout.source
    relabelled = _with_sidecar(_unpack(saved), lambda s: s["layout"].update(source="measured"))
    measured = _pack(relabelled, tmp_path / "m.mmviz")
    assert mmviz.load(measured).layout.source == "measured"
    older = _pack(_with_sidecar(_unpack(saved), lambda s: s["layout"].pop("source")), tmp_path / "old.mmviz")
    assert mmviz.load(older).layout.source == "adapter"  # files from before layouts were measured


def test_path_traversal_links_and_pickles_are_refused(saved, tmp_path):
    members = _unpack(saved)
    outside = _pack(members, tmp_path / "traversal.mmviz", names={"image-0.png": "../image-0.png"})
    with pytest.raises(mmviz.TraceFormatError, match="outside the trace"):
        mmviz.load(outside)
    assert not (tmp_path / "image-0.png").exists()
    with zipfile.ZipFile(tmp_path / "link.mmviz", "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name == "image-0.png":
                info.external_attr = 0o120777 << 16  # a symbolic link
            archive.writestr(info, data)
    with pytest.raises(mmviz.TraceFormatError, match="a link"):
        mmviz.load(tmp_path / "link.mmviz")

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("a pickle was unpickled",))

    (tmp_path / "pickle.mmviz").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(mmviz.TraceFormatError, match=r"not a trace directory or \.mmviz zip"):
        mmviz.load(tmp_path / "pickle.mmviz")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / ARRAYS).write_bytes(pickle.dumps(Boom()))
    (tmp_path / "dir" / SIDECAR).write_bytes(members[SIDECAR])
    with pytest.raises(mmviz.TraceFormatError, match="not a readable safetensors"):
        mmviz.load(tmp_path / "dir")
    with pytest.raises(mmviz.TraceFormatError, match="no such file"):
        mmviz.load(tmp_path / "nothing-here.mmviz")


# -- fuzz: thousands of mutated files, each either a trace or a TraceFormatError -----------------------------------
OUTCOMES: dict[str, dict[str, int]] = {}


def _try(campaign: str, path: Path) -> None:
    outcome = OUTCOMES.setdefault(campaign, {"loaded": 0, "TraceFormatError": 0})
    try:
        loaded = mmviz.load(path)
        np.asarray(loaded.attention_rows)  # the lazy arrays must read too
        if campaign == "sidecar values":  # a file that loads also makes a widget
            mmviz.Inspector(loaded)
    except mmviz.TraceFormatError:
        outcome["TraceFormatError"] += 1
        return
    outcome["loaded"] += 1


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    mutated = bytearray(data)
    for offset, value in edits:
        mutated[offset % len(mutated)] = value
    return bytes(mutated)


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
EDITS = st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=8)


@pytest.mark.slow
def test_fuzzed_zip_bytes_never_raise_anything_else(saved, tmp_path_factory):
    raw = saved.read_bytes()
    directory = tmp_path_factory.mktemp("fuzz-zip")

    @FUZZ
    @given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, len(raw))))
    def campaign(edits, cut):
        data = _mutate(raw, edits)
        (directory / "f.mmviz").write_bytes(data if cut is None else data[:cut])
        _try("zip bytes", directory / "f.mmviz")

    campaign()


@pytest.mark.slow
def test_fuzzed_sidecars_and_tensor_headers_never_raise_anything_else(saved, tmp_path_factory):
    members = _unpack(saved)
    sidecar, tensors = members[SIDECAR], members[ARRAYS]
    header = 8 + int.from_bytes(tensors[:8], "little")  # safetensors: length, JSON header, data
    directory = tmp_path_factory.mktemp("fuzz-parts")
    for name, data in members.items():
        (directory / name).write_bytes(data)

    @FUZZ
    @given(edits=EDITS, part=st.sampled_from(["sidecar", "tensor header", "tensor data"]))
    def campaign(edits, part):
        if part == "sidecar":
            (directory / SIDECAR).write_bytes(_mutate(sidecar, edits))
            (directory / ARRAYS).write_bytes(tensors)
        else:
            span = (0, header) if part == "tensor header" else (header, len(tensors))
            shifted = [(span[0] + offset % (span[1] - span[0]), value) for offset, value in edits]
            (directory / SIDECAR).write_bytes(sidecar)
            (directory / ARRAYS).write_bytes(_mutate(tensors, shifted))
        _try(f"directory {part}", directory)

    campaign()


@pytest.mark.slow
def test_fuzzed_sidecar_values_never_raise_anything_else(saved, tmp_path_factory):
    """Structured mutations: any value in the sidecar replaced by another JSON value, or a key deleted."""
    members = _unpack(saved)
    original = json.loads(members[SIDECAR])
    directory = tmp_path_factory.mktemp("fuzz-json")
    for name, data in members.items():
        (directory / name).write_bytes(data)
    values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=6,
    )

    def paths(node, prefix=()):
        yield prefix
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in children:
            yield from paths(child, (*prefix, key))

    every_path = [path for path in paths(original) if path]

    @FUZZ
    @given(path=st.sampled_from(every_path), value=values, delete=st.booleans())
    def campaign(path, value, delete):
        sidecar = json.loads(members[SIDECAR])
        parent = sidecar
        for key in path[:-1]:
            parent = parent[key]
        if delete and isinstance(parent, dict):
            parent.pop(path[-1])
        else:
            parent[path[-1]] = value
        (directory / SIDECAR).write_text(json.dumps(sidecar))
        _try("sidecar values", directory)

    campaign()


@pytest.mark.slow
def test_zz_report_the_fuzz_campaigns():
    """The campaigns' figures (in the test log: ``pytest -rA``): every mutated file loaded or raised
    TraceFormatError — anything else failed the campaign above."""
    total = sum(sum(outcome.values()) for outcome in OUTCOMES.values())
    print("trace-file fuzzing:", json.dumps(OUTCOMES), f"total {total}")
    if len(OUTCOMES) == 5:  # all campaigns ran (not a -k selection)
        assert total == 3 * FUZZ_EXAMPLES
        assert sum(outcome["TraceFormatError"] for outcome in OUTCOMES.values()) > FUZZ_EXAMPLES, "most are damaged"


def test_stored_array_reads_like_an_array(saved, kept):
    rows = mmviz.load(saved).attention_rows
    full = np.asarray(rows)
    assert full.dtype == np.float32 and full.shape == rows.shape
    np.testing.assert_array_equal(rows[-1], full[-1])
    np.testing.assert_array_equal(rows[::2, 1], full[::2, 1])
    np.testing.assert_array_equal(rows[..., 3], full[..., 3])
    np.testing.assert_allclose(rows.mean(axis=0), full.mean(axis=0))
    with pytest.raises(IndexError):
        rows[len(rows)]
