/** Mounting the real widget (initialize + render) into happy-dom's document, for the DOM tests. */

import { vi } from "vitest";
import type { StaticModel } from "../src/host/static-host";
import { initialize, render, type RenderOptions } from "../src/widget";

export interface Mounted {
  el: HTMLElement;
  /** The first element under the widget matching `sel`; throws when there is none. */
  q: <T extends Element = HTMLElement>(sel: string) => T;
  root: HTMLElement;
  /** Runs the widget's cleanups and removes its element. */
  unmount: () => void;
}

export function mountWidget(model: StaticModel, options: RenderOptions = {}): Mounted {
  // happy-dom cannot decode PNGs (real Chromium does, tests/browser/): without a decoder the photo stays a placeholder.
  vi.stubGlobal("createImageBitmap", undefined);
  const el = document.createElement("div");
  document.body.append(el);
  const endInit = initialize({ model });
  const end = render({ model, el }, options);
  const q = <T extends Element = HTMLElement>(sel: string): T => {
    const found = el.querySelector<T>(sel);
    if (!found) throw new Error(`no ${sel}`);
    return found;
  };
  const unmount = () => {
    end();
    endInit();
    el.remove();
  };
  return { el, q, root: q(".mmviz-root"), unmount };
}
