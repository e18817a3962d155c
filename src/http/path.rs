//! Request paths as Scopegate reads them: one normal form for matching and forwarding, and
//! a refusal for anything an upstream might read differently (dot segments, encoded
//! separators, backslashes, empty segments).

use std::borrow::Cow;

use super::{percent_byte, percent_encoded};

/// Why a request path is refused before routing (400 `invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path has an invalid percent-encoding")]
    BadEncoding,
    #[error("the path has an encoded '/', '\\' or '.', or an encoded NUL")]
    EncodedSeparator,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    #[error("the path has an empty segment ('//')")]
    EmptySegment,
}

/// Normalises a request path for matching and forwarding: percent-encoded unreserved
/// characters are decoded, other escapes get upper-case hex; dot segments (also
/// `..;x` as some servers read it), encoded `/`, `\`, `.` or NUL, raw backslashes and
/// empty segments are refused. Works on bytes: anything else, raw non-ASCII included,
/// is kept as sent. Borrowed when nothing changes; normalising a normalised path gives
/// it back unchanged.
///
/// ```
/// use scopegate::http::path::normalize_path;
/// assert_eq!(normalize_path("/a/%7Euser").unwrap(), "/a/~user");
/// assert_eq!(normalize_path("/p/%41\u{db}b").unwrap(), "/p/A\u{db}b");
/// assert!(normalize_path("/a/%2e%2e/b").is_err());
/// assert!(normalize_path("/a/../b").is_err());
/// ```
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let Some(decoded) = percent_byte(bytes, i) else {
                    return Err(PathError::BadEncoding);
                };
                let buf = out.get_or_insert_with(|| bytes[..i].to_vec());
                match decoded {
                    b'/' | b'\\' | b'.' | 0 => return Err(PathError::EncodedSeparator),
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => {
                        buf.push(decoded)
                    }
                    _ => buf.extend_from_slice(&percent_encoded(decoded)),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                if let Some(buf) = out.as_mut() {
                    buf.push(b);
                }
            }
        }
        i += 1;
    }
    let normalized = match out {
        // ASCII was only ever replaced by ASCII, so these are the UTF-8 bytes that came in.
        Some(bytes) => Cow::Owned(String::from_utf8(bytes).map_err(|_| PathError::BadEncoding)?),
        None => Cow::Borrowed(path),
    };
    let body = &normalized[1..];
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        let bare = segment.split(';').next().unwrap_or(segment);
        if bare == "." || bare == ".." {
            return Err(PathError::DotSegment);
        }
        if segment.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(normalized)
}
