// Cold starts for `make bench` (bench/README.md, "Cold start"): a worker whose Worker Loader
// binding (LOADER) runs each script under test in a NEW isolate per id, inside one long-lived
// workerd, so the first request of a fresh isolate can be measured many times over with the CPU
// counter of that one process.
//
//   <METHOD> /<script>/<id>/<path...>  -> the request (method, headers, body) sent to <path> of
//                                          <script> in the isolate named <id>: a new isolate the
//                                          first time an id is used, the same one afterwards.
//
// Scripts (bench/run.py copies them next to this file before starting it, as Text / Data
// modules): `rust` = build/index.js + index_bg.wasm (the worker as deployed), `noop` =
// bench/sign-only/worker.js, `token` = bench/js/token.js bundled by wrangler, `upload` =
// bench/upload-floor/worker.js, `wasm_floor`, `rust_floor` and `rust_upload` = bench/wasm-floor,
// bench/rust-floor and bench/rust-upload-floor as built (index.js + index_bg.wasm). Each script's env is the JSON in
// ENV_<SCRIPT> (a string var).

import RUST_JS from "./rust.js.txt";
import RUST_WASM from "./rust.wasm.bin";
import NOOP_JS from "./noop.js.txt";
import TOKEN_JS from "./token.js.txt";
import UPLOAD_JS from "./upload.js.txt";
import WASM_FLOOR_JS from "./wasm_floor.js.txt";
import WASM_FLOOR_WASM from "./wasm_floor.wasm.bin";
import RUST_FLOOR_JS from "./rust_floor.js.txt";
import RUST_FLOOR_WASM from "./rust_floor.wasm.bin";
import RUST_UPLOAD_JS from "./rust_upload.js.txt";
import RUST_UPLOAD_WASM from "./rust_upload.wasm.bin";

// `<script>_load`: the same script imported for its top level only (compile, instantiate,
// evaluate) behind a module that answers every request itself: a fresh isolate's first request
// to it costs the runtime's share plus the script's load, without the script's own request.
const LOAD_ONLY = 'import "./worker.js"; export default { fetch() { return new Response("loaded"); } };';

const SCRIPTS = {
  rust: { "index.js": { js: RUST_JS }, "index_bg.wasm": { wasm: RUST_WASM } },
  rust_load: { "index.js": { js: LOAD_ONLY }, "worker.js": { js: RUST_JS }, "index_bg.wasm": { wasm: RUST_WASM } },
  noop: { "index.js": { js: NOOP_JS } },
  token: { "index.js": { js: TOKEN_JS } },
  token_load: { "index.js": { js: LOAD_ONLY }, "worker.js": { js: TOKEN_JS } },
  upload: { "index.js": { js: UPLOAD_JS } },
  wasm_floor: { "index.js": { js: WASM_FLOOR_JS }, "index_bg.wasm": { wasm: WASM_FLOOR_WASM } },
  rust_floor: { "index.js": { js: RUST_FLOOR_JS }, "index_bg.wasm": { wasm: RUST_FLOOR_WASM } },
  rust_upload: { "index.js": { js: RUST_UPLOAD_JS }, "index_bg.wasm": { wasm: RUST_UPLOAD_WASM } },
};

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const [, script, id, ...rest] = url.pathname.split("/");
    const modules = SCRIPTS[script];
    if (!modules || !id) return new Response("usage: /<script>/<id>/<path>", { status: 404 });
    const worker = env.LOADER.get(`${script}:${id}`, async () => ({
      compatibilityDate: "2026-11-01",
      mainModule: "index.js",
      modules,
      env: JSON.parse(env[`ENV_${script.replace(/_load$/, "").toUpperCase()}`] || "{}"),
    }));
    const init = { method: request.method, headers: request.headers };
    if (request.method !== "GET" && request.method !== "HEAD") init.body = await request.arrayBuffer();
    return worker.getEntrypoint().fetch(new Request(`http://worker/${rest.join("/")}${url.search}`, init));
  },
};
