"""Image share and head entropy from the recorded rows."""

from __future__ import annotations

import numpy as np

from mmviz.methods import (
    image_share,
)


def test_image_share_groups_partition_attention(trace):
    share = image_share(trace)
    total = sum(share.groups.values())
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    image = trace.attention_rows[..., trace.layout.positions("image")].sum(-1)  # (L, H, Q)
    np.testing.assert_allclose(share.share, image.mean(-1), atol=1e-6)
    np.testing.assert_allclose(share.row_share, image, atol=1e-6)
    rows = trace.attention_rows.astype(np.float64)
    entropy = -(rows * np.log(np.where(rows > 0, rows, 1.0))).sum(-1)
    np.testing.assert_allclose(share.row_entropy, entropy, atol=1e-4)
    np.testing.assert_allclose(share.entropy, entropy.mean(-1), atol=1e-4)
    assert (share.entropy > 0).all()
    answer = image_share(trace, rows="answer")
    assert answer.positions.min() == trace.answer_start - 1
