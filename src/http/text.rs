//! Text PostgreSQL cannot store. Request strings are UTF-8 by construction (axum and serde
//! refuse anything else), which leaves one character a `text` or `jsonb` value refuses: NUL
//! (U+0000). A NUL reaching a query would be a 500; here it is a 4xx `invalid_field` naming
//! where it was. The extractors of [`super::extract`] check every JSON body, query string
//! and path parameter; the routes that read their fields themselves (`/btc`, `/btc_ipn`,
//! `/bitcart`) call [`check`] or [`check_form`].

use serde_json::Value;

use super::error::ApiError;

/// Why a NUL is refused, after the field's name.
pub const NUL_MESSAGE: &str = "contains a NUL character (U+0000), which cannot be stored";

/// The field's value, or `invalid_field` naming `field` when PostgreSQL could not store it.
pub fn check(field: &str, value: &str) -> Result<(), ApiError> {
    match first_unstorable(field, value) {
        Some(field) => Err(ApiError::invalid_field(&field, NUL_MESSAGE)),
        None => Ok(()),
    }
}

/// Every string of a JSON document, object keys included; the error names the first bad
/// one by its path (`label`, `types[1]`, `command[0]`).
pub fn check_json(value: &Value) -> Result<(), ApiError> {
    match unstorable_in(value, String::new()) {
        Some(field) => Err(ApiError::invalid_field(&field, NUL_MESSAGE)),
        None => Ok(()),
    }
}

/// Every name and value of a form-encoded string (a query string or a form body).
pub fn check_form(form: &[u8]) -> Result<(), ApiError> {
    for (name, value) in url::form_urlencoded::parse(form) {
        check(&name, &value)?;
    }
    Ok(())
}

/// The name to report when `name` or its `value` holds a NUL. A name with a NUL is shown
/// escaped (an error message is text too).
fn first_unstorable(name: &str, value: &str) -> Option<String> {
    if name.contains('\0') {
        Some(name.escape_default().to_string())
    } else if value.contains('\0') {
        Some(if name.is_empty() { "(body)" } else { name }.to_string())
    } else {
        None
    }
}

fn unstorable_in(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(s) => first_unstorable(&path, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| unstorable_in(v, format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            let at = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            first_unstorable(&at, "").or_else(|| unstorable_in(v, at))
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn named(r: Result<(), ApiError>) -> Option<String> {
        match r {
            Ok(()) => None,
            Err(ApiError::Client { code, message, .. }) => {
                assert_eq!(code, "invalid_field");
                Some(message.split(':').next().unwrap().to_string())
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_nul_anywhere_is_refused_by_the_name_of_its_field() {
        assert_eq!(named(check("label", "a\0b")).as_deref(), Some("label"));
        assert_eq!(named(check("label", "ordinary ünïcode")), None);
        let body =
            json!({"label": "ok", "types": ["deposit.seen", "x\u{0}"], "nested": {"k": "\u{0}"}});
        assert_eq!(named(check_json(&body)).as_deref(), Some("nested.k"));
        let body = json!({"types": ["deposit.seen", "x\u{0}"]});
        assert_eq!(named(check_json(&body)).as_deref(), Some("types[1]"));
        assert_eq!(
            named(check_json(&json!({"a\u{0}": 1}))).as_deref(),
            Some("a\\u{0}")
        );
        assert_eq!(named(check_json(&json!({"n": 1, "s": "fine"}))), None);
        assert_eq!(
            named(check_form(b"address=%00&x=1")).as_deref(),
            Some("address")
        );
        assert_eq!(
            named(check_form(b"url=http%3A%2F%2Fa&ipn_auth=a%00b")).as_deref(),
            Some("ipn_auth")
        );
        assert_eq!(named(check_form(b"address=1abc")), None);
    }
}
