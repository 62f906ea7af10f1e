// Bundle the widget for anywidget: src/index.ts -> ../mmviz/static/widget.js (+ widget.css).
// Usage: node build.mjs [--dev] [--watch]
import * as esbuild from "esbuild";
import { mkdirSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const outdir = join(here, "..", "mmviz", "static");
const dev = process.argv.includes("--dev");
const watch = process.argv.includes("--watch");

mkdirSync(outdir, { recursive: true });

/** @type {import("esbuild").BuildOptions} */
const options = {
  absWorkingDir: here,
  entryPoints: ["src/index.ts"],
  // The CSS imported by src/index.ts is emitted next to the outfile as widget.css.
  outfile: join(outdir, "widget.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  minify: !dev,
  sourcemap: dev ? "inline" : false,
  legalComments: "none",
  logLevel: "info",
  charset: "utf8",
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log(`watching src/ -> ${relative(process.cwd(), outdir)}/ (Ctrl-C to stop)`);
} else {
  await esbuild.build(options);
  for (const name of ["widget.js", "widget.css"]) {
    const size = statSync(join(outdir, name)).size;
    console.log(`${name}: ${(size / 1024).toFixed(1)} KiB`);
  }
}
