// TypeScript of web/src for the tests, which Node 20 cannot run as it is: esbuild bundles
// a module in memory and it is imported from a data: URL.
import path from "node:path";
import * as esbuild from "esbuild";

const source = path.resolve(import.meta.dirname, "../src");

/** Imports `contents`, a TypeScript module whose imports resolve from web/src. */
export async function importBundled(contents) {
  const { outputFiles } = await esbuild.build({
    stdin: { contents, resolveDir: source, loader: "ts" },
    bundle: true,
    platform: "node",
    format: "esm",
    write: false,
    logLevel: "warning",
  });
  return import(`data:text/javascript;base64,${Buffer.from(outputFiles[0].contents).toString("base64")}`);
}
