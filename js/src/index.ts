/** anywidget ESM entry: the bundle served as `_esm`; its CSS becomes `widget.css` (`_css`). */

import "./style.css";
import { isComparison, renderComparison, type ComparisonModel } from "./comparison";
import type { Model } from "./host/model";
import { isSweep, renderSweep, type SweepModel } from "./sweep";
import { initialize, render } from "./widget";

export { createStaticModel, mountStatic } from "./host/static-host";
export { mountComparisonStatic } from "./comparison";
export { mountSweepStatic } from "./sweep";
export { decodeEnvelope } from "./codec";

// One bundle for every widget: a ComparisonWidget's model says `kind: "comparison"`, a SweepWidget's `"sweep"`.
export default {
  initialize: ({ model }: { model: Model }): (() => void) =>
    isComparison(model) || isSweep(model) ? () => {} : initialize({ model }),
  render: ({ model, el }: { model: Model; el: HTMLElement }): (() => void) =>
    isSweep(model)
      ? renderSweep({ model: model as unknown as SweepModel, el })
      : isComparison(model)
        ? renderComparison({ model: model as unknown as ComparisonModel, el })
        : render({ model, el }),
};
