"""Bokeh analysis plots. Each function returns a bokeh layout or figure; show it with ``bokeh.io.show``.

Example:
    >>> from bokeh.io import show
    >>> show(mmviz.plots.image_share(trace))                       # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from bokeh.layouts import row
from bokeh.models import Legend
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from mmviz.methods import image_share as compute_image_share

if TYPE_CHECKING:
    from mmviz.tracing import Trace
    from mmviz.zoo.evaluate import Evaluation


def faithfulness_curves(result: Evaluation) -> Any:
    """Mean deletion (lower is better) and insertion (higher is better) curves of every evaluated method.

    Example:
        >>> show(faithfulness_curves(mmviz.zoo.evaluate.evaluate(model, processor, scenes=20)))   # doctest: +SKIP
    """
    panels = []
    for title, index in (("Deletion: top tokens blurred (lower is better)", 1), ("Insertion (higher is better)", 2)):
        plot = figure(
            title=title, width=460, height=340, x_axis_label="fraction of image tokens", y_axis_label="p / p clean"
        )
        items = []
        for colour, score in zip(Category10_10 * 2, result.scores.values(), strict=False):
            curves = score.mean_curves()
            dash = "dashed" if score.method.startswith("random") else "solid"
            line = plot.line(curves[0], curves[index], color=colour, line_width=2, line_dash=dash)
            items.append((score.method, [line]))
        plot.add_layout(Legend(items=items, label_text_font_size="8pt", click_policy="hide"), "right")
        panels.append(plot)
    return row(*panels)


def image_share(trace: Trace) -> Any:
    """Per-layer share of attention mass on the first token, image, prompt and answer (answer rows).

    Example:
        >>> show(image_share(trace))                                   # doctest: +SKIP
    """
    share = compute_image_share(trace, rows="answer")
    plot = figure(title="Where the answer's attention goes", width=520, height=320, x_axis_label="layer")
    plot.yaxis.axis_label = "share of attention"
    for colour, (name, values) in zip(Category10_10, share.groups.items(), strict=False):
        plot.line(np.asarray(share.layers), values, legend_label=name, color=colour, line_width=2)
    plot.legend.click_policy = "hide"
    return plot
