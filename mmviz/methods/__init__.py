"""Methods: attention views, rollout, relevancy, gradients, IG, occlusion/RISE, logit lens, knockout, projections.

Every method is one file named after it with one function. Maps of image tokens come back as :class:`Map`;
explanations are relative to a :class:`Target` (default: the log-probability of each answer token).

Example:
    >>> trace = mmviz.trace(model, processor, image, "What color is the triangle?")   # doctest: +SKIP
    >>> mmviz.methods.relevancy(trace).row(trace.answer_start)                        # doctest: +SKIP
"""

from mmviz.methods.ablation import ablate
from mmviz.methods.attention import attention, sink_positions
from mmviz.methods.catalogue import CATALOGUE, MethodSpec
from mmviz.methods.grad_cam import grad_cam
from mmviz.methods.gradient_x_input import gradient_x_input
from mmviz.methods.image_share import ImageShare, image_share
from mmviz.methods.integrated_gradients import integrated_gradients
from mmviz.methods.knockout import Effect, knockout, knockout_map
from mmviz.methods.logit_lens import LogitLens, logit_lens
from mmviz.methods.map import Map
from mmviz.methods.occlusion import occlusion
from mmviz.methods.projection import Projection, projection
from mmviz.methods.relevancy import relevancy
from mmviz.methods.rise import rise
from mmviz.methods.rollout import rollout
from mmviz.methods.sanity import SanityResult, randomization_check
from mmviz.methods.target import Target

MAP_METHODS = {name: spec.compute for name, spec in CATALOGUE.items()}
"""Methods that return a :class:`Map`, by the name ``mmviz.trace(..., methods=[...])`` and the widget use."""

__all__ = [
    "CATALOGUE",
    "MAP_METHODS",
    "Effect",
    "ImageShare",
    "LogitLens",
    "Map",
    "MethodSpec",
    "Projection",
    "SanityResult",
    "Target",
    "ablate",
    "attention",
    "grad_cam",
    "gradient_x_input",
    "image_share",
    "integrated_gradients",
    "knockout",
    "knockout_map",
    "logit_lens",
    "occlusion",
    "projection",
    "randomization_check",
    "relevancy",
    "rise",
    "rollout",
    "sink_positions",
]
