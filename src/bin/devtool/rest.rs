//! Requests and answers as plain values, and the one thin adapter that sends them (ureq,
//! blocking). Everything the operator commands decide is built and read as these values, so
//! their tests check exact URLs, headers and bodies without a network.

use powersync_supabase_worker::credentials::redact;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

/// An answer; `status` 0 means no answer at all (`body` then says why: DNS, refused, timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// PostgREST's error `code` (a SQLSTATE or PGRST…), if the body is an error object.
    pub fn error_code(&self) -> Option<String> {
        self.json()?.get("code")?.as_str().map(str::to_string)
    }

    /// A short description of a failed answer for the operator (PostgREST's message, or the
    /// status and the start of the body), without credentials: the commands run in CI logs, and
    /// a wrong `SUPABASE_URL` or `STORAGE_URL` can answer with the request's headers (the
    /// service key) echoed.
    pub fn describe(&self) -> String {
        if self.status == 0 {
            return format!("no answer ({})", self.body);
        }
        if let Some(v) = self.json() {
            if let Some(message) = v.get("message").and_then(Value::as_str) {
                let code = v.get("code").and_then(Value::as_str).unwrap_or("");
                return format!("HTTP {} {code}: {}", self.status, redact(message));
            }
        }
        let start: String = self.body.chars().take(200).collect();
        format!("HTTP {}: {}", self.status, redact(&start))
    }
}

/// The headers PostgREST needs for the service key: `apikey` always; a legacy key (a JWT)
/// also as the bearer token (a new `sb_secret_…` key is not a JWT: the API gateway maps it).
pub fn service_headers(service_key: &str) -> Vec<(String, String)> {
    let mut headers = vec![("apikey".to_string(), service_key.to_string())];
    if !service_key.starts_with("sb_") {
        headers.push(("Authorization".to_string(), format!("Bearer {service_key}")));
    }
    headers
}

/// `POST <supabase>/rest/v1/rpc/<function>` with the service key and a JSON body.
pub fn rpc(supabase_url: &str, service_key: &str, function: &str, body: Value) -> Request {
    let mut headers = service_headers(service_key);
    headers.push(("Content-Type".to_string(), "application/json".to_string()));
    Request {
        method: "POST",
        url: format!("{}/rest/v1/rpc/{function}", supabase_url.trim_end_matches('/')),
        headers,
        body: Some(body),
    }
}

/// `GET <url>` with no credentials.
pub fn get(url: &str) -> Request {
    Request { method: "GET", url: url.to_string(), headers: vec![], body: None }
}

/// Sends `request`; every failure becomes a [`Response`]. Timeout: 15 s for a read; 300 s for
/// a function call (`POST`), since a replay applies a whole transaction and may run as long as
/// the database lets it: given up on sooner, its outcome would be unknown.
pub fn send(request: &Request) -> Response {
    let seconds = if request.method == "POST" { 300 } else { 15 };
    let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(seconds)).build();
    let mut call = agent.request(request.method, &request.url);
    for (name, value) in &request.headers {
        call = call.set(name, value);
    }
    let result = match &request.body {
        Some(body) => call.send_string(&body.to_string()),
        None => call.call(),
    };
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => {
            let status = response.status();
            Response { status, body: response.into_string().unwrap_or_default() }
        }
        Err(ureq::Error::Transport(e)) => Response { status: 0, body: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_service_key_goes_in_apikey_and_authorization() {
        let r = rpc("https://p.supabase.co/", "eyJ.a.b", "f", json!({"x": 1}));
        assert_eq!(r.url, "https://p.supabase.co/rest/v1/rpc/f");
        assert_eq!(
            r.headers,
            vec![
                ("apikey".into(), "eyJ.a.b".into()),
                ("Authorization".into(), "Bearer eyJ.a.b".into()),
                ("Content-Type".into(), "application/json".into())
            ]
        );
        assert_eq!(r.body, Some(json!({"x": 1})));
    }

    #[test]
    fn new_secret_key_goes_in_apikey_only() {
        assert_eq!(service_headers("sb_secret_abc"), vec![("apikey".to_string(), "sb_secret_abc".to_string())]);
    }

    #[test]
    fn describe_names_postgrest_code_and_message_or_the_missing_answer() {
        let r = Response { status: 404, body: r#"{"code":"PGRST202","message":"Could not find"}"#.into() };
        assert_eq!(r.describe(), "HTTP 404 PGRST202: Could not find");
        assert_eq!(r.error_code().as_deref(), Some("PGRST202"));
        assert_eq!(
            Response { status: 0, body: "connection refused".into() }.describe(),
            "no answer (connection refused)"
        );
        assert_eq!(Response { status: 502, body: "bad gateway".into() }.describe(), "HTTP 502: bad gateway");
    }

    #[test]
    fn describe_never_repeats_a_key_an_upstream_echoed() {
        let key = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln";
        for body in [
            format!("<pre>apikey: {key}\nAuthorization: Bearer {jwt}</pre>"),
            json!({"message": format!("bad header apikey: {key}")}).to_string(),
            format!("echo: /rest/v1/x?apikey={key}"),
        ] {
            let described = Response { status: 401, body }.describe();
            assert!(!described.contains(key) && !described.contains(jwt), "{described}");
            assert!(described.contains("[redacted]"), "{described}");
        }
    }
}
