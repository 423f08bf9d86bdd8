// The JavaScript upload worker with the worker's duties (bench/README.md, "The JavaScript
// workers"): bench/upload-floor/worker.js's /forward and /atomic (read the body, JSON.parse, build
// the rows, JSON.stringify, one request to PostgREST, read the answer) plus what a team that owns
// its uploads would add: the Supabase session verified with `jose` before anything is sent (HS256,
// the key imported once per isolate; the same claim checks as bench/js/token.js), an answer per
// transaction with the worker's default CORS headers, and one JSON log line per request.
//
//   POST /rls      one upsert `POST /rest/v1/todos?on_conflict=id` of the first transaction's PUTs
//   POST /atomic   one `POST /rest/v1/rpc/powersync_apply_transaction` {"ops":[{op, table, id, data}]}
//
// Configuration: SUPABASE_URL, SUPABASE_ANON_KEY, SUPABASE_JWT_SECRET (as the worker's).

import { jwtVerify } from "jose";

let hmacKey = null; // per isolate
// The CORS headers the worker sends on every answer with its default CORS_ALLOWED_ORIGINS (`*`).
const CORS = { "Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "X-Request-Id, Retry-After" };

function requestId(request) {
  const ray = request.headers.get("cf-ray");
  if (ray) return ray;
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function json(body, status, id) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", "X-Request-Id": id, ...CORS },
  });
}

export default {
  async fetch(request, env) {
    const started = Date.now();
    const id = requestId(request);
    const atomic = new URL(request.url).pathname === "/atomic";
    const log = { route: "upload", method: request.method, status: 200, code: null, request_id: id,
                  upload: { transactions: 0, entries: 0, write_mode: atomic ? "atomic" : "rls", success: 0, fatal: 0,
                            subrequests: 0 },
                  duration_ms: 0 };
    try {
      hmacKey ??= crypto.subtle.importKey("raw", new TextEncoder().encode(env.SUPABASE_JWT_SECRET),
                                          { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
      const authorization = request.headers.get("Authorization") || "";
      try {
        await jwtVerify(authorization.replace(/^Bearer\s+/i, ""), await hmacKey, {
          algorithms: ["HS256"], issuer: `${env.SUPABASE_URL}/auth/v1`, audience: "authenticated", clockTolerance: 30,
          requiredClaims: ["sub", "exp"],
        });
      } catch {
        log.status = 401;
        log.code = "invalid_session";
        return json({ error: "invalid session", code: "invalid_session", request_id: id }, 401, id);
      }
      let body;
      try {
        body = JSON.parse(await request.text());
      } catch {
        log.status = 400;
        log.code = "malformed_body";
        return json({ error: "the body is not JSON", code: "malformed_body", request_id: id }, 400, id);
      }
      const transaction = body.transactions[0];
      const crud = transaction.crud;
      const payload = atomic
        ? { ops: crud.map((e) => ({ op: e.op, table: e.table, id: e.id, data: { id: e.id, ...e.op_data } })) }
        : crud.map((e) => ({ id: e.id, ...e.op_data }));
      const headers = { apikey: env.SUPABASE_ANON_KEY, Authorization: authorization, "Content-Type": "application/json" };
      if (!atomic) headers.Prefer = "resolution=merge-duplicates,return=minimal";
      const target = atomic ? "rpc/powersync_apply_transaction" : "todos?on_conflict=id";
      const answer = await fetch(`${env.SUPABASE_URL}/rest/v1/${target}`, {
        method: "POST", headers, body: JSON.stringify(payload),
      });
      const answerText = await answer.text();
      const ok = answer.ok;
      // The atomic function answers {"applied": n, ...}; a 4xx/5xx is PostgREST's error.
      const applied = atomic && ok ? JSON.parse(answerText).applied : ok ? crud.length : 0;
      Object.assign(log.upload, { transactions: body.transactions.length, entries: crud.length, subrequests: 1,
                                  success: ok ? 1 : 0, fatal: ok ? 0 : 1, applied });
      return json({
        results: [{ transaction_id: transaction.transaction_id ?? null, status: ok ? "success" : "retryable" }],
        subrequests: 1,
        request_id: id,
      }, 200, id);
    } finally {
      log.duration_ms = Date.now() - started;
      console.log(JSON.stringify(log));
    }
  },
};
