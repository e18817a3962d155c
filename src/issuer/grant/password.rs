//! `password` (RFC 6749 §4.3): a user's username (or email) and password, throttled per
//! user and per IP (see `throttle`).

use std::net::IpAddr;

use super::{Extras, TokenResponse, issue_for_user};
use crate::error::OAuthError;
use crate::issuer::form::Form;
use crate::issuer::model::Client;
use crate::issuer::{Issuer, mint, throttle};

pub(super) async fn grant(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
    remote: IpAddr,
) -> Result<TokenResponse, OAuthError> {
    let model = &issuer.model;
    let login = form.require("username")?;
    let password = form.require("password")?;
    let api = mint::resolve_audience(model, form)?;
    let requested = mint::requested_scopes(form.get("scope"))?;

    let keys = throttle::Keys::new(login, remote);
    throttle::check(issuer, &keys).await?;
    let user = model.user_by_login(login);
    let hash = user.map(|u| u.config.password_hash.clone());
    let verified = issuer.verify_password(hash, password).await;
    let Some(user) = user.filter(|_| verified) else {
        throttle::failed(issuer, &keys).await?;
        return Err(OAuthError::invalid_grant("wrong username or password"));
    };
    throttle::succeeded(issuer, &keys).await?;

    let granted = mint::user_grant(model, user, client, api, &requested);
    let now = issuer.now();
    issue_for_user(issuer, client, user, api, &granted, now, Extras::default()).await
}
