//! The plain JS upload worker (bench/upload-floor/worker.js) in Rust: read the body, parse it,
//! build the PostgREST rows of the first transaction's PUTs (`{id, ...op_data}`), serialize them
//! and send one upsert (`/forward`) or one atomic call (`/atomic`), read the answer. No session
//! check, no log line, no checks of tables, columns or ids: the floor of a Rust upload.
use serde::Deserialize;
use serde_json::{json, Map, Value};
use worker::{event, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response, Result};

#[derive(Deserialize)]
struct Upload {
    transactions: Vec<Transaction>,
}

#[derive(Deserialize)]
struct Transaction {
    crud: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    op: String,
    table: String,
    id: String,
    #[serde(default)]
    op_data: Map<String, Value>,
}

fn row(id: &str, data: Map<String, Value>) -> Value {
    let mut row = Map::new();
    row.insert("id".to_string(), Value::String(id.to_string()));
    row.extend(data);
    Value::Object(row)
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let atomic = req.path() == "/atomic";
    let upload: Upload = serde_json::from_str(&req.text().await?)?;
    let crud = upload.transactions.into_iter().next().map(|t| t.crud).unwrap_or_default();
    let payload = if atomic {
        let ops: Vec<Value> = crud
            .into_iter()
            .map(|e| json!({"op": e.op, "table": e.table, "data": row(&e.id, e.op_data), "id": e.id}))
            .collect();
        json!({ "ops": ops })
    } else {
        Value::Array(crud.into_iter().map(|e| row(&e.id, e.op_data)).collect())
    };
    let headers = Headers::new();
    headers.set("apikey", &env.var("SUPABASE_ANON_KEY")?.to_string())?;
    headers.set("Authorization", &req.headers().get("Authorization")?.unwrap_or_default())?;
    headers.set("Content-Type", "application/json")?;
    if !atomic {
        headers.set("Prefer", "resolution=merge-duplicates,return=minimal")?;
    }
    let target = if atomic { "rpc/powersync_apply_transaction" } else { "todos?on_conflict=id" };
    let url = format!("{}/rest/v1/{target}", env.var("SUPABASE_URL")?);
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(serde_json::to_string(&payload)?.into()));
    let mut answer = Fetch::Request(Request::new_with_init(&url, &init)?).send().await?;
    let status = answer.status_code();
    let text = answer.text().await?;
    Ok(Response::from_json(&json!({"status": status, "length": text.len()}))?
        .with_status(if (200..300).contains(&status) { 200 } else { 502 }))
}
