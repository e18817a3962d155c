//! The pages a person sees: sign-in, the device pages, "signed out", error pages, and
//! the auto-submitting `form_post` response. One small template, no external assets, no
//! JavaScript except the one constant line that submits a `form_post` form (allowed by
//! its hash; a `<noscript>` button does the same without it).
//!
//! Every interpolated value goes through [`escape`]. Every page is served with
//! `Cache-Control: no-store`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`,
//! `X-Content-Type-Options: nosniff` and a Content-Security-Policy that allows nothing but
//! the page's own inline style (by hash) and forms, and no framing
//! (`frame-ancestors 'none'`).

use std::fmt::Write;
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{
    CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderValue, Response, StatusCode};

use crate::error::{OAuthCode, OAuthError};
use crate::http::{Body, NO_CACHE, NO_STORE, set_retry_after, with_headers};

/// Escapes text for HTML element content and double-quoted attribute values.
///
/// ```
/// use scopegate::issuer::pages::escape;
/// assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
/// ```
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root{color-scheme:light dark;--bg:#f3f4f6;--card:#fff;--text:#111827;--muted:#4b5563;--border:#d1d5db;--input:#fff;--accent:#2f54eb;--accent-hover:#1d39c4;--accent-text:#fff;--focus:#2f54eb;--alert-bg:#fef2f2;--alert-border:#fecaca;--alert-text:#991b1b;--ok-bg:#ecfdf5;--ok-text:#065f46}
@media (prefers-color-scheme:dark){:root{--bg:#0b0f17;--card:#151b26;--text:#e5e7eb;--muted:#9ca3af;--border:#374151;--input:#0f141d;--accent:#597ef7;--accent-hover:#85a5ff;--accent-text:#0b0f17;--focus:#85a5ff;--alert-bg:#3a1116;--alert-border:#7f1d1d;--alert-text:#fecaca;--ok-bg:#0f2e24;--ok-text:#a7f3d0}}
*{box-sizing:border-box}
html{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif;font-size:16px;line-height:1.5;color:var(--text);background:var(--bg);-webkit-text-size-adjust:100%}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;padding:32px 16px}
main{width:100%;max-width:408px}
.card{background:var(--card);border:1px solid var(--border);border-radius:14px;padding:36px 32px 32px;box-shadow:0 1px 2px rgba(16,24,40,.05),0 12px 32px rgba(16,24,40,.08)}
.brand{display:flex;align-items:center;gap:10px;margin:0 0 28px;font-weight:600;font-size:1.0625rem;letter-spacing:-.01em}
.mark{flex:none;width:34px;height:34px;border-radius:9px;background:var(--accent);color:var(--accent-text);display:flex;align-items:center;justify-content:center;font-weight:700;font-size:1.0625rem}
h1{font-size:1.5rem;line-height:1.25;margin:0 0 6px;letter-spacing:-.02em}
.lead{color:var(--muted);margin:0 0 24px}
.lead strong{color:var(--text);font-weight:600}
.field{margin:0 0 18px}
label{display:block;font-weight:550;font-size:.9375rem;margin:0 0 6px}
input[type=text],input[type=password]{display:block;width:100%;min-height:44px;padding:10px 12px;font:inherit;color:var(--text);background:var(--input);border:1px solid var(--border);border-radius:8px}
input[type=text]:hover,input[type=password]:hover{border-color:var(--muted)}
input.code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.375rem;letter-spacing:.18em;text-align:center;text-transform:uppercase}
button{display:block;width:100%;min-height:44px;padding:10px 16px;font:inherit;font-weight:600;border-radius:8px;border:1px solid var(--accent);background:var(--accent);color:var(--accent-text);cursor:pointer}
button:hover{background:var(--accent-hover);border-color:var(--accent-hover)}
button.secondary{background:transparent;color:var(--text);border-color:var(--border)}
button.secondary:hover{background:var(--bg)}
.actions{display:flex;gap:12px;margin-top:8px}
.actions button{flex:1}
:focus-visible{outline:3px solid var(--focus);outline-offset:2px}
input:focus-visible{outline-offset:0}
.alert{margin:0 0 20px;padding:12px 14px;border-radius:8px;border:1px solid var(--alert-border);background:var(--alert-bg);color:var(--alert-text);font-size:.9375rem}
.ok{display:flex;align-items:center;justify-content:center;width:44px;height:44px;border-radius:50%;background:var(--ok-bg);color:var(--ok-text);font-size:1.375rem;font-weight:700;margin:0 0 16px}
.bad{background:var(--alert-bg);color:var(--alert-text)}
.usercode{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:1.625rem;font-weight:600;letter-spacing:.16em;text-align:center;padding:12px;margin:0 0 20px;border:1px dashed var(--border);border-radius:10px}
.scopes{margin:0 0 24px;padding:0;list-style:none;border-top:1px solid var(--border)}
.scopes li{padding:8px 2px;border-bottom:1px solid var(--border);font-size:.9375rem}
.scopes code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.875rem}
.message{margin:12px 0 16px}
.hint{color:var(--muted);font-size:.9375rem;margin:0}
.detail{color:var(--muted);font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.8125rem;margin:20px 0 0;padding-top:16px;border-top:1px solid var(--border);overflow-wrap:anywhere}
footer{color:var(--muted);font-size:.8125rem;text-align:center;margin-top:20px}
a{color:var(--accent)}
@media (max-width:480px){body{padding:0;align-items:stretch}main{max-width:none}.card{min-height:100vh;border:0;border-radius:0;box-shadow:none;padding:32px 20px}}
"#;

/// The one script: submits a `form_post` response form.
const SUBMIT_SCRIPT: &str = "document.forms[0].submit();";

fn csp_hash(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    format!("'sha256-{}'", STANDARD.encode(digest.as_ref()))
}

static STYLE_HASH: LazyLock<String> = LazyLock::new(|| csp_hash(CSS));
static SCRIPT_HASH: LazyLock<String> = LazyLock::new(|| csp_hash(SUBMIT_SCRIPT));

/// Where a page's forms may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forms {
    /// Only back to the issuer (`form-action 'self'`).
    SelfOnly,
    /// Anywhere: a sign-in that ends in a redirect to the client (browsers apply
    /// `form-action` to redirects after a form submission), or a `form_post` response.
    Client,
}

/// One page: the brand, the `<title>`, the card's content (already HTML).
struct Page<'a> {
    brand: &'a str,
    title: &'a str,
    content: String,
    status: StatusCode,
    forms: Forms,
    script: bool,
}

impl Page<'_> {
    /// The page shown again after a refused form: the refusal's status (else 200) and
    /// `Retry-After` for a lockout.
    fn refused(mut self, refused: Option<Refused>) -> Response<Body> {
        let Some(refused) = refused else {
            return self.render();
        };
        self.status = refused.status;
        let mut response = self.render();
        if let Some(seconds) = refused.retry_after {
            set_retry_after(response.headers_mut(), seconds);
        }
        response
    }

    fn render(self) -> Response<Body> {
        let brand = escape(self.brand);
        let mark = self
            .brand
            .chars()
            .find(|c| c.is_alphanumeric())
            .map_or_else(
                || "S".to_string(),
                |c| escape(&c.to_uppercase().to_string()),
            );
        let script = if self.script {
            format!("<script>{SUBMIT_SCRIPT}</script>")
        } else {
            String::new()
        };
        let html = format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"robots\" content=\"noindex, nofollow\">\n\
             <title>{title} · {brand}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n\
             <div class=\"card\">\n<div class=\"brand\"><span class=\"mark\" aria-hidden=\"true\">{mark}</span><span>{brand}</span></div>\n\
             {content}</div>\n</main>\n{script}</body>\n</html>\n",
            title = escape(self.title),
            content = self.content,
        );
        let mut csp = format!(
            "default-src 'none'; style-src {}; img-src data:; base-uri 'none'; frame-ancestors 'none'",
            *STYLE_HASH
        );
        if self.forms == Forms::SelfOnly {
            csp.push_str("; form-action 'self'");
        }
        if self.script {
            let _ = write!(csp, "; script-src {}", *SCRIPT_HASH);
        }
        let mut response = with_headers(
            self.status,
            html,
            &[
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                NO_STORE,
                NO_CACHE,
                (X_FRAME_OPTIONS, "DENY"),
                (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (REFERRER_POLICY, "no-referrer"),
            ],
        );
        if let Ok(value) = HeaderValue::from_str(&csp) {
            response
                .headers_mut()
                .insert(CONTENT_SECURITY_POLICY, value);
        }
        response
    }
}

fn hidden(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(
        out,
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        escape(name),
        escape(value)
    );
}

fn alert(out: &mut String, message: Option<&str>) {
    if let Some(message) = message {
        let _ = writeln!(
            out,
            "<div class=\"alert\" role=\"alert\" id=\"problem\">{}</div>",
            escape(message)
        );
    }
}

/// What the sign-in page shows and where it posts.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    pub brand: &'a str,
    /// The form's `action` (the endpoint that asked for the sign-in).
    pub action: &'a str,
    /// Who asks: the client's name.
    pub client_name: &'a str,
    /// Hidden fields: the CSRF token and the reference to the pending request.
    pub hidden: Vec<(&'a str, &'a str)>,
    /// The username to prefill (after a failure, or `login_hint`).
    pub username: Option<&'a str>,
    /// Why the form is shown again (wrong password, lockout, expired session): its
    /// message above the form, its status, and `Retry-After` for a lockout.
    pub refused: Option<Refused>,
    /// True if success ends in a redirect to the client.
    pub redirects_to_client: bool,
}

/// A sign-in form that did not sign anyone in: show the page again with this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: &'static str,
    /// `Retry-After` seconds, for a lockout.
    pub retry_after: Option<u64>,
}

impl Refused {
    /// A form that cannot be taken as sent: 400 and why.
    pub fn bad_request(message: &'static str) -> Refused {
        Refused {
            status: StatusCode::BAD_REQUEST,
            message,
            retry_after: None,
        }
    }
}

/// The sign-in page: username and password, the hidden fields, no script.
pub fn login(view: Login<'_>) -> Response<Body> {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "<h1>Sign in</h1>\n<p class=\"lead\">to continue to <strong>{}</strong></p>",
        escape(view.client_name)
    );
    let message = view.refused.map(|r| r.message);
    alert(&mut c, message);
    let described = if message.is_some() {
        " aria-describedby=\"problem\" aria-invalid=\"true\""
    } else {
        ""
    };
    let _ = writeln!(
        c,
        "<form method=\"post\" action=\"{}\">",
        escape(view.action)
    );
    for (name, value) in &view.hidden {
        hidden(&mut c, name, value);
    }
    let prefill = view.username.unwrap_or("");
    let (user_focus, password_focus) = if prefill.is_empty() {
        (" autofocus", "")
    } else {
        ("", " autofocus")
    };
    let _ = writeln!(
        c,
        "<div class=\"field\"><label for=\"username\">Username or email</label>\
         <input type=\"text\" id=\"username\" name=\"username\" value=\"{}\" autocomplete=\"username\" \
         autocapitalize=\"none\" autocorrect=\"off\" spellcheck=\"false\" maxlength=\"256\" required{user_focus}{described}></div>",
        escape(prefill)
    );
    let _ = writeln!(
        c,
        "<div class=\"field\"><label for=\"password\">Password</label>\
         <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" \
         maxlength=\"1024\" required{password_focus}{described}></div>"
    );
    c.push_str("<button type=\"submit\">Sign in</button>\n</form>\n");
    let page = Page {
        brand: view.brand,
        title: "Sign in",
        content: c,
        status: StatusCode::OK,
        forms: if view.redirects_to_client {
            Forms::Client
        } else {
            Forms::SelfOnly
        },
        script: false,
    };
    page.refused(view.refused)
}

/// An error page: a heading, what went wrong, and (when known) the technical detail.
pub fn error(
    brand: &str,
    status: StatusCode,
    heading: &str,
    message: &str,
    detail: Option<&str>,
) -> Response<Body> {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "<div class=\"ok bad\" aria-hidden=\"true\">!</div>\n<h1>{}</h1>\n<p class=\"message\">{}</p>",
        escape(heading),
        escape(message)
    );
    c.push_str(
        "<p class=\"hint\">Go back to the application and try again. If this keeps happening, contact the \
         application's support and quote the error below.</p>\n",
    );
    if let Some(detail) = detail {
        let _ = writeln!(c, "<p class=\"detail\">{}</p>", escape(detail));
    }
    Page {
        brand,
        title: heading,
        content: c,
        status,
        forms: Forms::SelfOnly,
        script: false,
    }
    .render()
}

/// A page that only says something: "signed out", "device connected".
pub fn notice(brand: &str, heading: &str, message: &str, good: bool) -> Response<Body> {
    let mut c = String::new();
    let (class, sign) = if good {
        ("ok", "✓")
    } else {
        ("ok bad", "✕")
    };
    let _ = writeln!(
        c,
        "<div class=\"{class}\" aria-hidden=\"true\">{sign}</div>\n<h1>{}</h1>\n<p class=\"lead\">{}</p>",
        escape(heading),
        escape(message)
    );
    Page {
        brand,
        title: heading,
        content: c,
        status: StatusCode::OK,
        forms: Forms::SelfOnly,
        script: false,
    }
    .render()
}

/// The device verification page: enter the code shown on the device.
pub fn device_entry(
    brand: &str,
    action: &str,
    csrf: &str,
    user_code: &str,
    refused: Option<Refused>,
) -> Response<Body> {
    let message = refused.map(|r| r.message);
    let mut c = String::new();
    c.push_str(
        "<h1>Connect a device</h1>\n<p class=\"lead\">Enter the code shown on your device.</p>\n",
    );
    alert(&mut c, message);
    let described = if message.is_some() {
        " aria-describedby=\"problem\" aria-invalid=\"true\""
    } else {
        ""
    };
    let _ = writeln!(c, "<form method=\"post\" action=\"{}\">", escape(action));
    hidden(&mut c, "csrf_token", csrf);
    let _ = writeln!(
        c,
        "<div class=\"field\"><label for=\"user_code\">Device code</label>\
         <input class=\"code\" type=\"text\" id=\"user_code\" name=\"user_code\" value=\"{}\" \
         placeholder=\"XXXX-XXXX\" autocomplete=\"off\" autocapitalize=\"characters\" autocorrect=\"off\" \
         spellcheck=\"false\" maxlength=\"16\" required autofocus{described}></div>",
        escape(user_code)
    );
    c.push_str("<button type=\"submit\">Continue</button>\n</form>\n");
    let page = Page {
        brand,
        title: "Connect a device",
        content: c,
        status: StatusCode::OK,
        forms: Forms::SelfOnly,
        script: false,
    };
    page.refused(refused)
}

/// What the device confirmation page shows.
#[derive(Debug, Clone)]
pub struct DeviceConfirm<'a> {
    pub brand: &'a str,
    pub action: &'a str,
    pub csrf: &'a str,
    /// As displayed, `XXXX-XXXX`.
    pub user_code: &'a str,
    pub client_name: &'a str,
    /// Who is signed in.
    pub user: &'a str,
    /// What the device asks for: `(scope, description)`.
    pub scopes: Vec<(String, Option<String>)>,
}

/// The device confirmation page: the code again, who asks, for what; Approve or Deny.
pub fn device_confirm(view: DeviceConfirm<'_>) -> Response<Body> {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "<h1>Connect {}?</h1>\n<p class=\"lead\">Signed in as <strong>{}</strong>. Continue only if this code \
         is the one your device shows.</p>\n<div class=\"usercode\">{}</div>",
        escape(view.client_name),
        escape(view.user),
        escape(view.user_code)
    );
    if !view.scopes.is_empty() {
        c.push_str("<p>It asks to:</p>\n<ul class=\"scopes\">\n");
        for (scope, description) in &view.scopes {
            match description {
                Some(description) => {
                    let _ = writeln!(
                        c,
                        "<li>{} <code>({})</code></li>",
                        escape(description),
                        escape(scope)
                    );
                }
                None => {
                    let _ = writeln!(c, "<li><code>{}</code></li>", escape(scope));
                }
            }
        }
        c.push_str("</ul>\n");
    }
    let _ = writeln!(
        c,
        "<form method=\"post\" action=\"{}\">",
        escape(view.action)
    );
    hidden(&mut c, "csrf_token", view.csrf);
    hidden(&mut c, "user_code", view.user_code);
    c.push_str(
        "<div class=\"actions\"><button type=\"submit\" class=\"secondary\" name=\"decision\" value=\"deny\">Deny</button>\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button></div>\n</form>\n",
    );
    Page {
        brand: view.brand,
        title: "Connect a device",
        content: c,
        status: StatusCode::OK,
        forms: Forms::SelfOnly,
        script: false,
    }
    .render()
}

/// `response_mode=form_post`: a form that posts the response to the client, submitted by
/// one hashed line of script, or by hand where scripts do not run.
pub fn form_post(brand: &str, redirect_uri: &str, params: &[(&str, &str)]) -> Response<Body> {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "<h1>Continuing…</h1>\n<form method=\"post\" action=\"{}\">",
        escape(redirect_uri)
    );
    for (name, value) in params {
        hidden(&mut c, name, value);
    }
    c.push_str(
        "<noscript><p class=\"lead\">Scripts are off in this browser: continue by hand.</p>\
         <button type=\"submit\">Continue</button></noscript>\n</form>\n",
    );
    Page {
        brand,
        title: "Continuing",
        content: c,
        status: StatusCode::OK,
        forms: Forms::Client,
        script: true,
    }
    .render()
}

impl OAuthError {
    /// The same error for a person, not a program: an HTML page (see
    /// `issuer::pages`) with the status of [`OAuthError::status`] and `Retry-After` for
    /// a lockout. Used where the issuer cannot or must not redirect to the client (an
    /// unknown client or redirect URI, a refused form).
    pub fn into_page(self, brand: &str) -> Response<Body> {
        let heading = match self.code {
            OAuthCode::AccessDenied => "Request refused",
            OAuthCode::ServerError | OAuthCode::TemporarilyUnavailable => "Something went wrong",
            _ if self.retry_after.is_some() => "Too many attempts",
            _ => "This request cannot be completed",
        };
        let message = sentence(&self.description);
        let detail = format!("Error: {}", self.code.as_str());
        let mut response = error(brand, self.status(), heading, &message, Some(&detail));
        if let Some(seconds) = self.retry_after {
            set_retry_after(response.headers_mut(), seconds);
        }
        response
    }
}

/// A description as a sentence: capital first letter, final period.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn text(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn every_value_is_escaped_and_headers_are_strict() {
        let response = login(Login {
            brand: "<Acme & Co>",
            action: "/authorize",
            client_name: "\"><script>alert(1)</script>",
            hidden: vec![("pending_request", "a=1&b=\"2\"")],
            username: Some("x' onfocus='y"),
            refused: Some(Refused {
                status: StatusCode::OK,
                message: "<b>",
                retry_after: None,
            }),
            redirects_to_client: true,
        });
        let h = response.headers();
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["cache-control"], "no-store");
        let csp = h["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("script-src"));
        let html = text(response).await;
        assert!(!html.contains("<script>") && !html.contains("<b>") && !html.contains("<Acme"));
        assert!(html.contains("&lt;Acme &amp; Co&gt;"));
        assert!(html.contains("value=\"a=1&amp;b=&quot;2&quot;\""));
        assert!(html.contains("value=\"x&#39; onfocus=&#39;y\""));
    }

    #[tokio::test]
    async fn only_the_form_post_page_has_a_script() {
        let response = form_post("Acme", "https://app.example.com/cb", &[("code", "<c>")]);
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains(&format!("script-src {}", *SCRIPT_HASH)));
        assert!(!csp.contains("form-action"), "it posts to the client");
        let html = text(response).await;
        assert!(html.contains(&format!("<script>{SUBMIT_SCRIPT}</script>")));
        assert!(html.contains("<noscript>"));
        assert!(html.contains("value=\"&lt;c&gt;\""));
    }

    #[test]
    fn hashes_are_sha256_sources() {
        assert!(STYLE_HASH.starts_with("'sha256-") && STYLE_HASH.ends_with("='"));
        assert_ne!(*STYLE_HASH, *SCRIPT_HASH);
    }
}
