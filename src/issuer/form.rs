//! `application/x-www-form-urlencoded` request bodies, strictly: the media type is
//! checked, the size is capped, every name and value must decode to UTF-8, and a
//! parameter sent twice is refused (RFC 6749 §3.1) — except `resource`, which RFC 8707
//! §2 lets a client repeat (read with [`Form::get_all`]). Empty values count as absent.

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};

use crate::error::OAuthError;
use crate::http::{percent_byte, percent_encoded};

/// The one parameter that may be sent more than once (RFC 8707 §2).
const REPEATABLE: &str = "resource";

/// The largest form body the issuer reads.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// A parsed form: names with their one value each.
#[derive(Debug, Default, Clone)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Parses a form body. Duplicate names, bad percent-encoding or non-UTF-8 text are
    /// `invalid_request`.
    ///
    /// ```
    /// use scopegate::issuer::form::Form;
    /// let form = Form::parse(b"grant_type=password&username=a%40b.c&scope=").unwrap();
    /// assert_eq!(form.get("username"), Some("a@b.c"));
    /// assert_eq!(form.get("scope"), None); // empty counts as absent
    /// assert!(Form::parse(b"scope=a&scope=b").is_err()); // sent twice
    /// let form = Form::parse(b"resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb").unwrap();
    /// assert_eq!(form.get_all("resource").collect::<Vec<_>>(), ["https://a", "https://b"]);
    /// ```
    pub fn parse(body: &[u8]) -> Result<Form, OAuthError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in body.split(|&b| b == b'&') {
            if part.is_empty() {
                continue;
            }
            let (name, value) = match part.iter().position(|&b| b == b'=') {
                Some(eq) => (&part[..eq], &part[eq + 1..]),
                None => (part, &[][..]),
            };
            let name = decode(name)?;
            let value = decode(value)?;
            if name != REPEATABLE && pairs.iter().any(|(n, _)| *n == name) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {:?} is sent more than once",
                    shorten(&name)
                )));
            }
            pairs.push((name, value));
        }
        Ok(Form { pairs })
    }

    /// A parameter's value; empty values count as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every (non-empty) value of a parameter, in the order sent: several only for
    /// `resource`.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every parameter, in the order sent (empty values included).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// A parameter that must be present.
    pub fn require(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("the {name} parameter is required")))
    }
}

/// Form-encodes parameters (unreserved characters kept, space as `%20`, so the result
/// is good in a query string and in a fragment alike).
///
/// ```
/// use scopegate::issuer::form::{Form, encode};
/// let text = encode([("state", "a b&c"), ("x", "é")]);
/// assert_eq!(text, "state=a%20b%26c&x=%C3%A9");
/// assert_eq!(Form::parse(text.as_bytes()).unwrap().get("state"), Some("a b&c"));
/// ```
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    fn push(out: &mut String, text: &str) {
        for b in text.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(b as char)
                }
                _ => out.extend(percent_encoded(b).map(char::from)),
            }
        }
    }
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        push(&mut out, name);
        out.push('=');
        push(&mut out, value);
    }
    out
}

fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Percent-decodes form text (`+` is a space).
pub fn decode(raw: &[u8]) -> Result<String, OAuthError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let Some(b) = percent_byte(raw, i) else {
                    return Err(OAuthError::invalid_request(
                        "the form has a bad percent-encoding",
                    ));
                };
                out.push(b);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| OAuthError::invalid_request("the form is not UTF-8"))
}

/// True if the request says its body is a form.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads a form body: the media type must be a form, the size at most
/// [`MAX_FORM_BYTES`].
pub async fn read<B>(headers: &HeaderMap, body: B) -> Result<Form, OAuthError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if !is_form(headers) {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let too_large = || {
        OAuthError::invalid_request(format!(
            "the request body is larger than {MAX_FORM_BYTES} bytes"
        ))
    };
    if let Some(length) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > MAX_FORM_BYTES as u64
    {
        return Err(too_large());
    }
    let bytes = Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                OAuthError::invalid_request("the request body could not be read")
            }
        })?
        .to_bytes();
    Form::parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strictly() {
        let form =
            Form::parse(b"grant_type=password&username=a%40b.c&password=p+q%26&scope=").unwrap();
        assert_eq!(form.get("username"), Some("a@b.c"));
        assert_eq!(form.get("password"), Some("p q&"));
        assert_eq!(form.get("scope"), None);
        assert!(Form::parse(b"a=1&a=2").is_err());
        // RFC 8707 §2: resource may be repeated, and nothing else.
        let form = Form::parse(b"resource=x&resource=y&scope=s").unwrap();
        assert_eq!(form.get_all("resource").collect::<Vec<_>>(), ["x", "y"]);
        assert!(Form::parse(b"resource=x&audience=a&audience=b").is_err());
        assert!(Form::parse(b"a=%zz").is_err());
        assert!(Form::parse(b"a=%ff").is_err());
        assert!(Form::parse(b"a=%4").is_err());
    }
}
