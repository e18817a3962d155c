//! `authorization_code` (RFC 6749 §4.1.3): a code from `/authorize`, by the client it
//! was issued to, with the same `redirect_uri` and, if a PKCE challenge was sent there,
//! the verifier (and never a verifier without one: that would be a downgrade).
//! Everything is checked before the code is spent; spending it is atomic. A code
//! presented again after it was redeemed revokes what it was redeemed for (the access
//! token by `jti`, the refresh family), as RFC 6749 §4.1.2 asks.

use subtle::ConstantTimeEq;

use super::{Extras, Issued, issue_for_user, stored_api};
use crate::error::OAuthError;
use crate::issuer::Issuer;
use crate::issuer::form::Form;
use crate::issuer::mint::{self, Granted};
use crate::issuer::model::{Api, Client};
use crate::issuer::store::{CodeIssue, CodeRecord, secret_hash};

pub(super) async fn grant(
    issuer: &Issuer,
    client: &Client,
    form: &Form,
    dpop: Option<&str>,
) -> Issued {
    let model = &issuer.model;
    let code = form.require("code")?;
    let redirect_uri = form.require("redirect_uri")?;
    let verifier = code_verifier(form)?;
    let hash = secret_hash(code);
    let now = issuer.now();
    let record = find_unredeemed(issuer, &hash, now).await?;
    check_binding(&record, client, redirect_uri, verifier, now)?;
    let Some(user) = model.user_by_subject(&record.subject) else {
        return Err(OAuthError::invalid_grant(
            "the user of this code no longer exists",
        ));
    };
    let api = stored_api(model, record.audience.as_deref(), "code")?;
    // What /authorize decided, with today's roles (a scope lost since is not issued).
    let decided: Vec<&str> = record.scope.split_ascii_whitespace().collect();
    let granted = mint::user_grant(model, user, client, api, &decided);

    let issue = redeem(issuer, &hash, api, &granted, now).await?;
    let extras = Extras {
        jkt: dpop,
        nonce: record.nonce.as_deref(),
        jti: Some(issue.jti),
        family_id: issue.family_id,
        ..Extras::default()
    };
    let auth_time = record.auth_time;
    let answer = issue_for_user(issuer, client, user, api, &granted, auth_time, extras).await?;
    // A replay that came while the tokens were being made found the family not yet
    // stored; revoke again now that it is, and answer as a replay.
    if issuer.core.store.code_replayed(&hash).await? {
        code_replayed(issuer, &hash, now).await?;
        return Err(invalid());
    }
    Ok(answer)
}

fn invalid() -> OAuthError {
    OAuthError::invalid_grant("the authorization code is invalid or expired")
}

/// The PKCE `code_verifier`, if sent: RFC 7636 §4.1's 43 to 128 characters of
/// `[A-Za-z0-9-._~]`.
fn code_verifier(form: &Form) -> Result<Option<&str>, OAuthError> {
    let verifier = form.get("code_verifier");
    if let Some(verifier) = verifier
        && !is_code_verifier(verifier)
    {
        return Err(OAuthError::invalid_request(
            "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
        ));
    }
    Ok(verifier)
}

fn is_code_verifier(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The code by its hash, not yet redeemed (a redeemed one presented again is a replay).
async fn find_unredeemed(issuer: &Issuer, hash: &str, now: i64) -> Result<CodeRecord, OAuthError> {
    let Some(found) = issuer.core.store.find_code(hash).await? else {
        return Err(invalid());
    };
    if found.used {
        code_replayed(issuer, hash, now).await?;
        return Err(invalid());
    }
    Ok(found.record)
}

/// The code is this client's, unexpired, for this redirect URI, and the verifier
/// matches its PKCE challenge (a public client needs one).
fn check_binding(
    record: &CodeRecord,
    client: &Client,
    redirect_uri: &str,
    verifier: Option<&str>,
    now: i64,
) -> Result<(), OAuthError> {
    if record.client_id != client.client_id || record.expires_at <= now {
        return Err(invalid());
    }
    if record.redirect_uri != redirect_uri {
        return Err(OAuthError::invalid_grant(
            "redirect_uri differs from the one the code was issued for",
        ));
    }
    check_pkce(record.code_challenge.as_deref(), verifier, client)
}

fn check_pkce(
    challenge: Option<&str>,
    verifier: Option<&str>,
    client: &Client,
) -> Result<(), OAuthError> {
    match (challenge, verifier) {
        (Some(challenge), Some(verifier)) => {
            let computed = crate::jose::b64url(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
            );
            if !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                return Err(OAuthError::invalid_grant(
                    "code_verifier does not match the code_challenge",
                ));
            }
            Ok(())
        }
        (Some(_), None) => Err(OAuthError::invalid_grant(
            "this code was issued with a PKCE challenge: send code_verifier",
        )),
        (None, Some(_)) => Err(OAuthError::invalid_grant(
            "this code was issued without a PKCE challenge: code_verifier is not expected",
        )),
        (None, None) if client.is_public() => {
            Err(OAuthError::invalid_grant("a public client needs PKCE"))
        }
        (None, None) => Ok(()),
    }
}

/// Spends the code for the tokens about to be issued (their `jti` and refresh family
/// chosen now and recorded with it); a parallel redemption that won makes this a replay.
async fn redeem(
    issuer: &Issuer,
    hash: &str,
    api: Option<&Api>,
    granted: &Granted<'_>,
    now: i64,
) -> Result<CodeIssue, OAuthError> {
    let family_id = if granted.offline_access {
        Some(mint::random_token(16)?)
    } else {
        None
    };
    let issue = CodeIssue {
        jti: mint::random_token(16)?,
        // The access token expires by then (plus a margin for its own `now`).
        until: now + mint::access_ttl(&issuer.model, api) as i64 + 60,
        family_id,
    };
    if !issuer.core.store.redeem_code(hash, now, &issue).await? {
        code_replayed(issuer, hash, now).await?;
        return Err(invalid());
    }
    Ok(issue)
}

/// A redeemed code came again: revoke what it was redeemed for.
async fn code_replayed(issuer: &Issuer, hash: &str, now: i64) -> Result<(), OAuthError> {
    if issuer.core.store.replay_code(hash, now).await? {
        tracing::warn!(
            "an authorization code was presented again; the tokens issued for it are revoked"
        );
    }
    Ok(())
}
