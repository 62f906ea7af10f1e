/** anywidget ESM entry: the bundle served as `_esm`; its CSS becomes `widget.css` (`_css`). */

import "./style.css";
import { isComparison, renderComparison, type ComparisonModel } from "./comparison";
import type { Model } from "./host/model";
import { initialize, render } from "./widget";

export { createStaticModel, mountStatic } from "./host/static-host";
export { mountComparisonStatic } from "./comparison";
export { decodeEnvelope } from "./codec";

// One bundle for both widgets: a ComparisonWidget's model says `kind: "comparison"`.
export default {
  initialize: ({ model }: { model: Model }): (() => void) => (isComparison(model) ? () => {} : initialize({ model })),
  render: ({ model, el }: { model: Model; el: HTMLElement }): (() => void) =>
    isComparison(model) ? renderComparison({ model: model as unknown as ComparisonModel, el }) : render({ model, el }),
};
