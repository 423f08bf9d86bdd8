//! The Workers adapter (wasm32 only): turns the runtime's requests into [`IncomingRequest`]s and
//! answers into its responses (one call each way), executes upstream requests with `fetch`, signs
//! with WebCrypto, and writes the log line and the data point.
//! Everything it decides is decided in [`crate::app`]; this file only does I/O.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use js_sys::{Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::{console_log, event, ByteStream, Context, Delay, Env, Request};

use crate::app::{App, BodyError, IncomingRequest, RequestBody, RequestLog};
use crate::config::Config;
use crate::http::{HttpRequest, HttpResponse, Resume, Transport, TransportError};
use crate::keys::{KeyKind, SigningKey};
use crate::metrics;
use crate::session::{SessionError, SignatureCheck, SignatureVerifier};
use crate::token::TokenSigner;

thread_local! {
    /// Parsed once per isolate: configuration, keys and the JWKS cache.
    static APP: RefCell<Option<Rc<App>>> = const { RefCell::new(None) };
    /// The WebCrypto signing key, imported once per isolate, and its sign parameters.
    static CRYPTO_KEY: RefCell<Option<(web_sys::CryptoKey, Object)>> = const { RefCell::new(None) };
    /// `crypto.subtle`, looked up once.
    static SUBTLE: RefCell<Option<web_sys::SubtleCrypto>> = const { RefCell::new(None) };
    /// WebCrypto import and verify parameters per session algorithm, built once.
    static SESSION_ALGORITHMS: RefCell<HashMap<jsonwebtoken::Algorithm, (Object, Object)>> = RefCell::new(HashMap::new());
    /// WebCrypto keys for the project's JWKS keys, imported once per key.
    static SESSION_KEYS: RefCell<HashMap<String, web_sys::CryptoKey>> = RefCell::new(HashMap::new());
}

fn app(env: &Env) -> Rc<App> {
    APP.with(|cell| {
        cell.borrow_mut()
            .get_or_insert_with(|| {
                let config = Config::from_lookup(&|name| {
                    env.secret(name).map(|s| s.to_string()).or_else(|_| env.var(name).map(|v| v.to_string())).ok()
                });
                for problem in &config.problems {
                    console_log!(
                        "{}",
                        serde_json::json!({"event": "config_problem", "name": problem.name, "message": problem.message})
                    );
                }
                Rc::new(App::new(config))
            })
            .clone()
    })
}

#[wasm_bindgen(inline_js = r#"
function headLinesOf(headers) {
  let lines = "";
  for (const [name, value] of headers) lines += name + "\n" + value + "\n";
  return lines;
}
export function requestHead(request) {
  return request.method + "\n" + request.url + "\n" + headLinesOf(request.headers);
}
function headersOf(headLines) {
  const headers = new Headers();
  const parts = headLines.split("\n");
  for (let i = 0; i + 1 < parts.length; i += 2) headers.append(parts[i], parts[i + 1]);
  return headers;
}
export function respond(status, headLines, body) {
  return new Response(body.length ? body.slice() : null, { status, headers: headersOf(headLines) });
}
export function send(url, method, headLines, body, hasBody, timeoutMs) {
  const headers = headersOf(headLines);
  const controller = new AbortController();
  const init = { method, headers, signal: controller.signal, redirect: "manual" };
  if (hasBody) init.body = body.slice();
  const timer = setTimeout(() => controller.abort(new DOMException("no answer in time", "TimeoutError")), timeoutMs);
  return fetch(url, init).finally(() => clearTimeout(timer));
}
export function responseHead(response) {
  return response.status + "\n" + headLinesOf(response.headers);
}
export function writeDataPoint(dataset, point) {
  if (typeof dataset.writeDataPoint !== "function") throw new Error("METRICS is not an Analytics Engine dataset");
  dataset.writeDataPoint(JSON.parse(point));
}
"#)]
extern "C" {
    /// The request's method, URL and headers in one string (`method\nurl\n` then `name\nvalue\n`
    /// per header): one call and one string instead of a call or two per header. Neither a
    /// method, a serialized URL, a header name nor a header value can contain a line feed.
    #[wasm_bindgen(js_name = requestHead)]
    fn request_head(request: &web_sys::Request) -> String;
    /// The answer in one call: status, headers as `name\nvalue\n` lines, body bytes (copied).
    #[wasm_bindgen(js_name = respond)]
    fn respond(status: u16, head_lines: &str, body: &[u8]) -> web_sys::Response;
    /// `fetch(url, {method, headers, body, signal, redirect: "manual"})` in one call: the headers
    /// as `name\nvalue\n` lines ([`crate::http::head_lines`]), the body's bytes copied when
    /// `has_body`, aborted with a `TimeoutError` when no answer's head arrived within
    /// `timeout_ms` (the body is read after that without it). A request the runtime refuses (a
    /// bad URL, a bad header) is an `Err`, never thrown through wasm. Redirects are answered,
    /// never followed: fetch re-sends a redirected POST (301, 302) or any redirected request
    /// (303) as a GET without its body, whose 200 would have read as a write applied.
    #[wasm_bindgen(js_name = send, catch)]
    fn fetch_in_one_call(
        url: &str,
        method: &str,
        head_lines: &str,
        body: &[u8],
        has_body: bool,
        timeout_ms: f64,
    ) -> Result<js_sys::Promise, JsValue>;
    /// An answer's status and headers in one string: `status\n`, then `name\nvalue\n` per header
    /// (a call and two strings per header before).
    #[wasm_bindgen(js_name = responseHead)]
    fn response_head(response: &web_sys::Response) -> String;
    /// `dataset.writeDataPoint(JSON.parse(point))`: the point in one call and one string (with
    /// its arrays built by calls from wasm, a point took about 35 calls).
    #[wasm_bindgen(js_name = writeDataPoint, catch)]
    fn write_point(dataset: &JsValue, point: &str) -> Result<(), JsValue>;
}

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> worker::Result<web_sys::Response> {
    let started = js_sys::Date::now();
    let app = app(&env);
    let incoming = IncomingRequest::from_head(&request_head(&req));
    let request_id = request_id(&incoming);
    let declared = incoming.header("content-length").and_then(|n| n.trim().parse::<usize>().ok());
    // Not read here: the app reads it only for an upload whose session is verified.
    let body = StreamBody::new(req, declared);
    let transport = FetchTransport { timeout: Duration::from_millis(app.config.upstream_timeout_ms) };
    let now = (started / 1000.0) as u64;
    let (response, log) = app.handle(&incoming, body, &transport, &WebCrypto, now, &request_id).await;
    let mut log = RequestLog { request_id, duration_ms: Some((js_sys::Date::now() - started).max(0.0) as u64), ..log };
    // The metric comes from the log line itself: one record, two outlets.
    if let Err(e) = write_data_point(&env, &log) {
        log.metrics_error = Some(e);
    }
    web_sys::console::log_1(&JsValue::from_str(&serde_json::to_string(&log).unwrap_or_default()));
    // The answer's headers hold no line feed: their values are the worker's own or come from the
    // request's head, which is read split at line feeds.
    let head = crate::http::head_lines(&response.headers).unwrap_or_default();
    Ok(respond(response.status, &head, response.body.as_bytes()))
}

/// Writes the data point of `log` to the Analytics Engine dataset bound as [`metrics::BINDING`];
/// nothing (not even the point is built) when the binding is absent. `writeDataPoint` returns at
/// once (the runtime sends it after the response); it throws only for a malformed point.
fn write_data_point(env: &Env, log: &RequestLog) -> Result<(), String> {
    let dataset = Reflect::get(env.as_ref(), &JsValue::from_str(metrics::BINDING)).map_err(describe)?;
    if dataset.is_undefined() || dataset.is_null() {
        return Ok(());
    }
    write_point(&dataset, &point_json(log)).map_err(describe)
}

/// The data point of `log` as JSON. A function of its own (not inlined into the check above), so
/// that an isolate without the binding never compiles it (docs/performance.md, "Cold start").
#[inline(never)]
fn point_json(log: &RequestLog) -> String {
    let point = metrics::data_point(&serde_json::to_value(log).unwrap_or_default());
    serde_json::to_string(&point).unwrap_or_default()
}

/// Cloudflare's `cf-ray` when present and shaped like one (ties our log to Cloudflare's), else
/// random: where no Cloudflare edge sets it, the caller could put any text there.
fn request_id(req: &IncomingRequest) -> String {
    if let Some(ray) = req.header("cf-ray").filter(|ray| crate::http::is_ray(ray)) {
        return ray.to_string();
    }
    let mut bytes = [0u8; 8];
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request's body, read only when the app asks for it. A body with a `Content-Length` within
/// the limit is read whole in one piece; one without (chunked) is read chunk by chunk, and reading
/// stops as soon as more than the limit has arrived (chunked bodies have no `Content-Length` to
/// refuse them by); dropping the stream then cancels it, so the rest is never buffered.
///
/// A body that is never read: with a `Content-Length`, its stream is not taken, so workerd drains
/// it after the answer and a client still sending (a refused 413, a 401) reads its answer instead
/// of a reset connection; without one (chunked, possibly endless), the stream is taken at once and
/// cancelled when dropped, so the answer never waits for the client to finish.
struct StreamBody {
    source: BodySource,
    declared: Option<usize>,
}

enum BodySource {
    /// Still the runtime's request: converted to the `worker` crate's only when read.
    Untaken(web_sys::Request),
    Taken(Option<ByteStream>),
}

impl StreamBody {
    fn new(request: web_sys::Request, declared: Option<usize>) -> StreamBody {
        let source = match declared {
            Some(_) => BodySource::Untaken(request),
            // No body at all (a GET, a HEAD, most token requests): nothing to take, and the
            // `worker` crate's `Request` (method, URL, headers and `cf` copied) is not made.
            None if request.body().is_none() => BodySource::Taken(None),
            None => BodySource::Taken(Request::from(request).stream().ok()),
        };
        StreamBody { source, declared }
    }
}

impl RequestBody for StreamBody {
    async fn read(self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let stream = match self.source {
            // A declared length within the limit (the app refused a larger one unread): the
            // body is exactly that long, so it is taken whole, in one copy into wasm memory,
            // rather than chunk by chunk (a promise and two copies per chunk).
            BodySource::Untaken(request) if self.declared.is_some_and(|n| n <= limit) => {
                let bytes = whole_body(&request).await.map_err(BodyError::Unreadable)?;
                if bytes.len() > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                return Ok(bytes);
            }
            BodySource::Untaken(request) => Request::from(request).stream().ok(),
            BodySource::Taken(stream) => stream,
        };
        let Some(mut stream) = stream else { return Ok(Vec::new()) };
        let mut bytes = Vec::with_capacity(self.declared.unwrap_or(0).min(limit));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
            if bytes.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// A body in one piece: `arrayBuffer()`, then one copy into wasm memory. Straight through web-sys:
/// the `worker` crate's `Request` would first copy the method, the URL, the headers and the `cf`
/// object (a deep clone in workerd), none of which is read here.
async fn whole_body(request: &web_sys::Request) -> Result<Vec<u8>, String> {
    let buffer = JsFuture::from(request.array_buffer().map_err(describe)?).await.map_err(describe)?;
    Ok(js_sys::Uint8Array::new(&buffer).to_vec())
}

struct FetchTransport {
    timeout: Duration,
}

impl Transport for FetchTransport {
    /// The runtime's clock (`Date.now()`, which workerd moves on at I/O: an upload's time is
    /// its upstream requests').
    fn now_ms(&self) -> u64 {
        js_sys::Date::now().max(0.0) as u64
    }

    /// One `fetch(url, init)` call, as a JS worker makes it, with the request's head and body
    /// handed over in one call from wasm ([`fetch_in_one_call`]) and the answer's head read in
    /// one ([`response_head`]). (Through workers-rs it was `fetch(new Request(url, init),
    /// {signal})`, which builds the request twice, and a call or two per header each way.)
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        let failed = |message: String| TransportError::not_sent(message);
        let head = crate::http::head_lines(&request.headers)
            .map_err(|name| failed(format!("bad header {name}: it holds a line feed")))?;
        let body = request.body.as_deref().unwrap_or_default();
        let promise = fetch_in_one_call(
            &request.url,
            request.method.as_str(),
            &head,
            body.as_bytes(),
            request.body.is_some(),
            self.timeout.as_millis() as f64,
        )
        .map_err(|e| failed(format!("bad request: {}", describe(e))))?;
        // No status line arrived: refused, reset, "Network connection lost" (a pooled connection
        // the upstream had closed; the core sends such a request again at once), or the timeout.
        let answer = JsFuture::from(promise).await.map_err(|e| {
            if Reflect::get(&e, &"name".into()).ok().and_then(|n| n.as_string()).as_deref() == Some("TimeoutError") {
                TransportError::timed_out(format!("no answer within {} ms", self.timeout.as_millis()))
            } else {
                TransportError::no_answer(describe(e))
            }
        })?;
        let response: web_sys::Response = answer.unchecked_into();
        let cut = |e: JsValue| TransportError::answer_cut(format!("reading body: {}", describe(e)));
        let body = JsFuture::from(response.text().map_err(cut)?).await.map_err(cut)?.as_string().unwrap_or_default();
        Ok(HttpResponse::from_head(&response_head(&response), body))
    }

    /// A promise created by the paused request itself, resolved by the fetching one: workerd
    /// runs a promise's continuations in the request that created it, so the paused request
    /// goes on in its own context (a task woken directly would go on in the fetching request's,
    /// and be cancelled when that one ends). The timer keeps the paused request alive.
    fn pause(&self, max: Duration) -> (impl std::future::Future<Output = bool>, Resume) {
        let mut resolve = None;
        let promise = js_sys::Promise::new(&mut |done, _| resolve = Some(done));
        let resume: Resume = Box::new(move || {
            if let Some(done) = resolve {
                let _ = done.call0(&JsValue::UNDEFINED);
            }
        });
        let pause = async move {
            match select(JsFuture::from(promise), Delay::from(max)).await {
                Either::Left(_) => true,
                Either::Right(_) => false,
            }
        };
        (pause, resume)
    }
}

/// The platform's WebCrypto: signs PowerSync tokens (RS256: RSASSA-PKCS1-v1_5 + SHA-256; ES256:
/// ECDSA P-256 + SHA-256, whose `r || s` output is the JWS form; EdDSA: Ed25519) and verifies
/// ES256/RS256 session signatures at native speed; no private-key or curve arithmetic runs in wasm
/// on the request path.
struct WebCrypto;

/// The runtime's `crypto.subtle`, looked up once per isolate.
fn subtle() -> Result<web_sys::SubtleCrypto, String> {
    if let Some(subtle) = SUBTLE.with(|s| s.borrow().clone()) {
        return Ok(subtle);
    }
    let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    let subtle = scope.crypto().map_err(|_| "no crypto in this runtime".to_string())?.subtle();
    SUBTLE.with(|s| *s.borrow_mut() = Some(subtle.clone()));
    Ok(subtle)
}

fn describe(e: JsValue) -> String {
    e.as_string().or_else(|| js_sys::Error::from(e).message().as_string()).unwrap_or_else(|| "unknown error".into())
}

/// The WebCrypto algorithm for the signing key: import parameters and sign parameters.
fn signing_algorithm(kind: KeyKind) -> Result<(Object, Object), String> {
    let sha256 = JsValue::from_str("SHA-256");
    match kind {
        KeyKind::Rs256 => {
            let rsa = object(&[("name", &"RSASSA-PKCS1-v1_5".into()), ("hash", &sha256)])?;
            Ok((rsa.clone(), rsa))
        }
        KeyKind::Es256 => Ok((
            object(&[("name", &"ECDSA".into()), ("namedCurve", &"P-256".into())])?,
            object(&[("name", &"ECDSA".into()), ("hash", &sha256)])?,
        )),
        KeyKind::EdDsa => {
            let ed = object(&[("name", &"Ed25519".into())])?;
            Ok((ed.clone(), ed))
        }
    }
}

/// The signing key, imported from PKCS#8 once per isolate, with its sign parameters.
async fn crypto_key(key: &SigningKey) -> Result<(web_sys::CryptoKey, Object), String> {
    if let Some(cached) = CRYPTO_KEY.with(|c| c.borrow().clone()) {
        return Ok(cached);
    }
    let (import, sign) = signing_algorithm(key.kind())?;
    let der = Uint8Array::from(key.pkcs8_der().as_slice());
    let usages = js_sys::Array::of1(&"sign".into());
    let promise = subtle()?.import_key_with_object("pkcs8", &der, &import, false, &usages).map_err(describe)?;
    let imported: web_sys::CryptoKey = JsFuture::from(promise).await.map_err(describe)?.unchecked_into();
    CRYPTO_KEY.with(|c| *c.borrow_mut() = Some((imported.clone(), sign.clone())));
    Ok((imported, sign))
}

impl TokenSigner for WebCrypto {
    async fn sign(&self, key: &SigningKey, signing_input: &[u8]) -> Result<String, String> {
        use base64::Engine;
        let (crypto_key, algorithm) = crypto_key(key).await.map_err(|e| format!("WebCrypto importKey failed: {e}"))?;
        let promise =
            subtle()?.sign_with_object_and_u8_array(&algorithm, &crypto_key, signing_input).map_err(describe)?;
        let signature = JsFuture::from(promise).await.map_err(|e| format!("WebCrypto sign failed: {}", describe(e)))?;
        let bytes = Uint8Array::new(&signature).to_vec();
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

fn object(entries: &[(&str, &JsValue)]) -> Result<Object, String> {
    let object = Object::new();
    for (name, value) in entries {
        Reflect::set(&object, &JsValue::from_str(name), value).map_err(describe)?;
    }
    Ok(object)
}

/// The WebCrypto algorithm for a JWKS key: import parameters and verify parameters.
fn algorithm(check: &SignatureCheck) -> Result<(Object, Object), String> {
    let sha256 = JsValue::from_str("SHA-256");
    match check.alg {
        jsonwebtoken::Algorithm::ES256 => Ok((
            object(&[("name", &"ECDSA".into()), ("namedCurve", &"P-256".into())])?,
            object(&[("name", &"ECDSA".into()), ("hash", &sha256)])?,
        )),
        jsonwebtoken::Algorithm::RS256 => {
            let rsa = object(&[("name", &"RSASSA-PKCS1-v1_5".into()), ("hash", &sha256)])?;
            Ok((rsa.clone(), rsa))
        }
        other => Err(format!("{other:?} is not verified through WebCrypto")),
    }
}

async fn session_key(check: &SignatureCheck, import: &Object) -> Result<web_sys::CryptoKey, String> {
    let cache_key = format!("{:?}{}", check.alg, check.public_jwk);
    if let Some(key) = SESSION_KEYS.with(|keys| keys.borrow().get(&cache_key).cloned()) {
        return Ok(key);
    }
    // Only the public parameters: WebCrypto refuses a JWK whose `alg`/`use` disagree with it.
    let jwk: Object = js_sys::JSON::parse(&check.public_jwk).map_err(describe)?.unchecked_into();
    let usages = js_sys::Array::of1(&"verify".into());
    let promise = subtle()?.import_key_with_object("jwk", &jwk, import, false, &usages).map_err(describe)?;
    let key: web_sys::CryptoKey = JsFuture::from(promise).await.map_err(describe)?.unchecked_into();
    SESSION_KEYS.with(|keys| keys.borrow_mut().insert(cache_key, key.clone()));
    Ok(key)
}

impl SignatureVerifier for WebCrypto {
    async fn verify(&self, check: &SignatureCheck) -> Result<bool, SessionError> {
        let mismatch = |e: String| SessionError::KeyMismatch(format!("WebCrypto: {e}"));
        let (import, verify) = match SESSION_ALGORITHMS.with(|a| a.borrow().get(&check.alg).cloned()) {
            Some(parameters) => parameters,
            None => {
                let parameters = algorithm(check).map_err(mismatch)?;
                SESSION_ALGORITHMS.with(|a| a.borrow_mut().insert(check.alg, parameters.clone()));
                parameters
            }
        };
        let key = session_key(check, &import).await.map_err(mismatch)?;
        let promise = subtle()
            .map_err(mismatch)?
            .verify_with_object_and_u8_array_and_u8_array(&verify, &key, &check.signature, check.message.as_bytes())
            .map_err(|e| mismatch(describe(e)))?;
        let valid = JsFuture::from(promise).await.map_err(|e| mismatch(describe(e)))?;
        Ok(valid.as_bool().unwrap_or(false))
    }
}
