"""A synthetic shapes world: deterministic scenes of 2–3 coloured shapes, with masks, boxes and questions.

Every scene comes from one integer seed. Its geometry is drawn in relative coordinates, so ``scene(s, size=256)``
is the same scene as ``scene(s)`` at a higher resolution. Objects never overlap (their boxes keep a gap), so
the per-object masks are disjoint and each mask lies inside its box.

The vocabulary is closed and tiny: :data:`SHAPES` and :data:`COLORS`. A scene holds at most one object of each
shape and at most one object of each colour, so every question below names exactly one object:

- ``"What color is the triangle?"`` → ``"green"`` (one per object)
- ``"What shape is green?"`` → ``"triangle"`` (one per object)

and the scene's caption (:func:`caption`), e.g. ``"a red circle and a green triangle"``, lists the objects in
the fixed order circle, square, triangle.

Splits: seeds ``>= TRAIN_SEED_START`` (10 000) are for training, seeds ``< TRAIN_SEED_START`` are held out for
evaluation; the trained models in :mod:`mmviz.zoo` never saw a held-out seed.

Example:
    >>> from mmviz.zoo.shapes import scene
    >>> s = scene(3)
    >>> s.questions[0]                                    # doctest: +SKIP
    Question(text='What color is the circle?', answer='red', object_index=0)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 160, 40),
    "blue": (30, 80, 230),
    "yellow": (240, 200, 0),
    "purple": (140, 40, 180),
    "orange": (255, 130, 0),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
DEFAULT_SIZE = 64  # the trained models' input resolution; any other size is resized by their processors

TRAIN_SEED_START = 10_000  # seeds >= this are training scenes; seeds below it are held out for evaluation

COLOR_QUESTION = "What color is the {shape}?"
SHAPE_QUESTION = "What shape is {color}?"
DESCRIBE_QUESTION = "Describe the image."

_MIN_SIDE, _MAX_SIDE = 0.22, 0.36  # object side, as a fraction of the image side
_MARGIN = 0.03  # gap kept to the image border, relative
_GAP = 0.04  # gap kept between two objects' boxes, relative


@dataclass(frozen=True)
class SceneObject:
    """One shape: ``box`` is ``(x0, y0, x1, y1)`` in pixels, end-exclusive, the tight box of ``mask``."""

    shape: str
    color: str
    box: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False)  # bool, (height, width), True where the object is painted


@dataclass(frozen=True)
class Question:
    """A question whose answer needs one object: ``object_index`` indexes :attr:`Scene.objects`."""

    text: str
    answer: str
    object_index: int


@dataclass(frozen=True)
class Scene:
    seed: int
    image: Image.Image = field(repr=False)
    objects: tuple[SceneObject, ...]
    questions: tuple[Question, ...]

    @property
    def caption(self) -> str:
        return caption([(o.color, o.shape) for o in self.objects])


def is_training_seed(seed: int) -> bool:
    return seed >= TRAIN_SEED_START


def caption(objects: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> str:
    """``[("green", "triangle"), ("red", "circle")]`` → ``"a red circle and a green triangle"`` (shape order)."""
    parts = [
        f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"
        for color, shape in sorted(objects, key=lambda o: SHAPES.index(o[1]))
    ]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def all_captions() -> list[str]:
    """Every caption the world can produce: 90 with two objects and 120 with three, 210 in all."""
    from itertools import combinations, permutations

    out = []
    for count in (2, 3):
        for shapes in combinations(SHAPES, count):
            for colors in permutations(COLORS, count):
                out.append(caption(list(zip(colors, shapes, strict=True))))
    return out


def _layout(rng: random.Random, count: int) -> list[tuple[float, float, float]]:
    """``count`` non-overlapping squares ``(x, y, side)`` in relative coordinates (rejection sampling)."""
    while True:
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            for _attempt in range(100):
                side = rng.uniform(_MIN_SIDE, _MAX_SIDE)
                x = rng.uniform(_MARGIN, 1 - _MARGIN - side)
                y = rng.uniform(_MARGIN, 1 - _MARGIN - side)
                if all(
                    x + side + _GAP <= px or px + ps + _GAP <= x or y + side + _GAP <= py or py + ps + _GAP <= y
                    for px, py, ps in placed
                ):
                    placed.append((x, y, side))
                    break
            else:
                break
        if len(placed) == count:
            return placed


def _draw(shape: str, x: float, y: float, side: float, size: int) -> np.ndarray:
    """The boolean mask of one shape at ``size`` pixels."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0 = x * size, y * size
    x1, y1 = (x + side) * size - 1, (y + side) * size - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    else:  # pragma: no cover - closed vocabulary
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas) > 0


def scene(seed: int, *, size: int = DEFAULT_SIZE, num_objects: int | None = None) -> Scene:
    """The scene for ``seed``: same seed, same scene (at any ``size``, in pixels, square).

    ``num_objects`` (1–3) overrides the seed's count of 2 or 3 objects; the trained models only saw 2 and 3.
    """
    rng = random.Random(f"mmviz-shapes-{seed}")
    count = rng.choice((2, 3)) if num_objects is None else num_objects
    if not 1 <= count <= len(SHAPES):
        raise ValueError(f"num_objects must be between 1 and {len(SHAPES)}, got {count}")
    shapes = rng.sample(SHAPES, count)
    colors = rng.sample(list(COLORS), count)
    array = np.empty((size, size, 3), dtype=np.uint8)
    array[:] = BACKGROUND
    objects = []
    for shape, color, (x, y, side) in zip(shapes, colors, _layout(rng, count), strict=True):
        mask = _draw(shape, x, y, side, size)
        array[mask] = COLORS[color]
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(SceneObject(shape=shape, color=color, box=box, mask=mask))
    questions = []
    for index, obj in enumerate(objects):
        questions.append(Question(COLOR_QUESTION.format(shape=obj.shape), obj.color, index))
        questions.append(Question(SHAPE_QUESTION.format(color=obj.color), obj.shape, index))
    return Scene(seed=seed, image=Image.fromarray(array), objects=tuple(objects), questions=tuple(questions))


def sweep_examples(count: int, *, start: int = 0) -> list[dict[str, Any]]:
    """``count`` held-out scenes as sweep examples: image, one question each (colour and shape questions in turn),
    its answer, the queried object's mask, and ``asks_for`` (``"color"`` / ``"shape"``) to group by.

    Example:
        >>> rows = sweep_examples(3)
        >>> rows[0]["id"], rows[0]["prompt"], rows[0]["asks_for"]
        ('scene-0', 'What color is the square?', 'color')
    """
    rows = []
    for seed in range(start, start + count):
        if is_training_seed(seed):
            raise ValueError(f"seed {seed} is a training scene; sweep held-out scenes (below {TRAIN_SEED_START})")
        scene_ = scene(seed)
        question = scene_.questions[seed % len(scene_.questions)]
        rows.append(
            {
                "id": f"scene-{seed}",
                "image": scene_.image,
                "prompt": question.text,
                "answer": question.answer,
                "mask": scene_.objects[question.object_index].mask,
                "asks_for": "color" if question.text.startswith("What color") else "shape",
            }
        )
    return rows
