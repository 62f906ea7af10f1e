"""The widget's frame-group selection on a video trace, kernel side: what the browser selects for a frame with "Select
this frame's tokens" (js/src/views/frame-strip.ts ``frameColumns``: the group holding the frame in ``meta.video``,
then the columns whose ``image_index`` is that group's first frame) is exactly
``mmviz.interventions.frame_positions(trace, frame)``, for every frame of a Qwen2-VL video (two frames per token
group, the last one padded) and of a LLaVA-OneVision video (one frame per group, a trailing newline token); and the
Interventions panel's ``intervene`` request for those positions is the same ablation as ``Ablate(...).apply``."""

from __future__ import annotations

import numpy as np
import pytest

import mmviz
from mmviz.interventions import DEFAULT_FILL, Ablate, frame_positions
from mmviz.widget import payloads
from mmviz.widget.interventions import Interventions
from tests.families.build_llava_next import build_llava_onevision
from tests.families.build_qwen_idefics import build_qwen2_vl

BUILDERS = {"qwen2_vl": (build_qwen2_vl, 5), "llava_onevision": (build_llava_onevision, 3)}


@pytest.fixture(scope="module", params=list(BUILDERS))
def video_trace(request):
    build, n_frames = BUILDERS[request.param]
    model, processor = build()
    frames = np.random.RandomState(3).randint(0, 256, (n_frames, 50, 70, 3)).astype(np.uint8)
    return mmviz.trace(model, processor, video=frames, prompt="What happens?", answer="a b")


def browser_frame_columns(meta: dict, image_index: np.ndarray, frame: int) -> list[int]:
    """The columns the page takes for ``frame``, the way frame-strip.ts does (written out again here)."""
    groups = [g for g in meta["groups"] if g[0] <= frame <= g[1]]
    return [] if not groups else np.flatnonzero(image_index == groups[0][0]).tolist()


def test_the_frame_the_strip_shows_selects_exactly_frame_positions(video_trace):
    trace = video_trace
    meta = payloads.video_meta(trace)
    layout = payloads.layout_payload(trace)
    image_index = np.frombuffer(layout["image_index"], "<i4")
    image_positions = np.frombuffer(layout["image_positions"], "<i4")
    assert meta["n_frames"] == len(trace.images)
    covered = set()
    for frame in range(meta["n_frames"]):
        columns = browser_frame_columns(meta, image_index, frame)
        assert columns, f"frame {frame} has tokens"
        sent = image_positions[columns].tolist()  # what Run ablation sends: the columns' positions, ascending
        assert sent == sorted(frame_positions(trace, frame).tolist()), f"frame {frame}"
        covered.update(sent)
    assert covered == set(trace.image_positions.tolist()), "every video token belongs to some frame's group"


def test_the_panels_request_for_a_frame_is_the_api_ablation(video_trace):
    trace = video_trace
    frame = len(trace.images) - 1
    positions = [int(p) for p in frame_positions(trace, frame)]
    expected = Ablate(positions, fill=DEFAULT_FILL).apply(trace).delta
    reply = Interventions(trace).intervene(
        {"type": "intervene", "intervention": {"kind": "ablate", "positions": positions, "fill": DEFAULT_FILL}}
    )
    assert reply["intervention"] == {"kind": "ablate", "positions": positions, "fill": DEFAULT_FILL}
    np.testing.assert_allclose(reply["delta"], expected, atol=1e-5)
    assert np.abs(expected).max() > 0, "ablating a frame's tokens moves the answer"
