"""The methods that produce image maps, by name: what the widget's method switcher offers and ``trace`` accepts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Literal

from mmviz.methods.map import Map

# The package re-exports each method's function under its module's name, so fetch the modules themselves.
(
    attention,
    grad_cam,
    gradient_x_input,
    integrated_gradients,
    knockout,
    logit_lens,
    occlusion,
    relevancy,
    rise,
    rollout,
) = (
    import_module(f"mmviz.methods.{name}")
    for name in (
        "attention",
        "grad_cam",
        "gradient_x_input",
        "integrated_gradients",
        "knockout",
        "logit_lens",
        "occlusion",
        "relevancy",
        "rise",
        "rollout",
    )
)

if TYPE_CHECKING:
    from mmviz.tracing import Trace


@dataclass(frozen=True)
class MethodSpec:
    """A map method with its defaults, and what a user should expect before running it.

    Attributes:
        name: the key in ``Trace.maps`` and the widget.
        compute: ``compute(trace) -> Map`` with default settings (every answer token).
        label: menu label.
        meaning: plain-language description of the map.
        signed: values can be negative.
        layered: one map per layer.
        cost: ``"instant"`` (from the captured forward), ``"fast"`` (a few passes), ``"slow"`` (many passes).
        targeted: ``compute`` also takes a :class:`~mmviz.methods.Target` (it explains a score, rather than
            describing where the model reads).
    """

    name: str
    compute: Callable[[Trace], Map]
    label: str
    meaning: str
    signed: bool
    layered: bool
    cost: Literal["instant", "fast", "slow"]
    targeted: bool = True

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "label": self.label,
            "meaning": self.meaning,
            "signed": self.signed,
            "layered": self.layered,
            "cost": self.cost,
        }


def _lens_map(trace: Trace) -> Map:
    return logit_lens.logit_lens(trace).map


def _attention_max(trace: Trace) -> Map:
    return attention.attention(trace, heads="max")


def _attention_without_sinks(trace: Trace) -> Map:
    return attention.attention(trace, heads="mean", mask_sinks=True)


MAX_MEANING = (
    "The largest attention any head of the layer pays from the token to each image token: a patch that one head "
    "reads strongly stands out even when the mean over heads hides it."
)
SINKS_MEANING = (
    "Attention (mean of heads) with the attention-sink tokens removed (the first token, and tokens whose residual "
    "norm is an outlier when hidden states were captured) and each row renormalised over what is left: sinks soak "
    "up attention regardless of content, so the rest shows more clearly."
)


CATALOGUE: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "attention", attention.attention, "Attention", attention.MEANING, False, True, "instant", targeted=False
        ),
        MethodSpec(
            "attention_max",
            _attention_max,
            "Attention (max over heads)",
            MAX_MEANING,
            False,
            True,
            "instant",
            targeted=False,
        ),
        MethodSpec(
            "attention_sinks_masked",
            _attention_without_sinks,
            "Attention, sinks masked",
            SINKS_MEANING,
            False,
            True,
            "instant",
            targeted=False,
        ),
        MethodSpec("rollout", rollout.rollout, rollout.LABEL, rollout.MEANING, False, False, "fast", targeted=False),
        MethodSpec("relevancy", relevancy.relevancy, relevancy.LABEL, relevancy.MEANING, False, False, "fast"),
        MethodSpec("grad_cam", grad_cam.grad_cam, grad_cam.LABEL, grad_cam.MEANING, False, True, "fast"),
        MethodSpec(
            "gradient_x_input",
            gradient_x_input.gradient_x_input,
            gradient_x_input.LABEL,
            gradient_x_input.MEANING,
            True,
            False,
            "fast",
        ),
        MethodSpec(
            "integrated_gradients",
            integrated_gradients.integrated_gradients,
            integrated_gradients.LABEL,
            integrated_gradients.MEANING,
            True,
            False,
            "slow",
        ),
        MethodSpec("occlusion", occlusion.occlusion, occlusion.LABEL, occlusion.MEANING, True, False, "slow"),
        MethodSpec("rise", rise.rise, rise.LABEL, rise.MEANING, True, False, "slow"),
        MethodSpec("knockout", knockout.knockout_map, knockout.LABEL, knockout.MEANING, True, False, "slow"),
        MethodSpec("logit_lens", _lens_map, logit_lens.LABEL, logit_lens.MEANING, False, True, "fast", targeted=False),
    )
}
