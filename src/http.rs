//! HTTP requests and answers as plain values.
//!
//! The core builds every outgoing request (JWKS fetch, Auth user check, PostgREST writes) as an
//! [`HttpRequest`] and interprets every answer as an [`HttpResponse`], so tests can check exact
//! URLs, headers and bodies. Only the worker adapter turns these values into real I/O.

use std::future::Future;

/// The HTTP methods the worker sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// An outgoing request, complete: `url` already carries the encoded query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl HttpRequest {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        HttpRequest { method, url: url.into(), headers: Vec::new(), body: None }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn json_body(mut self, body: String) -> Self {
        self.headers.push(("Content-Type".to_string(), "application/json".to_string()));
        self.body = Some(body);
        self
    }

    /// The first value of a header, case-insensitively.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

/// The path of an absolute, already-serialized WHATWG URL (what a request's `url` is): from the
/// first `/` after the host to the first `?` or `#`, which the serialization percent-encodes
/// inside a path; `/` when there is none.
pub fn url_path(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let Some(start) = url[after_scheme..].find('/').map(|i| after_scheme + i) else { return "/" };
    let path = &url[start..];
    &path[..path.find(['?', '#']).unwrap_or(path.len())]
}

/// The first value of header `name` in a header list, case-insensitively.
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// An upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of a header, case-insensitively.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// A redirect (3xx), which the worker answers and never follows (`redirect: "manual"`).
    pub fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status)
    }

    /// For a redirect, where it points: the `Location`'s origin only (its path and query may
    /// hold the request's ids), e.g. `https://ref.supabase.co`.
    pub fn redirect_origin(&self) -> Option<String> {
        if !self.is_redirect() {
            return None;
        }
        let location = self.header_value("location").filter(|l| crate::environment::has_ascii_host(l))?;
        let location = url::Url::parse(location).ok()?;
        Some(location.origin().ascii_serialization())
    }

    /// What a failed answer's status says, for a log line: `301, a redirect to <origin>, not
    /// followed` for a redirect, else the status.
    pub fn status_described(&self) -> String {
        match self.is_redirect() {
            true => format!(
                "{}, a redirect{}, not followed (give the address it points to)",
                self.status,
                self.redirect_origin().map(|to| format!(" to {to}")).unwrap_or_default()
            ),
            false => self.status.to_string(),
        }
    }

    /// An answer from its head as the adapter reads it in one call (`status\n`, then
    /// `name\nvalue\n` per header: no header name or value can hold a line feed) and its body.
    pub fn from_head(head: &str, body: String) -> HttpResponse {
        let mut lines = head.split('\n');
        let status = lines.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        HttpResponse { status, headers: read_head_lines(lines), body }
    }
}

/// Headers back from the lines [`head_lines`] writes (`name`, `value`, ...; a trailing empty
/// line, or a name without its value, ends them). Shared by the request's and the answer's head.
pub fn read_head_lines<'a>(mut lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    while let (Some(name), Some(value)) = (lines.next(), lines.next()) {
        headers.push((name.to_string(), value.to_string()));
    }
    headers
}

/// Whether `value` can be a Cloudflare ray id (`8f3a1b2c3d4e5f60-LHR`): up to 64 letters, digits
/// and hyphens. Used as the request id, it is repeated in a header, the answer and the log line.
pub fn is_ray(value: &str) -> bool {
    (1..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Headers as the adapter hands them to the runtime in one string: `name\nvalue\n` per header.
/// Refused (`Err` with the header's name) when a name or value holds a line feed, which would
/// split it into other headers; no valid header holds one, and the runtime refuses the rest.
pub fn head_lines(headers: &[(String, String)]) -> Result<String, &str> {
    let mut head = String::new();
    for (name, value) in headers {
        if name.contains('\n') || value.contains('\n') {
            return Err(name);
        }
        head.push_str(name);
        head.push('\n');
        head.push_str(value);
        head.push('\n');
    }
    Ok(head)
}

/// Why an upstream request produced no answer (connection refused, DNS, timeout, ...).
/// The message is for logs; it never contains credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    pub message: String,
    pub kind: FailureKind,
}

/// What is known about a request that produced no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No response began: the connection was refused, failed, or was lost before any status
    /// line arrived (workerd's "Network connection lost" when it reuses a connection the
    /// upstream has closed, e.g. HTTP/1.0 or a proxy's keep-alive timeout). The request may
    /// have been applied, but every request the bridge sends is idempotent, so it is sent
    /// again at once (see [`send_resending_once`]).
    NoAnswer,
    /// No answer within `UPSTREAM_TIMEOUT_MS`. Not re-sent at once: a slow upstream is most
    /// likely overloaded, and a second attempt would add load and double the caller's wait.
    TimedOut,
    /// The status arrived, the body was cut off: the upstream did answer. Not re-sent at once.
    AnswerCut,
    /// The request could not even be built (a header the runtime refuses): never sent, and
    /// sending it again would fail the same way.
    NotSent,
}

impl TransportError {
    /// The connection failed or was lost before any answer (see [`FailureKind::NoAnswer`]).
    pub fn no_answer(message: impl Into<String>) -> Self {
        TransportError { message: message.into(), kind: FailureKind::NoAnswer }
    }

    /// No answer within the timeout.
    pub fn timed_out(message: impl Into<String>) -> Self {
        TransportError { message: message.into(), kind: FailureKind::TimedOut }
    }

    /// An answer began but its body could not be read.
    pub fn answer_cut(message: impl Into<String>) -> Self {
        TransportError { message: message.into(), kind: FailureKind::AnswerCut }
    }

    /// A request that could not be built, so was never sent.
    pub fn not_sent(message: impl Into<String>) -> Self {
        TransportError { message: message.into(), kind: FailureKind::NotSent }
    }

    pub fn is_timeout(&self) -> bool {
        self.kind == FailureKind::TimedOut
    }

    /// Whether sending the same request again at once is the right reaction: only when no
    /// answer began at all (a stale or broken connection), never after a timeout.
    pub fn resend_at_once(&self) -> bool {
        self.kind == FailureKind::NoAnswer
    }
}

/// Sends `request`; if no answer began at all ([`TransportError::resend_at_once`]) and
/// `may_resend` allows it, sends it once more, at once (a fresh connection: the usual cause
/// is a pooled connection the upstream had closed). Only for idempotent requests, which are
/// all the bridge sends. Returns the answer and how many requests were sent (1 or 2).
pub async fn send_resending_once<T: Transport>(
    transport: &T,
    request: &HttpRequest,
    may_resend: bool,
) -> (Result<HttpResponse, TransportError>, usize) {
    let answer = transport.send(request).await;
    match answer {
        Err(error) if may_resend && error.resend_at_once() => {
            let again = transport.send(request).await;
            let again = again.map_err(|second| TransportError {
                message: format!("{}; sent again at once: {}", error.message, second.message),
                kind: second.kind,
            });
            (again, 2)
        }
        answer => (answer, 1),
    }
}

/// Ends a [`Transport::pause`]: called by the request whose fetch the paused one waits for.
pub type Resume = Box<dyn FnOnce()>;

/// Sends plain requests. The worker implements it with `fetch`; tests with fakes.
pub trait Transport {
    /// Sends `request` (borrowed: a request sent again, or split, is not copied first).
    fn send(&self, request: &HttpRequest) -> impl Future<Output = Result<HttpResponse, TransportError>>;

    /// A pause of the calling request that ends when the returned [`Resume`] is called (`true`)
    /// or after `max` (`false`), whichever comes first: how a request waits for a key fetch
    /// another request of the same isolate is making (single flight, see `session::Step::Wait`).
    ///
    /// The default suits native single-threaded executors: `Resume` wakes the paused task
    /// directly, and there is no timer (`max` is not applied). The worker's adapter overrides it:
    /// in workerd a task woken directly would go on inside the request that woke it.
    fn pause(&self, max: std::time::Duration) -> (impl Future<Output = bool>, Resume) {
        let _ = max;
        local_pause()
    }

    /// Milliseconds on a clock that only counts forward, for how long an upload has run
    /// (`UPLOAD_TIME_BUDGET_MS`). The default has no clock (always 0: no budget is ever spent);
    /// the worker's adapter reads the runtime's.
    fn now_ms(&self) -> u64 {
        0
    }
}

/// A pause ended only by its [`Resume`], waking the paused task directly.
pub fn local_pause() -> (impl Future<Output = bool>, Resume) {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::task::{Poll, Waker};
    let state: Rc<RefCell<(bool, Option<Waker>)>> = Rc::default();
    let paused = Rc::clone(&state);
    let pause = std::future::poll_fn(move |context| {
        let mut state = paused.borrow_mut();
        if state.0 {
            return Poll::Ready(true);
        }
        state.1 = Some(context.waker().clone());
        Poll::Pending
    });
    let resume: Resume = Box::new(move || {
        let waker = {
            let mut state = state.borrow_mut();
            state.0 = true;
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    });
    (pause, resume)
}

/// Test doubles: a scripted [`Transport`] and a `block_on` for futures that never wait.
#[cfg(test)]
mod tests {
    use super::{head_lines, is_ray, url_path, HttpResponse};

    #[test]
    fn only_a_value_shaped_like_a_ray_id_is_taken_as_the_request_id() {
        assert!(is_ray("8f3a1b2c3d4e5f60-LHR") && is_ray("8f3a1b2c3d4e5f60"));
        for value in ["", "a b", "x\"y", &"a".repeat(65), "8f3a1b2c3d4e5f60-LHR\u{2028}"] {
            assert!(!is_ray(value), "{value:?}");
        }
    }

    #[test]
    fn headers_travel_as_lines_and_come_back_as_they_were() {
        let headers = vec![
            ("content-range".to_string(), "0-0/*".to_string()),
            ("x-empty".to_string(), String::new()),
            ("prefer".to_string(), "resolution=merge-duplicates, return=minimal".to_string()),
        ];
        let head = head_lines(&headers).unwrap();
        assert_eq!(head, "content-range\n0-0/*\nx-empty\n\nprefer\nresolution=merge-duplicates, return=minimal\n");
        let answer = HttpResponse::from_head(&format!("201\n{head}"), "[]".into());
        assert_eq!(answer, HttpResponse { status: 201, headers, body: "[]".into() });
        assert_eq!(HttpResponse::from_head("204\n", String::new()).headers, vec![]);
    }

    #[test]
    fn a_redirect_is_described_by_its_targets_origin_only() {
        let answer = |status: u16, location: &str| HttpResponse {
            status,
            headers: vec![("Location".to_string(), location.to_string())],
            body: String::new(),
        };
        let moved = answer(301, "https://keys.example:8443/jwks.json?user=secret");
        assert_eq!(moved.redirect_origin().as_deref(), Some("https://keys.example:8443"));
        assert_eq!(
            moved.status_described(),
            "301, a redirect to https://keys.example:8443, not followed (give the address it points to)"
        );
        assert_eq!(answer(302, "/relative").redirect_origin(), None);
        assert_eq!(answer(404, "https://x.example/").redirect_origin(), None);
        assert_eq!(answer(404, "https://x.example/").status_described(), "404");
    }

    #[test]
    fn a_header_holding_a_line_feed_is_refused_not_split_into_others() {
        let smuggled = vec![
            ("apikey".to_string(), "k".to_string()),
            ("content-type".to_string(), "image/png\nauthorization\nBearer someone-else".to_string()),
        ];
        assert_eq!(head_lines(&smuggled), Err("content-type"));
        assert_eq!(head_lines(&[("a\nb".to_string(), "v".to_string())]), Err("a\nb"));
    }

    #[test]
    fn url_path_is_the_serialized_path_without_query_or_fragment() {
        assert_eq!(url_path("https://w.example/powersync-token"), "/powersync-token");
        assert_eq!(url_path("https://w.example/a/b?c=/d#e"), "/a/b");
        assert_eq!(url_path("https://w.example/a%20b%3F?x"), "/a%20b%3F");
        assert_eq!(url_path("http://127.0.0.1:8787/"), "/");
        assert_eq!(url_path("http://127.0.0.1:8787"), "/");
        assert_eq!(url_path("https://w.example#x"), "/");
        assert_eq!(url_path("https://user:p@w.example:1/x"), "/x");
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::{HttpRequest, HttpResponse, Transport, TransportError};
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// Drives a future whose awaits are all immediately ready (the fake transport's are).
    pub fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut context = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
        }
    }

    type Answer = Result<HttpResponse, TransportError>;

    /// Records every request and answers from a script; once the script is used up, as
    /// PostgREST with the atomic function installed would if every row named existed: an RPC
    /// call 200 `{"applied": <ops>}`, any other request 204 with `Content-Range: */<n>` when it
    /// asked `Prefer: count=exact` (n: the rows a POST body holds, or the ids its
    /// `id=eq.`/`id=in.(…)` filter names). Its clock stands still unless [`Self::taking`] sets
    /// how long each request takes.
    #[derive(Default)]
    pub struct FakeTransport {
        sent: RefCell<Vec<HttpRequest>>,
        answers: RefCell<VecDeque<Answer>>,
        clock_ms: std::cell::Cell<u64>,
        each_request_ms: u64,
    }

    impl FakeTransport {
        pub fn scripted(answers: Vec<Answer>) -> Self {
            FakeTransport { answers: RefCell::new(answers.into()), ..FakeTransport::default() }
        }

        /// Each request moves the clock ([`Transport::now_ms`]) on by `ms`.
        pub fn taking(self, ms: u64) -> Self {
            FakeTransport { each_request_ms: ms, ..self }
        }

        pub fn sent(&self) -> Vec<HttpRequest> {
            self.sent.borrow().clone()
        }
    }

    impl Transport for FakeTransport {
        fn send(&self, request: &HttpRequest) -> impl Future<Output = Answer> {
            let request = request.clone();
            let counted = request.header_value("Prefer").is_some_and(|p| p.contains("count=exact"));
            let rows = rows_named(&request);
            let ops = request.url.contains("/rest/v1/rpc/").then(|| {
                let call: serde_json::Value =
                    serde_json::from_str(request.body.as_deref().unwrap_or("")).unwrap_or_default();
                call["ops"].as_array().map_or(0, Vec::len)
            });
            let answer = self.answers.borrow_mut().pop_front().unwrap_or_else(|| {
                // The ledger's records of a rejection and of a transaction applied through REST
                // answer true, as the SQL functions do.
                if request.url.ends_with("/rpc/powersync_upload_ledger_reject")
                    || request.url.ends_with("/rpc/powersync_upload_ledger_applied_via_rest")
                    || request.url.ends_with("/rpc/powersync_upload_ledger_rest_abandon")
                {
                    return Ok(HttpResponse { status: 200, headers: vec![], body: "true".to_string() });
                }
                // The ledger's mark of a transaction about to go through REST: made.
                if request.url.ends_with("/rpc/powersync_upload_ledger_rest_begin") {
                    return Ok(HttpResponse { status: 200, headers: vec![], body: r#"{"rest":"begun"}"#.to_string() });
                }
                if let Some(ops) = ops {
                    return Ok(HttpResponse { status: 200, headers: vec![], body: format!("{{\"applied\":{ops}}}") });
                }
                let headers = if counted { vec![("Content-Range".to_string(), format!("*/{rows}"))] } else { vec![] };
                Ok(HttpResponse { status: 204, headers, body: String::new() })
            });
            self.sent.borrow_mut().push(request);
            self.clock_ms.set(self.clock_ms.get() + self.each_request_ms);
            std::future::ready(answer)
        }

        fn now_ms(&self) -> u64 {
            self.clock_ms.get()
        }
    }

    /// The rows a write names: a POST body's array length, else the ids of `id=eq.` (1) or
    /// `id=in.(…)` (its comma-separated values, quoted ones whole).
    fn rows_named(request: &HttpRequest) -> usize {
        if let Some(body) = request.body.as_deref().filter(|_| request.url.contains("on_conflict")) {
            return serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(1);
        }
        if request.url.contains("id=eq.") {
            return 1;
        }
        let Some(list) = request.url.split_once("id=in.(").map(|(_, rest)| rest) else { return 0 };
        let (mut count, mut quoted, mut escaped) = (1, false, false);
        for c in list.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => count += 1,
                ')' if !quoted => break,
                _ => {}
            }
        }
        count
    }
}
