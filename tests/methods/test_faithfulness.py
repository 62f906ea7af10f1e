"""Pointing game and deletion / insertion curves."""

from __future__ import annotations

import numpy as np
import pytest

from mmviz.errors import InputError
from mmviz.evaluation import deletion_insertion, pointing_game
from mmviz.methods import Target


def test_pointing_game_uses_the_top_tokens_box(trace):
    layout = trace.layout
    columns = trace.image_positions
    image = layout.images[0]
    for column in (0, 5, 15):
        values = np.zeros(len(columns))
        values[column] = 1.0
        x0, y0 = layout.boxes[columns[column], :2]
        mask = np.zeros((image.height, image.width), bool)
        mask[int(y0) + 1, int(x0) + 1] = True  # one pixel inside that token's box
        assert pointing_game(values, layout, mask)
        elsewhere = np.zeros(len(columns))
        elsewhere[(column + 6) % len(columns)] = 1.0  # a token two rows away
        assert not pointing_game(elsewhere, layout, mask)
    assert not pointing_game(np.arange(len(columns)), layout, np.zeros((image.height, image.width), bool))
    with pytest.raises(InputError):
        pointing_game(np.zeros(len(columns)), layout, np.ones((image.height, image.width), bool), image=3)


def test_deletion_and_insertion_curves_meet_at_the_ends(trace):
    target = Target.logprob(trace.answer_start)
    values = np.random.default_rng(0).normal(size=len(trace.image_positions))
    curves = deletion_insertion(trace, values, target, steps=8)
    assert curves.fractions[0] == 0 and curves.fractions[-1] == 1 and len(curves.deletion) == 9
    assert curves.deletion[0] == pytest.approx(1.0, abs=1e-4) and curves.insertion[-1] == pytest.approx(1.0, abs=1e-4)
    assert curves.deletion[-1] == pytest.approx(curves.insertion[0], rel=1e-4)  # both: every token blurred
    assert curves.deletion_auc > 0 and curves.insertion_auc > 0
    reversed_curves = deletion_insertion(trace, -values, target, steps=8)
    # Deleting in the opposite order passes through the complementary sets: the curves swap roles.
    np.testing.assert_allclose(reversed_curves.deletion[::-1], curves.insertion, rtol=1e-4)
