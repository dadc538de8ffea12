// Bundles the console's page into dist/ (served by `popshift console`): no CDN at run time.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  sourcemap: false,
  format: "iife",
  target: ["chrome110", "firefox110", "safari16"],
  loader: { ".json": "json" },
  outfile: "dist/console.js",
  logLevel: "info",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/console.css", "dist/console.css");
