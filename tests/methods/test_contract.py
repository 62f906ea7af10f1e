"""The method contract, checked for every entry of the catalogue (a new method is picked up with no test to write).

Each spec must agree with the map its method returns (name, label, meaning, sign, layers, row kind), the values
must have the documented shape and be finite, and the model must be left exactly as found.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import numpy as np
import pytest
import torch

import mmviz.methods
from mmviz.capture import snapshot
from mmviz.methods import CATALOGUE, MethodSpec
from mmviz.records.spec import variant
from mmviz.widget import payloads

QUICK = {"integrated_gradients": {"steps": 4}, "rise": {"n_masks": 8}}
"""Cheap settings: the contract is about shapes and bookkeeping, not about accuracy."""


@pytest.fixture(scope="module")
def fresh(trace):
    """The shared trace without its kept maps and results, so every method really runs."""
    return dataclasses.replace(trace, maps={})


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_method_honours_its_spec(fresh, name):
    spec = CATALOGUE[name]
    model = fresh.run.model
    before, weights = snapshot(model), [p.detach().clone() for p in model.parameters()]
    result = fresh.compute(name, **QUICK.get(name, {}))
    assert snapshot(model) == before, "flags, hooks and attention implementations restored"
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters(), strict=True)), "weights untouched"
    assert (result.method, result.label, result.meaning) == (name, spec.label, spec.meaning)
    assert result.signed == spec.signed and result.rows == spec.rows
    assert (result.layers is not None) == spec.per_layer
    answer = np.arange(fresh.answer_start, len(fresh.tokens))
    expected_rows = fresh.query_positions if spec.rows == "queries" else answer
    np.testing.assert_array_equal(result.positions, expected_rows)
    np.testing.assert_array_equal(result.columns, fresh.image_positions)
    shape = (len(expected_rows), len(fresh.image_positions))
    if spec.per_layer:
        assert result.values.shape == (len(result.layers), *shape)
        assert result.layers.min() >= 0 and result.layers.max() < fresh.num_layers, "only decoder layers"
    else:
        assert result.values.shape == shape
    assert result.values.dtype == np.float32 and np.isfinite(result.values).all()
    if not spec.signed:
        assert result.values.min() >= -1e-6
    assert result.info["settings"] == {**spec.settings, **QUICK.get(name, {})}
    assert fresh.maps[name] is result and fresh.compute(name, **QUICK.get(name, {})) is result, "kept, not rerun"


def test_the_catalogue_is_collected_from_every_method_module():
    """Every module of mmviz.methods that declares a map method is imported by the package: one file + one import."""
    declared = set()
    for info in pkgutil.iter_modules(mmviz.methods.__path__):
        module = importlib.import_module(f"mmviz.methods.{info.name}")
        declared |= {
            value.spec.name for value in vars(module).values() if isinstance(getattr(value, "spec", None), MethodSpec)
        }
    assert declared and declared <= set(CATALOGUE)
    exported = [getattr(mmviz.methods, name) for name in mmviz.methods.__all__]
    assert all(spec.function in exported for spec in CATALOGUE.values()), "every method function is exported"
    costs = [spec.cost for spec in CATALOGUE.values()]
    assert costs == sorted(costs, key=["instant", "fast", "slow"].index), "the switcher lists cheap methods first"


def test_a_variant_is_its_own_catalogue_entry_with_the_base_function(fresh):
    spec = CATALOGUE["attention_max"]
    assert spec.function is mmviz.methods.attention and dict(spec.settings) == {"heads": "max"}
    direct = mmviz.methods.attention(fresh, heads="max")
    assert direct.method == "attention", "called directly, a method's map carries its own name"
    np.testing.assert_array_equal(fresh.compute("attention_max").values, direct.values)
    with pytest.raises(ValueError, match="already registered"):
        variant(mmviz.methods.rollout, "attention_max", label="x", meaning="x")


def test_a_new_method_is_one_file_and_one_import(fresh, tmp_path, monkeypatch):
    """A method written in its own file joins the catalogue when imported: trace.compute, the widget's switcher and
    this contract see it, with no other change."""
    (tmp_path / "brightness.py").write_text(
        """
import numpy as np

from mmviz.records import method


@method("brightness", label="Brightness", meaning="The mean embedding of each image token.", cost="instant")
def brightness(trace, targets=None):
    columns = trace.image_positions
    values = np.abs(trace.run.embeddings()[0, columns].mean(-1).numpy())
    answer = np.arange(trace.answer_start, len(trace.tokens))
    return brightness.spec.map(values=np.tile(values, (len(answer), 1)), positions=answer, columns=columns)
"""
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        importlib.import_module("brightness")  # the one import line
        assert "brightness" in CATALOGUE and list(CATALOGUE).index("brightness") < list(CATALOGUE).index("rollout")
        test_every_method_honours_its_spec(fresh, "brightness")
        names = [entry["name"] for entry in payloads.method_catalogue(fresh)]
        assert "brightness" in names, "the widget's method switcher lists it"
    finally:
        CATALOGUE.pop("brightness", None)
        fresh.maps.pop("brightness", None)


def test_settings_holding_arrays_are_kept_and_compared_element_wise(fresh):
    rows = np.arange(fresh.answer_start, fresh.answer_start + 2)
    first = fresh.compute("gradient_x_input", targets=rows)
    assert fresh.compute("gradient_x_input", targets=rows.copy()) is first
    other = fresh.compute("gradient_x_input", targets=rows[:1])
    assert other is not first and other.values.shape[0] == 1
