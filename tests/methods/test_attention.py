"""Raw attention aggregations (mean, heads, sinks masked)."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.errors import InputError
from mmviz.methods import (
    attention,
    sink_positions,
)


def test_attention_mean_matches_trace(trace):
    result = attention(trace)
    np.testing.assert_allclose(result.values, trace.attention(head="mean"), atol=1e-6)
    assert result.layers.tolist() == trace.layers.tolist()
    top = attention(trace, heads="max")
    assert (top.values >= result.values - 1e-7).all()
    one = attention(trace, heads=1, layers=[trace.num_layers - 1])
    np.testing.assert_allclose(one.values[0], trace.attention(layer=trace.num_layers - 1, head=1), atol=1e-6)


def test_attention_sink_masking_renormalises(trace):
    masked = attention(trace, mask_sinks=[0], normalise="raw")
    full = trace.attention_rows.copy()
    full[..., 0] = 0
    full /= np.maximum(full.sum(-1, keepdims=True), 1e-12)  # the first row reads only the sink: stays 0
    np.testing.assert_allclose(masked.values, full[..., trace.image_positions].mean(1), atol=1e-6)
    shares = attention(trace, normalise="image").values
    after_image = trace.query_positions > trace.image_positions.max()  # earlier rows cannot see the image
    np.testing.assert_allclose(shares[:, after_image].sum(-1), 1.0, atol=1e-5)
    assert (shares[:, ~after_image] == 0).all()
    assert sink_positions(trace).tolist()[0] == 0
    with pytest.raises(InputError, match="normalise"):
        attention(trace, normalise="log")
