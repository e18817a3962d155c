//! `${VAR}` and `${VAR:-default}` in `gateway.yaml`.
//!
//! Expansion happens on the text before YAML parsing, line by line, so every line
//! number in an error still points at the file the operator wrote. `$${` writes a
//! literal `${`. Comment lines are left alone. A value that contains a line break is
//! refused: it would change the document's structure. Quote a substituted value when
//! it may contain YAML syntax (`client_secret: "${SECRET}"`).

/// Expands environment references in `text` using `lookup`.
///
/// Returns `(line, message)` on the first problem.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        if line.trim_start().starts_with('#') || !line.contains('$') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(stripped) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = stripped;
            } else if let Some(body) = after.strip_prefix("${") {
                let end = body.find('}').ok_or_else(|| {
                    (line_no, "unterminated ${...} reference".to_string())
                })?;
                let reference = &body[..end];
                let (name, default) = match reference.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (reference, None),
                };
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err((
                        line_no,
                        format!("invalid environment variable name {name:?} in ${{...}}"),
                    ));
                }
                let value = match (lookup(name), default) {
                    (Some(value), _) => value,
                    (None, Some(default)) => default.to_string(),
                    (None, None) => {
                        return Err((
                            line_no,
                            format!(
                                "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                            ),
                        ));
                    }
                };
                if value.contains(['\n', '\r']) {
                    return Err((
                        line_no,
                        format!("environment variable {name} contains a line break"),
                    ));
                }
                out.push_str(&value);
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_and_defaults() {
        assert_eq!(expand("a: ${SECRET}\n", env).unwrap(), "a: s3cret\n");
        assert_eq!(expand("a: ${NOPE:-x y}\n", env).unwrap(), "a: x y\n");
        assert_eq!(expand("a: ${EMPTY:-d}\n", env).unwrap(), "a: \n");
        assert_eq!(expand("a: $${SECRET} $5\n", env).unwrap(), "a: ${SECRET} $5\n");
        assert_eq!(expand("# ${NOPE}\n", env).unwrap(), "# ${NOPE}\n");
    }

    #[test]
    fn names_the_missing_variable_and_line() {
        let (line, msg) = expand("a: 1\nb: ${NOPE}\n", env).unwrap_err();
        assert_eq!(line, 2);
        assert!(msg.contains("NOPE"), "{msg}");
        assert!(expand("a: ${SECRET\n", env).is_err());
        assert!(expand("a: ${MULTI}\n", env).is_err());
        assert!(expand("a: ${BAD-NAME}\n", env).is_err());
    }
}
