//! `/authorize` (GET, or POST form): the authorization request of the code, implicit
//! and `code id_token` flows, and the sign-in page it shows.
//!
//! The request is checked in two stages. Until `client_id` and `redirect_uri` are known
//! to be good (a registered client, a registered redirect URI: exact string, or any port
//! for a loopback one, RFC 8252 §7.3), every problem is an HTML error page: nothing is
//! ever sent to an address the client did not register. After that, every problem is a
//! `303` redirect to the client with `error`, `error_description`, `state` and `iss`
//! (RFC 9207), by the response mode (`query`, `fragment`, `form_post`).
//!
//! Then: a browser with a session (and no `prompt=login`, and within `max_age`) gets its
//! answer at once; `prompt=none` without one is `login_required`; otherwise the sign-in
//! page is shown. It posts back here with the CSRF token and `pending_request` (the
//! request's own parameters, form-encoded, checked again in full on the way back). A
//! successful sign-in starts a session and ends in the same answer. There is no consent
//! screen: clients in `gateway.yaml` are first-party.
//!
//! Answers: `code` (stored hashed, single use, `issuer.tokens.code_ttl`, bound to the
//! client, the redirect URI and the PKCE challenge); `token`, `id_token`, `id_token
//! token` (implicit, for clients allowed `implicit`; tokens only ever in the fragment or
//! a `form_post`); `code id_token` (clients allowed both). Scopes are decided as for
//! every user grant ([`mint::user_grant`]).

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::Issuer;
use super::form::{self, Form};
use super::mint::{self, Subject, random_token};
use super::model::{Api, Client, User};
use super::pages::{self, Refused};
use super::session::{self, CSRF_FIELD};
use super::store::{CodeRecord, secret_hash};
use crate::config::issuer::GrantType;
use crate::error::{OAuthCode, OAuthError};
use crate::http::{Body, ConnInfo};

/// The hidden field of the sign-in form that carries the pending authorization request.
pub const PENDING_FIELD: &str = "pending_request";

/// The prefix of the `request_uri`s that `/oauth/par` hands out (RFC 9126 §2.2).
pub const PUSHED_URI_PREFIX: &str = "urn:ietf:params:oauth:request_uri:";

/// The parameters of an authorization request that are carried through the sign-in page
/// (and stored for a pushed request).
pub const PARAMS: [&str; 16] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "scope",
    "audience",
    "resource",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "max_age",
    "login_hint",
    "display",
    "id_token_hint",
];

/// How the answer travels to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Query,
    Fragment,
    FormPost,
}

/// Where the answer goes: known good once `client_id` and `redirect_uri` are checked.
#[derive(Debug, Clone)]
struct Reply {
    redirect_uri: String,
    mode: Mode,
    state: Option<String>,
    /// The metrics label: the grant the response type stands for, once known.
    grant: Option<GrantType>,
}

/// What `response_type` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ResponseType {
    code: bool,
    token: bool,
    id_token: bool,
}

impl ResponseType {
    /// `code`, `token`, `id_token`, `id_token token`, `code id_token` (any order).
    fn parse(text: &str) -> Option<ResponseType> {
        let mut words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
        words.sort_unstable();
        let (code, token, id_token) = match words.as_slice() {
            ["code"] => (true, false, false),
            ["token"] => (false, true, false),
            ["id_token"] => (false, false, true),
            ["id_token", "token"] => (false, true, true),
            ["code", "id_token"] => (true, false, true),
            _ => return None,
        };
        Some(ResponseType {
            code,
            token,
            id_token,
        })
    }

    /// True if a token travels in the front channel (never in a query string).
    fn front_channel_tokens(self) -> bool {
        self.token || self.id_token
    }

    fn grant(self) -> GrantType {
        if self.code {
            GrantType::AuthorizationCode
        } else {
            GrantType::Implicit
        }
    }
}

/// A checked authorization request.
#[derive(Debug)]
struct AuthRequest<'m> {
    client: &'m Client,
    reply: Reply,
    response: ResponseType,
    scope: Vec<String>,
    api: Option<&'m Api>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    prompt_login: bool,
    prompt_none: bool,
    max_age: Option<i64>,
    login_hint: Option<String>,
    /// The `sub` of a good `id_token_hint`: only that user's session may answer.
    hinted_subject: Option<String>,
    /// The request's parameters, form-encoded: the sign-in form's `pending_request`.
    /// For a pushed request, only `client_id` and `request_uri`: the browser never
    /// holds (or changes) the pushed parameters.
    pending: String,
    /// The `request_uri` of a pushed request, redeemed when the answer is issued.
    pushed: Option<String>,
}

/// Why a request ends before its answer.
#[derive(Debug)]
enum Failure {
    /// The client or its redirect URI cannot be trusted: an HTML error page.
    Page(OAuthError),
    /// An error for the client, sent to its redirect URI.
    Redirect(Box<Reply>, OAuthError),
}

/// Answers `/authorize`: GET (or HEAD) with the request in the query, POST with the
/// request in a form, or POST from the sign-in page.
pub async fn endpoint<B>(issuer: &Issuer, parts: &Parts, body: B, conn: ConnInfo) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let params = if parts.method == Method::POST {
        form::read(&parts.headers, body).await
    } else {
        Form::parse(parts.uri.query().unwrap_or("").as_bytes())
    };
    let params = match params {
        Ok(params) => params,
        Err(err) => return fail(issuer, Failure::Page(err), Vec::new()),
    };
    if parts.method == Method::POST && params.get(PENDING_FIELD).is_some() {
        sign_in(issuer, &parts.headers, conn, &params).await
    } else {
        authorize(issuer, &parts.headers, conn, &params).await
    }
}

/// A new authorization request: answer at once with a session, else the sign-in page.
async fn authorize(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    params: &Form,
) -> Response<Body> {
    let request = match resolve(issuer, params).await {
        Ok(request) => request,
        Err(failure) => return fail(issuer, failure, Vec::new()),
    };
    let session = match session::current(issuer, headers).await {
        Ok(session) => session,
        Err(err) => return fail(issuer, redirect(&request, err), Vec::new()),
    };
    let now = issuer.now();
    // OpenID Connect Core §3.1.2.1: `max_age=0` is `prompt=login` (auth_time has only
    // whole seconds, so "signed in 0 s ago" would otherwise pass within the same
    // second); else the sign-in must be at most `max_age` seconds old (an auth_time
    // ahead of the clock counts as now).
    let fresh_sign_in = request.prompt_login || request.max_age == Some(0);
    let session = session.filter(|s| {
        request
            .max_age
            .is_none_or(|max_age| (now - s.auth_time).max(0) <= max_age)
    });
    // An id_token_hint naming another user: this session may not answer for it
    // (prompt=none → login_required; else the sign-in page).
    let session = session.filter(|s| {
        request
            .hinted_subject
            .as_deref()
            .is_none_or(|sub| sub == s.user.subject)
    });
    match session {
        Some(session) if !fresh_sign_in => {
            respond(
                issuer,
                &request,
                session.user,
                session.auth_time,
                Vec::new(),
            )
            .await
        }
        _ if request.prompt_none => fail(
            issuer,
            redirect(
                &request,
                OAuthError::new(OAuthCode::LoginRequired, "the user is not signed in"),
            ),
            Vec::new(),
        ),
        _ => show_login(issuer, headers, conn, &request, None, None),
    }
}

/// The sign-in form came back: CSRF, the pending request again, the password, then the
/// answer.
async fn sign_in(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    posted: &Form,
) -> Response<Body> {
    if let Err(err) = session::check_csrf(&issuer.model, headers, posted) {
        return fail(issuer, Failure::Page(err), Vec::new());
    }
    let pending = posted.get(PENDING_FIELD).unwrap_or("");
    let params = match Form::parse(pending.as_bytes()) {
        Ok(params) => params,
        Err(err) => return fail(issuer, Failure::Page(err), Vec::new()),
    };
    let request = match resolve(issuer, &params).await {
        Ok(request) => request,
        Err(failure) => return fail(issuer, failure, Vec::new()),
    };
    match session::sign_in(issuer, headers, posted, conn.remote.ip(), conn.tls).await {
        Ok(Ok(signed)) => {
            let cookies = signed.set_cookie.into_iter().collect();
            respond(issuer, &request, signed.user, signed.auth_time, cookies).await
        }
        Ok(Err(refused)) => show_login(
            issuer,
            headers,
            conn,
            &request,
            Some(refused),
            posted.get("username"),
        ),
        Err(err) => fail(issuer, redirect(&request, err), Vec::new()),
    }
}

fn redirect(request: &AuthRequest<'_>, err: OAuthError) -> Failure {
    Failure::Redirect(Box::new(request.reply.clone()), err)
}

/// The request `/authorize` was sent: its own parameters, or (for a `request_uri` from
/// `/oauth/par`) the pushed ones, which then are the only ones read (RFC 9126 §4). A
/// pushed request that is unknown, spent, expired or another client's is
/// `invalid_request_uri`, on a page: nothing says where the client may be redirected.
async fn resolve<'m>(issuer: &'m Issuer, params: &Form) -> Result<AuthRequest<'m>, Failure> {
    let Some(request_uri) = params
        .get("request_uri")
        .filter(|uri| uri.starts_with(PUSHED_URI_PREFIX))
    else {
        return parse(issuer, params, None);
    };
    let invalid = |description: &'static str| {
        Failure::Page(OAuthError::new(OAuthCode::InvalidRequestUri, description))
    };
    let client_id = params.get("client_id").ok_or_else(|| {
        Failure::Page(OAuthError::invalid_request(
            "The request does not name an application (client_id is missing).",
        ))
    })?;
    let pushed = issuer
        .core
        .store
        .find_pushed(&secret_hash(request_uri), issuer.now())
        .await
        .map_err(|err| Failure::Page(err.into()))?
        .ok_or_else(|| invalid("The request_uri is unknown, used or expired."))?;
    if pushed.client_id != client_id {
        return Err(invalid(
            "The request_uri was pushed by another application.",
        ));
    }
    let pushed_params = Form::parse(pushed.params.as_bytes()).map_err(Failure::Page)?;
    parse(issuer, &pushed_params, Some(request_uri))
}

/// Checks a pushed authorization request exactly as `/authorize` would check it sent
/// directly (`/oauth/par`, RFC 9126 §2.1); the error is the one `/authorize` would give.
/// It is checked as a pushed request (its `request_uri` not made yet), so
/// `require_pushed_authorization_requests` does not refuse it.
pub fn check_pushed(issuer: &Issuer, params: &Form) -> Result<(), OAuthError> {
    match parse(issuer, params, Some("")) {
        Ok(_) => Ok(()),
        Err(Failure::Page(err) | Failure::Redirect(_, err)) => Err(err),
    }
}

/// Checks an authorization request: first what decides whether redirecting is safe
/// (errors are pages), then the rest (errors are redirects). `pushed` is the
/// `request_uri` the parameters were pushed under.
fn parse<'m>(
    issuer: &'m Issuer,
    params: &Form,
    pushed: Option<&str>,
) -> Result<AuthRequest<'m>, Failure> {
    let model = &issuer.model;
    let (client, redirect_uri) = trusted_client(model, params)?;
    // From here on, errors go back to the client.
    let (response, reply) = response_type(client, redirect_uri, params)?;
    let back = |err: OAuthError| Failure::Redirect(Box::new(reply.clone()), err);
    if client.require_par && pushed.is_none() {
        return Err(back(OAuthError::invalid_request(
            "this client must push its authorization requests to /oauth/par (request_uri)",
        )));
    }
    unsupported_request_objects(params).map_err(back)?;
    let (prompt_login, prompt_none) = prompt(params).map_err(back)?;
    let max_age = max_age(params).map_err(back)?;
    let hinted_subject = id_token_hint(issuer, params).map_err(back)?;
    let scope: Vec<String> = mint::requested_scopes(params.get("scope"))
        .map_err(back)?
        .into_iter()
        .map(str::to_string)
        .collect();
    let api = mint::resolve_audience(model, params).map_err(back)?;
    let nonce = params.get("nonce").map(str::to_string);
    check_id_token_request(response, &scope, nonce.as_deref()).map_err(back)?;
    let code_challenge = if response.code {
        code_challenge(client, params).map_err(back)?
    } else {
        None
    };
    Ok(AuthRequest {
        client,
        reply,
        response,
        scope,
        api,
        nonce,
        code_challenge,
        prompt_login,
        prompt_none,
        max_age,
        login_hint: params.get("login_hint").map(str::to_string),
        hinted_subject,
        pending: match pushed {
            Some(uri) => form::encode([
                ("client_id", client.client_id.as_str()),
                ("request_uri", uri),
            ]),
            None => form::encode(params.pairs().filter(|(name, _)| PARAMS.contains(name))),
        },
        pushed: pushed.map(str::to_string),
    })
}

/// A registered client and one of its registered redirect URIs: until both are known,
/// every problem is a page, never a redirect.
fn trusted_client<'m, 'p>(
    model: &'m super::model::Model,
    params: &'p Form,
) -> Result<(&'m Client, &'p str), Failure> {
    let page = |description: &'static str| Failure::Page(OAuthError::invalid_request(description));
    let client_id = params
        .get("client_id")
        .ok_or_else(|| page("The request does not name an application (client_id is missing)."))?;
    let client = model.clients.get(client_id).ok_or_else(|| {
        page("The application that sent you here is not known to this sign-in service (unknown client_id).")
    })?;
    let redirect_uri = params.get("redirect_uri").ok_or_else(|| {
        page("The request does not say where to return (redirect_uri is missing).")
    })?;
    if !client.redirect_uri_allowed(redirect_uri) {
        return Err(page(
            "The address this application asked to return to is not registered for it (redirect_uri).",
        ));
    }
    Ok((client, redirect_uri))
}

/// `response_type` and `response_mode`, and where the answer goes: tokens never in a
/// query string, and only for a client allowed the grant the response type stands for.
fn response_type(
    client: &Client,
    redirect_uri: &str,
    params: &Form,
) -> Result<(ResponseType, Reply), Failure> {
    let response = params.get("response_type").map(ResponseType::parse);
    let default_mode = match response {
        Some(Some(rt)) if rt.front_channel_tokens() => Mode::Fragment,
        _ => Mode::Query,
    };
    let mode = match params.get("response_mode") {
        None => Ok(default_mode),
        Some("query") => Ok(Mode::Query),
        Some("fragment") => Ok(Mode::Fragment),
        Some("form_post") => Ok(Mode::FormPost),
        Some(_) => Err(()),
    };
    let mut reply = Reply {
        redirect_uri: redirect_uri.to_string(),
        mode: mode.unwrap_or(default_mode),
        state: params.get("state").map(str::to_string),
        grant: response.flatten().map(ResponseType::grant),
    };
    let back = |reply: &Reply, code: OAuthCode, description: &'static str| {
        Failure::Redirect(Box::new(reply.clone()), OAuthError::new(code, description))
    };
    use OAuthCode::{InvalidRequest, UnauthorizedClient, UnsupportedResponseType};
    if mode.is_err() {
        return Err(back(
            &reply,
            InvalidRequest,
            "response_mode must be query, fragment or form_post",
        ));
    }
    let response = match response {
        None => {
            return Err(back(&reply, InvalidRequest, "response_type is required"));
        }
        Some(None) => {
            return Err(back(
                &reply,
                UnsupportedResponseType,
                "response_type must be code, token, id_token, id_token token or code id_token",
            ));
        }
        Some(Some(rt)) => rt,
    };
    if response.front_channel_tokens() && reply.mode == Mode::Query {
        reply.mode = Mode::Fragment;
        return Err(back(
            &reply,
            InvalidRequest,
            "tokens are never sent in a query string: use response_mode fragment or form_post",
        ));
    }
    if response.code && !client.may_use(GrantType::AuthorizationCode) {
        return Err(back(
            &reply,
            UnauthorizedClient,
            "this client may not use the authorization_code grant",
        ));
    }
    if (response.token || response.id_token) && !client.may_use(GrantType::Implicit) {
        return Err(back(
            &reply,
            UnauthorizedClient,
            "this client may not use the implicit grant (tokens from /authorize)",
        ));
    }
    Ok((response, reply))
}

/// Request objects are not supported: a `request` (by value) or `request_uri` (by
/// reference) is refused rather than ignored, since the object may hold parameters
/// that differ from the query's (OpenID Connect Core §6.1, §6.2; discovery says
/// `request_parameter_supported: false`, `request_uri_parameter_supported: false`).
fn unsupported_request_objects(params: &Form) -> Result<(), OAuthError> {
    if params.get("request").is_some() {
        return Err(OAuthError::new(
            OAuthCode::RequestNotSupported,
            "request objects (the request parameter) are not supported",
        ));
    }
    if params.get("request_uri").is_some() {
        return Err(OAuthError::new(
            OAuthCode::RequestUriNotSupported,
            "request objects by reference (request_uri) are not supported",
        ));
    }
    Ok(())
}

/// `prompt`: (sign in again, never show a page). `consent` is accepted and means
/// nothing: clients are first-party.
fn prompt(params: &Form) -> Result<(bool, bool), OAuthError> {
    let mut prompt_login = false;
    let mut prompt_none = false;
    let Some(prompt) = params.get("prompt") else {
        return Ok((false, false));
    };
    for value in prompt.split(' ').filter(|v| !v.is_empty()) {
        match value {
            "none" => prompt_none = true,
            "login" | "select_account" => prompt_login = true,
            "consent" => {}
            _ => {
                return Err(OAuthError::invalid_request(
                    "prompt must be none, login, consent or select_account",
                ));
            }
        }
    }
    if prompt_none && prompt.split(' ').filter(|v| !v.is_empty()).count() > 1 {
        return Err(OAuthError::invalid_request(
            "prompt=none cannot be combined with other values",
        ));
    }
    Ok((prompt_login, prompt_none))
}

/// `id_token_hint` (OpenID Connect Core §3.1.2.1): an ID token this issuer signed (any
/// of its published keys, `iss` ours; an expired one is still a good hint), whose `sub`
/// is returned. Anything else is `invalid_request`.
fn id_token_hint(issuer: &Issuer, params: &Form) -> Result<Option<String>, OAuthError> {
    let Some(hint) = params.get("id_token_hint") else {
        return Ok(None);
    };
    let refused =
        || OAuthError::invalid_request("id_token_hint is not an ID token from this issuer");
    let own = issuer
        .core
        .keys
        .published()
        .verify(hint)
        .ok_or_else(refused)?;
    if own.at_jwt {
        return Err(refused());
    }
    let claim = |name: &str| own.claims.get(name).and_then(serde_json::Value::as_str);
    if claim("iss") != Some(issuer.model.issuer.as_str()) {
        return Err(refused());
    }
    claim("sub")
        .map(|sub| Some(sub.to_string()))
        .ok_or_else(refused)
}

fn max_age(params: &Form) -> Result<Option<i64>, OAuthError> {
    match params.get("max_age") {
        None => Ok(None),
        Some(text) => match text.parse::<u32>() {
            Ok(seconds) => Ok(Some(i64::from(seconds))),
            Err(_) => Err(OAuthError::invalid_request(
                "max_age must be a number of seconds",
            )),
        },
    }
}

/// An ID token from `/authorize` needs the `openid` scope and a `nonce`.
fn check_id_token_request(
    response: ResponseType,
    scope: &[String],
    nonce: Option<&str>,
) -> Result<(), OAuthError> {
    if response.id_token && !scope.iter().any(|s| s == "openid") {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            "an ID token needs the openid scope",
        ));
    }
    if response.id_token && nonce.is_none() {
        return Err(OAuthError::invalid_request(
            "nonce is required when an ID token is returned from /authorize",
        ));
    }
    Ok(())
}

/// The PKCE challenge of a code request: S256 only, required of public clients.
fn code_challenge(client: &Client, params: &Form) -> Result<Option<String>, OAuthError> {
    match (
        params.get("code_challenge"),
        params.get("code_challenge_method"),
    ) {
        (None, None) if client.is_public() => Err(OAuthError::invalid_request(
            "this is a public client: PKCE is required (code_challenge with code_challenge_method=S256)",
        )),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(OAuthError::invalid_request(
            "code_challenge_method without code_challenge",
        )),
        (Some(challenge), Some("S256")) => {
            if !is_s256_challenge(challenge) {
                return Err(OAuthError::invalid_request(
                    "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
                ));
            }
            Ok(Some(challenge.to_string()))
        }
        (Some(_), _) => Err(OAuthError::invalid_request(
            "code_challenge_method must be S256 (plain is not allowed)",
        )),
    }
}

/// 43 characters of base64url: a SHA-256 digest.
fn is_s256_challenge(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The sign-in page for a pending request.
fn show_login(
    issuer: &Issuer,
    headers: &HeaderMap,
    conn: ConnInfo,
    request: &AuthRequest<'_>,
    refused: Option<Refused>,
    username: Option<&str>,
) -> Response<Body> {
    let model = &issuer.model;
    let (csrf, set_csrf) = match session::csrf_token(model, headers, conn.tls) {
        Ok(token) => token,
        Err(err) => return fail(issuer, redirect(request, err), Vec::new()),
    };
    let action = format!("{}/authorize", model.base_path);
    let mut response = pages::login(pages::Login {
        brand: &model.login_title,
        action: &action,
        client_name: &request.client.display_name,
        hidden: vec![(CSRF_FIELD, &csrf), (PENDING_FIELD, &request.pending)],
        username: username.or(request.login_hint.as_deref()),
        refused,
        redirects_to_client: true,
    });
    session::add_cookies(&mut response, set_csrf);
    response
}

/// The answer for a signed-in user: issue, then deliver.
async fn respond(
    issuer: &Issuer,
    request: &AuthRequest<'_>,
    user: &User,
    auth_time: i64,
    cookies: Vec<HeaderValue>,
) -> Response<Body> {
    match issue(issuer, request, user, auth_time).await {
        Ok(params) => deliver(issuer, &request.reply, params, cookies),
        Err(err) => fail(issuer, redirect(request, err), cookies),
    }
}

/// Makes what the response type asks for: a stored code, tokens.
async fn issue(
    issuer: &Issuer,
    request: &AuthRequest<'_>,
    user: &User,
    auth_time: i64,
) -> Result<Vec<(&'static str, String)>, OAuthError> {
    let model = &issuer.model;
    let client = request.client;
    if let Some(uri) = &request.pushed
        && !issuer
            .core
            .store
            .redeem_pushed(&secret_hash(uri), issuer.now())
            .await?
    {
        return Err(OAuthError::new(
            OAuthCode::InvalidRequestUri,
            "the request_uri is used or expired",
        ));
    }
    let requested: Vec<&str> = request.scope.iter().map(String::as_str).collect();
    let mut granted = mint::user_grant(model, user, client, request.api, &requested);
    let mut params = Vec::new();
    let mut code = None;
    if request.response.code {
        let secret = store_code(issuer, request, user, &granted, auth_time).await?;
        params.push(("code", secret.clone()));
        code = Some(secret);
    }
    // Refresh tokens only ever come from the token endpoint.
    granted.offline_access = false;
    let scope = granted.scope_string();
    let access = if request.response.token {
        let access = mint::access_token(
            issuer,
            client,
            Subject::User(user),
            request.api,
            &scope,
            granted.openid,
            None,
            None,
        )?;
        params.push(("access_token", access.token.clone()));
        params.push(("token_type", "Bearer".into()));
        params.push(("expires_in", access.expires_in.to_string()));
        params.push(("scope", scope.clone()));
        Some(access)
    } else {
        None
    };
    if request.response.id_token {
        let id_token = mint::id_token(
            issuer,
            mint::IdToken {
                client,
                user,
                granted: &granted,
                auth_time,
                nonce: request.nonce.as_deref(),
                access_token: access.as_ref().map(|a| a.token.as_str()),
                code: code.as_deref(),
            },
        )?;
        params.push(("id_token", id_token));
    }
    if !request.response.code {
        issuer
            .core
            .metrics
            .tokens_issued_total
            .with_label_values(&[GrantType::Implicit.as_str()])
            .inc();
    }
    Ok(params)
}

/// A new authorization code for what was granted, stored hashed; returns the code.
async fn store_code(
    issuer: &Issuer,
    request: &AuthRequest<'_>,
    user: &User,
    granted: &mint::Granted<'_>,
    auth_time: i64,
) -> Result<String, OAuthError> {
    let secret = random_token(32)?;
    let now = issuer.now();
    let record = CodeRecord {
        code_hash: secret_hash(&secret),
        client_id: request.client.client_id.clone(),
        redirect_uri: request.reply.redirect_uri.clone(),
        subject: user.subject.clone(),
        audience: request.api.map(|a| a.identifier.clone()),
        scope: granted.scope_string(),
        nonce: request.nonce.clone(),
        code_challenge: request.code_challenge.clone(),
        code_challenge_method: request.code_challenge.as_ref().map(|_| "S256".into()),
        auth_time,
        created_at: now,
        expires_at: now + issuer.model.code_ttl.as_secs() as i64,
    };
    issuer.core.store.insert_code(&record).await?;
    Ok(secret)
}

/// Sends the answer (or an error) to the client: `303` to the redirect URI with the
/// parameters in the query or the fragment, or a `form_post` page. `state` and `iss`
/// are added here.
fn deliver(
    issuer: &Issuer,
    reply: &Reply,
    mut params: Vec<(&'static str, String)>,
    cookies: Vec<HeaderValue>,
) -> Response<Body> {
    if let Some(state) = &reply.state {
        params.push(("state", state.clone()));
    }
    params.push(("iss", issuer.model.issuer.clone()));
    let pairs: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let mut response = match reply.mode {
        Mode::FormPost => pages::form_post(&issuer.model.login_title, &reply.redirect_uri, &pairs),
        Mode::Query | Mode::Fragment => {
            let separator = match reply.mode {
                Mode::Fragment => '#',
                _ if reply.redirect_uri.contains('?') => '&',
                _ => '?',
            };
            let location = format!("{}{separator}{}", reply.redirect_uri, form::encode(pairs));
            see_other(&location)
        }
    };
    session::add_cookies(&mut response, cookies);
    response
}

/// A `303 See Other` to `location`, never cached, without a Referer to follow it.
pub fn see_other(location: &str) -> Response<Body> {
    let Ok(value) = HeaderValue::from_str(location) else {
        tracing::error!("a redirect location is not a valid header value");
        return OAuthError::server_error().into_page("Scopegate");
    };
    let mut response = crate::http::with_headers(
        StatusCode::SEE_OTHER,
        "",
        &[
            crate::http::NO_STORE,
            crate::http::NO_CACHE,
            (http::header::REFERRER_POLICY, "no-referrer"),
        ],
    );
    response.headers_mut().insert(http::header::LOCATION, value);
    response
}

/// The one way a request fails: an error page, or an error redirect to the client.
/// Counted in `token_errors_total{grant_type,error}`.
fn fail(issuer: &Issuer, failure: Failure, cookies: Vec<HeaderValue>) -> Response<Body> {
    let (grant, err) = match &failure {
        Failure::Page(err) => ("unknown", err),
        Failure::Redirect(reply, err) => (reply.grant.map_or("unknown", GrantType::as_str), err),
    };
    issuer
        .core
        .metrics
        .token_errors_total
        .with_label_values(&[grant, err.code.as_str()])
        .inc();
    tracing::debug!(
        grant_type = grant,
        error = err.code.as_str(),
        description = %err.description,
        "authorization request refused"
    );
    match failure {
        Failure::Page(err) => {
            let mut response = err.into_page(&issuer.model.login_title);
            session::add_cookies(&mut response, cookies);
            response
        }
        Failure::Redirect(reply, err) => {
            let mut params = vec![("error", err.code.as_str().to_string())];
            params.push(("error_description", err.error_description()));
            deliver(issuer, &reply, params, cookies)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_types() {
        assert!(ResponseType::parse("code").is_some_and(|r| r.code && !r.token));
        assert!(ResponseType::parse("token id_token").is_some_and(|r| r.token && r.id_token));
        assert!(ResponseType::parse("id_token  code").is_some_and(|r| r.code && r.id_token));
        assert!(ResponseType::parse("code token").is_none());
        assert!(ResponseType::parse("none").is_none());
        assert!(ResponseType::parse("").is_none());
    }

    #[test]
    fn s256_challenges() {
        assert!(is_s256_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!is_s256_challenge("short"));
        assert!(!is_s256_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw+cM"
        ));
    }
}
