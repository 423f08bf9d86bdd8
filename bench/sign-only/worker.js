// The floor for /powersync-token: a plain JS module worker that does nothing but sign a fixed
// RS256 payload with the same WebCrypto call the real worker uses (RSASSA-PKCS1-v1_5 + SHA-256,
// key imported from PKCS#8 once per isolate). No session check, no Rust/wasm, no logging: what
// is left is the platform's own cost of one request plus one native RSA-2048 signature.
//
//   GET /noop      -> "ok" without signing: the dev server's per-request floor (no crypto at all).
//   GET /sign-log  -> the signed token (as below) plus the one-line console.log JSON the real worker
//                     writes for a token request (route, method, status, request_id, duration_ms):
//                     the floor with the same observability as the worker (informational only; the
//                     official limit stays the log-free signature).
//   any other      -> {"token": "<header>.<claims>.<signature>"} signed with POWERSYNC_PRIVATE_KEY.
//
// Started by bench/run.py under `wrangler dev` with a throwaway config; env.POWERSYNC_PRIVATE_KEY
// is the same PKCS#8 PEM the real worker signs with.

const encoder = new TextEncoder();

function b64url(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// A payload shaped like the real token's (same claims, similar size).
const HEADER = b64url(encoder.encode(JSON.stringify({ alg: "RS256", typ: "JWT", kid: "bench-sign-only" })));
const CLAIMS = b64url(encoder.encode(JSON.stringify({
  sub: "11111111-1111-4111-8111-111111111111",
  aud: "https://test-instance.powersync.example",
  iat: 1767225600,
  exp: 1767254400,
})));
const SIGNING_INPUT_TEXT = `${HEADER}.${CLAIMS}`;
const SIGNING_INPUT = encoder.encode(SIGNING_INPUT_TEXT);

let keyPromise = null; // once per isolate

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
