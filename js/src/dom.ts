/**
 * The one way the views build elements and listen to them: {@link h} creates an element with its class, text and
 * attributes; {@link Listeners} registers event listeners and keeps their disposers, so a view's `dispose()`
 * removes every listener it added. Text is only ever set with `textContent` (token strings come from the model).
 */

export interface ElementOptions {
  /** `className` (space-separated classes). */
  className?: string;
  /** `textContent`. */
  text?: string;
  /** `title` (the tooltip). */
  title?: string;
  /** `data-*` attributes, by their dataset name (`imageIndex` → `data-image-index`). */
  data?: Readonly<Record<string, string>>;
  /** Other attributes (`role`, `aria-label`, ...). */
  attrs?: Readonly<Record<string, string>>;
  hidden?: boolean;
}

/** A new `<tag>` with `options` applied and `children` appended. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  options: ElementOptions = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (options.className !== undefined) el.className = options.className;
  if (options.text !== undefined) el.textContent = options.text;
  if (options.title !== undefined) el.title = options.title;
  if (options.hidden !== undefined) el.hidden = options.hidden;
  for (const [key, value] of Object.entries(options.data ?? {})) el.dataset[key] = value;
  for (const [key, value] of Object.entries(options.attrs ?? {})) el.setAttribute(key, value);
  if (children.length > 0) el.append(...children);
  return el;
}

/** A `<button type="button">` (never a form submit). */
export function button(options: ElementOptions = {}, ...children: (Node | string)[]): HTMLButtonElement {
  const b = h("button", options, ...children);
  b.type = "button";
  return b;
}

/** An `<option>` with its value and text. */
export function option(value: string, text: string): HTMLOptionElement {
  const o = h("option", { text });
  o.value = value;
  return o;
}

type EventMap = HTMLElementEventMap & DocumentEventMap;

/** Event listeners of one owner (a view, a render), removed together by {@link dispose}. */
export class Listeners {
  private readonly disposers: (() => void)[] = [];

  /** Listen to `type` on `target` until {@link dispose}; returns the disposer of this one listener. */
  on<K extends keyof EventMap>(target: EventTarget, type: K, fn: (ev: EventMap[K]) => void): () => void {
    const listener = fn as EventListener;
    target.addEventListener(type, listener);
    return this.add(() => target.removeEventListener(type, listener));
  }

  /** Run `disposer` on {@link dispose} too (an unsubscribe, a timer); returns it. */
  add(disposer: () => void): () => void {
    this.disposers.push(disposer);
    return disposer;
  }

  /** Remove every listener and run every disposer (last added first). */
  dispose(): void {
    while (this.disposers.length > 0) this.disposers.pop()!();
  }
}

/**
 * Build a view in `el` now and again whenever the kernel bumps `revision`; a build that throws shows its message in
 * an alert instead of a broken view. Returns the cleanup anywidget's `render` returns.
 */
export function rebuildOnRevision(
  model: { on(name: string, callback: () => void): void; off(name: string, callback: () => void): void },
  el: HTMLElement,
  build: () => { dispose(): void } | null,
): () => void {
  let view: { dispose(): void } | null = null;
  const errorBox = h("div", { className: "mmviz-error", attrs: { role: "alert" }, hidden: true });
  el.append(errorBox);
  const rebuild = (): void => {
    view?.dispose();
    view = null;
    try {
      view = build();
      errorBox.hidden = true;
    } catch (err) {
      errorBox.textContent = `mmviz: ${err instanceof Error ? err.message : String(err)}`;
      errorBox.hidden = false;
    }
  };
  model.on("change:revision", rebuild);
  rebuild();
  return () => {
    model.off("change:revision", rebuild);
    view?.dispose();
    errorBox.remove();
  };
}
