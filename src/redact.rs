//! Secrets out of logs and errors: the one function every log line and error that may hold
//! a URL or a connection string goes through. It redacts the password of a URL's
//! user-info (`postgres://user:secret@host` → `postgres://user:<redacted>@host`) and the
//! value of every `name=value` pair whose name says it is secret (`password`, `pass`,
//! `pwd`, `token`, `secret`, `auth`, `key`, `credential`, in any case and as part of a
//! longer name such as `sslpassword` or `ipn_auth`): in query strings and in free text
//! such as a libpq connection string or an error message. It changes nothing else, so a
//! redacted URL still says which host and database were meant.

pub const REDACTED: &str = "<redacted>";

/// Parts of a parameter name that make its value a secret.
const SECRET_NAMES: &[&str] = &[
    "pass",
    "pwd",
    "token",
    "secret",
    "auth",
    "key",
    "credential",
];

/// `text` with every URL password and secret parameter value replaced by `<redacted>`.
pub fn redact(text: &str) -> String {
    redact_pairs(&redact_user_info(text))
}

/// A URL, redacted (the same function; the name says what the caller holds).
pub fn redact_url(url: &str) -> String {
    redact(url)
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|s| name.contains(s))
}

/// Where a URL (or a value in text) ends.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']' | ',' | ';')
}

/// `scheme://user:password@host…` → `scheme://user:<redacted>@host…`, for every `://` in
/// the text. The user-info is what precedes the last `@` of the authority (which ends at
/// the first `/`, `?` or `#`), so a password holding `@` is redacted whole.
fn redact_user_info(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || ends_value(c))
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let user_info = &authority[..at];
                match user_info.find(':') {
                    Some(colon) => {
                        out.push_str(&user_info[..colon + 1]);
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(user_info),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

/// `name=value` with a secret name → `name=<redacted>`; a name is the run of letters,
/// digits, `_`, `-` and `.` before `=`, a value runs to `&`, `#` or the end of a value.
fn redact_pairs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let (before, after) = (&rest[..eq], &rest[eq + 1..]);
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map_or(0, |i| {
                i + before[i..].chars().next().map_or(1, char::len_utf8)
            });
        let name = &before[name_start..];
        out.push_str(before);
        out.push('=');
        let value_end = after
            .find(|c: char| matches!(c, '&' | '#') || ends_value(c))
            .unwrap_or(after.len());
        if !name.is_empty() && is_secret_name(name) && value_end > 0 {
            out.push_str(REDACTED);
            rest = &after[value_end..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_and_secret_parameters_are_redacted_and_nothing_else() {
        for (given, shown) in [
            (
                "postgres://u:pw@h:5/db",
                "postgres://u:<redacted>@h:5/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres:///db", "postgres:///db"),
            (
                "http://user:p@ss:w@rd@127.0.0.1:18443/wallet",
                "http://user:<redacted>@127.0.0.1:18443/wallet",
            ),
            (
                "postgres://h/db?user=u&password=secret&sslmode=disable",
                "postgres://h/db?user=u&password=<redacted>&sslmode=disable",
            ),
            (
                "postgres://h/db?PASSWORD=secret#frag",
                "postgres://h/db?PASSWORD=<redacted>#frag",
            ),
            (
                "https://shop/ipn?token=abc&pass=x&ipn_auth=y&api_key=z&id=7",
                "https://shop/ipn?token=<redacted>&pass=<redacted>&ipn_auth=<redacted>&api_key=<redacted>&id=7",
            ),
            (
                "host=db user=app password=hunter2 dbname=x",
                "host=db user=app password=<redacted> dbname=x",
            ),
            (
                "error sending request for url (http://a:b@h/x?secret=s): connection refused",
                "error sending request for url (http://a:<redacted>@h/x?secret=<redacted>): connection refused",
            ),
            (
                "the node at http://rpc:hunter2@127.0.0.1:1/ does not answer",
                "the node at http://rpc:<redacted>@127.0.0.1:1/ does not answer",
            ),
            ("a = b, x=1, https://example.com/?q=1", "a = b, x=1, https://example.com/?q=1"),
            ("ünïcode password=é; then", "ünïcode password=<redacted>; then"),
            ("token=", "token="),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }
}
