// Bundles the two pages into dist/: chat.html and console.html, and everything they
// load under dist/assets/, which the gateway embeds and serves as it is.
import { copyFile, mkdir, rm } from "node:fs/promises";
import * as esbuild from "esbuild";

const pages = ["chat", "console"];

await rm("dist", { recursive: true, force: true });
await esbuild.build({
  entryPoints: Object.fromEntries(pages.map((page) => [page, `src/${page}/${page}.ts`])),
  outdir: "dist/assets",
  bundle: true,
  format: "esm",
  target: ["chrome110", "firefox115", "safari16"],
  minify: true,
  logLevel: "warning",
});
await mkdir("dist", { recursive: true });
for (const page of pages) {
  await copyFile(`src/${page}/${page}.html`, `dist/${page}.html`);
}
