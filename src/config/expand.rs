//! `${VAR}` and `${VAR:-default}` expansion of string values from the environment, so secrets
//! never need to be written into the config file.

use std::fmt;

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandError {
    /// `${VAR}` names a variable that is not set and has no default.
    Unset(String),
    /// `${` without its closing `}`, or an empty/invalid variable name.
    Malformed(String),
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandError::Unset(var) => write!(
                f,
                "environment variable `{var}` is not set (write `${{{var}:-default}}` to give a default)"
            ),
            ExpandError::Malformed(why) => write!(f, "bad `${{...}}` reference: {why}"),
        }
    }
}

/// Expands every `${VAR}` / `${VAR:-default}` in `input` with `lookup`. `$$` is a literal `$`.
/// A default is taken when the variable is unset or empty, as in POSIX shells.
pub fn expand_with(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| ExpandError::Malformed("missing closing `}`".into()))?;
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ExpandError::Malformed(format!(
                    "`{name}` is not a variable name"
                )));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(ExpandError::Unset(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands from the process environment.
pub fn expand(input: &str) -> Result<String, ExpandError> {
    expand_with(input, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(expand_with("a-${SECRET}-b", env).unwrap(), "a-s3cr3t-b");
        assert_eq!(expand_with("${NOPE:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_with("${EMPTY:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand_with("${SECRET:-dflt}", env).unwrap(), "s3cr3t");
        assert_eq!(expand_with("${NOPE:-}", env).unwrap(), "");
        assert_eq!(expand_with("plain", env).unwrap(), "plain");
    }

    #[test]
    fn dollar_escapes_and_lone_dollars_are_literal() {
        assert_eq!(expand_with("$${SECRET}", env).unwrap(), "${SECRET}");
        assert_eq!(expand_with("price: 5$", env).unwrap(), "price: 5$");
        assert_eq!(expand_with("$x", env).unwrap(), "$x");
    }

    #[test]
    fn expanded_values_are_not_expanded_again() {
        let lookup = |n: &str| (n == "A").then(|| "${B}".to_string());
        assert_eq!(expand_with("${A}", lookup).unwrap(), "${B}");
    }

    #[test]
    fn unset_and_malformed_references_are_errors() {
        assert_eq!(
            expand_with("${NOPE}", env),
            Err(ExpandError::Unset("NOPE".into()))
        );
        assert!(matches!(
            expand_with("${SECRET", env),
            Err(ExpandError::Malformed(_))
        ));
        assert!(matches!(
            expand_with("${}", env),
            Err(ExpandError::Malformed(_))
        ));
        assert!(matches!(
            expand_with("${A B}", env),
            Err(ExpandError::Malformed(_))
        ));
    }
}
