// The floor for /powersync-token: a plain JS module worker that does nothing but sign a fixed
// RS256 payload with the same WebCrypto call the real worker uses (RSASSA-PKCS1-v1_5 + SHA-256,
// key imported from PKCS#8 once per isolate). No session check, no Rust/wasm, no logging: what
// is left is the platform's own cost of one request plus one native RSA-2048 signature.
//
//   GET /noop      -> "ok" without signing: the dev server's per-request floor (no crypto at all).
//   GET /health    -> the worker's `/health` job in JS: the route read from the URL, the request id,
//                     the same JSON body (built once per isolate), the same five headers (with the
//                     worker's default CORS, `*`) and the same log line. What answering `/health`
//                     costs a JS worker (informational; the target stays the bare no-op).
//   GET /sign-log  -> the signed token (as below) plus the one-line console.log JSON the real worker
//                     writes for a token request (route, method, status, request_id, duration_ms):
//                     the floor with the same observability as the worker (informational only; the
//                     official limit stays the log-free signature).
//   GET /sign-es256, /sign-eddsa
//                  -> the same with the P-256 key (ECDSA + SHA-256, ES256) or the Ed25519 key
//                     (EdDSA) in env.ES256_PRIVATE_KEY / env.EDDSA_PRIVATE_KEY: the signature cost
//                     of the other key types (informational; the limit stays RS256).
//   any other      -> {"token": "<header>.<claims>.<signature>"} signed with POWERSYNC_PRIVATE_KEY.
//
// Started by bench/run.py under `wrangler dev` with a throwaway config; env.POWERSYNC_PRIVATE_KEY
// is the same PKCS#8 PEM the real worker signs with (and the other two the ES256 / EdDSA workers').

const encoder = new TextEncoder();

function b64url(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// A payload shaped like the real token's (same claims, similar size).
const header = (alg) => b64url(encoder.encode(JSON.stringify({ alg, typ: "JWT", kid: "bench-sign-only" })));
const HEADER = header("RS256");
const CLAIMS = b64url(encoder.encode(JSON.stringify({
  sub: "11111111-1111-4111-8111-111111111111",
  aud: "https://test-instance.powersync.example",
  iat: 1767225600,
  exp: 1767254400,
})));
const SIGNING_INPUT_TEXT = `${HEADER}.${CLAIMS}`;
const SIGNING_INPUT = encoder.encode(SIGNING_INPUT_TEXT);

let keyPromise = null; // once per isolate

// The other key types: [env name, import parameters, sign parameters, signing input], the key
// imported once per isolate like the RS256 one.
const input = (alg) => `${header(alg)}.${CLAIMS}`;
const OTHER_KEYS = {
  "/sign-es256": ["ES256_PRIVATE_KEY", { name: "ECDSA", namedCurve: "P-256" }, { name: "ECDSA", hash: "SHA-256" }, input("ES256")],
  "/sign-eddsa": ["EDDSA_PRIVATE_KEY", { name: "Ed25519" }, { name: "Ed25519" }, input("EdDSA")],
};
const OTHER_INPUTS = Object.fromEntries(Object.entries(OTHER_KEYS).map(([p, v]) => [p, encoder.encode(v[3])]));
const otherKeyPromises = {};
let healthBody = null; // once per isolate, as the worker builds its /health answer

function pkcs8Der(pem) {
  const b64 = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  const bin = atob(b64);
  const der = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) der[i] = bin.charCodeAt(i);
  return der;
}

// 8 random bytes as 16 hex digits, like the worker's request_id when there is no cf-ray header.
function requestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += bytes[i].toString(16).padStart(2, "0");
  return s;
}

export default {
  async fetch(request, env) {
    const started = Date.now();
    const path = new URL(request.url).pathname;
    if (path === "/noop") {
      return new Response("ok");
    }
    if (path === "/health") {
      const id = request.headers.get("cf-ray") || requestId();
      healthBody ??= JSON.stringify({
        status: "ok", version: "0.1.0", session: { configured: true, problems: [] },
        powersync: { configured: true, problems: [] }, upload: { configured: true, problems: [] },
        files: { configured: true, problems: [] },
      });
      const response = new Response(healthBody, {
        headers: {
          "Content-Type": "application/json", "Cache-Control": "no-store", "X-Request-Id": id,
          "Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "X-Request-Id, Retry-After",
        },
      });
      console.log(JSON.stringify({ route: "health", method: request.method, status: 200, request_id: id,
                                   duration_ms: Date.now() - started }));
      return response;
    }
    if (path === "/noop-log") {
      // The no-op plus the one-line structured log the worker writes for every request (its
      // /health line): what a JS worker with the same observability pays per request.
      console.log(JSON.stringify({ route: "health", method: request.method, status: 200,
                                   request_id: requestId(), duration_ms: Date.now() - started }));
      return new Response("ok");
    }
    const other = OTHER_KEYS[path];
    if (other) {
      const [envName, importAlg, signAlg, text] = other;
      otherKeyPromises[path] ??= crypto.subtle.importKey("pkcs8", pkcs8Der(env[envName]), importAlg, false, ["sign"]);
      const otherKey = await otherKeyPromises[path];
      const sig = new Uint8Array(await crypto.subtle.sign(signAlg, otherKey, OTHER_INPUTS[path]));
      return new Response(JSON.stringify({ token: `${text}.${b64url(sig)}` }), {
        headers: { "Content-Type": "application/json", "Cache-Control": "no-store" },
      });
    }
    keyPromise ??= crypto.subtle.importKey(
      "pkcs8",
      pkcs8Der(env.POWERSYNC_PRIVATE_KEY),
      { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
      false,
      ["sign"],
    );
    const key = await keyPromise;
    const signature = new Uint8Array(await crypto.subtle.sign("RSASSA-PKCS1-v1_5", key, SIGNING_INPUT));
    if (path === "/sign-log") {
      // The same one-line structured log the real worker writes for a token request.
      console.log(JSON.stringify({ route: "token", method: request.method, status: 200,
                                   request_id: requestId(), duration_ms: Date.now() - started }));
    }
    return new Response(JSON.stringify({ token: `${SIGNING_INPUT_TEXT}.${b64url(signature)}` }), {
      headers: { "Content-Type": "application/json", "Cache-Control": "no-store" },
    });
  },
};
