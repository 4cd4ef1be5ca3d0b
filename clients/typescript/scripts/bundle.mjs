// Bundle the browser test page and the browser example with esbuild (ESM, for Chromium).
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";

const out = "build/browser";
await mkdir(out, { recursive: true });
const common = { bundle: true, format: "esm", platform: "browser", target: "es2022", sourcemap: true, external: ["ws"], logLevel: "warning" };
await build({ ...common, entryPoints: ["test/browser-entry.ts"], outfile: `${out}/tests.js` });
await build({ ...common, entryPoints: ["examples/browser/app.ts"], outfile: `${out}/example.js` });
await copyFile("test/browser.html", `${out}/index.html`);
await copyFile("examples/browser/index.html", `${out}/example.html`);
