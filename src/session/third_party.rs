//! Third-party auth: sessions issued by Firebase Auth, Auth0, AWS Cognito, Clerk, WorkOS or any
//! OpenID Connect issuer, accepted as Supabase accepts them with its "Third-party Auth"
//! integrations.
//!
//! Each configured provider is one [`Issuer`]: the exact `iss` its tokens carry, its `aud` rule
//! (Firebase: the project id; a generic OIDC issuer: the configured audience, if any; the others:
//! none, as Supabase), and where its signing keys are (a fixed JWKS URL, or the `jwks_uri` of the
//! issuer's OpenID discovery document). The settings are named after Supabase's own
//! (`[auth.third_party.*]` in the Supabase CLI's `config.toml`).
//!
//! Rules shared by every provider: RS256/ES256 only (never HS256: there is no shared secret),
//! `exp`/`nbf`/`iat` with the same leeway as Supabase sessions, a non-empty `sub`, and the claim
//! Supabase requires of these tokens, `role: "authenticated"` (a missing `role` is refused
//! unless `THIRD_PARTY_ALLOW_MISSING_ROLE`; any other role always is).

use serde_json::{Map, Value};

use super::SessionError;
use crate::environment::Reader;
use crate::http::{HttpResponse, TransportError};

/// Google's key set for Firebase Auth ID tokens, shared by every Firebase project.
pub const FIREBASE_JWKS_URL: &str = "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";

/// Which integration an [`Issuer`] comes from (for logs and docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Firebase,
    Auth0,
    AwsCognito,
    Clerk,
    WorkOs,
    Oidc,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Firebase => "firebase",
            Provider::Auth0 => "auth0",
            Provider::AwsCognito => "aws_cognito",
            Provider::Clerk => "clerk",
            Provider::WorkOs => "workos",
            Provider::Oidc => "oidc",
        }
    }
}

/// Where an issuer's signing keys are published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS URL known in advance (the provider's documented one, or a `*_JWKS_URL` override).
    Jwks(String),
    /// `<issuer>/.well-known/openid-configuration`, whose `issuer` must be the configured one and
    /// whose `jwks_uri` is then fetched.
    Discovery(String),
}

/// One third-party issuer whose tokens are accepted as sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub provider: Provider,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The `aud` a token must carry (string or array containing it); `None`: no `aud` rule.
    pub audience: Option<String>,
    pub keys: KeySource,
}

impl Issuer {
    pub fn discovery_url(issuer: &str) -> String {
        format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
    }
}

/// Every third-party setting. Default: none configured, so only Supabase Auth sessions pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThirdPartySettings {
    pub issuers: Vec<Issuer>,
    /// `THIRD_PARTY_ALLOW_MISSING_ROLE`; default false. Accept third-party tokens without a
    /// `role` claim (PostgREST would then run their requests as the anon role: RLS written for
    /// `authenticated` refuses them). Tokens whose `role` is anything but `authenticated` are
    /// refused whatever this says.
    pub allow_missing_role: bool,
}

/// Whether `url` may be fetched for keys: `https://`, or `http://` to a loopback host (local
/// development and tests only).
pub fn is_fetchable(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let host = rest.split('/').next().unwrap_or_default();
    let host = if host.starts_with('[') { host.split(']').next().map(|h| &h[1..]).unwrap_or_default() } else { host.split(':').next().unwrap_or_default() };
    matches!(host, "127.0.0.1" | "localhost" | "::1")
}

/// An AWS region as Cognito's issuer spells it (`us-east-1`, `ap-southeast-2`, `us-gov-west-1`).
fn is_aws_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().take(parts.len() - 1).all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok()
}

/// A DNS label or dotted name: letters, digits, `-` and `.` only.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-'])
}

/// Reads every `THIRD_PARTY_*` setting (problems go to `r`).
pub fn read(r: &mut Reader) -> ThirdPartySettings {
    let mut issuers = Vec::new();
    // A key URL override: "default: the provider's published key set; set only for a proxy or tests".
    let jwks_override = |r: &mut Reader, name: &str| -> Option<String> {
        let url = r.get(name)?;
        if !is_fetchable(&url) || url.contains(char::is_whitespace) {
            r.problem(name, "must be an https:// URL (http:// only to 127.0.0.1, localhost or [::1])");
            return None;
        }
        Some(url)
    };

    if let Some(project) = r.get("THIRD_PARTY_FIREBASE_PROJECT_ID") {
        let keys = jwks_override(r, "THIRD_PARTY_FIREBASE_JWKS_URL").unwrap_or_else(|| FIREBASE_JWKS_URL.into());
        // Firebase project ids: 6-30 lowercase letters, digits and hyphens.
        if project.len() > 30 || !project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            r.problem("THIRD_PARTY_FIREBASE_PROJECT_ID", "must be a Firebase project id (lowercase letters, digits and hyphens)");
        } else {
            issuers.push(Issuer {
                provider: Provider::Firebase,
                issuer: format!("https://securetoken.google.com/{project}"),
                audience: Some(project),
                keys: KeySource::Jwks(keys),
            });
        }
    }

    let region = r.get("THIRD_PARTY_AUTH0_TENANT_REGION");
    if let Some(tenant) = r.get("THIRD_PARTY_AUTH0_TENANT") {
        let keys = jwks_override(r, "THIRD_PARTY_AUTH0_JWKS_URL");
        let region_ok = region.as_deref().is_none_or(|g| is_host_name(g) && !g.contains('.'));
        if !is_host_name(&tenant) || tenant.contains('.') {
            r.problem("THIRD_PARTY_AUTH0_TENANT", "must be the tenant name only (e.g. my-tenant, not my-tenant.us.auth0.com)");
        } else if !region_ok {
            r.problem("THIRD_PARTY_AUTH0_TENANT_REGION", "must be a region label such as us, eu, au or jp");
        } else {
            let host = match &region {
                Some(region) => format!("{tenant}.{region}.auth0.com"),
                None => format!("{tenant}.auth0.com"),
            };
            issuers.push(Issuer {
                provider: Provider::Auth0,
                // Auth0's `iss` is the tenant domain with a trailing slash.
                issuer: format!("https://{host}/"),
                audience: None,
                keys: KeySource::Jwks(keys.unwrap_or_else(|| format!("https://{host}/.well-known/jwks.json"))),
            });
        }
    } else if region.is_some() {
        r.problem("THIRD_PARTY_AUTH0_TENANT_REGION", "is set but THIRD_PARTY_AUTH0_TENANT is not");
    }

    let pool = r.get("THIRD_PARTY_AWS_COGNITO_USER_POOL_ID");
    let pool_region = r.get("THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION");
    match (pool, pool_region) {
        (None, None) => {}
        (Some(pool), region) => {
            let keys = jwks_override(r, "THIRD_PARTY_AWS_COGNITO_JWKS_URL");
            // A pool id is `<region>_<id>`; the region setting may be left out.
            let region = region.or_else(|| pool.split_once('_').map(|(g, _)| g.to_string()));
            let pool_ok = pool.split_once('_').is_some_and(|(g, id)| is_aws_region(g) && !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()));
            match region {
                _ if !pool_ok => r.problem("THIRD_PARTY_AWS_COGNITO_USER_POOL_ID", "must be a user pool id such as us-east-1_AbCdEf123"),
                Some(region) if is_aws_region(&region) && pool.starts_with(&format!("{region}_")) => {
                    let issuer = format!("https://cognito-idp.{region}.amazonaws.com/{pool}");
                    let jwks = keys.unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
                    issuers.push(Issuer { provider: Provider::AwsCognito, issuer, audience: None, keys: KeySource::Jwks(jwks) });
                }
                _ => r.problem("THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION", "must be the AWS region the user pool id starts with (e.g. us-east-1)"),
            }
        }
        (None, Some(_)) => r.problem("THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION", "is set but THIRD_PARTY_AWS_COGNITO_USER_POOL_ID is not"),
    }

    if let Some(domain) = r.get("THIRD_PARTY_CLERK_DOMAIN") {
        let keys = jwks_override(r, "THIRD_PARTY_CLERK_JWKS_URL");
        let domain = domain.strip_prefix("https://").unwrap_or(&domain).trim_end_matches('/').to_string();
        if !is_host_name(&domain) || !domain.contains('.') {
            r.problem("THIRD_PARTY_CLERK_DOMAIN", "must be the Clerk Frontend API domain (e.g. clerk.example.com)");
        } else {
            let issuer = format!("https://{domain}");
            let jwks = keys.unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
            issuers.push(Issuer { provider: Provider::Clerk, issuer, audience: None, keys: KeySource::Jwks(jwks) });
        }
    }

    for (provider, issuer_name, jwks_name) in [
        (Provider::WorkOs, "THIRD_PARTY_WORKOS_ISSUER_URL", "THIRD_PARTY_WORKOS_JWKS_URL"),
        (Provider::Oidc, "THIRD_PARTY_OIDC_ISSUER", "THIRD_PARTY_OIDC_JWKS_URL"),
    ] {
        let Some(issuer) = r.get(issuer_name) else { continue };
        let keys = jwks_override(r, jwks_name);
        // Kept exactly as set (a trailing slash is part of an issuer, e.g. Auth0's).
        if !is_fetchable(&issuer) || issuer.contains(char::is_whitespace) || issuer.contains(['?', '#', '@']) {
            r.problem(issuer_name, "must be an https:// issuer URL without query or fragment (http:// only to 127.0.0.1, localhost or [::1])");
            continue;
        }
        let audience = if provider == Provider::Oidc { r.get("THIRD_PARTY_OIDC_AUDIENCE") } else { None };
        let keys = match keys {
            Some(url) => KeySource::Jwks(url),
            None => KeySource::Discovery(Issuer::discovery_url(&issuer)),
        };
        issuers.push(Issuer { provider, issuer, audience, keys });
    }
    if r.get("THIRD_PARTY_OIDC_AUDIENCE").is_some() && r.get("THIRD_PARTY_OIDC_ISSUER").is_none() {
        r.problem("THIRD_PARTY_OIDC_AUDIENCE", "is set but THIRD_PARTY_OIDC_ISSUER is not");
    }
    for (i, issuer) in issuers.iter().enumerate() {
        if issuers[..i].iter().any(|earlier| earlier.issuer == issuer.issuer) {
            r.problem("THIRD_PARTY_OIDC_ISSUER", format!("the {} issuer is configured twice", issuer.provider.name()));
        }
    }
    let allow_missing_role = r.flag("THIRD_PARTY_ALLOW_MISSING_ROLE", false);
    ThirdPartySettings { issuers, allow_missing_role }
}

/// The `jwks_uri` of an OpenID discovery document, after checking that it describes `issuer`.
pub fn jwks_uri(answer: Result<HttpResponse, TransportError>, issuer: &str) -> Result<String, String> {
    let response = answer.map_err(|e| format!("discovery: {}", e.message))?;
    if response.status != 200 {
        return Err(format!("discovery answered {}", response.status));
    }
    let doc: Value = serde_json::from_str(&response.body).map_err(|_| "discovery document is not JSON".to_string())?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("discovery document names another issuer".into());
    }
    let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or("discovery document has no jwks_uri")?;
    if !is_fetchable(uri) {
        return Err("discovery jwks_uri is not https".into());
    }
    Ok(uri.to_string())
}

/// The claim rules for a third-party token whose signature verified, at time `now`.
pub fn check_claims(
    claims: &Map<String, Value>,
    issuer: &Issuer,
    settings: &ThirdPartySettings,
    leeway_seconds: u64,
    now: u64,
) -> Result<String, SessionError> {
    let number = |name: &str| claims.get(name).and_then(Value::as_f64);
    let (leeway, now) = (leeway_seconds as f64, now as f64);
    let exp = number("exp").ok_or_else(|| SessionError::Malformed("exp missing or not a number".into()))?;
    if now >= exp + leeway {
        return Err(SessionError::Expired);
    }
    if number("nbf").is_some_and(|nbf| nbf > now + leeway) || number("iat").is_some_and(|iat| iat > now + leeway) {
        return Err(SessionError::NotYetValid);
    }
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
        return Err(SessionError::WrongIssuer);
    }
    if let Some(expected) = &issuer.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == expected,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expected)),
            _ => false,
        };
        if !ok {
            return Err(SessionError::WrongAudience);
        }
    }
    let user_id = match claims.get("sub").and_then(Value::as_str) {
        Some(sub) if !sub.trim().is_empty() => sub.to_string(),
        _ => return Err(SessionError::NoSubject),
    };
    match claims.get("role") {
        Some(Value::String(role)) if role == "authenticated" => {}
        None if settings.allow_missing_role => {}
        None => return Err(SessionError::RoleNotAllowed("no role claim".into())),
        Some(other) => {
            let role: String = other.to_string().chars().take(40).collect();
            return Err(SessionError::RoleNotAllowed(format!("role {role}")));
        }
    }
    Ok(user_id)
}
