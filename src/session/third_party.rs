//! Third-party auth: sessions issued by Firebase Auth, Auth0, AWS Cognito, Clerk, WorkOS or any
//! OpenID Connect issuer, accepted as Supabase accepts them with its "Third-party Auth"
//! integrations.
//!
//! Each configured provider is one [`Issuer`]: the exact `iss` its tokens carry, its `aud` rule
//! (Firebase: the project id; a generic OIDC issuer: the configured audience, required unless
//! loudly waived; the others: none, as Supabase), and where its signing keys are (a fixed JWKS URL, or the `jwks_uri` of the
//! issuer's OpenID discovery document). The settings are named after Supabase's own
//! (`[auth.third_party.*]` in the Supabase CLI's `config.toml`).
//!
//! Rules shared by every provider: RS256/ES256 only (never HS256: there is no shared secret),
//! `exp`/`nbf`/`iat` with the same leeway as Supabase sessions, a non-empty `sub`, and the claim
//! Supabase requires of these tokens, `role: "authenticated"` (a missing `role` is refused
//! unless `THIRD_PARTY_ALLOW_MISSING_ROLE`; any other role always is).

use serde_json::{Map, Value};

use super::SessionError;
use crate::environment::{fetchable, Reader, FETCHABLE_URL_RULE as URL_RULE};
use crate::http::{HttpResponse, TransportError};

/// Google's key set for Firebase Auth ID tokens, shared by every Firebase project.
pub const FIREBASE_JWKS_URL: &str =
    "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";

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

/// The loud opt-out of the generic OIDC issuer's `aud` rule.
pub const ANY_AUDIENCE: &str = "THIRD_PARTY_OIDC_DANGEROUSLY_ACCEPT_ANY_AUDIENCE";

/// The `aud` a generic OIDC issuer's tokens must carry: `THIRD_PARTY_OIDC_AUDIENCE`, required.
/// An IdP signs the tokens of all its clients (apps, APIs) with the same keys, so without an
/// `aud` rule a token it issued to any other client would pass. `None` only with the explicit
/// `THIRD_PARTY_OIDC_DANGEROUSLY_ACCEPT_ANY_AUDIENCE=true` (default false).
fn oidc_audience(r: &mut Reader) -> Option<String> {
    let audience = r.get("THIRD_PARTY_OIDC_AUDIENCE");
    let any = r.flag(ANY_AUDIENCE, false);
    match (&audience, any) {
        (Some(_), true) => r.problem(ANY_AUDIENCE, "contradicts THIRD_PARTY_OIDC_AUDIENCE: set one of them"),
        (None, false) => r.problem(
            "THIRD_PARTY_OIDC_AUDIENCE",
            format!("is required with THIRD_PARTY_OIDC_ISSUER: the aud of this app's tokens (its client id or API identifier); without it a token the issuer gave any of its other clients would pass ({ANY_AUDIENCE}=true accepts that)"),
        ),
        _ => {}
    }
    audience
}

/// Reads every `THIRD_PARTY_*` setting (problems go to `r`).
pub fn read(r: &mut Reader) -> ThirdPartySettings {
    let mut issuers = Vec::new();
    // A key URL override: "default: the provider's published key set; set only for a proxy or tests".
    let jwks_override = |r: &mut Reader, name: &str| r.fetchable(name).map(|url| url.to_string());

    if let Some(project) = r.get("THIRD_PARTY_FIREBASE_PROJECT_ID") {
        let keys = jwks_override(r, "THIRD_PARTY_FIREBASE_JWKS_URL").unwrap_or_else(|| FIREBASE_JWKS_URL.into());
        // Firebase project ids: 6-30 lowercase letters, digits and hyphens.
        if project.len() > 30 || !project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            r.problem(
                "THIRD_PARTY_FIREBASE_PROJECT_ID",
                "must be a Firebase project id (lowercase letters, digits and hyphens)",
            );
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
            r.problem(
                "THIRD_PARTY_AUTH0_TENANT",
                "must be the tenant name only (e.g. my-tenant, not my-tenant.us.auth0.com)",
            );
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
            let pool_ok = pool.split_once('_').is_some_and(|(g, id)| {
                is_aws_region(g) && !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())
            });
            match region {
                _ if !pool_ok => r.problem(
                    "THIRD_PARTY_AWS_COGNITO_USER_POOL_ID",
                    "must be a user pool id such as us-east-1_AbCdEf123",
                ),
                Some(region) if is_aws_region(&region) && pool.starts_with(&format!("{region}_")) => {
                    let issuer = format!("https://cognito-idp.{region}.amazonaws.com/{pool}");
                    let jwks = keys.unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
                    issuers.push(Issuer {
                        provider: Provider::AwsCognito,
                        issuer,
                        audience: None,
                        keys: KeySource::Jwks(jwks),
                    });
                }
                _ => r.problem(
                    "THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION",
                    "must be the AWS region the user pool id starts with (e.g. us-east-1)",
                ),
            }
        }
        (None, Some(_)) => r.problem(
            "THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION",
            "is set but THIRD_PARTY_AWS_COGNITO_USER_POOL_ID is not",
        ),
    }

    if let Some(domain) = r.get("THIRD_PARTY_CLERK_DOMAIN") {
        let keys = jwks_override(r, "THIRD_PARTY_CLERK_JWKS_URL");
        // a host name in the issuer Clerk writes: lower case
        let domain = domain.strip_prefix("https://").unwrap_or(&domain).trim_end_matches('/').to_ascii_lowercase();
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
        let audience = match provider {
            Provider::Oidc => oidc_audience(r),
            _ => None,
        };
        // Kept exactly as set (a trailing slash is part of an issuer, e.g. Auth0's).
        let checked = fetchable(&issuer).and_then(|url| match url.query().is_some() || url.fragment().is_some() {
            true => Err("must not have a query or fragment"),
            false => Ok(url),
        });
        if let Err(why) = checked {
            r.problem(issuer_name, format!("{why}; must be {URL_RULE}"));
            continue;
        }
        let keys = match keys {
            Some(url) => KeySource::Jwks(url),
            None => KeySource::Discovery(Issuer::discovery_url(&issuer)),
        };
        issuers.push(Issuer { provider, issuer, audience, keys });
    }
    if r.get("THIRD_PARTY_OIDC_ISSUER").is_none() {
        if r.get("THIRD_PARTY_OIDC_AUDIENCE").is_some() {
            r.problem("THIRD_PARTY_OIDC_AUDIENCE", "is set but THIRD_PARTY_OIDC_ISSUER is not");
        }
        // Only when it asks for something: its default written out (`false`) changes nothing.
        if r.flag(ANY_AUDIENCE, false) {
            r.problem(ANY_AUDIENCE, "is set but THIRD_PARTY_OIDC_ISSUER is not");
        }
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
        return Err(format!("discovery answered {}", response.status_described()));
    }
    let doc: Value = serde_json::from_str(&response.body).map_err(|_| "discovery document is not JSON".to_string())?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("discovery document names another issuer".into());
    }
    let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or("discovery document has no jwks_uri")?;
    let uri = fetchable(uri).map_err(|why| format!("discovery jwks_uri {why}"))?;
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
    super::check_times(claims, leeway_seconds, now)?;
    super::check_issuer(claims, &issuer.issuer)?;
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

#[cfg(test)]
mod tests {
    use super::super::jwks::tests::{ec_jwk, rsa_jwk, EC_PEM};
    use super::super::tests::{hs256, settings, NOW, SECRET};
    use super::super::{KeySet, SessionError, Step, Verifier};
    use super::*;
    use crate::keys::tests::test_key;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;
    use std::collections::HashMap;

    const PROJECT: &str = "my-app-prod";
    const UID: &str = "kq3sX9vRZbT1bCq4nW0pYf7LmA82";
    const LOCAL_JWKS: &str = "http://127.0.0.1:9999/firebase/jwks.json";

    fn read_vars(vars: &[(&str, &str)]) -> (ThirdPartySettings, Vec<crate::environment::Problem>) {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |name: &str| map.get(name).cloned();
        let mut r = Reader::new(&lookup);
        let settings = read(&mut r);
        (settings, r.problems)
    }

    fn only(vars: &[(&str, &str)]) -> Issuer {
        let (settings, problems) = read_vars(vars);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.issuers.len(), 1);
        settings.issuers[0].clone()
    }

    fn problem_names(vars: &[(&str, &str)]) -> Vec<String> {
        read_vars(vars).1.into_iter().map(|p| p.name).collect()
    }

    fn firebase_iss(project: &str) -> String {
        format!("https://securetoken.google.com/{project}")
    }

    fn firebase_claims(project: &str) -> Value {
        json!({
            "iss": firebase_iss(project), "aud": project, "sub": UID, "user_id": UID,
            "auth_time": NOW - 100, "iat": NOW - 10, "exp": NOW + 3600, "role": "authenticated",
            "email": "fb@example.test", "firebase": {"sign_in_provider": "password"},
        })
    }

    fn rs256(kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&test_key().pkcs1_der())).unwrap()
    }

    fn es256(kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(EC_PEM.as_bytes()).unwrap()).unwrap()
    }

    fn jwks(keys: Vec<Value>) -> Result<HttpResponse, TransportError> {
        ok(json!({ "keys": keys }))
    }

    fn ok(body: Value) -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse { status: 200, headers: vec![], body: body.to_string() })
    }

    /// Supabase settings (HS256 secret, its own JWKS) plus the given third-party settings.
    fn verifier(vars: &[(&str, &str)]) -> Verifier {
        let (third_party, problems) = read_vars(vars);
        assert!(problems.is_empty(), "{problems:?}");
        let mut s = settings();
        s.third_party = third_party;
        Verifier::new(s)
    }

    /// A verifier for Firebase project `PROJECT` whose key set (fetched once) holds `keys`.
    fn firebase_with(keys: Vec<Value>, extra: &[(&str, &str)]) -> Verifier {
        let mut vars =
            vec![("THIRD_PARTY_FIREBASE_PROJECT_ID", PROJECT), ("THIRD_PARTY_FIREBASE_JWKS_URL", LOCAL_JWKS)];
        vars.extend_from_slice(extra);
        let mut v = verifier(&vars);
        let token = rs256("fb-1", &firebase_claims(PROJECT));
        let step = v.plan(&token, NOW);
        assert!(matches!(&step, Step::FetchIssuerKeys { request, .. } if request.url == LOCAL_JWKS), "{step:?}");
        assert_eq!(v.accept(&step, jwks(keys), NOW), Step::Ready);
        v
    }

    fn firebase() -> Verifier {
        firebase_with(vec![rsa_jwk("fb-1")], &[])
    }

    // --- settings -------------------------------------------------------------------------

    #[test]
    fn no_third_party_settings_means_no_third_party_issuers() {
        assert_eq!(read_vars(&[]), (ThirdPartySettings::default(), vec![]));
    }

    #[test]
    fn firebase_project_id_sets_issuer_audience_and_googles_shared_key_set() {
        let issuer = only(&[("THIRD_PARTY_FIREBASE_PROJECT_ID", PROJECT)]);
        assert_eq!(issuer.provider, Provider::Firebase);
        assert_eq!(issuer.issuer, "https://securetoken.google.com/my-app-prod");
        assert_eq!(issuer.audience.as_deref(), Some(PROJECT));
        assert_eq!(issuer.keys, KeySource::Jwks(FIREBASE_JWKS_URL.into()));
    }

    #[test]
    fn auth0_issuer_is_the_tenant_domain_with_region_and_trailing_slash() {
        let issuer = only(&[("THIRD_PARTY_AUTH0_TENANT", "my-tenant"), ("THIRD_PARTY_AUTH0_TENANT_REGION", "eu")]);
        assert_eq!(issuer.issuer, "https://my-tenant.eu.auth0.com/");
        assert_eq!(issuer.keys, KeySource::Jwks("https://my-tenant.eu.auth0.com/.well-known/jwks.json".into()));
        assert_eq!(issuer.audience, None, "Supabase checks no aud for Auth0");
        assert_eq!(only(&[("THIRD_PARTY_AUTH0_TENANT", "old-us")]).issuer, "https://old-us.auth0.com/");
    }

    #[test]
    fn cognito_issuer_is_built_from_pool_id_and_region() {
        let issuer = only(&[
            ("THIRD_PARTY_AWS_COGNITO_USER_POOL_ID", "eu-west-2_AbC123"),
            ("THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION", "eu-west-2"),
        ]);
        assert_eq!(issuer.issuer, "https://cognito-idp.eu-west-2.amazonaws.com/eu-west-2_AbC123");
        assert_eq!(issuer.keys, KeySource::Jwks(format!("{}/.well-known/jwks.json", issuer.issuer)));
        // The region can be read from the pool id.
        assert_eq!(only(&[("THIRD_PARTY_AWS_COGNITO_USER_POOL_ID", "eu-west-2_AbC123")]).issuer, issuer.issuer);
    }

    #[test]
    fn clerk_issuer_is_its_domain_over_https() {
        for domain in ["clerk.example.com", "https://clerk.example.com/", "Clerk.Example.com"] {
            let issuer = only(&[("THIRD_PARTY_CLERK_DOMAIN", domain)]);
            assert_eq!(issuer.issuer, "https://clerk.example.com");
            assert_eq!(issuer.keys, KeySource::Jwks("https://clerk.example.com/.well-known/jwks.json".into()));
        }
    }

    #[test]
    fn workos_and_oidc_issuers_use_discovery_unless_a_jwks_url_is_set() {
        let workos = only(&[("THIRD_PARTY_WORKOS_ISSUER_URL", "https://api.workos.com/user_management/client_01")]);
        assert_eq!(
            workos.keys,
            KeySource::Discovery(
                "https://api.workos.com/user_management/client_01/.well-known/openid-configuration".into()
            )
        );
        let oidc = only(&[
            ("THIRD_PARTY_OIDC_ISSUER", "https://idp.example.com/"),
            ("THIRD_PARTY_OIDC_AUDIENCE", "my-api"),
            ("THIRD_PARTY_OIDC_JWKS_URL", "https://idp.example.com/keys"),
        ]);
        assert_eq!(oidc.issuer, "https://idp.example.com/", "the issuer is kept exactly, trailing slash included");
        assert_eq!(oidc.audience.as_deref(), Some("my-api"));
        assert_eq!(oidc.keys, KeySource::Jwks("https://idp.example.com/keys".into()));
    }

    #[test]
    fn several_providers_are_accepted_at_once() {
        let (settings, problems) = read_vars(&[
            ("THIRD_PARTY_FIREBASE_PROJECT_ID", PROJECT),
            ("THIRD_PARTY_AUTH0_TENANT", "t"),
            ("THIRD_PARTY_AWS_COGNITO_USER_POOL_ID", "us-east-1_X1"),
            ("THIRD_PARTY_CLERK_DOMAIN", "clerk.example.com"),
            ("THIRD_PARTY_WORKOS_ISSUER_URL", "https://api.workos.com/user_management/c"),
            ("THIRD_PARTY_OIDC_ISSUER", "https://idp.example.com"),
            ("THIRD_PARTY_OIDC_AUDIENCE", "my-api"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        let providers: Vec<Provider> = settings.issuers.iter().map(|i| i.provider).collect();
        assert_eq!(
            providers,
            vec![
                Provider::Firebase,
                Provider::Auth0,
                Provider::AwsCognito,
                Provider::Clerk,
                Provider::WorkOs,
                Provider::Oidc
            ]
        );
        assert!(!settings.allow_missing_role, "default false");
    }

    #[test]
    fn invalid_third_party_values_are_all_reported_together() {
        let names = problem_names(&[
            ("THIRD_PARTY_FIREBASE_PROJECT_ID", "My Project"),
            ("THIRD_PARTY_AUTH0_TENANT", "t.us.auth0.com"),
            ("THIRD_PARTY_AWS_COGNITO_USER_POOL_ID", "us-east-1_X1"),
            ("THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION", "eu-west-1"),
            ("THIRD_PARTY_CLERK_DOMAIN", "not a domain"),
            ("THIRD_PARTY_WORKOS_ISSUER_URL", "http://api.workos.com/x"),
            ("THIRD_PARTY_OIDC_ISSUER", "ftp://idp.example.com"),
            ("THIRD_PARTY_FIREBASE_JWKS_URL", "http://proxy.example.com/jwks"),
            ("THIRD_PARTY_ALLOW_MISSING_ROLE", "perhaps"),
        ]);
        for name in [
            "THIRD_PARTY_FIREBASE_PROJECT_ID",
            "THIRD_PARTY_AUTH0_TENANT",
            "THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION",
            "THIRD_PARTY_CLERK_DOMAIN",
            "THIRD_PARTY_WORKOS_ISSUER_URL",
            "THIRD_PARTY_OIDC_ISSUER",
            "THIRD_PARTY_FIREBASE_JWKS_URL",
            "THIRD_PARTY_ALLOW_MISSING_ROLE",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        assert_eq!(
            problem_names(&[("THIRD_PARTY_AWS_COGNITO_USER_POOL_ID", "nope")]),
            vec!["THIRD_PARTY_AWS_COGNITO_USER_POOL_ID"]
        );
        assert_eq!(
            problem_names(&[("THIRD_PARTY_AUTH0_TENANT_REGION", "eu")]),
            vec!["THIRD_PARTY_AUTH0_TENANT_REGION"]
        );
        assert_eq!(problem_names(&[("THIRD_PARTY_OIDC_AUDIENCE", "a")]), vec!["THIRD_PARTY_OIDC_AUDIENCE"]);
    }

    #[test]
    fn third_party_problems_make_the_session_part_unusable() {
        let lookup = |name: &str| match name {
            "SUPABASE_URL" => Some("https://ref.supabase.co".to_string()),
            "THIRD_PARTY_FIREBASE_PROJECT_ID" => Some("Bad Id".to_string()),
            _ => None,
        };
        let config = crate::config::Config::from_lookup(&lookup);
        let problems = config.session.unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            vec!["THIRD_PARTY_FIREBASE_PROJECT_ID"]
        );
        assert!(!problems[0].message.contains("Bad Id"), "values never appear in problems");
    }

    #[test]
    fn key_urls_are_https_or_http_to_a_loopback_host() {
        for url in [
            "https://a.example/jwks",
            "HTTPS://Keys.Example.COM:8443/jwks",
            "http://127.0.0.1:8080/x",
            "http://127.1.2.3/x",
            "http://localhost/x",
            "HTTP://LOCALHOST:8080/x",
            "http://[::1]:8080/",
            "http://[0:0:0:0:0:0:0:1]/x",
        ] {
            assert!(fetchable(url).is_ok(), "{url}");
        }
        for url in [
            "http://a.example/jwks",
            "http://127.0.0.1.evil.example/x",
            "http://localhost.evil/x",
            "http://128.0.0.1/x",
            "http://[::2]/x",
            "http://[::ffff:7f00:1]/x",
            "ftp://127.0.0.1/x",
            "file:///etc/passwd",
            "127.0.0.1/x",
            "https://",
            "https://a.example/a b",
        ] {
            assert!(fetchable(url).is_err(), "{url}");
        }
    }

    #[test]
    fn a_key_url_host_with_non_ascii_letters_is_refused_with_its_ascii_form_named_and_that_form_works() {
        for url in ["https://münchen.example/jwks", "https://例え.jp/.well-known/jwks.json"] {
            assert_eq!(
                fetchable(url).map(|u| u.to_string()),
                Err("is not a URL (a host name with non-ASCII letters must be given in its ASCII xn-- form)"),
                "{url}"
            );
        }
        assert_eq!(
            fetchable("https://xn--mnchen-3ya.example/jwks").map(|u| u.to_string()),
            Ok("https://xn--mnchen-3ya.example/jwks".to_string())
        );
        // Non-ASCII outside the host is percent-encoded, as fetch does.
        assert_eq!(
            fetchable("https://keys.example/ü").map(|u| u.to_string()),
            Ok("https://keys.example/%C3%BC".to_string())
        );
        assert_eq!(fetchable("https://").map(|u| u.to_string()), Err("is not a URL"));
    }

    #[test]
    fn key_urls_with_credentials_are_refused_whatever_their_host() {
        // The host is what follows the `@`: keys.example.com, over plain http.
        for url in [
            "http://localhost:80@keys.example.com/jwks",
            "http://127.0.0.1@keys.example.com/jwks",
            "http://user:pass@localhost/jwks",
            "https://user@keys.example.com/jwks",
            "https://:pw@keys.example.com/jwks",
        ] {
            assert_eq!(fetchable(url).map(|u| u.to_string()), Err("must not contain credentials (user@host)"), "{url}");
        }
        for name in [
            "THIRD_PARTY_FIREBASE_JWKS_URL",
            "THIRD_PARTY_OIDC_JWKS_URL",
            "THIRD_PARTY_OIDC_ISSUER",
            "THIRD_PARTY_WORKOS_ISSUER_URL",
        ] {
            let mut vars = vec![
                ("THIRD_PARTY_FIREBASE_PROJECT_ID", PROJECT),
                ("THIRD_PARTY_OIDC_ISSUER", "https://idp.example.com"),
                ("THIRD_PARTY_OIDC_AUDIENCE", "my-api"),
            ];
            vars.retain(|(n, _)| *n != name);
            vars.push((name, "http://localhost:80@keys.example.com/jwks"));
            if name == "THIRD_PARTY_WORKOS_ISSUER_URL" {
                vars.retain(|(n, _)| !n.starts_with("THIRD_PARTY_OIDC"));
            }
            let (_, problems) = read_vars(&vars);
            assert_eq!(problems.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec![name], "{problems:?}");
            assert!(
                problems[0].message.contains("credentials") && !problems[0].message.contains("keys.example.com"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn key_urls_are_fetched_in_their_parsed_form() {
        let issuer = only(&[
            ("THIRD_PARTY_FIREBASE_PROJECT_ID", PROJECT),
            ("THIRD_PARTY_FIREBASE_JWKS_URL", "HTTP://LocalHost:9999/jwks"),
        ]);
        assert_eq!(issuer.keys, KeySource::Jwks("http://localhost:9999/jwks".into()));
        let issuer = only(&[
            ("THIRD_PARTY_CLERK_DOMAIN", "clerk.example.com"),
            ("THIRD_PARTY_CLERK_JWKS_URL", "http://[::1]:8080"),
        ]);
        assert_eq!(issuer.keys, KeySource::Jwks("http://[::1]:8080/".into()));
        // An issuer is compared with `iss` exactly as set, so it is kept as set.
        let oidc = only(&[
            ("THIRD_PARTY_OIDC_ISSUER", "http://127.0.0.1:8080/realms/app"),
            ("THIRD_PARTY_OIDC_AUDIENCE", "my-api"),
        ]);
        assert_eq!(oidc.issuer, "http://127.0.0.1:8080/realms/app");
        assert_eq!(
            problem_names(&[
                ("THIRD_PARTY_OIDC_ISSUER", "https://idp.example.com/?tenant=1"),
                ("THIRD_PARTY_OIDC_AUDIENCE", "a")
            ]),
            vec!["THIRD_PARTY_OIDC_ISSUER"]
        );
    }

    #[test]
    fn discovered_jwks_uri_follows_the_same_url_rules() {
        let doc = |uri: &str| ok(json!({"issuer": OIDC, "jwks_uri": uri}));
        assert_eq!(jwks_uri(doc("https://keys.example.com/jwks"), OIDC), Ok("https://keys.example.com/jwks".into()));
        assert_eq!(jwks_uri(doc("http://[::1]:8080/jwks"), OIDC), Ok("http://[::1]:8080/jwks".into()));
        for uri in ["http://localhost:80@keys.example.com/jwks", "http://keys.example.com/jwks", "not a url"] {
            assert!(jwks_uri(doc(uri), OIDC).is_err(), "{uri}");
        }
    }

    #[test]
    fn oidc_audience_settings_without_the_issuer_are_problems_unless_they_read_as_the_default() {
        let names = |vars: &[(&str, &str)]| read_vars(vars).1.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&[("THIRD_PARTY_OIDC_AUDIENCE", "app")]), vec!["THIRD_PARTY_OIDC_AUDIENCE"]);
        assert_eq!(names(&[(ANY_AUDIENCE, "true")]), vec![ANY_AUDIENCE]);
        // The default written out (secrets.example lists it so) leaves the session part usable.
        assert!(names(&[(ANY_AUDIENCE, "false")]).is_empty());
    }

    #[test]
    fn generic_oidc_issuer_requires_an_audience() {
        let (_, problems) = read_vars(&[("THIRD_PARTY_OIDC_ISSUER", OIDC)]);
        assert_eq!(problems.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["THIRD_PARTY_OIDC_AUDIENCE"]);
        assert!(problems[0].message.contains(ANY_AUDIENCE), "names the opt-out: {problems:?}");
        // Reported with every other problem, and the session part is unusable.
        let lookup = |name: &str| match name {
            "SUPABASE_URL" => Some("https://ref.supabase.co".to_string()),
            "THIRD_PARTY_OIDC_ISSUER" => Some(OIDC.to_string()),
            "THIRD_PARTY_CLERK_DOMAIN" => Some("not a domain".to_string()),
            _ => None,
        };
        let config = crate::config::Config::from_lookup(&lookup);
        let names: Vec<String> = config.session.unwrap_err().into_iter().map(|p| p.name).collect();
        assert_eq!(names, vec!["THIRD_PARTY_CLERK_DOMAIN", "THIRD_PARTY_OIDC_AUDIENCE"]);
    }

    #[test]
    fn any_audience_only_with_the_dangerous_opt_out() {
        let issuer = only(&[("THIRD_PARTY_OIDC_ISSUER", OIDC), (ANY_AUDIENCE, "true")]);
        assert_eq!(issuer.audience, None);
        let mut v = verifier(&[
            ("THIRD_PARTY_OIDC_ISSUER", OIDC),
            (ANY_AUDIENCE, "true"),
            ("THIRD_PARTY_OIDC_JWKS_URL", LOCAL_JWKS),
        ]);
        let mut claims = oidc_claims();
        claims["aud"] = json!("another-client");
        let token = es256("e1", &claims);
        let step = v.plan(&token, NOW);
        v.accept(&step, jwks(vec![ec_jwk("e1")]), NOW);
        assert_eq!(v.verify(&token, NOW).unwrap().user_id, "oidc-user");
        // Both set contradict each other; the opt-out alone without an issuer is a problem too;
        // `false` is the same as unset.
        assert_eq!(
            problem_names(&[
                ("THIRD_PARTY_OIDC_ISSUER", OIDC),
                ("THIRD_PARTY_OIDC_AUDIENCE", "a"),
                (ANY_AUDIENCE, "true")
            ]),
            vec![ANY_AUDIENCE]
        );
        assert_eq!(problem_names(&[(ANY_AUDIENCE, "true")]), vec![ANY_AUDIENCE]);
        assert_eq!(
            problem_names(&[("THIRD_PARTY_OIDC_ISSUER", OIDC), (ANY_AUDIENCE, "false")]),
            vec!["THIRD_PARTY_OIDC_AUDIENCE"]
        );
        assert_eq!(
            problem_names(&[("THIRD_PARTY_OIDC_ISSUER", OIDC), (ANY_AUDIENCE, "perhaps")]),
            vec![ANY_AUDIENCE, "THIRD_PARTY_OIDC_AUDIENCE"]
        );
    }

    #[test]
    fn token_issued_to_another_client_of_the_oidc_issuer_is_refused() {
        let mut v = verifier(&[
            ("THIRD_PARTY_OIDC_ISSUER", OIDC),
            ("THIRD_PARTY_OIDC_AUDIENCE", "my-api"),
            ("THIRD_PARTY_OIDC_JWKS_URL", LOCAL_JWKS),
        ]);
        let mut claims = oidc_claims();
        let step = v.plan(&es256("e1", &claims), NOW);
        v.accept(&step, jwks(vec![ec_jwk("e1")]), NOW);
        for aud in [json!("another-client"), json!(["another-client"]), Value::Null] {
            match &aud {
                Value::Null => claims.as_object_mut().unwrap().remove("aud"),
                aud => claims.as_object_mut().unwrap().insert("aud".into(), aud.clone()),
            };
            assert_eq!(v.verify(&es256("e1", &claims), NOW), Err(SessionError::WrongAudience), "{aud}");
        }
    }

    // --- issuer selection and keys ----------------------------------------------------------

    #[test]
    fn firebase_token_verifies_and_its_user_id_is_the_firebase_uid() {
        let session = firebase().verify(&rs256("fb-1", &firebase_claims(PROJECT)), NOW).unwrap();
        assert_eq!(session.user_id, UID);
        assert_eq!(session.claims["email"], "fb@example.test");
    }

    #[test]
    fn a_third_party_token_whose_nbf_or_iat_is_not_a_number_is_refused_as_malformed() {
        let v = firebase();
        for claim in ["nbf", "iat"] {
            let mut claims = firebase_claims(PROJECT);
            claims[claim] = json!((NOW + 99_999).to_string());
            assert_eq!(
                v.verify(&rs256("fb-1", &claims), NOW),
                Err(SessionError::Malformed(format!("{claim} is not a number"))),
                "{claim}"
            );
        }
    }

    #[test]
    fn token_for_another_firebase_project_signed_with_the_shared_keys_is_refused() {
        let mut v = firebase();
        // Same Google key, other project: an issuer we do not serve. No fetch, refused.
        let other = rs256("fb-1", &firebase_claims("someone-elses-app"));
        assert_eq!(v.plan(&other, NOW + 1), Step::Ready);
        assert!(matches!(v.verify(&other, NOW + 1), Err(SessionError::WrongIssuer(_))));
        // Our issuer but their audience (a forged mix) fails the aud rule.
        let mut mixed = firebase_claims(PROJECT);
        mixed["aud"] = json!("someone-elses-app");
        assert_eq!(v.verify(&rs256("fb-1", &mixed), NOW), Err(SessionError::WrongAudience));
        mixed.as_object_mut().unwrap().remove("aud");
        assert_eq!(v.verify(&rs256("fb-1", &mixed), NOW), Err(SessionError::WrongAudience));
    }

    #[test]
    fn unknown_issuer_never_causes_a_fetch() {
        let mut v = verifier(&[("THIRD_PARTY_FIREBASE_PROJECT_ID", PROJECT)]);
        let mut claims = firebase_claims(PROJECT);
        for iss in [json!("https://evil.example"), json!(null)] {
            claims["iss"] = iss;
            let token = rs256("any", &claims);
            assert_eq!(v.plan(&token, NOW), Step::Ready, "not Supabase's JWKS either");
            assert!(matches!(v.verify(&token, NOW), Err(SessionError::WrongIssuer(_))));
        }
    }

    #[test]
    fn each_issuer_has_its_own_key_cache() {
        let mut v = firebase();
        // Supabase's own ES256 session still asks for Supabase's JWKS: Firebase's keys are apart.
        let supabase = es256("k1", &super::super::tests::user_claims());
        assert!(
            matches!(v.plan(&supabase, NOW), Step::FetchJwks(ref r) if r.url.ends_with("/auth/v1/.well-known/jwks.json"))
        );
        // A Supabase-issued claim set signed by a key only in Firebase's set is refused.
        let mut v = firebase_with(vec![rsa_jwk("fb-1")], &[]);
        v.accept_jwks(jwks(vec![ec_jwk("k1")]), NOW);
        let forged = rs256("fb-1", &super::super::tests::user_claims());
        assert!(v.verify(&forged, NOW).is_err());
    }

    #[test]
    fn hs256_claiming_a_third_party_issuer_is_refused_even_with_the_supabase_secret() {
        let v = firebase();
        let with_secret = hs256(&firebase_claims(PROJECT));
        assert!(matches!(v.verify(&with_secret, NOW), Err(SessionError::AlgorithmNotAllowed(_))));
        // The classic confusion: HMAC keyed with the provider's public key.
        let public_n = test_key().public_jwk("fb-1").n.unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("fb-1".into());
        let forged =
            jsonwebtoken::encode(&header, &firebase_claims(PROJECT), &EncodingKey::from_secret(public_n.as_bytes()))
                .unwrap();
        assert!(matches!(v.verify(&forged, NOW), Err(SessionError::AlgorithmNotAllowed(_))));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &firebase_claims(PROJECT),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs512, NOW), Err(SessionError::AlgorithmNotAllowed(_))));
    }

    #[test]
    fn es256_token_against_the_providers_rsa_key_is_a_key_mismatch() {
        let v = firebase();
        assert!(matches!(v.verify(&es256("fb-1", &firebase_claims(PROJECT)), NOW), Err(SessionError::KeyMismatch(_))));
    }

    #[test]
    fn rotation_at_the_provider_refetches_once_then_rate_limits() {
        let mut v = firebase();
        let rotated = rs256("fb-2", &firebase_claims(PROJECT));
        let step = v.plan(&rotated, NOW + 1);
        assert!(matches!(&step, Step::FetchIssuerKeys { request, .. } if request.url == LOCAL_JWKS), "{step:?}");
        v.accept(&step, jwks(vec![rsa_jwk("fb-1")]), NOW + 1);
        // Not yet published: invalid now, and the next refetch waits.
        assert_eq!(v.verify(&rotated, NOW + 1), Err(SessionError::UnknownKey("fb-2".into())));
        let held = v.plan(&rotated, NOW + 5);
        assert_eq!(held, Step::RefetchSuppressed);
        let error = v.begin(&rotated, NOW + 5).map(|_| ()).map_err(|e| v.explain(&rotated, &held, e)).unwrap_err();
        assert!(matches!(error, SessionError::KeysUnavailable(_)), "try again (503), not invalid");
        let step = v.plan(&rotated, NOW + 31);
        v.accept(&step, jwks(vec![rsa_jwk("fb-1"), rsa_jwk("fb-2")]), NOW + 31);
        assert_eq!(v.verify(&rotated, NOW + 31).unwrap().user_id, UID);
    }

    #[test]
    fn provider_keys_are_refetched_after_the_cache_time_and_failures_back_off() {
        let mut v = firebase();
        let token = rs256("fb-1", &firebase_claims(PROJECT));
        assert_eq!(v.plan(&token, NOW + 599), Step::Ready);
        let step = v.plan(&token, NOW + 600);
        assert!(matches!(step, Step::FetchIssuerKeys { .. }));
        v.accept(&step, Err(TransportError::no_answer("refused")), NOW + 600);
        assert!(
            matches!(v.verify(&token, NOW + 600), Err(SessionError::KeysUnavailable(_))),
            "a stale copy is not trusted"
        );
        assert_eq!(v.plan(&token, NOW + 600), Step::RefetchSuppressed, "backing off");
        assert!(matches!(v.plan(&token, NOW + 601), Step::FetchIssuerKeys { .. }));
    }

    // --- OpenID discovery -----------------------------------------------------------------

    const OIDC: &str = "https://idp.example.com";

    fn oidc_claims() -> Value {
        json!({"iss": OIDC, "aud": ["my-api", "other"], "sub": "oidc-user", "role": "authenticated", "iat": NOW, "exp": NOW + 60})
    }

    #[test]
    fn discovery_document_leads_to_its_jwks_uri() {
        let mut v = verifier(&[("THIRD_PARTY_OIDC_ISSUER", OIDC), ("THIRD_PARTY_OIDC_AUDIENCE", "my-api")]);
        let token = es256("e1", &oidc_claims());
        let step = v.plan(&token, NOW);
        assert!(
            matches!(&step, Step::Discover { request, .. } if request.url == "https://idp.example.com/.well-known/openid-configuration"),
            "{step:?}"
        );
        let next = v.accept(&step, ok(json!({"issuer": OIDC, "jwks_uri": "https://keys.example.com/jwks"})), NOW);
        assert!(
            matches!(&next, Step::FetchIssuerKeys { request, .. } if request.url == "https://keys.example.com/jwks"),
            "{next:?}"
        );
        assert_eq!(v.accept(&next, jwks(vec![ec_jwk("e1")]), NOW), Step::Ready);
        assert_eq!(v.verify(&token, NOW).unwrap().user_id, "oidc-user");
        // The jwks_uri is remembered: an unknown kid later refetches the keys, not the document.
        let step = v.plan(&es256("e2", &oidc_claims()), NOW + 1);
        assert!(
            matches!(&step, Step::FetchIssuerKeys { request, .. } if request.url == "https://keys.example.com/jwks"),
            "{step:?}"
        );
        // The configured audience is required.
        let mut claims = oidc_claims();
        claims["aud"] = json!("not-my-api");
        assert_eq!(v.verify(&es256("e1", &claims), NOW), Err(SessionError::WrongAudience));
    }

    #[test]
    fn discovery_and_its_key_fetch_are_one_flight_for_concurrent_requests() {
        let mut v = verifier(&[("THIRD_PARTY_OIDC_ISSUER", OIDC), ("THIRD_PARTY_OIDC_AUDIENCE", "my-api")]);
        let token = es256("e1", &oidc_claims());
        let discover = v.plan(&token, NOW);
        assert!(matches!(discover, Step::Discover { .. }), "{discover:?}");
        let wait = v.plan(&token, NOW);
        assert!(matches!(wait, Step::Wait { keys: KeySet::Issuer(0), .. }), "{wait:?}");
        let fetch = v.accept(&discover, ok(json!({"issuer": OIDC, "jwks_uri": "https://keys.example.com/jwks"})), NOW);
        assert!(matches!(fetch, Step::FetchIssuerKeys { .. }));
        assert!(matches!(v.plan(&token, NOW), Step::Wait { .. }), "still one flight between the two fetches");
        // Another key set is another flight.
        assert!(matches!(v.plan(&es256("k1", &super::super::tests::user_claims()), NOW), Step::FetchJwks(_)));
        v.accept(&fetch, jwks(vec![ec_jwk("e1")]), NOW);
        assert_eq!(v.after_wait(&token, NOW, &wait, true), Step::Ready);
        assert_eq!(v.verify(&token, NOW).unwrap().user_id, "oidc-user");
    }

    #[test]
    fn discovery_naming_another_issuer_or_an_http_jwks_uri_is_refused_and_backs_off() {
        for doc in [
            json!({"issuer": "https://evil.example", "jwks_uri": "https://keys.example.com/jwks"}),
            json!({"issuer": OIDC, "jwks_uri": "http://keys.example.com/jwks"}),
            json!({"issuer": OIDC}),
        ] {
            let mut v = verifier(&[("THIRD_PARTY_OIDC_ISSUER", OIDC), ("THIRD_PARTY_OIDC_AUDIENCE", "my-api")]);
            let token = es256("e1", &oidc_claims());
            let step = v.plan(&token, NOW);
            assert_eq!(v.accept(&step, ok(doc.clone()), NOW), Step::Ready, "no JWKS fetch for {doc}");
            assert!(matches!(v.verify(&token, NOW), Err(SessionError::KeysUnavailable(_))), "{doc}");
            assert_eq!(v.plan(&token, NOW), Step::RefetchSuppressed, "backing off after {doc}");
        }
    }

    #[test]
    fn failed_fetch_from_a_discovered_jwks_uri_discovers_again() {
        let mut v = verifier(&[("THIRD_PARTY_OIDC_ISSUER", OIDC), ("THIRD_PARTY_OIDC_AUDIENCE", "my-api")]);
        let token = es256("e1", &oidc_claims());
        let step = v.plan(&token, NOW);
        let next = v.accept(&step, ok(json!({"issuer": OIDC, "jwks_uri": "https://keys.example.com/old"})), NOW);
        v.accept(&next, Ok(HttpResponse { status: 404, headers: vec![], body: String::new() }), NOW);
        assert!(matches!(v.plan(&token, NOW + 2), Step::Discover { .. }));
    }

    // --- claims -----------------------------------------------------------------------------

    fn firebase_verify(claims: Value) -> Result<String, SessionError> {
        firebase().verify(&rs256("fb-1", &claims), NOW).map(|s| s.user_id)
    }

    fn changed(field: &str, value: Value) -> Value {
        let mut claims = firebase_claims(PROJECT);
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(field),
            value => claims.as_object_mut().unwrap().insert(field.into(), value),
        };
        claims
    }

    #[test]
    fn expired_and_future_third_party_tokens_are_refused_with_the_same_leeway() {
        assert_eq!(firebase_verify(changed("exp", json!(NOW - 31))), Err(SessionError::Expired));
        assert!(firebase_verify(changed("exp", json!(NOW - 29))).is_ok());
        assert!(matches!(firebase_verify(changed("exp", Value::Null)), Err(SessionError::Malformed(_))));
        assert_eq!(firebase_verify(changed("iat", json!(NOW + 120))), Err(SessionError::NotYetValid));
        assert_eq!(firebase_verify(changed("nbf", json!(NOW + 120))), Err(SessionError::NotYetValid));
    }

    #[test]
    fn third_party_token_needs_a_subject() {
        assert_eq!(firebase_verify(changed("sub", Value::Null)), Err(SessionError::NoSubject));
        assert_eq!(firebase_verify(changed("sub", json!(" "))), Err(SessionError::NoSubject));
    }

    #[test]
    fn role_must_be_authenticated_and_a_missing_role_is_refused_by_default() {
        for role in [json!("anon"), json!("service_role"), json!("admin"), json!(["authenticated"])] {
            assert!(
                matches!(firebase_verify(changed("role", role.clone())), Err(SessionError::RoleNotAllowed(_))),
                "{role}"
            );
        }
        assert!(matches!(firebase_verify(changed("role", Value::Null)), Err(SessionError::RoleNotAllowed(_))));
        let api = crate::error::ApiError::Session(SessionError::RoleNotAllowed("x".into()));
        assert_eq!((api.status(), api.code(), api.message().as_str()), (401, "session_invalid", "Unauthorized"));
    }

    #[test]
    fn missing_role_passes_only_with_allow_missing_role() {
        let v = firebase_with(vec![rsa_jwk("fb-1")], &[("THIRD_PARTY_ALLOW_MISSING_ROLE", "true")]);
        assert_eq!(v.verify(&rs256("fb-1", &changed("role", Value::Null)), NOW).unwrap().user_id, UID);
        assert!(matches!(
            v.verify(&rs256("fb-1", &changed("role", json!("service_role"))), NOW),
            Err(SessionError::RoleNotAllowed(_))
        ));
    }

    #[test]
    fn remote_auth_check_is_never_asked_about_third_party_tokens() {
        let mut v = firebase();
        v.settings.remote_check = true;
        assert_eq!(v.remote_check_request(&rs256("fb-1", &firebase_claims(PROJECT))), None);
        assert!(v.remote_check_request(&hs256(&super::super::tests::user_claims())).is_some());
    }

    #[test]
    fn provider_token_shapes_verify_with_their_real_iss_and_aud_formats() {
        let cases: Vec<(&[(&str, &str)], Value)> = vec![
            (
                &[
                    ("THIRD_PARTY_AUTH0_TENANT", "my-tenant"),
                    ("THIRD_PARTY_AUTH0_TENANT_REGION", "eu"),
                    ("THIRD_PARTY_AUTH0_JWKS_URL", LOCAL_JWKS),
                ],
                json!({"iss": "https://my-tenant.eu.auth0.com/", "sub": "auth0|65f0", "aud": ["https://api.example.com", "https://my-tenant.eu.auth0.com/userinfo"], "azp": "x", "role": "authenticated", "iat": NOW, "exp": NOW + 60}),
            ),
            (
                &[
                    ("THIRD_PARTY_AWS_COGNITO_USER_POOL_ID", "us-east-1_AbC123"),
                    ("THIRD_PARTY_AWS_COGNITO_JWKS_URL", LOCAL_JWKS),
                ],
                json!({"iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbC123", "sub": "3f1c2b4a-1111-4a2b-9c3d-5e6f7a8b9c0d", "token_use": "access", "client_id": "abc", "role": "authenticated", "iat": NOW, "exp": NOW + 60}),
            ),
            (
                &[("THIRD_PARTY_CLERK_DOMAIN", "clerk.example.com"), ("THIRD_PARTY_CLERK_JWKS_URL", LOCAL_JWKS)],
                json!({"iss": "https://clerk.example.com", "sub": "user_2abc", "azp": "https://app.example.com", "sid": "sess_1", "role": "authenticated", "iat": NOW, "nbf": NOW - 5, "exp": NOW + 60}),
            ),
            (
                &[
                    ("THIRD_PARTY_WORKOS_ISSUER_URL", "https://api.workos.com/user_management/client_01"),
                    ("THIRD_PARTY_WORKOS_JWKS_URL", LOCAL_JWKS),
                ],
                json!({"iss": "https://api.workos.com/user_management/client_01", "sub": "user_01H", "sid": "session_01", "role": "authenticated", "iat": NOW, "exp": NOW + 60}),
            ),
        ];
        for (vars, claims) in cases {
            let mut v = verifier(vars);
            let token = rs256("p-1", &claims);
            let step = v.plan(&token, NOW);
            assert!(matches!(&step, Step::FetchIssuerKeys { request, .. } if request.url == LOCAL_JWKS), "{step:?}");
            v.accept(&step, jwks(vec![rsa_jwk("p-1")]), NOW);
            assert_eq!(v.verify(&token, NOW).unwrap().user_id, claims["sub"].as_str().unwrap(), "{vars:?}");
            // The same claims under a sibling issuer (another tenant/pool/domain) are refused.
            let mut other = claims.clone();
            other["iss"] = json!(format!("{}x", claims["iss"].as_str().unwrap()));
            assert!(matches!(v.verify(&rs256("p-1", &other), NOW), Err(SessionError::WrongIssuer(_))), "{vars:?}");
        }
    }
}
