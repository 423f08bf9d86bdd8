// The JavaScript token worker `make bench` compares `/powersync-token` with (bench/README.md,
// "The JavaScript workers"): what a competent team would write in an afternoon with `jose`.
//
//   GET /powersync-token   Authorization: Bearer <Supabase session>
//     -> 200 {"token","powersync_url","endpoint","expires_at","user_id"}, the worker's shape
//        (docs/token.md), Cache-Control: no-store, X-Request-Id, the worker's default CORS headers;
//        401 {"error","code"} otherwise.
//   GET /noop              -> "ok": the runtime's floor for this script (cold start).
//
// The same checks as the worker's session verification (src/session.rs): the signature (HS256
// with SUPABASE_JWT_SECRET, or ES256 through SUPABASE_JWKS_URL, fetched once and cached per
// isolate by jose's createRemoteJWKSet), `exp` / `nbf` / `iat` with 30 s leeway, `aud` =
// authenticated, `iss` = SUPABASE_URL/auth/v1, a `sub`. The same claims (sub, aud = POWERSYNC_URL,
// iat, exp = iat + 8 h) and header ({alg, typ, kid}), signed with WebCrypto by the key in
// POWERSYNC_PRIVATE_KEY (PKCS#8 PEM) of type POWERSYNC_ALG (RS256, ES256 or EdDSA), imported once
// per isolate, as is the HMAC key. One JSON log line per request (route, method, status, code,
// issuer, session_alg, signing_alg, request_id, duration_ms).

import { base64url, createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from "jose";

const TTL_SECONDS = 8 * 3600;
const LEEWAY_SECONDS = 30;
const SIGNING = {
  RS256: [{ name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, { name: "RSASSA-PKCS1-v1_5" }],
  ES256: [{ name: "ECDSA", namedCurve: "P-256" }, { name: "ECDSA", hash: "SHA-256" }],
  EdDSA: [{ name: "Ed25519" }, { name: "Ed25519" }],
};
const encoder = new TextEncoder();
// The CORS headers the worker sends on every answer with its default CORS_ALLOWED_ORIGINS (`*`):
// web apps (Flutter web among them) read the token from another origin.
const CORS = { "Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "X-Request-Id, Retry-After" };

// Per isolate: the imported keys and the JWKS (jose caches the fetched key set).
let isolate = null;

function setup(env) {
  const alg = env.POWERSYNC_ALG || "RS256";
  const der = Uint8Array.from(atob(env.POWERSYNC_PRIVATE_KEY.replace(/-----[^-]+-----|\s+/g, "")), (c) => c.charCodeAt(0));
  return {
    alg,
    signAlg: SIGNING[alg][1],
    signingKey: crypto.subtle.importKey("pkcs8", der, SIGNING[alg][0], false, ["sign"]),
    hmacKey: crypto.subtle.importKey("raw", encoder.encode(env.SUPABASE_JWT_SECRET), { name: "HMAC", hash: "SHA-256" },
                                     false, ["verify"]),
    jwks: createRemoteJWKSet(new URL(env.SUPABASE_JWKS_URL)),
    header: base64url.encode(JSON.stringify({ alg, typ: "JWT", kid: env.POWERSYNC_KEY_ID })),
    verifyOptions: { issuer: `${env.SUPABASE_URL}/auth/v1`, audience: "authenticated", clockTolerance: LEEWAY_SECONDS,
                     requiredClaims: ["sub", "exp"] },
  };
}

function requestId(request) {
  const ray = request.headers.get("cf-ray");
  if (ray) return ray;
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function json(body, status, id) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", "Cache-Control": "no-store", "X-Request-Id": id, ...CORS },
  });
}

export default {
  async fetch(request, env) {
    const started = Date.now();
    const path = new URL(request.url).pathname;
    if (path === "/noop") return new Response("ok");
    const id = requestId(request);
    const log = { route: "token", method: request.method, status: 200, code: null, issuer: null, session_alg: null,
                  signing_alg: null, request_id: id, duration_ms: 0 };
    let response;
    try {
      isolate ??= setup(env);
      const session = (request.headers.get("Authorization") || "").replace(/^Bearer\s+/i, "");
      let payload;
      try {
        const { alg } = decodeProtectedHeader(session);
        const key = alg === "HS256" ? await isolate.hmacKey : alg === "ES256" ? isolate.jwks : null;
        if (!key) throw new Error(`algorithm not allowed: ${alg}`);
        ({ payload } = await jwtVerify(session, key, { ...isolate.verifyOptions, algorithms: [alg] }));
        log.issuer = "supabase";
        log.session_alg = alg;
      } catch (e) {
        log.status = 401;
        log.code = "invalid_session";
        response = json({ error: "invalid session", code: "invalid_session", request_id: id }, 401, id);
        return response;
      }
      const iat = Math.floor(Date.now() / 1000);
      const exp = iat + TTL_SECONDS;
      const claims = base64url.encode(JSON.stringify({ sub: payload.sub, aud: env.POWERSYNC_URL, iat, exp }));
      const input = `${isolate.header}.${claims}`;
      const signature = await crypto.subtle.sign(isolate.signAlg, await isolate.signingKey, encoder.encode(input));
      log.signing_alg = isolate.alg;
      response = json({
        token: `${input}.${base64url.encode(new Uint8Array(signature))}`,
        powersync_url: env.POWERSYNC_URL,
        endpoint: env.POWERSYNC_URL,
        expires_at: new Date(exp * 1000).toISOString(),
        user_id: payload.sub,
      }, 200, id);
      return response;
    } finally {
      log.duration_ms = Date.now() - started;
      console.log(JSON.stringify(log));
    }
  },
};
