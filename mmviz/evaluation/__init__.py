"""Evaluation: how far a map can be trusted. These sit above :func:`mmviz.trace` because they re-trace.

* :mod:`~mmviz.evaluation.faithfulness`: pointing game on token boxes, token-space deletion / insertion curves.
* :mod:`~mmviz.evaluation.comparison`: two traces compared on the original image's pixels (:func:`compare`).
* :mod:`~mmviz.evaluation.sanity`: the cascading weight-randomisation check (Adebayo et al.).
* :mod:`~mmviz.evaluation.shapes`: every map method scored on the shapes world, where the right region is known.
"""

from mmviz.evaluation.comparison import Comparison, compare
from mmviz.evaluation.faithfulness import Curves, deletion_insertion, pointing_game
from mmviz.evaluation.sanity import SanityResult, randomization_check
from mmviz.evaluation.shapes import Evaluation, MethodScore, evaluate

__all__ = [
    "Comparison",
    "Curves",
    "Evaluation",
    "MethodScore",
    "SanityResult",
    "compare",
    "deletion_insertion",
    "evaluate",
    "pointing_game",
    "randomization_check",
]
