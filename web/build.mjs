// Build the page's JavaScript into xory/web/ (shipped with the Python package; `xory serve` needs no npm):
//   gradio-client.js  the Gradio JS client as one ES module (the page's, and any page of your own's, import)
//   app.js            the page (web/src/main.js), importing ./gradio-client.js
// index.html and style.css live in xory/web/ as they are. Usage: npm ci && npm run build (`npm run check` also
// fails when the committed files differ from a fresh build).
import { readFileSync } from "node:fs";
import { build } from "esbuild";

const out = new URL("../xory/web/", import.meta.url).pathname;
const about = (name) => {
  const p = JSON.parse(readFileSync(new URL(`node_modules/${name}/package.json`, import.meta.url)));
  return `${p.name} ${p.version} (${p.license})`;
};
const common = { bundle: true, format: "esm", platform: "browser", target: "es2020", minify: true, legalComments: "eof",
  logLevel: "info" };

await build({ ...common, entryPoints: ["src/gradio-client.js"], outfile: `${out}gradio-client.js`,
  banner: { js: `/* ${about("@gradio/client")} and ${about("fetch-event-stream")}, bundled by xory's web/build.mjs */` } });
await build({ ...common, entryPoints: ["src/main.js"], outfile: `${out}app.js`, external: ["./gradio-client.js"] });
