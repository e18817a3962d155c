//! The device authorization grant (RFC 8628), the parts a person and a device see:
//! `POST /oauth/device/code` (the device asks) and `/activate` (the person approves).
//! Polling is the `urn:ietf:params:oauth:grant-type:device_code` grant of the token
//! endpoint ([`super::token`]).
//!
//! - The device authenticates as at the token endpoint (public clients by `client_id`)
//!   and must be allowed the device_code grant. It gets a `device_code` (256 random
//!   bits, stored hashed), a `user_code` of 8 letters from a consonant alphabet (no
//!   vowels, so no words; ~34 bits; shown `XXXX-XXXX`, compared case-insensitively
//!   without the dash), `verification_uri` (`<issuer>activate`),
//!   `verification_uri_complete`, `expires_in` (`issuer.device.ttl`) and `interval`
//!   (`issuer.device.interval`).
//! - `/activate` takes the code (prefilled from `?user_code=`, still to be confirmed by
//!   a click, so a link alone approves nothing), then the same sign-in as `/authorize`
//!   (or the existing session), then a confirmation page with Approve and Deny. Every
//!   form is CSRF protected. Unknown codes are counted per client address and throttled
//!   like passwords (`issuer.throttle`).
//! - The scopes are decided when the tokens are issued, as for every user grant.

use std::net::IpAddr;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Response};
use serde::Serialize;

use super::client_auth::{self, Requirement};
use super::form::{self, Form};
use super::mint::{self, random_token};
use super::model::Client;
use super::pages::{self, Refused};
use super::session::{self, Session};
use super::store::{DeviceRecord, DeviceStatus, secret_hash};
use super::{Issuer, throttle};
use crate::config::issuer::GrantType;
use crate::error::{OAuthCode, OAuthError};
use crate::http::{Body, ConnInfo};

/// The letters of user codes: consonants only, none easily confused.
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
const USER_CODE_LEN: usize = 8;

/// A new user code, 8 letters (stored without the dash).
pub fn new_user_code() -> Result<String, OAuthError> {
    let mut out = String::with_capacity(USER_CODE_LEN);
    while out.len() < USER_CODE_LEN {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| OAuthError::server_error())?;
        // 240 = 12 × 20: rejecting the rest keeps every letter equally likely.
        for b in bytes.iter().filter(|&&b| b < 240) {
            if out.len() == USER_CODE_LEN {
                break;
            }
            out.push(char::from(USER_CODE_ALPHABET[usize::from(b % 20)]));
        }
    }
    Ok(out)
}

/// A typed user code as stored: upper-cased, without dashes or spaces; `None` unless
/// it is 8 letters of the alphabet.
///
/// ```
/// use scopegate::issuer::device::{display_user_code, normalize_user_code};
/// assert_eq!(normalize_user_code(" bcdf-ghjk ").as_deref(), Some("BCDFGHJK"));
/// assert_eq!(normalize_user_code("BCDFGHJKL"), None);
/// assert_eq!(normalize_user_code("ABCD-EFGH"), None); // vowels are never used
/// assert_eq!(display_user_code("BCDFGHJK"), "BCDF-GHJK");
/// ```
pub fn normalize_user_code(typed: &str) -> Option<String> {
    let code: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)))
        .then_some(code)
}

/// A stored user code as people read it: `XXXX-XXXX`.
pub fn display_user_code(code: &str) -> String {
    match code.split_at_checked(USER_CODE_LEN / 2) {
        Some((a, b)) => format!("{a}-{b}"),
        None => code.to_string(),
    }
}

/// The device authorization response (RFC 8628 §3.2).
#[derive(Debug, Serialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: String,
    expires_in: u64,
    interval: u64,
}

/// `POST /oauth/device/code`, after the form has been read.
pub async fn authorization(issuer: &Issuer, headers: &HeaderMap, form: &Form) -> Response<Body> {
    match start(issuer, headers, form).await {
        Ok(answer) => crate::http::no_store_json(serde_json::to_vec(&answer).unwrap_or_default()),
        Err(err) => {
            issuer
                .core
                .metrics
                .token_errors_total
                .with_label_values(&[GrantType::DeviceCode.as_str(), err.code.as_str()])
                .inc();
            err.into_response()
        }
    }
}

async fn start(
    issuer: &Issuer,
    headers: &HeaderMap,
    form: &Form,
) -> Result<DeviceAuthorization, OAuthError> {
    let model = &issuer.model;
    let url = issuer.endpoint_url(super::Endpoint::DeviceCode);
    let client =
        client_auth::authenticate(issuer, headers, form, &url, Requirement::AnyClient).await?;
    if !client.may_use(GrantType::DeviceCode) {
        return Err(OAuthError::new(
            OAuthCode::UnauthorizedClient,
            "this client may not use the device_code grant",
        ));
    }
    let api = mint::resolve_audience(model, form)?;
    let scope = mint::requested_scopes(form.get("scope"))?.join(" ");
    let device_code = random_token(32)?;
    let now = issuer.now();
    let ttl = model.device_ttl.as_secs();
    let interval = model.device_interval.as_secs();
    // A clash with a live user code is unlikely (1 in 2^34 per live code); retry if so.
    let mut attempts = 0;
    let user_code = loop {
        let user_code = new_user_code()?;
        let record = DeviceRecord {
            device_code_hash: secret_hash(&device_code),
            user_code: user_code.clone(),
            client_id: client.client_id.clone(),
            audience: api.map(|a| a.identifier.clone()),
            scope: scope.clone(),
            status: DeviceStatus::Pending,
            subject: None,
            auth_time: None,
            created_at: now,
            expires_at: now + ttl as i64,
            interval_secs: interval as i64,
            last_polled_at: None,
        };
        match issuer.core.store.insert_device_code(&record).await {
            Ok(()) => break user_code,
            Err(err) if attempts >= 2 => return Err(err.into()),
            Err(_) => attempts += 1,
        }
    };
    let shown = display_user_code(&user_code);
    let verification_uri = format!("{}activate", model.base_url);
    Ok(DeviceAuthorization {
        device_code,
        verification_uri_complete: format!(
            "{verification_uri}?{}",
            form::encode([("user_code", shown.as_str())])
        ),
        user_code: shown,
        verification_uri,
        expires_in: ttl,
        interval,
    })
}

/// `/activate`: GET shows the code form; POST takes the code, the sign-in, the decision.
pub async fn activate<B>(issuer: &Issuer, parts: &Parts, body: B, conn: ConnInfo) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let brand = &issuer.model.login_title;
    if parts.method != Method::POST {
        let query = Form::parse(parts.uri.query().unwrap_or("").as_bytes()).unwrap_or_default();
        let typed = query.get("user_code").unwrap_or("");
        return entry(issuer, &parts.headers, conn, typed, None);
    }
    let posted = match form::read(&parts.headers, body).await {
        Ok(form) => form,
        Err(err) => return err.into_page(brand),
    };
    match activate_post(issuer, &parts.headers, conn, &posted).await {
        Ok(response) => response,
        Err(err) => err.into_page(brand),
    }
}

/// What a posted `/activate` form comes to: the code, then the sign-in (here, or the
/// session's), then the decision.
async fn activate_post(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    posted: &Form,
) -> Result<Response<Body>, OAuthError> {
    session::check_csrf(&issuer.model, headers, posted)?;
    let typed = posted.get("user_code").unwrap_or("");
    let (code, device, client) = match find_pending(issuer, conn.remote.ip(), typed).await? {
        Ok(found) => found,
        Err(refused) => return Ok(entry(issuer, headers, conn, typed, Some(refused))),
    };
    let shown = display_user_code(&code);
    if posted.get("username").is_some() || posted.get("password").is_some() {
        return sign_in_here(issuer, headers, conn, posted, &device, client, &shown).await;
    }
    let Some(session) = session::current(issuer, headers).await? else {
        return login(issuer, headers, conn, client, &shown, None, None);
    };
    match posted.get("decision") {
        None => confirm(issuer, headers, conn, &device, client, &session, &shown),
        Some(decision @ ("approve" | "deny")) => {
            let approve = decision == "approve";
            decide(issuer, headers, conn, &code, client, &session, approve).await
        }
        Some(_) => Err(OAuthError::invalid_request(
            "decision must be approve or deny",
        )),
    }
}

/// The pending, unexpired device authorization a typed code names, with its code as
/// stored and its client; `Ok(Err(_))` is why the code form is shown again. Unknown
/// codes count against the address (guessing is throttled like passwords).
async fn find_pending<'m>(
    issuer: &'m Issuer,
    remote: IpAddr,
    typed: &str,
) -> Result<Result<(String, DeviceRecord, &'m Client), Refused>, OAuthError> {
    let model = &issuer.model;
    let guess_key = throttle::user_code_key(remote);
    if let Err(err) = throttle::check_key(issuer, &guess_key).await {
        let Some(seconds) = err.retry_after else {
            return Err(err);
        };
        return Ok(Err(session::locked_out(seconds)));
    }
    let Some(code) = normalize_user_code(typed) else {
        return Ok(Err(Refused::bad_request(
            "Enter the code your device shows: 8 letters, like BCDF-GHJK.",
        )));
    };
    let device = issuer.core.store.find_device_by_user_code(&code).await?;
    let now = issuer.now();
    let live = device
        .as_ref()
        .filter(|d| d.status == DeviceStatus::Pending && d.expires_at > now);
    let client = live.and_then(|d| model.clients.get(&d.client_id));
    let (Some(live), Some(client)) = (live, client) else {
        if device.is_none() {
            throttle::failed_key(issuer, &guess_key).await?;
        }
        return Ok(Err(Refused::bad_request(
            "That code is not valid, or it has expired or been used. Check your device and try again.",
        )));
    };
    Ok(Ok((code, live.clone(), client)))
}

/// The sign-in form posted on the way: the confirmation page once signed in, else the
/// sign-in page again with why.
async fn sign_in_here(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    posted: &Form,
    device: &DeviceRecord,
    client: &Client,
    shown: &str,
) -> Result<Response<Body>, OAuthError> {
    match session::sign_in(issuer, headers, posted, conn.remote.ip(), conn.tls).await? {
        Ok(signed) => {
            let session = Session {
                user: signed.user,
                auth_time: signed.auth_time,
                hash: String::new(),
            };
            let mut response = confirm(issuer, headers, conn, device, client, &session, shown)?;
            session::add_cookies(&mut response, signed.set_cookie);
            Ok(response)
        }
        Err(refused) => login(
            issuer,
            headers,
            conn,
            client,
            shown,
            Some(refused),
            posted.get("username"),
        ),
    }
}

/// Records the signed-in person's decision, if the code is still pending.
async fn decide(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    code: &str,
    client: &Client,
    session: &Session<'_>,
    approve: bool,
) -> Result<Response<Body>, OAuthError> {
    let subject = approve.then_some(session.user.subject.as_str());
    let now = issuer.now();
    let store = &issuer.core.store;
    if !store
        .decide_device(code, subject, session.auth_time, now)
        .await?
    {
        let refused =
            Refused::bad_request("That code has expired or been used. Start again on your device.");
        return Ok(entry(issuer, headers, conn, code, Some(refused)));
    }
    tracing::info!(client_id = %client.client_id, subject = %session.user.subject, approved = approve, "device authorization decided");
    let brand = &issuer.model.login_title;
    Ok(if approve {
        pages::notice(
            brand,
            "Device connected",
            &format!(
                "{} can now use your account. You can close this window and return to your device.",
                client.display_name
            ),
            true,
        )
    } else {
        pages::notice(
            brand,
            "Request denied",
            "The device was not connected. You can close this window.",
            false,
        )
    })
}

/// The code form, with what was typed and what is wrong with it.
fn entry(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    typed: &str,
    refused: Option<Refused>,
) -> Response<Body> {
    let model = &issuer.model;
    let (csrf, set_csrf) = match session::csrf_token(model, headers, conn.tls) {
        Ok(token) => token,
        Err(err) => return err.into_page(&model.login_title),
    };
    let action = format!("{}/activate", model.base_path);
    let typed = normalize_user_code(typed)
        .map(|code| display_user_code(&code))
        .unwrap_or_else(|| typed.chars().take(16).collect());
    let mut response = pages::device_entry(&model.login_title, &action, &csrf, &typed, refused);
    session::add_cookies(&mut response, set_csrf);
    response
}

/// The sign-in page on the way to the confirmation.
fn login(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    client: &Client,
    shown: &str,
    refused: Option<Refused>,
    username: Option<&str>,
) -> Result<Response<Body>, OAuthError> {
    let model = &issuer.model;
    let (csrf, set_csrf) = session::csrf_token(model, headers, conn.tls)?;
    let action = format!("{}/activate", model.base_path);
    let mut response = pages::login(pages::Login {
        brand: &model.login_title,
        action: &action,
        client_name: &client.display_name,
        hidden: vec![(session::CSRF_FIELD, &csrf), ("user_code", shown)],
        username,
        refused,
        redirects_to_client: false,
    });
    session::add_cookies(&mut response, set_csrf);
    Ok(response)
}

/// The confirmation page: who asks, for what (as it would be granted to this user).
fn confirm(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    device: &DeviceRecord,
    client: &Client,
    session: &Session<'_>,
    shown: &str,
) -> Result<Response<Body>, OAuthError> {
    let model = &issuer.model;
    let (csrf, set_csrf) = session::csrf_token(model, headers, conn.tls)?;
    let api = device.audience.as_ref().and_then(|a| model.apis.get(a));
    let requested: Vec<&str> = device.scope.split_ascii_whitespace().collect();
    let granted = mint::user_grant(model, session.user, client, api, &requested);
    let scopes = granted
        .scope_string()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| (s.to_string(), describe(api, s)))
        .collect();
    let action = format!("{}/activate", model.base_path);
    let user = session
        .user
        .config
        .name
        .as_deref()
        .unwrap_or(&session.user.config.username);
    let mut response = pages::device_confirm(pages::DeviceConfirm {
        brand: &model.login_title,
        action: &action,
        csrf: &csrf,
        user_code: shown,
        client_name: &client.display_name,
        user,
        scopes,
    });
    session::add_cookies(&mut response, set_csrf);
    Ok(response)
}

/// What a scope lets the device do, in words.
fn describe(api: Option<&super::model::Api>, scope: &str) -> Option<String> {
    let fixed = match scope {
        "openid" => Some("Know who you are"),
        "profile" => Some("See your name and username"),
        "email" => Some("See your email address"),
        "offline_access" => Some("Stay connected when you are away"),
        _ => None,
    };
    fixed
        .map(str::to_string)
        .or_else(|| api.and_then(|a| a.descriptions.get(scope).cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_are_eight_consonants() {
        for _ in 0..100 {
            let code = new_user_code().unwrap();
            assert_eq!(code.len(), 8);
            assert_eq!(
                normalize_user_code(&code.to_lowercase()),
                Some(code.clone())
            );
            assert_eq!(
                normalize_user_code(&display_user_code(&code)),
                Some(code.clone())
            );
        }
    }
}
