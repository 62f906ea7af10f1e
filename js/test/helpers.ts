/** Test helpers: a tiny envelope encoder mirroring mmviz.widget.wire.encode. */

import type { Envelope } from "../src/codec";

export function prod(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Min–max quantise each slice over the trailing axes (after the first `scaleDims` axes). */
export function encodeUint8(values: ArrayLike<number>, shape: number[], scaleDims = shape.length - 1): Envelope {
  const nSlices = prod(shape.slice(0, scaleDims));
  const inner = prod(shape.slice(scaleDims));
  const data = new Uint8Array(values.length);
  const scale = new Float32Array(nSlices);
  const offset = new Float32Array(nSlices);
  for (let s = 0; s < nSlices; s++) {
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < inner; i++) {
      const v = values[s * inner + i]!;
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    if (inner === 0) lo = hi = 0;
    const sc = Math.fround((hi - lo) / 255);
    scale[s] = sc;
    offset[s] = lo;
    for (let i = 0; i < inner; i++) {
      const v = values[s * inner + i]!;
      data[s * inner + i] = sc > 0 ? Math.min(255, Math.max(0, Math.round((v - lo) / sc))) : 0;
    }
  }
  return {
    v: 1,
    dtype: "uint8",
    shape,
    scale_dims: scaleDims,
    data,
    scale: new Uint8Array(scale.buffer),
    offset: new Uint8Array(offset.buffer),
  };
}

export function encodeFloat32(values: ArrayLike<number>, shape: number[]): Envelope {
  return { v: 1, dtype: "float32", shape, data: new Uint8Array(Float32Array.from(values).buffer) };
}

/** `bytes` copied into a larger buffer at byte offset `at`, returned as a DataView sub-view. */
export function subView(bytes: Uint8Array, at: number, pad = 5): DataView {
  const big = new Uint8Array(at + bytes.length + pad).fill(0xee);
  big.set(bytes, at);
  return new DataView(big.buffer, at, bytes.length);
}

export function int32Bytes(xs: number[]): Uint8Array {
  return new Uint8Array(Int32Array.from(xs).buffer);
}

export function float32Bytes(xs: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(xs).buffer);
}

/** Deterministic pseudo-random numbers in [0, 1). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}
