//! The issuer's form parser (`issuer::form::Form::parse`, `decode`, `encode`) and the
//! browser-state parsing of its sessions (`issuer::session::cookie`, `csrf_token`,
//! `check_csrf`, with `Origin` and `Host`) against the model of `common/issuer.yaml`.
//!
//! Input, NUL-separated: form body · `Cookie` header values (one per line) · `Origin` ·
//! `Host` · a cookie name to look up.
//!
//! Invariants besides "no panic": a parsed form re-encodes and re-parses to the same
//! pairs; `get` returns only non-empty values that were sent; `cookie` returns a
//! non-empty value only for a name sent exactly once; `csrf_token` keeps a good cookie;
//! a form that passes `check_csrf` carries the CSRF cookie's value (32+ characters).

#![no_main]

mod common;

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scopegate::issuer::form::{Form, decode, encode};
use scopegate::issuer::model::Model;
use scopegate::issuer::session::{
    CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, check_csrf, cookie, csrf_token,
};

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::new(&common::issuer_config()))
}

/// How many `name=` pairs the readable `Cookie` values hold (the reference count).
fn occurrences(headers: &HeaderMap, name: &str) -> usize {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .count()
}

fn check_form(body: &[u8]) -> Option<Form> {
    let _ = decode(body);
    let form = Form::parse(body).ok()?;
    let pairs: Vec<(&str, &str)> = form.pairs().collect();
    let again = Form::parse(encode(pairs.iter().copied()).as_bytes())
        .expect("an encoded form parses");
    assert_eq!(again.pairs().collect::<Vec<_>>(), pairs, "form round trip");
    for (name, value) in &pairs {
        match form.get(name) {
            Some(got) => assert_eq!(got, *value),
            None => assert!(value.is_empty()),
        }
    }
    Some(form)
}

fuzz_target!(|data: &[u8]| {
    let [body, cookies, origin, host, name] = common::sections::<5>(data);
    let form = check_form(body);

    let mut headers = HeaderMap::new();
    for line in cookies.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(http::header::COOKIE, value);
        }
    }
    if !origin.is_empty()
        && let Ok(value) = HeaderValue::from_bytes(origin)
    {
        headers.insert(http::header::ORIGIN, value);
    }
    if !host.is_empty()
        && let Ok(value) = HeaderValue::from_bytes(host)
    {
        headers.insert(http::header::HOST, value);
    }
    let name = String::from_utf8_lossy(name);
    for name in [SESSION_COOKIE, CSRF_COOKIE, &name] {
        if let Some(value) = cookie(&headers, name) {
            assert!(!value.is_empty());
            assert_eq!(occurrences(&headers, name), 1, "{name} sent more than once");
        }
    }

    let model = model();
    if let Ok((token, set)) = csrf_token(model, &headers, false) {
        match set {
            None => assert_eq!(Some(token.as_str()), cookie(&headers, CSRF_COOKIE)),
            Some(_) => assert!(token.len() >= 32),
        }
    }
    let form = form.unwrap_or_default();
    if check_csrf(model, &headers, &form).is_ok() {
        let sent = cookie(&headers, CSRF_COOKIE).expect("passed without a CSRF cookie");
        assert!(sent.len() >= 32);
        assert_eq!(form.get(CSRF_FIELD), Some(sent));
    }
});
