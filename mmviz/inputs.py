"""Normalise what a user passes in: images (PIL, numpy, path) and prompts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mmviz.errors import InputError

ImageLike = Image.Image | np.ndarray | str | os.PathLike
VideoLike = Sequence[ImageLike] | np.ndarray
"""Frames of a video: a list of images (PIL, arrays, paths) or a ``(T, H, W, 3)`` uint8 array."""

MAX_FRAMES = 256
"""The most frames :func:`load_video` accepts: every frame becomes tokens of ONE sequence (and a PNG in the trace);
sample a long video down first (e.g. ``frames[::k]``)."""


def load_image(image: ImageLike) -> Image.Image:
    """Return ``image`` as an RGB PIL image; the ORIGINAL pixels every map is drawn onto.

    Accepts a PIL image (any mode PIL can convert; transparency is composited on white), an ``H×W×3`` (or
    ``H×W``, ``H×W×4``) uint8 numpy array, or a path to an image file.

    Example:
        >>> load_image(np.zeros((4, 6, 3), dtype=np.uint8)).size
        (6, 4)
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image path {str(path)!r} does not exist; pass an existing file, a PIL image or an array")
        try:
            with Image.open(path) as opened:
                opened.load()
                return _to_rgb(opened)
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"cannot read {str(path)!r} as an image ({error}); pass a PNG/JPEG file") from None
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise InputError(f"image must be a PIL image, an H×W×3 uint8 numpy array or a path, not {type(image).__name__}")


def load_images(images: ImageLike | Sequence[ImageLike]) -> list[Image.Image]:
    """One image or a list/tuple of them (a multi-image prompt) as RGB PIL images, in order.

    Example:
        >>> [image.size for image in load_images([np.zeros((4, 6, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)])]
        [(6, 4), (2, 2)]
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("the image list is empty; pass at least one image")
        return [load_image(image) for image in images]
    return [load_image(images)]


def load_video(frames: VideoLike, *, max_frames: int = MAX_FRAMES) -> list[Image.Image]:
    """The frames of a video as RGB PIL images of one size, in order: the ORIGINAL frames every map is drawn on.

    Accepts a list or tuple of frames (PIL images, ``H×W×3`` uint8 arrays or paths) or one ``(T, H, W, 3)`` uint8
    array. Every frame is used as given (mmviz samples nothing: pass the frames you want analysed).

    Raises:
        InputError: no frames, more than ``max_frames``, frames of different sizes, or a frame that is not an image.

    Example:
        >>> [frame.size for frame in load_video(np.zeros((3, 4, 6, 3), np.uint8))]
        [(6, 4), (6, 4), (6, 4)]
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
            raise InputError(
                f"a video array must be (frames, height, width, 3) uint8, got shape {frames.shape}; pass a list of "
                f"frames for anything else"
            )
        items: list[ImageLike] = list(frames)
    elif isinstance(frames, (list, tuple)):
        items = list(frames)
    else:
        raise InputError(
            f"video must be a list of frames (PIL images, H×W×3 uint8 arrays or paths) or a (T, H, W, 3) uint8 "
            f"array, not {type(frames).__name__}"
        )
    if not items:
        raise InputError("the video has no frames; pass at least one frame")
    if len(items) > max_frames:
        raise InputError(
            f"the video has {len(items)} frames, more than the {max_frames} mmviz traces in one sequence; sample it "
            f"down first, e.g. video[::{-(-len(items) // max_frames)}]"
        )
    loaded = []
    for index, item in enumerate(items):
        try:
            loaded.append(load_image(item))
        except InputError as error:
            raise InputError(f"frame {index}: {error}") from None
    sizes = sorted({frame.size for frame in loaded})
    if len(sizes) > 1:
        odd = next(index for index, frame in enumerate(loaded) if frame.size != loaded[0].size)
        raise InputError(
            f"the frames have different sizes ({', '.join(f'{w}×{h}' for w, h in sizes[:4])}): frame 0 is "
            f"{loaded[0].width}×{loaded[0].height}, frame {odd} is {loaded[odd].width}×{loaded[odd].height}; resize "
            f"them to one size first"
        )
    return loaded


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.width < 1 or image.height < 1:
        raise InputError("image is empty (0 pixels); pass an image of at least 1×1 pixels")
    if image.mode == "RGB":
        return image.copy()
    if image.mode.startswith("I;16"):  # 16-bit grey: scale 0…65535 to 0…255 (convert("L") would clip to white)
        wide = np.asarray(image, dtype=np.float64)
        return _to_rgb(Image.fromarray(np.rint(wide / 257.0).astype(np.uint8), mode="L"))
    if image.mode in ("I", "F"):  # 32-bit integers or floats: no range to scale by
        kind = "floats" if image.mode == "F" else "32-bit integers"
        raise InputError(
            f"a PIL image of mode {image.mode!r} holds {kind} of unknown range; convert it to 8-bit first, e.g. "
            f"Image.fromarray((np.asarray(image) * 255).round().astype(np.uint8)) for values in [0, 1]"
        )
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise InputError(f"cannot convert a PIL image of mode {image.mode!r} to RGB ({error})") from None


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        hint = " (scale floats in [0, 1] with (a * 255).round().astype(np.uint8))" if array.dtype.kind == "f" else ""
        raise InputError(f"image array must have dtype uint8, not {array.dtype}{hint}")
    if array.ndim == 2:
        return _to_rgb(Image.fromarray(array, mode="L"))
    if array.ndim == 3 and array.shape[2] in (3, 4):
        if array.shape[2] == 4:
            return _to_rgb(Image.fromarray(np.ascontiguousarray(array), mode="RGBA"))
        return _to_rgb(Image.fromarray(np.ascontiguousarray(array), mode="RGB"))
    raise InputError(f"image array must be H×W×3 (RGB) uint8, got shape {array.shape}; channels go last")


def check_prompt(prompt: object) -> str:
    """Reject prompts that cannot be asked; return the prompt unchanged otherwise."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, not {type(prompt).__name__}")
    if not prompt.strip():
        raise InputError("prompt is empty; ask a question about the image, e.g. 'What is in the picture?'")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"the prompt holds a character UTF-8 cannot encode at position {error.start} (a lone surrogate, "
            f"{prompt[error.start]!r}); remove it or decode the text properly"
        ) from None
    return prompt
