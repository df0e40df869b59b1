// Bundles the two pages into dist/: chat.html and console.html, and everything they
// load under dist/assets/, which the gateway embeds and serves as it is. Both pages are
// one HTML shell (src/shared/page.html) that loads the page's own script and styles.
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
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
const shell = await readFile("src/shared/page.html", "utf8");
for (const page of pages) {
  await writeFile(`dist/${page}.html`, shell.replaceAll("{{page}}", page));
}
