//! Browser state at the issuer: the session cookie and the CSRF cookie.
//!
//! - **Session**: after a successful sign-in, `scopegate_session` holds 256 random bits;
//!   the store keeps only their SHA-256 with the subject, `auth_time` and expiry
//!   (`issuer.session.lifetime`, default 24h). `HttpOnly`, `SameSite=Lax`, `Path=` the issuer's path, and
//!   `Secure` when the request came over TLS or the issuer URL is https. Signing in
//!   always starts a new session (no fixation); `/logout` deletes it.
//! - **CSRF**: every page with a form sets `scopegate_csrf` (random, per browser, before
//!   any session) if missing and puts the same value in a hidden `csrf_token` field; a
//!   posted form must carry both, equal (compared in constant time), and, when the
//!   browser sends `Origin`, come from the issuer's own origin.
//!
//! Session ids and CSRF tokens are never logged.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, StatusCode};
use subtle::ConstantTimeEq;

use super::form::Form;
use super::mint::random_token;
use super::model::{Model, User};
use super::pages::Refused;
use super::store::{SessionRecord, secret_hash};
use super::{Issuer, throttle};
use crate::error::{OAuthCode, OAuthError};

pub const SESSION_COOKIE: &str = "scopegate_session";
pub const CSRF_COOKIE: &str = "scopegate_csrf";
/// The hidden form field that carries the CSRF token.
pub const CSRF_FIELD: &str = "csrf_token";

/// The value of the cookie `name`, if the request has exactly one such cookie.
///
/// ```
/// use http::HeaderMap;
/// use scopegate::issuer::session::cookie;
/// let mut headers = HeaderMap::new();
/// headers.append("cookie", "a=1; scopegate_csrf=xyz".parse().unwrap());
/// headers.append("cookie", "b=2".parse().unwrap());
/// assert_eq!(cookie(&headers, "scopegate_csrf"), Some("xyz"));
/// assert_eq!(cookie(&headers, "b"), Some("2"));
/// assert_eq!(cookie(&headers, "c"), None);
/// ```
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = None;
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let Some((n, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if n == name {
                if found.is_some() {
                    // Two cookies of one name (e.g. planted for another path): trust neither.
                    return None;
                }
                found = Some(v.trim_matches('"'));
            }
        }
    }
    found.filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value for one of the issuer's cookies. `max_age`: `None` for a
/// browser-session cookie, `Some(0)` to delete it.
pub fn set_cookie(
    model: &Model,
    tls: bool,
    name: &str,
    value: &str,
    max_age: Option<u64>,
) -> Option<HeaderValue> {
    let mut text = format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Lax",
        model.cookie_path
    );
    if let Some(seconds) = max_age {
        text.push_str(&format!("; Max-Age={seconds}"));
    }
    if tls || model.https {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).ok()
}

/// Adds `Set-Cookie` headers to an answer.
pub fn add_cookies(
    response: &mut http::Response<crate::http::Body>,
    cookies: impl IntoIterator<Item = HeaderValue>,
) {
    for value in cookies {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, value);
    }
}

/// The browser's CSRF token, and the `Set-Cookie` to send if it had none.
pub fn csrf_token(
    model: &Model,
    headers: &HeaderMap,
    tls: bool,
) -> Result<(String, Option<HeaderValue>), OAuthError> {
    if let Some(existing) = cookie(headers, CSRF_COOKIE)
        && existing.len() >= 32
        && existing
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Ok((existing.to_string(), None));
    }
    let token = random_token(32)?;
    let set = set_cookie(model, tls, CSRF_COOKIE, &token, None);
    Ok((token, set))
}

/// Checks a posted form against the CSRF cookie (and `Origin`, when sent).
pub fn check_csrf(model: &Model, headers: &HeaderMap, form: &Form) -> Result<(), OAuthError> {
    let refused = || {
        OAuthError::new(
            OAuthCode::AccessDenied,
            "this form has expired or was not sent from this site",
        )
    };
    if let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        && origin != "null"
        && !same_origin(model, headers, origin)
    {
        return Err(refused());
    }
    let (Some(cookie), Some(field)) = (cookie(headers, CSRF_COOKIE), form.get(CSRF_FIELD)) else {
        return Err(refused());
    };
    if cookie.len() < 32 || !bool::from(cookie.as_bytes().ct_eq(field.as_bytes())) {
        return Err(refused());
    }
    Ok(())
}

/// True if `origin` is the issuer's origin, or the origin the request was sent to.
fn same_origin(model: &Model, headers: &HeaderMap, origin: &str) -> bool {
    let issuer_origin = model
        .base_url
        .find("://")
        .and_then(|scheme_end| {
            let rest = &model.base_url[scheme_end + 3..];
            rest.find('/')
                .map(|slash| &model.base_url[..scheme_end + 3 + slash])
        })
        .unwrap_or(&model.base_url);
    if origin.eq_ignore_ascii_case(issuer_origin) {
        return true;
    }
    let Some(authority) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

/// The neutral answer to a wrong username or password (whether or not the user exists).
pub const WRONG_LOGIN: &str = "Wrong username or password.";
/// The answer while the username or the client's address is locked out.
pub const LOCKED_OUT: &str =
    "Too many failed sign-in attempts. Wait a few minutes, then try again.";

/// A sign-in (or code) form refused while locked out: 429 with `Retry-After`.
pub fn locked_out(seconds: u64) -> Refused {
    Refused {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: LOCKED_OUT,
        retry_after: Some(seconds),
    }
}

/// A browser that has just signed in.
#[derive(Debug)]
pub struct SignedIn<'m> {
    pub user: &'m User,
    pub auth_time: i64,
    pub set_cookie: Option<HeaderValue>,
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session<'m> {
    pub user: &'m User,
    pub auth_time: i64,
    /// The store key of the session (the hash of the cookie value).
    pub hash: String,
}

/// The request's session: its cookie names an unexpired session of a user who
/// still exists.
pub async fn current<'i>(
    issuer: &'i Issuer,
    headers: &HeaderMap,
) -> Result<Option<Session<'i>>, OAuthError> {
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let hash = secret_hash(id);
    let Some(record) = issuer.core.store.find_session(&hash, issuer.now()).await? else {
        return Ok(None);
    };
    Ok(issuer
        .model
        .user_by_subject(&record.subject)
        .map(|user| Session {
            user,
            auth_time: record.auth_time,
            hash,
        }))
}

/// Starts a session for `user`, signed in now, ending the browser's previous one if
/// any. Returns its `auth_time` and the `Set-Cookie` value.
pub async fn start(
    issuer: &Issuer,
    headers: &HeaderMap,
    user: &User,
    tls: bool,
) -> Result<(i64, Option<HeaderValue>), OAuthError> {
    let store = &issuer.core.store;
    if let Some(old) = cookie(headers, SESSION_COOKIE) {
        store.delete_session(&secret_hash(old)).await?;
    }
    let id = random_token(32)?;
    let now = issuer.now();
    let ttl = issuer.config().session.lifetime.get().as_secs();
    store
        .insert_session(&SessionRecord {
            session_hash: secret_hash(&id),
            subject: user.subject.clone(),
            auth_time: now,
            created_at: now,
            expires_at: now + ttl as i64,
        })
        .await?;
    tracing::info!(subject = %user.subject, "signed in at the issuer");
    Ok((
        now,
        set_cookie(&issuer.model, tls, SESSION_COOKIE, &id, Some(ttl)),
    ))
}

/// Checks a sign-in form (`username`, `password`), throttled exactly as the password
/// grant is (per username and per IP, in the store), and on success starts a session.
/// `Ok(Err(_))` is a refusal to show on the page; `Err` a store failure.
pub async fn sign_in<'i>(
    issuer: &'i Issuer,
    headers: &HeaderMap,
    form: &Form,
    remote: IpAddr,
    tls: bool,
) -> Result<Result<SignedIn<'i>, Refused>, OAuthError> {
    let (Some(login), Some(password)) = (form.get("username"), form.get("password")) else {
        return Ok(Err(Refused::bad_request(
            "Enter your username and your password.",
        )));
    };
    let keys = throttle::Keys::new(login, remote);
    if let Err(err) = throttle::check(issuer, &keys).await {
        return match err.retry_after {
            Some(seconds) => Ok(Err(locked_out(seconds))),
            None => Err(err),
        };
    }
    let user = issuer.model.user_by_login(login);
    let hash = user.map(|u| u.config.password_hash.clone());
    let verified = issuer.verify_password(hash, password).await;
    let Some(user) = user.filter(|_| verified) else {
        throttle::failed(issuer, &keys).await?;
        // 200, not 401: this is a page, not an HTTP authentication challenge.
        return Ok(Err(Refused {
            status: StatusCode::OK,
            message: WRONG_LOGIN,
            retry_after: None,
        }));
    };
    throttle::succeeded(issuer, &keys).await?;
    let (auth_time, set_cookie) = start(issuer, headers, user, tls).await?;
    Ok(Ok(SignedIn {
        user,
        auth_time,
        set_cookie,
    }))
}

/// Ends the browser's session (if any) and returns the `Set-Cookie` that deletes it.
pub async fn end(
    issuer: &Issuer,
    headers: &HeaderMap,
    tls: bool,
) -> Result<Option<HeaderValue>, OAuthError> {
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        issuer
            .core
            .store
            .end_session(&secret_hash(id), issuer.now())
            .await?;
    }
    Ok(set_cookie(&issuer.model, tls, SESSION_COOKIE, "", Some(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn model(url: &str) -> Model {
        let yaml = format!("issuer:\n  url: {url}\n");
        let config = Config::from_yaml_with_env(&yaml, |_| None).unwrap();
        Model::new(config.issuer.as_ref().unwrap())
    }

    #[test]
    fn cookies_are_secure_over_tls_or_for_an_https_issuer() {
        let plain = model("http://127.0.0.1:8080/auth/");
        let cookie = set_cookie(&plain, false, SESSION_COOKIE, "v", Some(60)).unwrap();
        assert_eq!(
            cookie,
            "scopegate_session=v; Path=/auth; HttpOnly; SameSite=Lax; Max-Age=60"
        );
        let over_tls = set_cookie(&plain, true, CSRF_COOKIE, "v", None).unwrap();
        assert!(over_tls.to_str().unwrap().ends_with("; Secure"));
        let https = model("https://id.example.com/");
        let cookie = set_cookie(&https, false, SESSION_COOKIE, "", Some(0)).unwrap();
        assert_eq!(
            cookie,
            "scopegate_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure"
        );
    }

    #[test]
    fn csrf_needs_the_cookie_the_field_and_a_same_origin() {
        let model = model("https://id.example.com/");
        let token = "t".repeat(43);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            format!("{CSRF_COOKIE}={token}").parse().unwrap(),
        );
        let form = Form::parse(format!("{CSRF_FIELD}={token}").as_bytes()).unwrap();
        assert!(check_csrf(&model, &headers, &form).is_ok());
        assert!(check_csrf(&model, &headers, &Form::default()).is_err());
        let other = Form::parse(format!("{CSRF_FIELD}={}", "u".repeat(43)).as_bytes()).unwrap();
        assert!(check_csrf(&model, &headers, &other).is_err());
        assert!(check_csrf(&model, &HeaderMap::new(), &form).is_err());
        headers.insert(
            http::header::ORIGIN,
            "https://id.example.com".parse().unwrap(),
        );
        assert!(check_csrf(&model, &headers, &form).is_ok());
        headers.insert(
            http::header::ORIGIN,
            "https://evil.example.com".parse().unwrap(),
        );
        assert!(check_csrf(&model, &headers, &form).is_err());
    }
}
