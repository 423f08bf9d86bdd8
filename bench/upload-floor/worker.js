// Floors for the upload endpoint (bench/upload_profile.py): a plain JS module worker doing the
// platform's share of an upload, so the Rust worker's own share can be told apart.
//
//   POST /read      -> reads the request body (text), answers its length. No subrequest.
//   POST /parse     -> the same plus JSON.parse of the body. No subrequest.
//   POST /forward   -> reads the body, JSON.parse, builds the PostgREST rows of the first
//                      transaction's PUTs ({id, ...op_data}), JSON.stringify, and sends them as one
//                      upsert to SUPABASE_URL with the caller's Authorization, reads the answer:
//                      what the worker does for a batch of PUTs, done in JS (no session check,
//                      no log line, no conversion rules).
//   POST /atomic    -> the same, sent as the worker's atomic mode sends it: one
//                      `POST rpc/powersync_apply_transaction` with {"ops":[{op, table, id, data}]}
//                      (data = {id, ...op_data}, as the worker sends it), reads the answer.
//
// `make bench` reads the upload targets against /forward and /atomic (bench/README.md, "The
// JavaScript workers"); bench/js/upload.js is the same work plus the session check and log line.
//
// Configuration: SUPABASE_URL, SUPABASE_ANON_KEY (as the worker's).

export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    const text = await request.text();
    if (path === "/read") return new Response(String(text.length));
    const body = JSON.parse(text);
    if (path === "/parse") return new Response(String(body.transactions.length));
    const crud = body.transactions[0].crud;
    const atomic = path === "/atomic";
    const payload = atomic
      ? { ops: crud.map((e) => ({ op: e.op, table: e.table, id: e.id, data: { id: e.id, ...e.op_data } })) }
      : crud.map((e) => ({ id: e.id, ...e.op_data }));
    const headers = {
      apikey: env.SUPABASE_ANON_KEY,
      Authorization: request.headers.get("Authorization"),
      "Content-Type": "application/json",
    };
    if (!atomic) headers.Prefer = "resolution=merge-duplicates,return=minimal";
    const target = atomic ? "rpc/powersync_apply_transaction" : "todos?on_conflict=id";
    const answer = await fetch(`${env.SUPABASE_URL}/rest/v1/${target}`, {
      method: "POST",
      headers,
      body: JSON.stringify(payload),
    });
    const answerText = await answer.text();
    return new Response(JSON.stringify({ status: answer.status, length: answerText.length }), {
      status: answer.ok ? 200 : 502,
    });
  },
};
