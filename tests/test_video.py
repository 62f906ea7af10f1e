"""The video path: ``mmviz.trace(model, processor, video=frames, prompt=...)`` for the Qwen2-VL family (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL: two frames per token), LLaVA-OneVision (one frame per token group), SmolVLM (one global
view per frame) and LLaVA-NeXT-Video (frames centre-cropped and pooled 2×2).

Checked against independent references:

- the layout against the real processor's ``video_grid_thw`` (called here directly) and a box formula written out
  here; the frame spans against the vision tower itself: changing ONE original frame changes exactly the merged
  video features of the tokens whose span holds that frame (so the spans are what the model really fuses);
- the recorded attention rows against ``output_attentions=True`` of an eager deep copy (max abs ≤ 1e-5);
- the trace file round trip (frames as PNG, spans, boxes), and ``attach`` re-encoding the video;
- knocking out one frame group changes the answer's log p and leaves the model as found;
- hostile input: empty, ragged, too many frames, both or neither of image / video, families without a video path.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import mmviz
from mmviz.adapters.measured import silenced
from mmviz.errors import InputError, MmvizError, TraceFormatError, UnsupportedModelError
from mmviz.inputs import MAX_FRAMES, load_video
from mmviz.interventions import Ablate, frame_positions
from mmviz.zoo import tiny_llava
from tests.families.build_2026 import build_qwen3_vl
from tests.families.build_llava_next import build_llava_next_video, build_llava_onevision
from tests.families.build_qwen_idefics import build_qwen2_5_vl, build_qwen2_vl, build_smolvlm

BUILDERS = {"qwen2_vl": build_qwen2_vl, "qwen2_5_vl": build_qwen2_5_vl, "qwen3_vl": build_qwen3_vl}
N_FRAMES = 5  # odd: the last temporal group holds the last frame twice (the processor pads)
HEIGHT, WIDTH = 50, 70  # not multiples of 28 / 32: the boxes scale per axis
ANSWER = "a b"


def video(n: int = N_FRAMES, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, HEIGHT, WIDTH, 3)).astype(np.uint8)


@pytest.fixture(scope="module", params=list(BUILDERS))
def family(request):
    model, processor = BUILDERS[request.param]()
    frames = video()
    trace = mmviz.trace(model, processor, video=frames, prompt="What happens?", answer=ANSWER)
    return request.param, model, processor, frames, trace


def _processor_grid(processor, frames) -> tuple[int, int, int]:
    """The real video processor's own grid for these frames (every frame kept), called without mmviz."""
    out = processor.video_processor(videos=[list(frames)], do_sample_frames=False, return_tensors="pt")
    t, h, w = out["video_grid_thw"][0].tolist()
    return int(t), int(h), int(w)


def test_layout_matches_processor_grid_spans_and_boxes(family):
    _, model, processor, frames, trace = family
    layout = trace.layout
    t, h, w = _processor_grid(processor, frames)
    step = model.config.vision_config.temporal_patch_size
    merge = model.config.vision_config.spatial_merge_size
    patch = model.config.vision_config.patch_size
    assert step == 2 and t == -(-N_FRAMES // step)
    rows, cols = h // merge, w // merge
    positions = trace.image_positions
    video_id = model.config.video_token_id
    assert np.array_equal(positions, np.flatnonzero(trace.token_ids == video_id))
    assert len(positions) == t * rows * cols
    assert layout.is_video and len(trace.images) == N_FRAMES == len(layout.images)
    assert all(np.array_equal(np.asarray(image), frame) for image, frame in zip(trace.images, frames, strict=True))
    for k, position in enumerate(positions):
        group, cell = divmod(k, rows * cols)
        r, c = divmod(cell, cols)
        row = layout.row(int(position))
        assert row["kind"] == "image" and row["view"] == "frame"
        assert row["frames"] == (2 * group, min(2 * group + 1, N_FRAMES - 1))
        assert row["image_index"] == 2 * group and row["grid_rc"] == (r, c) and row["grid_shape"] == (rows, cols)
        sx, sy = WIDTH / (w * patch), HEIGHT / (h * patch)  # resized frame → original frame, per axis
        size = patch * merge
        expected = (c * size * sx, r * size * sy, min((c + 1) * size * sx, WIDTH), min((r + 1) * size * sy, HEIGHT))
        np.testing.assert_allclose(row["box"], expected, atol=1e-4)
    # text positions have no span; a frame selects its whole temporal group
    assert (layout.frames[layout.text_positions] == -1).all()
    assert np.array_equal(layout.frame_positions(2), layout.frame_positions(3))
    assert np.array_equal(layout.frame_positions(4), positions[2 * rows * cols :])


def test_frame_spans_are_what_the_vision_tower_fuses(family):
    """Changing original frame f changes exactly the merged features of the tokens whose span holds f."""
    _, model, processor, frames, trace = family
    text = trace.prompt

    def features(frames_):
        inputs = processor(videos=[list(frames_)], text=text, return_tensors="pt", do_sample_frames=False)
        with torch.no_grad():
            out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out
        return torch.cat(list(pooled) if isinstance(pooled, (tuple, list)) else [pooled]).float()

    clean = features(frames)
    positions = trace.image_positions
    for changed in (1, 4):
        edited = frames.copy()
        edited[changed] = 255 - edited[changed]
        moved = (features(edited) - clean).abs().amax(dim=-1) > 1e-6
        expected = np.isin(positions, trace.layout.frame_positions(changed))
        assert np.array_equal(moved.numpy(), expected), f"frame {changed}"


LOW, HIGH = 48, 207  # probe grey levels: resampling overshoot stays inside 0…255 (as mmviz.adapters.measured)


def _processed(processor, text: str, frames: np.ndarray, key: str = "pixel_values_videos") -> np.ndarray:
    """The video processor's pixel values (``key``) for ``frames`` (every frame kept), float64."""
    out = processor(videos=[list(frames)], text=text, return_tensors="pt", do_sample_frames=False)
    return out[key].double().numpy()


def assert_measured(model, processor, trace, frames, features, half, key: str = "pixel_values_videos") -> None:
    """Measured, not stated: each processed element's original frame and pixel (constant, one-frame-white and ramp
    videos through the real processor: normalising and resizing are affine per element), and the elements each
    video token reads (gradients of the vision tower with its attention silenced, so a token reads only its own
    patches). A token's measured box (its elements' pixel centres ± ``half`` a processed pixel) is its layout box
    within 1.5 px, and the frames its elements come from are exactly its layout span.

    ``features(pixels)`` returns the ``(M, D)`` merged video features of the processed pixel values (``key``).
    """
    text = trace.prompt
    processed = lambda video_: _processed(processor, text, video_, key)  # noqa: E731
    n, height, width = frames.shape[:3]
    constant = lambda level: np.full(frames.shape, level, np.uint8)  # noqa: E731
    black = processed(constant(LOW))
    scale = processed(constant(HIGH)) - black
    assert np.abs(scale).min() > 0, "no padding in these videos: every element moves with its frame"
    presence = []
    for j in range(n):
        one = constant(LOW)
        one[j] = HIGH
        presence.append(processed(one) - black)
    frame_of = np.argmax(np.stack(presence), axis=0)
    coordinates = []
    for length, axis in ((width, 2), (height, 1)):
        slope = (HIGH - LOW) // (length - 1)
        ramp = (LOW + slope * np.arange(length)).astype(np.uint8)
        shape = [1, 1, 1, 1]
        shape[axis] = length
        video_ = np.broadcast_to(ramp.reshape(shape), frames.shape).copy()
        coordinates.append((HIGH - LOW) * (processed(video_) - black) / scale / slope + 0.5)
    x, y = coordinates
    inputs = processor(videos=[list(frames)], text=text, return_tensors="pt", do_sample_frames=False)
    positions = trace.image_positions
    with silenced(model, "vision_config"), torch.enable_grad():
        pixels = inputs[key].clone().requires_grad_(True)
        merged = features(pixels)
        assert len(merged) == len(positions)
        weights = torch.randn(merged.shape[-1], generator=torch.Generator().manual_seed(0))
        for token, position in enumerate(positions):
            (gradient,) = torch.autograd.grad(merged[token] @ weights, pixels, retain_graph=True)
            read = gradient.numpy() != 0
            assert read.any()
            box = (x[read].min() - half[0], y[read].min() - half[1], x[read].max() + half[0], y[read].max() + half[1])
            box = np.clip(box, 0, [width, height, width, height])
            np.testing.assert_allclose(box, trace.layout.boxes[position], atol=1.5)
            seen = np.unique(frame_of[read])
            span = trace.layout.row(int(position))["frames"]
            assert (int(seen.min()), int(seen.max())) == span and len(seen) == span[1] - span[0] + 1


def _pooled(out) -> torch.Tensor:
    pooled = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.cat(list(pooled) if isinstance(pooled, (tuple, list)) else [pooled])


def test_boxes_and_frame_spans_by_measurement(family):
    _, model, processor, frames, trace = family
    grid = trace.run.inputs["video_grid_thw"]
    _, h, w = grid[0].tolist()
    patch = model.config.vision_config.patch_size
    half = (0.5 * WIDTH / (w * patch), 0.5 * HEIGHT / (h * patch))
    assert_measured(
        model, processor, trace, frames, lambda pixels: _pooled(model.model.get_video_features(pixels, grid)), half
    )


def assert_rows_equal_eager(model, trace) -> None:
    """Every recorded row of ``trace`` equals ``output_attentions=True`` of an eager deep copy (max abs ≤ 1e-5)."""
    run = trace.run
    reference = copy.deepcopy(model)
    reference.set_attn_implementation({"text_config": "eager"})
    with torch.no_grad():
        attentions = reference(
            input_ids=run.input_ids, attention_mask=torch.ones_like(run.input_ids), output_attentions=True, **run.inputs
        ).attentions
    assert len(attentions) == trace.num_layers
    for layer, expected in enumerate(attentions):
        error = np.abs(trace.attention_rows[layer] - expected[0][:, trace.query_positions].numpy()).max()
        assert error <= 1e-5, f"layer {layer}: max abs {error:.3g}"


def test_attention_rows_equal_eager(family):
    _, model, _, _, trace = family
    assert_rows_equal_eager(model, trace)
    # video tokens are the attention map's columns
    assert trace.attention(layer=0, head="mean").shape == (len(trace.query_positions), len(trace.image_positions))


def test_trace_file_round_trip_and_attach(family, tmp_path):
    _, model, processor, frames, trace = family
    path = trace.save(tmp_path / "video.mmviz")
    loaded = mmviz.load(path)
    assert loaded.layout.is_video
    assert np.array_equal(loaded.layout.frames, trace.layout.frames)
    np.testing.assert_array_equal(loaded.layout.boxes, trace.layout.boxes)
    assert [np.asarray(image).tolist() for image in loaded.images] == [frame.tolist() for frame in frames]
    linked = loaded.attach(model, processor)
    assert torch.equal(linked.run.inputs["pixel_values_videos"], trace.run.inputs["pixel_values_videos"])
    result = linked.compute("gradient_x_input")
    assert result.values.shape[-1] == len(trace.image_positions)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda frames: frames[::-1, ::-1].copy(), "first frame is after its last"),
        (lambda frames: frames + 7, "outside"),
        (lambda frames: frames.astype(np.float32), "expected int64"),
        (None, "layout.frames"),
    ],
)
def test_damaged_frame_spans_are_refused(family, tmp_path, edit, message):
    from safetensors.numpy import load_file, save_file

    _, _, _, _, trace = family
    folder = trace.save(tmp_path / "video")  # a directory: the arrays can be edited in place
    tensors = load_file(str(folder / "arrays.safetensors"))
    if edit is None:
        del tensors["layout.frames"]
    else:
        tensors["layout.frames"] = edit(tensors["layout.frames"])
    save_file(tensors, str(folder / "arrays.safetensors"))
    with pytest.raises(TraceFormatError, match=message):
        mmviz.load(folder).layout  # noqa: B018


def test_knockout_of_a_frame_group_changes_logp_and_leaves_model(family):
    name, model, _, _, trace = family
    before = {key: value.clone() for key, value in model.state_dict().items()}
    implementation = model.config._attn_implementation
    group = frame_positions(trace, 1)
    assert np.array_equal(group, frame_positions(trace, 0))  # frames 0 and 1 are one temporal patch
    effect = Ablate(group, fill="zero").apply(trace)
    assert np.abs(np.asarray(effect.delta)).max() > 1e-4, name
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert model.config._attn_implementation == implementation and not model.training


def test_relative_attention_divides_by_the_generic_prompt_about_the_same_video(family):
    _, _, _, _, trace = family
    result = mmviz.methods.relative_attention(trace)
    assert result.values.shape[-1] == len(trace.image_positions)
    assert np.isfinite(result.values).all() and result.values.max() > 0


def test_gradient_method_on_video_columns(family):
    _, _, _, _, trace = family
    result = trace.compute("gradient_x_input")
    assert result.values.shape[-1] == len(trace.image_positions)
    assert np.isfinite(result.values).all() and np.abs(result.values).max() > 0


# -- bad input -----------------------------------------------------------------------------------------------------
def test_load_video_accepts_lists_and_arrays():
    frames = video(3)
    from_array = load_video(frames)
    from_list = load_video([frame for frame in frames])
    assert [np.asarray(f).tolist() for f in from_array] == [np.asarray(f).tolist() for f in from_list]
    assert from_array[0].size == (WIDTH, HEIGHT)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "no frames"),
        (np.zeros((0, 4, 4, 3), np.uint8), "no frames"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)], "different sizes"),
        (np.zeros((MAX_FRAMES + 1, 2, 2, 3), np.uint8), "sample it down"),
        (np.zeros((2, 4, 4), np.uint8), "(frames, height, width, 3)"),
        ([np.zeros((4, 4, 3), np.float32)], "frame 0"),
        ("clip.mp4", "list of frames"),
    ],
)
def test_hostile_videos_are_refused(frames, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_video(frames)


def test_exactly_one_of_image_and_video():
    model, processor = build_qwen2_vl()
    frames = video(2)
    with pytest.raises(InputError, match="exactly one"):
        mmviz.trace(model, processor, frames[0], "What?", video=frames)
    with pytest.raises(InputError, match="exactly one"):
        mmviz.trace(model, processor, prompt="What?")


def test_family_without_video_path_refuses():
    model, processor = tiny_llava()
    with pytest.raises(UnsupportedModelError, match="Qwen2-VL") as error:
        mmviz.trace(model, processor, video=video(2), prompt="What?")
    assert isinstance(error.value, MmvizError) and "image=[...]" in str(error.value)


def test_pixel_inputs_of_edited_frames(family):
    """A baseline (e.g. blurred frames) replaces the video's pixels through the video processor, same grid."""
    _, model, processor, _, trace = family
    from mmviz.adapters import adapter_for

    adapter = adapter_for(model, processor)
    edited = [image.rotate(180) for image in trace.images]
    pixels = adapter.video_pixel_inputs(edited, trace.run.inputs)
    assert trace.run.video and torch.equal(
        trace.run.pixel_inputs(edited)["pixel_values_videos"], pixels["pixel_values_videos"]
    )
    assert set(pixels) == {"pixel_values_videos", "video_grid_thw"}
    direct = processor(videos=[edited], text=trace.prompt, return_tensors="pt", do_sample_frames=False)
    assert torch.equal(pixels["pixel_values_videos"], direct["pixel_values_videos"])
    assert torch.equal(pixels["video_grid_thw"], trace.run.inputs["video_grid_thw"])
    assert not torch.equal(pixels["pixel_values_videos"], trace.run.inputs["pixel_values_videos"])


def test_paint_covers_every_frame_a_token_fuses(family):
    """Painting frame group 0's tokens paints their boxes on frames 0 AND 1 (each token fuses both), nothing else."""
    _, _, _, frames, trace = family
    from mmviz.methods.ablation import painted_images

    group = frame_positions(trace, 0)
    painted = [np.asarray(image) for image in painted_images(trace, group[:3])]
    changed = [not np.array_equal(image, frame) for image, frame in zip(painted, frames, strict=True)]
    assert changed == [True, True] + [False] * (N_FRAMES - 2)
    box = trace.layout.boxes[group[0]]
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    assert (painted[1][:y1, :x1] == painted[1][0, 0]).all()  # the first token's box, one colour on frame 1
    effect = Ablate(group, fill="paint").apply(trace)
    assert np.abs(np.asarray(effect.delta)).max() > 1e-5


def test_baselines_of_a_video_are_its_edited_frames(family):
    """The blurred and blank baselines replace the video's pixels (not the unchanged clean video), so the
    perturbation methods and image reliance see a difference."""
    name, _, _, _, trace = family
    clean = trace.run.inputs["pixel_values_videos"]
    assert not torch.allclose(trace.run.blurred_inputs()["pixel_values_videos"], clean), name
    occlusion = trace.compute("occlusion")
    assert np.abs(occlusion.values).max() > 1e-6, name
    assert mmviz.methods.image_reliance(trace, "blank").kl.max() > 1e-6, name


def test_inspector_meta_and_page(family, tmp_path):
    _, _, _, _, trace = family
    inspector = mmviz.Inspector(trace)
    assert inspector.meta["video"] == {"n_frames": N_FRAMES, "groups": [[0, 1], [2, 3], [4, 4]]}
    assert len(inspector.images) == N_FRAMES
    html = inspector.to_html(tmp_path / "video.html")
    assert '"n_frames":' in html.replace(" ", "")


# -- LLaVA-OneVision: one frame per token group, features pooled 2×2, one image_newline after the video ----------
@pytest.fixture(scope="module")
def onevision():
    model, processor = build_llava_onevision()
    frames = video(3, seed=1)
    trace = mmviz.trace(model, processor, video=frames, prompt="What happens?", answer=ANSWER)
    return model, processor, frames, trace


def test_onevision_layout_one_frame_per_group(onevision):
    model, processor, frames, trace = onevision
    pixels = processor.video_processor(videos=[list(frames)], do_sample_frames=False, return_tensors="pt")
    n_frames, side = pixels["pixel_values_videos"].shape[1], pixels["pixel_values_videos"].shape[-1]
    vision = model.config.vision_config
    g = vision.image_size // vision.patch_size
    n = -(-g // 2)
    assert n_frames == 3 and side == vision.image_size
    video_positions = np.flatnonzero(trace.token_ids == model.config.video_token_id)
    assert len(video_positions) == n_frames * n * n + 1
    assert np.array_equal(trace.image_positions, video_positions[:-1])
    assert trace.layout.row(int(video_positions[-1]))["kind"] == "image_newline"
    cell = side / n
    for k, position in enumerate(trace.image_positions):
        frame, index = divmod(k, n * n)
        r, c = divmod(index, n)
        row = trace.layout.row(int(position))
        assert row["frames"] == (frame, frame) and row["image_index"] == frame and row["view"] == "frame"
        sx, sy = WIDTH / side, HEIGHT / side
        np.testing.assert_allclose(row["box"], (c * cell * sx, r * cell * sy, (c + 1) * cell * sx, (r + 1) * cell * sy))


def test_onevision_boxes_and_spans_by_measurement(onevision):
    model, processor, frames, trace = onevision
    config = model.config
    side = config.vision_config.image_size

    def features(pixels: torch.Tensor) -> torch.Tensor:
        out = model.model.get_video_features(
            pixels,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
        return _pooled(out)[0, :-1]  # (1, T·n² + 1, D): the last row is the image_newline, which reads no pixel

    assert_measured(model, processor, trace, frames, features, (0.5 * WIDTH / side, 0.5 * HEIGHT / side))


def test_onevision_rows_equal_eager_and_frame_knockout(onevision):
    model, _, _, trace = onevision
    assert_rows_equal_eager(model, trace)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    group = frame_positions(trace, 1)
    assert len(group) == len(trace.image_positions) // 3
    effect = Ablate(group, fill="zero").apply(trace)
    assert np.abs(np.asarray(effect.delta)).max() > 1e-4
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_inspect_takes_a_video_and_vision_attention_is_refused():
    model, processor = build_qwen2_vl()
    frames = video(2)
    inspector = mmviz.inspect(model, processor, video=frames, prompt="What?", answer=ANSWER)
    assert inspector.meta["video"] == {"n_frames": 2, "groups": [[0, 1]]}
    with pytest.raises(InputError, match="images only"):
        mmviz.trace(model, processor, video=frames, prompt="What?", capture=mmviz.CapturePlan(vision_attention=True))
    with pytest.raises(InputError, match="video=frames"):
        mmviz.inspect(model, processor, prompt="What?")


# -- SmolVLM: a global view per frame, "Frame from MM:SS:" before each ---------------------------------------------
@pytest.fixture(scope="module")
def smolvlm():
    model, processor = build_smolvlm()
    frames = video(3, seed=2)
    trace = mmviz.trace(model, processor, video=frames, prompt="What happens?", answer=ANSWER)
    return model, processor, frames, trace


def test_smolvlm_layout_one_global_view_per_frame(smolvlm):
    """Each frame: the processor's own ``<global-img>`` block of G² tokens (counted here from its output), view
    ``"frame"``, span ``(f, f)``, the frame stretched to the T × T canvas cut into G × G cells, scaled back per axis."""
    model, processor, frames, trace = smolvlm
    direct = processor(videos=[list(frames)], text=trace.prompt, return_tensors="pt", do_sample_frames=False)
    side = int(direct["pixel_values"].shape[-1])
    g = side // (model.config.vision_config.patch_size * model.config.scale_factor)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert direct["pixel_values"].shape[:2] == (1, 3)
    assert np.array_equal(trace.image_positions, np.flatnonzero(trace.token_ids == image_id))
    assert len(trace.image_positions) == 3 * g * g
    cell = side / g
    for k, position in enumerate(trace.image_positions):
        frame, index = divmod(k, g * g)
        r, c = divmod(index, g)
        row = trace.layout.row(int(position))
        assert row["frames"] == (frame, frame) and row["image_index"] == frame and row["view"] == "frame"
        sx, sy = WIDTH / side, HEIGHT / side
        np.testing.assert_allclose(row["box"], (c * cell * sx, r * cell * sy, (c + 1) * cell * sx, (r + 1) * cell * sy))
    markers = [trace.layout.tokens[p] for p in trace.layout.positions("image_sep")]
    assert markers == ["<fake_token_around_image>", "<global-img>", "<fake_token_around_image>"] * 3


def test_smolvlm_boxes_and_spans_by_measurement(smolvlm):
    model, processor, frames, trace = smolvlm
    side = int(trace.run.inputs["pixel_values"].shape[-1])
    mask = trace.run.inputs["pixel_attention_mask"]

    def features(pixels: torch.Tensor) -> torch.Tensor:
        out = model.model.get_image_features(pixels, mask)
        return _pooled(out).reshape(-1, _pooled(out).shape[-1])

    assert_measured(
        model, processor, trace, frames, features, (0.5 * WIDTH / side, 0.5 * HEIGHT / side), "pixel_values"
    )


def test_smolvlm_rows_equal_eager_frame_knockout_and_edited_frames(smolvlm):
    model, processor, _, trace = smolvlm
    assert_rows_equal_eager(model, trace)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    effect = Ablate(frame_positions(trace, 1), fill="zero").apply(trace)
    assert np.abs(np.asarray(effect.delta)).max() > 1e-4
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    # edited frames go through the video processor (the image processor would tile them), same shapes
    edited = [image.rotate(180) for image in trace.images]
    pixels = trace.run.pixel_inputs(edited)
    direct = processor(videos=[edited], text=trace.prompt, return_tensors="pt", do_sample_frames=False)
    assert torch.equal(pixels["pixel_values"], direct["pixel_values"])
    assert pixels["pixel_values"].shape == trace.run.inputs["pixel_values"].shape
    assert mmviz.methods.image_reliance(trace, "blank").kl.max() > 1e-6


def test_smolvlm_trace_file_round_trip_and_attach(smolvlm, tmp_path):
    model, processor, _, trace = smolvlm
    loaded = mmviz.load(trace.save(tmp_path / "smolvlm.mmviz"))
    assert loaded.layout.is_video and np.array_equal(loaded.layout.frames, trace.layout.frames)
    linked = loaded.attach(model, processor)
    assert linked.run.video and torch.equal(linked.run.inputs["pixel_values"], trace.run.inputs["pixel_values"])
    assert np.isfinite(linked.compute("gradient_x_input").values).all()


# -- LLaVA-NeXT-Video: frames resized, centre-cropped, pooled 2×2 by the vision resampler -------------------------
@pytest.fixture(scope="module")
def next_video():
    model, processor = build_llava_next_video()
    frames = video(3, seed=3)
    trace = mmviz.trace(model, processor, video=frames, prompt="What happens?", answer=ANSWER)
    return model, processor, frames, trace


def test_next_video_layout_pooled_blocks_on_the_cropped_frame(next_video):
    """⌊g/s⌋² tokens per frame (counted in the processor's own output), each the s × s patch block of the frame
    resized to shortest edge S and centre-cropped (written out here: 70×50 → 39×28, crop offset 5 px)."""
    model, processor, frames, trace = next_video
    direct = processor(videos=[list(frames)], text=trace.prompt, return_tensors="pt", do_sample_frames=False)
    side = int(direct["pixel_values_videos"].shape[-1])
    vision = model.config.vision_config
    stride = model.config.spatial_pool_stride
    n = (vision.image_size // vision.patch_size) // stride
    video_id = model.config.video_token_id
    assert int((direct["input_ids"] == video_id).sum()) == 3 * n * n
    assert np.array_equal(trace.image_positions, np.flatnonzero(trace.token_ids == video_id))
    resized_w = int(side * WIDTH / HEIGHT)  # shortest edge (the height) to S, the width in proportion
    offset = (resized_w - side) // 2
    sx, sy = resized_w / WIDTH, side / HEIGHT
    block = stride * vision.patch_size
    for k, position in enumerate(trace.image_positions):
        frame, index = divmod(k, n * n)
        r, c = divmod(index, n)
        row = trace.layout.row(int(position))
        assert row["frames"] == (frame, frame) and row["view"] == "frame" and row["grid_shape"] == (n, n)
        expected = ((offset + c * block) / sx, r * block / sy, (offset + (c + 1) * block) / sx, (r + 1) * block / sy)
        np.testing.assert_allclose(row["box"], expected, atol=1e-4)
    covered = trace.layout.images[0].covered
    np.testing.assert_allclose(covered, (offset / sx, 0, (offset + n * block) / sx, HEIGHT), atol=1e-4)


def test_next_video_boxes_and_spans_by_measurement(next_video):
    model, processor, frames, trace = next_video
    config = model.config
    side = config.vision_config.image_size
    resized_w = int(side * WIDTH / HEIGHT)

    def features(pixels: torch.Tensor) -> torch.Tensor:
        out = model.model.get_video_features(
            pixels,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
        pooled = _pooled(out)
        return pooled.reshape(-1, pooled.shape[-1])

    assert_measured(model, processor, trace, frames, features, (0.5 * WIDTH / resized_w, 0.5 * HEIGHT / side))


def test_next_video_rows_equal_eager_frame_knockout_and_edited_frames(next_video):
    model, processor, _, trace = next_video
    assert_rows_equal_eager(model, trace)
    effect = Ablate(frame_positions(trace, 2), fill="zero").apply(trace)
    assert np.abs(np.asarray(effect.delta)).max() > 1e-4
    edited = [image.rotate(180) for image in trace.images]
    direct = processor(videos=[edited], text=trace.prompt, return_tensors="pt", do_sample_frames=False)
    assert torch.equal(trace.run.pixel_inputs(edited)["pixel_values_videos"], direct["pixel_values_videos"])
