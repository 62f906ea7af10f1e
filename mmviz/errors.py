"""Errors mmviz raises on bad input. Each message says what to do about it."""

from __future__ import annotations


class MmvizError(Exception):
    """Base class of every error mmviz raises on purpose."""


class UnsupportedModelError(MmvizError, TypeError):
    """The model's family has no adapter. Lists the supported families and how to add one."""


class ProcessorMismatchError(MmvizError, ValueError):
    """The processor does not belong to the model (different image token, vocabulary or image geometry)."""


class InputError(MmvizError, ValueError):
    """The image or prompt cannot be used as given."""


class TraceFormatError(MmvizError, ValueError):
    """A trace file that cannot be read: damaged, hostile, or written by a newer mmviz. Says what is wrong."""
