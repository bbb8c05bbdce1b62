// Builds the component into ../build (index.html, viewer.js, viewer.css): what Streamlit serves.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync, statSync } from "node:fs";

const out = new URL("../build/", import.meta.url).pathname;
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ["src/index.js"],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["chrome100", "firefox100", "safari15"],
  outfile: `${out}viewer.js`,
  legalComments: "linked",
  alias: { url: "./src/shims/url.js" },
  logLevel: "warning",
});
copyFileSync("src/viewer.css", `${out}viewer.css`);
copyFileSync("index.html", `${out}index.html`);
const size = statSync(`${out}viewer.js`).size;
console.log(`viewer.js: ${(size / 1024).toFixed(0)} KiB`);
if (size > 6 * 1024 * 1024) {
  console.error("the viewer bundle is over 6 MiB: check what esbuild pulled in");
  process.exit(1);
}
