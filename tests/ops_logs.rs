//! No secret reaches the log, proven on the real binary.
//!
//! Each test is one `scopegate run` ([`Run::start`]) with `RUST_LOG=info,scopegate=trace`
//! (Scopegate's own targets at `trace`, everything else at the default level), JSON logs,
//! the built-in issuer on a throwaway SQLite store (keys encrypted at rest, a client
//! secret from the environment) and an external issuer trusted with a client allowlist.
//! Together the four runs (token-endpoint grants; code, implicit and form_post grants;
//! the device grant; the proxy and a reload) go through every grant the issuer implements (client_credentials by Basic and by form, password by a
//! confidential and a public client, refresh_token rotation and reuse detection, token
//! exchange, and the browser grants: authorization code + PKCE for a public and a
//! confidential client with the sign-in page, a post without its CSRF token, a wrong
//! password and a replayed code; session reuse; implicit and `form_post`; `prompt=none`
//! without a session; logout; the device flow polled, approved and denied),
//! introspection, revocation and `/userinfo`, the issuer's failures (wrong client
//! secret, malformed Basic credentials, wrong password, lockout, unknown grant, unknown
//! refresh token, a code grant with a made-up code), every proxy
//! auth failure reason, an upstream failure and a refused config reload whose broken
//! file holds a secret. Each run then stops its process and scans its whole stderr
//! ([`Run::finish`]) for every secret the run handled: each token issued or sent (and
//! each `.`-separated part of it longer than 16 characters), password, client secret, `Authorization` value (Basic
//! credentials encoded and decoded), authorization code, PKCE verifier, device and user
//! code, session and CSRF cookie, the key-encryption key and the password hashes.
//!
//! The same log proves the request span: every request has one access line (target
//! `scopegate::access`) whose span holds its request id, method, route, status,
//! latency, auth outcome and reason (and upstream time when an upstream was called),
//! and events logged while a request runs (an upstream failure, the JWKS refetch an
//! unknown `kid` triggers) carry its request id.
//!
//! Every call goes through [`Run::request`]: form parameters and the path's query,
//! `Authorization` and `Cookie` values, token responses, `Set-Cookie`s, redirect
//! `Location`s and the hidden fields of HTML pages (CSRF tokens, user codes, what a
//! `form_post` page carries) are collected as secrets by name ([`SECRET_PARAMS`],
//! [`SECRET_MEMBERS`]); anything else secret goes in with [`Secrets::add`] or
//! [`Secrets::token`]. Nonces and `state` are not secrets.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use common::eventually;
use common::issuer::{
    ALICE_PASSWORD, Answer, BOB_PASSWORD, Browser, CALENDAR, CONTACTS, Redirect, SPA_CALLBACK,
    SPA_HTTPS_CALLBACK, SPA_LOGOUT, TempDir, WEBAPP_CALLBACK, WEBAPP_LOGOUT, as_pairs, claims_of,
    form_action, form_fields, hidden_fields, pkce,
};
use common::process::{LISTEN_ANY, Process};
use common::{AUD, ps, rogue_rsa, rsa};

/// Form parameters whose values are secrets, on any endpoint.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "client_secret",
    "refresh_token",
    "subject_token",
    "actor_token",
    "token",
    "code",
    "code_verifier",
    "device_code",
    "user_code",
    "client_assertion",
    "csrf_token",
    "id_token_hint",
];

/// Members of a token response, or parameters of a redirect's query or fragment, whose
/// values are secrets.
const SECRET_MEMBERS: &[&str] = &[
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "device_code",
    "user_code",
];

/// Shorter strings are not scanned for: they would match by chance. Every secret this
/// run chooses is longer; tokens and codes the issuer makes are far longer.
const MIN_SECRET_LEN: usize = 8;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Every secret string the run handled, with what it was (for the failure message).
#[derive(Default)]
struct Secrets(BTreeMap<String, String>);

impl Secrets {
    fn add(&mut self, what: &str, secret: &str) {
        if secret.len() >= MIN_SECRET_LEN {
            self.0
                .entry(secret.to_string())
                .or_insert_with(|| what.to_string());
        }
    }

    /// A token, and each `.`-separated part of it longer than 16 characters.
    fn token(&mut self, what: &str, token: &str) {
        self.add(what, token);
        if token.contains('.') {
            for (index, part) in token.split('.').enumerate() {
                if part.len() > 16 {
                    self.add(&format!("{what} (part {index})"), part);
                }
            }
        }
    }

    /// An `Authorization` value: whole, its credentials, and for Basic the decoded
    /// `id:secret` and the secret.
    fn authorization(&mut self, value: &str) {
        self.add("Authorization header", value);
        let Some((scheme, credentials)) = value.split_once(' ') else {
            return;
        };
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            self.token("bearer token", credentials);
        } else if scheme.eq_ignore_ascii_case("basic") {
            self.add("Basic credentials", credentials);
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) {
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                self.add("Basic id:secret", &decoded);
                if let Some((_, secret)) = decoded.split_once(':') {
                    self.add("Basic secret", secret);
                }
            }
        } else {
            self.add("Authorization credentials", credentials);
        }
    }

    fn form(&mut self, params: &[(&str, &str)]) {
        for (name, value) in params {
            if SECRET_PARAMS.contains(name) {
                self.token(&format!("form {name}"), value);
            }
        }
    }

    /// The query of a request's path (`/activate?user_code=`, `/logout?id_token_hint=`).
    fn query(&mut self, path: &str) {
        let Some((_, query)) = path.split_once('?') else {
            return;
        };
        let params = Redirect::parse(&format!("/?{query}")).query;
        for (name, value) in &params {
            if SECRET_PARAMS.contains(&name.as_str()) {
                self.token(&format!("query {name}"), value);
            }
        }
    }

    /// An HTML page's hidden fields: CSRF tokens, user codes, and what a `form_post`
    /// page carries to the client (codes, tokens).
    fn page(&mut self, html: &str) {
        for (name, value) in hidden_fields(html) {
            if SECRET_PARAMS.contains(&name.as_str()) || SECRET_MEMBERS.contains(&name.as_str()) {
                self.token(&format!("page field {name}"), &value);
            }
        }
    }

    /// Token responses (and anything else JSON that names a secret member).
    fn response(&mut self, json: &Value) {
        for member in SECRET_MEMBERS {
            if let Some(value) = json.get(member).and_then(Value::as_str) {
                self.token(&format!("response {member}"), value);
            }
        }
    }

    /// A redirect `Location`: secret members of its query and fragment.
    fn location(&mut self, location: &str) {
        let after = |sep: char| location.split_once(sep).map_or("", |(_, rest)| rest);
        let query = after('?').split('#').next().unwrap_or("");
        for part in [query, after('#')] {
            for pair in part.split('&') {
                if let Some((name, value)) = pair.split_once('=')
                    && SECRET_MEMBERS.contains(&name)
                {
                    self.token(&format!("redirect {name}"), value);
                }
            }
        }
    }

    /// `Set-Cookie` values (session and CSRF cookies of the browser flows).
    fn set_cookies(&mut self, headers: &http::HeaderMap) {
        for value in headers.get_all(http::header::SET_COOKIE) {
            let text = String::from_utf8_lossy(value.as_bytes());
            let pair = text.split(';').next().unwrap_or("");
            if let Some((name, value)) = pair.split_once('=') {
                self.add(&format!("cookie {name}"), value);
            }
        }
    }

    /// A request's `Cookie` value: the whole, and each cookie's value.
    fn cookies(&mut self, header: &str) {
        self.add("Cookie header", header);
        for pair in header.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                self.add(&format!("cookie {name}"), value);
            }
        }
    }

    /// Panics with every secret found in `log`, naming it and the line.
    fn assert_absent(&self, log: &str) {
        let mut leaks = Vec::new();
        for (secret, what) in &self.0 {
            if let Some(line) = log.lines().find(|line| line.contains(secret.as_str())) {
                leaks.push(format!("{what} ({secret:?}) in: {line}"));
            }
        }
        assert!(
            leaks.is_empty(),
            "{} secret(s) in the log:\n{}",
            leaks.len(),
            leaks.join("\n")
        );
    }
}

/// What the access line of a request must say.
#[derive(Debug)]
struct Expected {
    request_id: String,
    route: &'static str,
    status: u16,
    /// `ok`, `none` or `refused`.
    auth: &'static str,
    reason: Option<&'static str>,
    upstream: bool,
}

/// The process, a client that collects secrets from everything it sends and receives,
/// and what each request's access line must say.
struct Run {
    process: Process,
    secrets: Mutex<Secrets>,
    expected: Mutex<Vec<Expected>>,
    setup: Setup,
    /// The config file as written (the reload test breaks it).
    config_text: String,
    /// The external issuer the proxy trusts.
    external: common::Issuer,
    _dir: TempDir,
}

impl Run {
    /// Sends a request with `x-request-id: id`; collects the secrets in its
    /// `Authorization`, form and answer.
    async fn call(
        &self,
        id: &str,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        form: Option<&[(&str, &str)]>,
    ) -> Answer {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| ("authorization", value))
            .into_iter()
            .collect();
        self.request(id, method, path, &headers, form).await
    }

    /// The general form (the browser flows send cookies): `authorization` and `cookie`
    /// values are collected as secrets, and so is what [`Run::call`] collects.
    async fn request(
        &self,
        id: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Answer {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(self.process.url(path))
            .header("x-request-id", id);
        let mut body = Bytes::new();
        {
            let mut secrets = self.secrets.lock().unwrap();
            secrets.query(path);
            for (name, value) in headers {
                if name.eq_ignore_ascii_case("authorization") {
                    secrets.authorization(value);
                } else if name.eq_ignore_ascii_case("cookie") {
                    secrets.cookies(value);
                }
                builder = builder.header(*name, *value);
            }
            if let Some(params) = form {
                secrets.form(params);
                builder = builder.header("content-type", "application/x-www-form-urlencoded");
                body = Bytes::from(common::issuer::form_encode(params));
            }
        }
        let answer = common::issuer::send(builder.body(Full::new(body)).unwrap()).await;
        let mut secrets = self.secrets.lock().unwrap();
        secrets.response(&answer.json);
        secrets.set_cookies(&answer.headers);
        if let Some(location) = answer.headers.get(http::header::LOCATION) {
            secrets.location(&String::from_utf8_lossy(location.as_bytes()));
        }
        if answer.header("content-type").starts_with("text/html") {
            secrets.page(&answer.text());
        }
        answer
    }

    fn expect(&self, id: &str, route: &'static str, status: u16, auth: &'static str) {
        self.expected.lock().unwrap().push(Expected {
            request_id: id.into(),
            route,
            status,
            auth,
            reason: None,
            upstream: false,
        });
    }

    /// An issuer endpoint (`route="issuer"`; its own client authentication is not the
    /// proxy's, so `auth="none"`).
    async fn issuer(
        &self,
        id: &str,
        path: &str,
        params: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        status: u16,
    ) -> Answer {
        let authorization = basic.map(|(id, secret)| common::issuer::basic(id, secret));
        let answer = self
            .call(id, "POST", path, authorization.as_deref(), Some(params))
            .await;
        assert_eq!(answer.status, status, "{id}: {:?}", answer.json);
        self.expect(id, "issuer", status, "none");
        answer
    }

    async fn token(
        &self,
        id: &str,
        params: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        status: u16,
    ) -> Answer {
        self.issuer(id, "/oauth/token", params, basic, status).await
    }

    /// A proxied GET with `Authorization: <authorization>` that must pass.
    async fn proxy_ok(&self, id: &str, path: &str, route: &'static str, token: &str) {
        let auth = format!("Bearer {token}");
        let answer = self.call(id, "GET", path, Some(&auth), None).await;
        assert_eq!(answer.status, 200, "{id}: {:?}", answer.body);
        self.expect(id, route, 200, "ok");
    }

    /// A proxied GET that must be refused for `reason`.
    async fn proxy_refused(
        &self,
        id: &str,
        path: &str,
        route: &'static str,
        authorization: Option<&str>,
        reason: &'static str,
    ) {
        let answer = self.call(id, "GET", path, authorization, None).await;
        let status = if reason == "insufficient_scope" {
            403
        } else {
            401
        };
        assert_eq!(answer.status, status, "{id}: {:?}", answer.json);
        self.expected.lock().unwrap().push(Expected {
            request_id: id.into(),
            route,
            status,
            auth: "refused",
            reason: Some(reason),
            upstream: false,
        });
    }
}

/// The browser grants: a browser is a cookie jar ([`Browser`] keeps `Set-Cookie`s) whose
/// requests go through [`Run::request`]; every one is an issuer request with an access
/// line.
impl Run {
    /// A browser request: the jar's cookies sent, its `Set-Cookie`s kept, the status
    /// asserted.
    async fn browse(
        &self,
        id: &str,
        browser: &mut Browser,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
        status: u16,
    ) -> Answer {
        let cookies = (!browser.cookies.is_empty()).then(|| {
            browser
                .cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        let headers: Vec<(&str, &str)> = cookies
            .as_deref()
            .map(|value| ("cookie", value))
            .into_iter()
            .collect();
        let answer = self.request(id, method, path, &headers, form).await;
        assert_eq!(answer.status, status, "{id}: {}", answer.text());
        browser.keep_cookies(&answer);
        self.expect(id, "issuer", status, "none");
        answer
    }

    /// Submits a page's (first) form: its hidden fields, plus `fields` (which win).
    async fn submit(
        &self,
        id: &str,
        browser: &mut Browser,
        page: &Answer,
        fields: &[(&str, &str)],
        status: u16,
    ) -> Answer {
        let html = page.text();
        let action = form_action(&html).unwrap_or_else(|| panic!("{id}: no form in {html}"));
        let params = form_fields(&html, fields);
        self.browse(
            id,
            browser,
            "POST",
            &action,
            Some(&as_pairs(&params)),
            status,
        )
        .await
    }

    /// Redeems a code with its PKCE verifier: a public client by `client_id`, a
    /// confidential one by Basic.
    async fn redeem(
        &self,
        id: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        client: (&str, Option<&str>),
        status: u16,
    ) -> Answer {
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let basic = match client {
            (client_id, None) => {
                params.push(("client_id", client_id));
                None
            }
            (client_id, Some(secret)) => Some((client_id, secret)),
        };
        self.token(id, &params, basic, status).await
    }

    /// A device poll of the `tv` client.
    async fn poll(&self, id: &str, device_code: &str, status: u16) -> Answer {
        self.token(
            id,
            &[
                ("grant_type", DEVICE_CODE),
                ("client_id", "tv"),
                ("device_code", device_code),
            ],
            None,
            status,
        )
        .await
    }
}

impl Run {
    /// client_credentials: by Basic (`cc-basic`), then by form with a scope
    /// (`cc-post`); both give an access token.
    async fn machine_tokens(&self) -> (Value, Value) {
        let m2m_secret = self.setup.m2m_secret.as_str();
        let cc = [("grant_type", "client_credentials"), ("audience", CONTACTS)];
        let basic = self.token("cc-basic", &cc, Some(("m2m", m2m_secret)), 200);
        let basic = basic.await.json;
        let mut by_form = cc.to_vec();
        by_form.extend([
            ("scope", "write:contacts"),
            ("client_id", "m2m"),
            ("client_secret", m2m_secret),
        ]);
        let post = self.token("cc-post", &by_form, None, 200).await.json;
        for tokens in [&basic, &post] {
            str_of(tokens, "access_token");
        }
        (basic, post)
    }

    /// Alice's tokens by the password grant of the confidential `web` client.
    async fn alice_by_web(&self, id: &str) -> Value {
        let web = ("web", self.setup.web_secret.as_str());
        let params = password("alice", ALICE_PASSWORD, None);
        self.token(id, &params, Some(web), 200).await.json
    }
}

/// `/authorize?<params>`.
fn authorize(params: &[(&str, &str)]) -> String {
    format!("/authorize?{}", common::issuer::form_encode(params))
}

/// A code request with PKCE (S256) and a nonce.
fn code_request<'a>(
    client_id: &'a str,
    redirect_uri: &'a str,
    challenge: &'a str,
    nonce: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("scope", "openid profile email read:contacts offline_access"),
        ("audience", CONTACTS),
        ("state", "st-logs"),
        ("nonce", nonce),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

/// The `nonce` of an ID token (not verified: the browser tests do that).
fn nonce_of(tokens: &Value) -> String {
    claims_of(str_of(tokens, "id_token"))["nonce"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The hidden fields of a page, by name.
fn fields_of(page: &Answer) -> BTreeMap<String, String> {
    hidden_fields(&page.text()).into_iter().collect()
}

/// `prompt=none` refused for want of a session: `login_required` to the SPA, no code.
fn silent_refusal(answer: &Answer) {
    let redirect = Redirect::of(answer);
    assert_eq!(redirect.base, SPA_CALLBACK);
    assert_eq!(redirect.query["error"], "login_required");
    assert!(!redirect.query.contains_key("code"));
}

impl Run {
    /// Opens `/authorize?<params>` in `browser` (the sign-in page) and signs in as
    /// `user`: the final `303`. Requests are `<id>-page` and `<id>-sign-in`.
    async fn sign_in(
        &self,
        id: &str,
        browser: &mut Browser,
        params: &[(&str, &str)],
        user: (&str, &str),
    ) -> Answer {
        let url = authorize(params);
        let page_id = format!("{id}-page");
        let page = self.browse(&page_id, browser, "GET", &url, None, 200).await;
        let fields = [("username", user.0), ("password", user.1)];
        let sign_in_id = format!("{id}-sign-in");
        self.submit(&sign_in_id, browser, &page, &fields, 303).await
    }
}

/// Authorization code + PKCE: the public client (the sign-in page, a post without its
/// CSRF token, a wrong password, a replayed code) and the confidential one (a replayed
/// code). Nonces are not secrets; everything else is collected by [`Run::request`].
async fn code_grants(run: &Run, webapp_secret: &str) {
    let spa = ("spa", None);
    let webapp = ("webapp", Some(webapp_secret));

    // --- authorization code + PKCE, the public client: the sign-in page, a post
    // without its CSRF token, a wrong password, then alice.
    let mut browser = Browser::default();
    let (verifier, challenge) = pkce();
    let nonce = format!("nonce-spa-{}", random_hex(4));
    let params = code_request("spa", SPA_CALLBACK, &challenge, &nonce);
    let page = run
        .browse(
            "code-spa-page",
            &mut browser,
            "GET",
            &authorize(&params),
            None,
            200,
        )
        .await;
    assert!(browser.cookies.contains_key("scopegate_csrf"));
    let hidden = fields_of(&page);
    assert!(hidden.contains_key("csrf_token"), "{hidden:?}");
    let forged = [
        ("pending_request", hidden["pending_request"].as_str()),
        ("username", "alice"),
        ("password", ALICE_PASSWORD),
    ];
    run.browse(
        "code-spa-no-csrf",
        &mut browser,
        "POST",
        "/authorize",
        Some(&forged),
        403,
    )
    .await;
    assert!(!browser.cookies.contains_key("scopegate_session"));
    let typo = format!("typed-wrong-{}", random_hex(8));
    let again = run
        .submit(
            "code-spa-wrong-password",
            &mut browser,
            &page,
            &[("username", "alice"), ("password", &typo)],
            200,
        )
        .await;
    assert!(again.text().contains("Wrong username or password."));
    assert!(!browser.cookies.contains_key("scopegate_session"));
    let done = run
        .submit(
            "code-spa-sign-in",
            &mut browser,
            &again,
            &[("username", "alice"), ("password", ALICE_PASSWORD)],
            303,
        )
        .await;
    assert!(browser.cookies.contains_key("scopegate_session"));
    let redirect = Redirect::of(&done);
    assert_eq!(redirect.base, SPA_CALLBACK);
    let code = redirect.query["code"].clone();
    let spa_tokens = run
        .redeem("code-spa-redeem", &code, SPA_CALLBACK, &verifier, spa, 200)
        .await
        .json;
    assert_eq!(nonce_of(&spa_tokens), nonce);
    str_of(&spa_tokens, "refresh_token");
    let replay = run
        .redeem("code-spa-replay", &code, SPA_CALLBACK, &verifier, spa, 400)
        .await;
    assert_eq!(replay.error(), "invalid_grant");
    // The replay revoked what the code gave.
    let revoked = run
        .call(
            "code-spa-revoked-userinfo",
            "GET",
            "/userinfo",
            Some(&format!("Bearer {}", str_of(&spa_tokens, "access_token"))),
            None,
        )
        .await;
    assert_eq!(revoked.status, 401);
    run.expect("code-spa-revoked-userinfo", "issuer", 401, "none");

    // --- the confidential client, another browser, bob.
    let mut bobs = Browser::default();
    let (verifier, challenge) = pkce();
    let nonce = format!("nonce-webapp-{}", random_hex(4));
    let params = code_request("webapp", WEBAPP_CALLBACK, &challenge, &nonce);
    let bob = ("bob", BOB_PASSWORD);
    let done = run.sign_in("code-webapp", &mut bobs, &params, bob).await;
    let redirect = Redirect::of(&done);
    assert_eq!(redirect.base, WEBAPP_CALLBACK);
    let code = redirect.query["code"].clone();
    let webapp_tokens = run
        .redeem(
            "code-webapp-redeem",
            &code,
            WEBAPP_CALLBACK,
            &verifier,
            webapp,
            200,
        )
        .await
        .json;
    assert_eq!(nonce_of(&webapp_tokens), nonce);
    let replay = run
        .redeem(
            "code-webapp-replay",
            &code,
            WEBAPP_CALLBACK,
            &verifier,
            webapp,
            400,
        )
        .await;
    assert_eq!(replay.error(), "invalid_grant");
    let inactive = run
        .issuer(
            "code-webapp-revoked-introspect",
            "/oauth/introspect",
            &[("token", str_of(&webapp_tokens, "refresh_token"))],
            Some(("webapp", webapp_secret)),
            200,
        )
        .await;
    assert_eq!(inactive.json, json!({ "active": false }));
}

/// Session reuse, implicit, `form_post`, `prompt=none` without a session, and logout,
/// in a browser alice signed in to through the public client.
async fn session_implicit_and_logout(run: &Run) {
    let spa = ("spa", None);
    let mut browser = Browser::default();
    let (_, challenge) = pkce();
    let nonce = format!("nonce-first-{}", random_hex(4));
    let params = code_request("spa", SPA_CALLBACK, &challenge, &nonce);
    let alice = ("alice", ALICE_PASSWORD);
    run.sign_in("spa", &mut browser, &params, alice).await;
    assert!(browser.cookies.contains_key("scopegate_session"));

    // --- session reuse: alice's browser gets a code without the form.
    let (verifier, challenge) = pkce();
    let nonce = format!("nonce-again-{}", random_hex(4));
    let params = code_request("spa", SPA_CALLBACK, &challenge, &nonce);
    let straight = run
        .browse(
            "session-reuse",
            &mut browser,
            "GET",
            &authorize(&params),
            None,
            303,
        )
        .await;
    let code = Redirect::of(&straight).query["code"].clone();
    let session_tokens = run
        .redeem(
            "session-reuse-redeem",
            &code,
            SPA_CALLBACK,
            &verifier,
            spa,
            200,
        )
        .await
        .json;
    assert_eq!(nonce_of(&session_tokens), nonce);

    // --- implicit `id_token token`: the tokens in the Location's fragment.
    let implicit_nonce = format!("nonce-implicit-{}", random_hex(4));
    let implicit = [
        ("response_type", "id_token token"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_HTTPS_CALLBACK),
        ("scope", "openid profile read:contacts"),
        ("audience", CONTACTS),
        ("state", "st-implicit"),
        ("nonce", implicit_nonce.as_str()),
    ];
    let done = run
        .browse(
            "implicit",
            &mut browser,
            "GET",
            &authorize(&implicit),
            None,
            303,
        )
        .await;
    let redirect = Redirect::of(&done);
    assert_eq!(redirect.base, SPA_HTTPS_CALLBACK);
    assert!(redirect.query.is_empty(), "{redirect:?}");
    let fragment = json!(redirect.fragment);
    str_of(&fragment, "access_token");
    assert_eq!(nonce_of(&fragment), implicit_nonce);

    form_post(run, &mut browser, &implicit).await;

    // --- prompt=none without a session: login_required.
    let mut params = code_request("spa", SPA_CALLBACK, &challenge, &nonce);
    params.push(("prompt", "none"));
    let silent = run
        .browse(
            "prompt-none-no-session",
            &mut Browser::default(),
            "GET",
            &authorize(&params),
            None,
            303,
        )
        .await;
    silent_refusal(&silent);

    let id_token = str_of(&session_tokens, "id_token");
    logout(run, &mut browser, id_token, &params).await;
}

/// `response_mode=form_post`: a code, then the implicit tokens, in the page's form.
async fn form_post(run: &Run, browser: &mut Browser, implicit: &[(&str, &str)]) {
    let spa = ("spa", None);
    let implicit_nonce = implicit
        .iter()
        .find_map(|&(name, value)| (name == "nonce").then_some(value))
        .expect("the implicit request carries a nonce");
    let (verifier, challenge) = pkce();
    let nonce = format!("nonce-form-post-{}", random_hex(4));
    let mut params = code_request("spa", SPA_HTTPS_CALLBACK, &challenge, &nonce);
    params.push(("response_mode", "form_post"));
    let page = run
        .browse(
            "form-post-code",
            browser,
            "GET",
            &authorize(&params),
            None,
            200,
        )
        .await;
    assert_eq!(
        form_action(&page.text()).as_deref(),
        Some(SPA_HTTPS_CALLBACK)
    );
    let code = fields_of(&page)["code"].clone();
    let form_post_tokens = run
        .redeem(
            "form-post-redeem",
            &code,
            SPA_HTTPS_CALLBACK,
            &verifier,
            spa,
            200,
        )
        .await
        .json;
    assert_eq!(nonce_of(&form_post_tokens), nonce);
    let mut params = implicit.to_vec();
    params.push(("response_mode", "form_post"));
    let page = run
        .browse(
            "form-post-implicit",
            browser,
            "GET",
            &authorize(&params),
            None,
            200,
        )
        .await;
    let fields = json!(fields_of(&page));
    str_of(&fields, "access_token");
    assert_eq!(nonce_of(&fields), implicit_nonce);
}

/// Logout to a registered URI (the client named by an ID token hint): the session ends
/// here and in the store, so `prompt=none` with the old cookie is refused.
async fn logout(run: &Run, browser: &mut Browser, id_token: &str, params: &[(&str, &str)]) {
    let session = browser.cookies["scopegate_session"].clone();
    let logout = format!(
        "/logout?{}",
        common::issuer::form_encode(&[
            ("id_token_hint", id_token),
            ("post_logout_redirect_uri", SPA_LOGOUT),
            ("state", "st-bye"),
        ])
    );
    let out = run
        .browse("logout", browser, "GET", &logout, None, 303)
        .await;
    let redirect = Redirect::of(&out);
    assert_eq!(redirect.base, SPA_LOGOUT);
    assert_eq!(redirect.query["state"], "st-bye");
    assert!(!browser.cookies.contains_key("scopegate_session"));
    let mut stale = Browser::default();
    stale.cookies.insert("scopegate_session".into(), session);
    let silent = run
        .browse(
            "prompt-none-after-logout",
            &mut stale,
            "GET",
            &authorize(params),
            None,
            303,
        )
        .await;
    silent_refusal(&silent);
}

/// The device flow: polled (pending, then too fast), approved at /activate after a
/// sign-in (tokens), and one denied in the same signed-in browser.
async fn device_grant(run: &Run) {
    let device_request = [
        ("client_id", "tv"),
        ("scope", "openid profile read:contacts offline_access"),
        ("audience", CONTACTS),
    ];
    let start = run
        .issuer(
            "device-code",
            "/oauth/device/code",
            &device_request,
            None,
            200,
        )
        .await
        .json;
    let device_code = str_of(&start, "device_code").to_string();
    let user_code = str_of(&start, "user_code").to_string();
    run.secrets
        .lock()
        .unwrap()
        .add("user code as stored", &user_code.replace('-', ""));
    let pending = run.poll("device-poll-pending", &device_code, 400).await;
    assert_eq!(pending.error(), "authorization_pending");
    let fast = run.poll("device-poll-too-fast", &device_code, 400).await;
    assert_eq!(fast.error(), "slow_down");
    let mut tv = Browser::default();
    let link = format!(
        "/activate?{}",
        common::issuer::form_encode(&[("user_code", &user_code)])
    );
    let entry = run
        .browse("activate-entry", &mut tv, "GET", &link, None, 200)
        .await;
    let login = run
        .submit(
            "activate-code",
            &mut tv,
            &entry,
            &[("user_code", &user_code)],
            200,
        )
        .await;
    assert!(login.text().contains("name=\"password\""));
    let confirm = run
        .submit(
            "activate-sign-in",
            &mut tv,
            &login,
            &[("username", "bob"), ("password", BOB_PASSWORD)],
            200,
        )
        .await;
    assert!(confirm.text().contains("value=\"approve\""));
    let approved = run
        .submit(
            "activate-approve",
            &mut tv,
            &confirm,
            &[("decision", "approve")],
            200,
        )
        .await;
    assert!(approved.text().contains("Device connected"));
    let device_tokens = run.poll("device-poll-tokens", &device_code, 200).await.json;
    for member in ["access_token", "id_token", "refresh_token"] {
        str_of(&device_tokens, member);
    }

    // --- and one denied, in the same (signed-in) browser.
    let start = run
        .issuer(
            "device-code-2",
            "/oauth/device/code",
            &device_request,
            None,
            200,
        )
        .await
        .json;
    let device_code = str_of(&start, "device_code").to_string();
    let user_code = str_of(&start, "user_code").to_string();
    run.secrets
        .lock()
        .unwrap()
        .add("user code as stored", &user_code.replace('-', ""));
    let entry = run
        .browse("activate-entry-2", &mut tv, "GET", "/activate", None, 200)
        .await;
    let confirm = run
        .submit(
            "activate-code-2",
            &mut tv,
            &entry,
            &[("user_code", &user_code)],
            200,
        )
        .await;
    assert!(confirm.text().contains("value=\"deny\""));
    let denied = run
        .submit(
            "activate-deny",
            &mut tv,
            &confirm,
            &[("decision", "deny")],
            200,
        )
        .await;
    assert!(denied.text().contains("Request denied"));
    let refused = run.poll("device-poll-denied", &device_code, 403).await;
    assert_eq!(refused.error(), "access_denied");
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn str_of<'a>(json: &'a Value, member: &str) -> &'a str {
    json[member]
        .as_str()
        .unwrap_or_else(|| panic!("no {member} in {json}"))
}

struct Setup {
    web_secret: String,
    m2m_secret: String,
    webapp_secret: String,
    store_dir: String,
    external_issuer: String,
    dead_upstream: String,
}

fn config(setup: &Setup) -> String {
    let (alice_hash, bob_hash) = common::issuer::hashes();
    format!(
        r#"{LISTEN_ANY}  shutdown_grace: 5s
log: {{ format: json, level: info }}
trust:
  leeway: 5s
  issuers:
    - issuer: "{ext}"
      audiences: [{AUD}]
      algorithms: [RS256, ES256]
      jwks_min_refresh: 100ms
      clients: [client-a]
forward:
  claims: {{ "https://contacts.example.com/roles": x-auth-roles }}
routes:
  - name: contacts
    match: {{ path: /api/contacts/*, methods: [GET] }}
    upstream: builtin:echo
    audience: {CONTACTS}
    scopes: [read:contacts]
  - name: partner
    match: {{ path: /partner/* }}
    upstream: builtin:echo
    audience: {AUD}
    scopes: [read:contacts]
  - name: down
    match: {{ path: /down/* }}
    upstream: "http://{dead}"
    audience: {CONTACTS}
issuer:
  url: https://issuer.scopegate.test/
  store: "sqlite://{store}/issuer.db"
  throttle: {{ max_failures: 4, window: 10m }}
  # Reuse right after a rotation must revoke the family (no grace window).
  refresh_grace: 0s
  # No poll waits for the interval (an approved or denied code answers at once); a
  # second poll right after the first is slow_down.
  device: {{ interval: 5s, ttl: 1m }}
  apis:
    - identifier: {CONTACTS}
      scopes: [{{ value: read:contacts }}, {{ value: write:contacts }}]
      allow_offline_access: true
    - identifier: {CALENDAR}
      scopes: [{{ value: read:calendar }}]
  roles:
    reader: {{ "{CONTACTS}": [read:contacts], "{CALENDAR}": [read:calendar] }}
  clients:
    - client_id: cli
      grant_types: [password, refresh_token, token_exchange]
    - client_id: web
      client_secret: ${{WEB_SECRET}}
      grant_types: [password, refresh_token, {TOKEN_EXCHANGE}]
    - client_id: m2m
      client_secret: "{m2m}"
      grant_types: [client_credentials]
      grants: {{ "{CONTACTS}": [read:contacts, write:contacts] }}
    - client_id: spa
      name: Contacts Web
      grant_types: [authorization_code, refresh_token, implicit]
      redirect_uris: [{SPA_CALLBACK}, {SPA_HTTPS_CALLBACK}]
      post_logout_redirect_uris: [{SPA_LOGOUT}]
    - client_id: webapp
      client_secret: "{webapp}"
      grant_types: [authorization_code, refresh_token]
      redirect_uris: [{WEBAPP_CALLBACK}]
      post_logout_redirect_uris: [{WEBAPP_LOGOUT}]
    - client_id: tv
      name: Living-room TV
      grant_types: [device_code, refresh_token]
  users:
    - username: alice
      password_hash: {alice_hash}
      email: alice@example.com
      name: Alice Liddell
      roles: [reader]
    - username: bob
      password_hash: {bob_hash}
      roles: [reader]
  claims:
    namespace: https://contacts.example.com/
    access_token: [roles]
"#,
        ext = setup.external_issuer,
        dead = setup.dead_upstream,
        store = setup.store_dir,
        m2m = setup.m2m_secret,
        webapp = setup.webapp_secret,
    )
}

/// `grant_type=password` form parameters (the user's scope: ID, access and refresh
/// tokens).
fn password<'a>(
    user: &'a str,
    password: &'a str,
    client: Option<&'a str>,
) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("grant_type", "password"),
        ("username", user),
        ("password", password),
        ("audience", CONTACTS),
        ("scope", "openid profile email read:contacts offline_access"),
    ];
    if let Some(client) = client {
        params.push(("client_id", client));
    }
    params
}

fn refresh(token: &str) -> [(&str, &str); 2] {
    [("grant_type", "refresh_token"), ("refresh_token", token)]
}

impl Run {
    /// The external issuer, a fresh store and `scopegate run` on [`config`] with
    /// Scopegate's targets at `trace`; the secrets of the setup are collected; waits
    /// until it is ready.
    async fn start(tag: &str) -> Run {
        let external = common::Issuer::start(&common::default_keys()).await;
        let dir = TempDir::new(tag);
        let setup = Setup {
            web_secret: format!("web-secret-{}", random_hex(12)),
            m2m_secret: format!("m2m-secret-{}", random_hex(12)),
            webapp_secret: format!("webapp-secret-{}", random_hex(12)),
            store_dir: dir.path().display().to_string(),
            external_issuer: external.url.clone(),
            dead_upstream: common::dead_addr().await.to_string(),
        };
        let key_encryption_key = random_hex(32);
        let config_text = config(&setup);
        let process = Process::start(
            dir.path(),
            &config_text,
            &[
                ("RUST_LOG", "info,scopegate=trace"),
                ("WEB_SECRET", &setup.web_secret),
                ("SCOPEGATE_KEY_ENCRYPTION_KEY", &key_encryption_key),
            ],
        );
        let mut secrets = Secrets::default();
        let (alice_hash, bob_hash) = common::issuer::hashes();
        secrets.add("alice's password", ALICE_PASSWORD);
        secrets.add("bob's password", BOB_PASSWORD);
        secrets.add("web client secret", &setup.web_secret);
        secrets.add("m2m client secret", &setup.m2m_secret);
        secrets.add("webapp client secret", &setup.webapp_secret);
        secrets.add("key-encryption key", &key_encryption_key);
        secrets.add("alice's password hash", alice_hash);
        secrets.add("bob's password hash", bob_hash);
        process.wait_ready().await;
        Run {
            process,
            secrets: Mutex::new(secrets),
            expected: Mutex::new(Vec::new()),
            setup,
            config_text,
            external,
            _dir: dir,
        }
    }

    /// Stops the process and reads everything it wrote: no secret the run handled is in
    /// it, and every expected request has exactly one access line saying what it must.
    /// Returns the secrets, the log lines and the refusal reasons seen.
    async fn finish(self, min_secrets: usize) -> Finished {
        let Run {
            process,
            secrets,
            expected,
            ..
        } = self;
        let (status, log) = process.stop().await;
        assert_eq!(status.code(), Some(0), "exit status; log:\n{log}");
        let secrets = secrets.into_inner().unwrap();
        assert!(
            secrets.0.len() >= min_secrets,
            "the run handled {} secrets; expected at least {min_secrets}",
            secrets.0.len()
        );
        secrets.assert_absent(&log);

        // --- the access lines.
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let access: Vec<&Value> = lines
            .iter()
            .filter(|l| l["target"] == "scopegate::access")
            .collect();
        let expected = expected.into_inner().unwrap();
        let mut reasons_seen = std::collections::BTreeSet::new();
        for want in &expected {
            let found: Vec<&&Value> = access
                .iter()
                .filter(|l| l["span"]["request_id"] == want.request_id.as_str())
                .collect();
            assert_eq!(
                found.len(),
                1,
                "one access line for {}: {found:?}",
                want.request_id
            );
            let span = &found[0]["span"];
            assert_eq!(found[0]["message"], "request");
            assert_eq!(span["name"], "request");
            assert_eq!(span["route"], want.route, "{span}");
            assert_eq!(span["status"], want.status, "{span}");
            assert_eq!(span["auth"], want.auth, "{span}");
            assert!(span["method"].is_string(), "{span}");
            assert!(
                span["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
                "{span}"
            );
            match want.reason {
                Some(reason) => {
                    assert_eq!(span["reason"], reason, "{span}");
                    reasons_seen.insert(reason);
                }
                None => assert!(span.get("reason").is_none(), "{span}"),
            }
            assert_eq!(
                span.get("upstream_ms").is_some_and(Value::is_f64),
                want.upstream,
                "{span}"
            );
        }
        Finished {
            secrets,
            lines,
            reasons_seen,
        }
    }
}

/// What [`Run::finish`] read.
struct Finished {
    secrets: Secrets,
    lines: Vec<Value>,
    reasons_seen: std::collections::BTreeSet<&'static str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_through_the_token_endpoint_grants() {
    let run = Run::start("ops-logs-grants").await;
    let setup = &run.setup;
    let m2m = ("m2m", setup.m2m_secret.as_str());
    let web = ("web", setup.web_secret.as_str());

    // --- client_credentials: client_secret_basic, then client_secret_post with a scope.
    run.machine_tokens().await;

    // --- password: a confidential client (Basic) and a public one.
    let alice = run.alice_by_web("password-web").await;
    let bob = run
        .token(
            "password-cli",
            &password("bob", BOB_PASSWORD, Some("cli")),
            None,
            200,
        )
        .await
        .json;
    let alice_again = run.alice_by_web("password-web-2").await;
    for tokens in [&alice, &bob, &alice_again] {
        for member in ["access_token", "id_token", "refresh_token"] {
            str_of(tokens, member);
        }
    }

    // --- refresh_token: rotation, then reuse of the spent one revokes the family.
    let first = refresh(str_of(&alice, "refresh_token"));
    let rotated = run.token("refresh", &first, Some(web), 200).await.json;
    let reuse = run.token("refresh-reuse", &first, Some(web), 400).await;
    assert_eq!(reuse.error(), "invalid_grant");
    let second = refresh(str_of(&rotated, "refresh_token"));
    let revoked_family = run
        .token("refresh-after-reuse", &second, Some(web), 400)
        .await;
    assert_eq!(revoked_family.error(), "invalid_grant");

    // --- token exchange: bob's access token for one to the calendar API.
    let exchanged = run
        .token(
            "exchange",
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("client_id", "cli"),
                ("subject_token", str_of(&bob, "access_token")),
                ("subject_token_type", ACCESS_TOKEN_TYPE),
                ("audience", CALENDAR),
            ],
            None,
            200,
        )
        .await
        .json;
    str_of(&exchanged, "access_token");

    // --- introspection, /userinfo, revocation.
    let active = run
        .issuer(
            "introspect-access",
            "/oauth/introspect",
            &[("token", str_of(&alice_again, "access_token"))],
            Some(m2m),
            200,
        )
        .await;
    assert_eq!(active.json["active"], true);
    let active = run
        .issuer(
            "introspect-refresh",
            "/oauth/introspect",
            &[
                ("token", str_of(&alice_again, "refresh_token")),
                ("token_type_hint", "refresh_token"),
            ],
            Some(web),
            200,
        )
        .await;
    assert_eq!(active.json["active"], true);
    let bearer = |token: &str| format!("Bearer {token}");
    let userinfo = run
        .call(
            "userinfo",
            "GET",
            "/userinfo",
            Some(&bearer(str_of(&alice_again, "access_token"))),
            None,
        )
        .await;
    assert_eq!(userinfo.status, 200, "{:?}", userinfo.json);
    run.expect("userinfo", "issuer", 200, "none");
    run.issuer(
        "revoke-refresh",
        "/oauth/revoke",
        &[("token", str_of(&alice_again, "refresh_token"))],
        Some(web),
        200,
    )
    .await;
    run.issuer(
        "revoke-access",
        "/oauth/revoke",
        &[
            ("token", str_of(&bob, "access_token")),
            ("client_id", "cli"),
        ],
        None,
        200,
    )
    .await;
    let revoked = run
        .call(
            "userinfo-revoked",
            "GET",
            "/userinfo",
            Some(&bearer(str_of(&bob, "access_token"))),
            None,
        )
        .await;
    assert_eq!(revoked.status, 401);
    run.expect("userinfo-revoked", "issuer", 401, "none");

    run.finish(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_through_the_token_endpoint_failures() {
    let run = Run::start("ops-logs-failures").await;
    let web = ("web", run.setup.web_secret.as_str());
    // Password failures come last: they lock out this IP.
    let wrong_secret = format!("wrong-secret-{}", random_hex(8));
    let cc = [("grant_type", "client_credentials"), ("audience", CONTACTS)];
    let refused = run
        .token("wrong-secret-basic", &cc, Some(("m2m", &wrong_secret)), 401)
        .await;
    assert_eq!(refused.error(), "invalid_client");
    let wrong_post_secret = format!("wrong-post-secret-{}", random_hex(8));
    run.token(
        "wrong-secret-post",
        &[
            ("grant_type", "client_credentials"),
            ("audience", CONTACTS),
            ("client_id", "m2m"),
            ("client_secret", &wrong_post_secret),
        ],
        None,
        401,
    )
    .await;
    let garbled = format!("Basic {}!!", random_hex(12));
    let answer = run
        .call(
            "garbled-basic",
            "POST",
            "/oauth/token",
            Some(&garbled),
            Some(&cc[..]),
        )
        .await;
    assert_eq!(answer.status, 401, "{:?}", answer.json);
    run.expect("garbled-basic", "issuer", 401, "none");
    let unsupported = run
        .token(
            "unknown-grant",
            &[("grant_type", "urn:example:made-up"), ("client_id", "cli")],
            None,
            400,
        )
        .await;
    assert_eq!(unsupported.error(), "unsupported_grant_type");
    let made_up_refresh = format!("rt-never-issued-{}", random_hex(16));
    run.token(
        "unknown-refresh",
        &refresh(&made_up_refresh),
        Some(web),
        400,
    )
    .await;
    let made_up_code = format!("code-never-issued-{}", random_hex(16));
    let verifier = format!("verifier-{}", random_hex(24));
    let made_up = run
        .token(
            "made-up-code",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "spa"),
                ("code", &made_up_code),
                ("code_verifier", &verifier),
                ("redirect_uri", SPA_CALLBACK),
            ],
            None,
            400,
        )
        .await;
    assert_eq!(made_up.error(), "invalid_grant");
    let wrong_password = format!("wrong-password-{}", random_hex(8));
    let wrong = run
        .token(
            "wrong-password",
            &password("alice", &wrong_password, Some("cli")),
            None,
            400,
        )
        .await;
    assert_eq!(wrong.error(), "invalid_grant");
    for attempt in 1..=3 {
        let guess = format!("guess-{attempt}-{}", random_hex(8));
        run.token(
            &format!("wrong-password-bob-{attempt}"),
            &password("bob", &guess, Some("cli")),
            None,
            400,
        )
        .await;
    }
    // Four failures from this IP: locked out, the right password included.
    let locked = run
        .token(
            "locked-out",
            &password("bob", BOB_PASSWORD, Some("cli")),
            None,
            429,
        )
        .await;
    assert_eq!(locked.error(), "invalid_grant");

    run.finish(20).await;
}

impl Run {
    /// [`Run::finish`], then asserts that secrets of each kind in `kinds` were
    /// collected, not only handled.
    async fn finish_collecting(self, min_secrets: usize, kinds: &[&str]) {
        let secrets = self.finish(min_secrets).await.secrets;
        for what in kinds {
            assert!(
                secrets.0.values().any(|w| w.starts_with(what)),
                "no {what} among the secrets"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_through_the_code_grant() {
    let run = Run::start("ops-logs-code").await;
    code_grants(&run, &run.setup.webapp_secret).await;
    run.finish_collecting(
        30,
        &[
            "cookie scopegate_session",
            "cookie scopegate_csrf",
            "redirect code",
            "form code_verifier",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_through_the_implicit_and_form_post_grants_and_logout() {
    let run = Run::start("ops-logs-implicit").await;
    session_implicit_and_logout(&run).await;
    run.finish_collecting(
        30,
        &[
            "cookie scopegate_session",
            "cookie scopegate_csrf",
            "redirect code",
            "redirect access_token",
            "page field code",
            "page field access_token",
            "form code_verifier",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_through_the_device_grant() {
    let run = Run::start("ops-logs-device").await;
    device_grant(&run).await;
    run.finish_collecting(
        10,
        &[
            "cookie scopegate_session",
            "response device_code",
            "response user_code",
            "user code as stored",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_through_the_proxy_with_issued_tokens_and_a_down_upstream() {
    let run = Run::start("ops-logs-proxy-issued").await;
    let bearer = |token: &str| format!("Bearer {token}");
    // Tokens of the built-in issuer for the proxy.
    let (machine, machine_write) = run.machine_tokens().await;
    let alice = run.alice_by_web("password-web").await;

    // --- the proxy with the built-in issuer's tokens.
    run.proxy_ok(
        "proxy-machine",
        "/api/contacts/1",
        "contacts",
        str_of(&machine, "access_token"),
    )
    .await;
    run.proxy_ok(
        "proxy-user",
        "/api/contacts/1",
        "contacts",
        str_of(&alice, "access_token"),
    )
    .await;
    run.proxy_refused(
        "reason-wrong-type-id-token",
        "/api/contacts/1",
        "contacts",
        Some(&bearer(str_of(&alice, "id_token"))),
        "wrong_type",
    )
    .await;
    run.proxy_refused(
        "reason-insufficient-scope-issued",
        "/api/contacts/1",
        "contacts",
        Some(&bearer(str_of(&machine_write, "access_token"))),
        "insufficient_scope",
    )
    .await;
    // An upstream that is down: the warning logged meanwhile carries the request id.
    let down = run
        .call(
            "upstream-down",
            "GET",
            "/down/x",
            Some(&bearer(str_of(&machine, "access_token"))),
            None,
        )
        .await;
    assert_eq!(down.status, 502);
    run.expected.lock().unwrap().push(Expected {
        request_id: "upstream-down".into(),
        route: "down",
        status: 502,
        auth: "ok",
        reason: None,
        upstream: true,
    });

    let finished = run.finish(20).await;
    // Events logged during a request carry its span.
    let upstream_failed = finished
        .lines
        .iter()
        .find(|l| l["message"] == "upstream failed")
        .expect("the upstream failure is logged");
    assert_eq!(upstream_failed["span"]["request_id"], "upstream-down");
    assert_eq!(upstream_failed["level"], "WARN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_log_through_every_proxy_auth_failure_and_a_refused_reload() {
    let run = Run::start("ops-logs-proxy").await;
    let setup = &run.setup;
    let config_text = &run.config_text;
    let external = &run.external;
    let bearer = |token: &str| format!("Bearer {token}");

    // --- every proxy auth failure reason, with the external issuer's tokens.
    let now = common::now();
    let claims = |extra: Value| external.claims(extra);
    let signed = |extra: Value| rsa().token(&claims(extra));
    run.proxy_ok("partner-ok", "/partner/x", "partner", &signed(json!({})))
        .await;
    let basic_on_proxy = common::issuer::basic("someone", &format!("proxy-pw-{}", random_hex(8)));
    let rejected: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing_token"),
        ("basic-is-no-token", Some(basic_on_proxy), "missing_token"),
        (
            "malformed",
            Some(format!("Bearer garbage-{}", random_hex(16))),
            "malformed",
        ),
        (
            "bad-signature",
            Some(bearer(&rogue_rsa().token_with(
                json!({ "alg": "RS256", "kid": "rsa-1", "typ": "at+jwt" }),
                &claims(json!({})),
            ))),
            "bad_signature",
        ),
        (
            "disallowed-alg",
            Some(bearer(&ps().token(&claims(json!({}))))),
            "disallowed_alg",
        ),
        (
            "expired",
            Some(bearer(&signed(
                json!({ "exp": now - 600, "iat": now - 900 }),
            ))),
            "expired",
        ),
        (
            "not-yet-valid",
            Some(bearer(&signed(json!({ "nbf": now + 600 })))),
            "not_yet_valid",
        ),
        (
            "wrong-issuer",
            Some(bearer(&signed(
                json!({ "iss": "https://elsewhere.example.com/" }),
            ))),
            "wrong_issuer",
        ),
        (
            "wrong-audience",
            Some(bearer(&signed(
                json!({ "aud": "https://nope.example.com" }),
            ))),
            "wrong_audience",
        ),
        (
            "wrong-type",
            Some(bearer(&rsa().token_with(
                json!({ "alg": "RS256", "kid": "rsa-1", "typ": "JWT" }),
                &claims(json!({ "nonce": "n-0123456789" })),
            ))),
            "wrong_type",
        ),
        (
            "insufficient-scope",
            Some(bearer(&signed(json!({ "scope": "profile" })))),
            "insufficient_scope",
        ),
        (
            "unknown-client",
            Some(bearer(&signed(json!({ "azp": "client-z" })))),
            "unknown_client",
        ),
    ];
    for (name, authorization, reason) in &rejected {
        run.proxy_refused(
            &format!("reason-{name}"),
            "/partner/x",
            "partner",
            authorization.as_deref(),
            reason,
        )
        .await;
    }
    // An unknown kid: refused, and the JWKS refetch it triggers is logged in its span
    // (refetches are rate-limited, so try until one happens inside such a request).
    let mut attempt = 0;
    eventually(
        "a JWKS refetch logged inside an unknown-kid request",
        async || {
            attempt += 1;
            let id = format!("reason-unknown-key-{attempt}");
            let token = rogue_rsa().token_with(
                json!({ "alg": "RS256", "kid": format!("gone-{attempt}"), "typ": "at+jwt" }),
                &claims(json!({})),
            );
            run.proxy_refused(
                &id,
                "/partner/x",
                "partner",
                Some(&bearer(&token)),
                "unknown_key",
            )
            .await;
            run.process.json_lines().iter().any(|line| {
                line["message"] == "JWKS loaded" && line["span"]["request_id"] == id.as_str()
            })
        },
    )
    .await;

    // --- a reload refused: the broken file holds a secret on the broken line.
    let broken = config_text.replace(
        &format!("client_secret: \"{}\"", setup.m2m_secret),
        &format!("client_secret: \"{}\n", setup.m2m_secret),
    );
    assert_ne!(&broken, config_text);
    run.process.rewrite(&broken);
    run.process.signal("HUP");
    eventually("the broken config is refused", async || {
        run.process.json_lines().iter().any(|l| {
            l["level"] == "ERROR"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("configuration") && m.contains("refused"))
        })
    })
    .await;
    run.proxy_ok(
        "after-refused-reload",
        "/partner/x",
        "partner",
        &signed(json!({})),
    )
    .await;

    let finished = run.finish(20).await;
    for reason in scopegate::claims::Reason::ALL {
        assert!(
            finished.reasons_seen.contains(reason.label()),
            "no request was refused for {reason}"
        );
    }
}
