/** anywidget ESM entry: the bundle served as `_esm`; its CSS becomes `widget.css` (`_css`). */

import "./style.css";
import { initialize, render } from "./widget";

export { createStaticModel, mountStatic } from "./host/static-host";
export { decodeEnvelope } from "./codec";

export default { initialize, render };
