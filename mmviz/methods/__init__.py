"""Methods: attention views, rollout, relevancy, gradients, IG, occlusion/RISE, logit lens, knockout, projections,
token activation maps, relative and gradient-weighted attention, image reliance per answer token.

Every method is one file named after it with one function. Map methods declare their spec with ``@method(...)``
(:mod:`mmviz.records.spec`) and are collected in :data:`CATALOGUE`, which ``Trace.compute(name)``, ``trace(...,
methods=[...])``, the widget and the plots use; a new method is its file plus one import line below. Maps of image
tokens come back as :class:`Map`; explanations are relative to a :class:`Target` (default: the log-probability of
each answer token).

Example:
    >>> trace = mmviz.trace(model, processor, image, "What color is the triangle?")   # doctest: +SKIP
    >>> mmviz.methods.relevancy(trace).row(trace.answer_start)                        # doctest: +SKIP
    >>> trace.compute("occlusion", window=4)                                           # doctest: +SKIP
"""

from mmviz.methods.ablation import ablate
from mmviz.methods.attention import attention, sink_positions
from mmviz.methods.common import BASELINES, Baseline, Effect
from mmviz.methods.grad_cam import grad_cam
from mmviz.methods.grad_weighted_attention import grad_weighted_attention
from mmviz.methods.gradient_x_input import gradient_x_input
from mmviz.methods.image_reliance import ImageReliance, image_dependent_targets, image_reliance
from mmviz.methods.image_share import ImageShare, image_share
from mmviz.methods.integrated_gradients import integrated_gradients
from mmviz.methods.knockout import knockout, knockout_map
from mmviz.methods.logit_lens import LogitLens, logit_lens, logit_lens_map
from mmviz.methods.occlusion import occlusion
from mmviz.methods.projection import Projection, projection
from mmviz.methods.relative_attention import relative_attention
from mmviz.methods.relevancy import relevancy
from mmviz.methods.rise import rise
from mmviz.methods.rollout import rollout
from mmviz.methods.tam import tam
from mmviz.methods.target import Target
from mmviz.records import CATALOGUE, Map, MethodSpec

__all__ = [
    "BASELINES",
    "CATALOGUE",
    "Baseline",
    "Effect",
    "ImageReliance",
    "ImageShare",
    "LogitLens",
    "Map",
    "MethodSpec",
    "Projection",
    "Target",
    "ablate",
    "attention",
    "grad_cam",
    "grad_weighted_attention",
    "gradient_x_input",
    "image_dependent_targets",
    "image_reliance",
    "image_share",
    "integrated_gradients",
    "knockout",
    "knockout_map",
    "logit_lens",
    "logit_lens_map",
    "occlusion",
    "projection",
    "relative_attention",
    "relevancy",
    "rise",
    "rollout",
    "sink_positions",
    "tam",
]
