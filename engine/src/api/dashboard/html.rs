//! Writing HTML safely: every value goes through [`E`] (or [`attr`]), which escapes it; ticket
//! fields, inputs, comments and error messages are hostile text.

use std::fmt;

/// Text escaped for HTML (element content and quoted attribute values alike).
#[derive(Debug, Clone, Copy)]
pub(crate) struct E<'a>(pub &'a str);

impl fmt::Display for E<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// Escapes a value that is not text yet (an id, a number, a time).
pub(crate) fn e(v: &impl fmt::Display) -> String {
    E(&v.to_string()).to_string()
}

/// A path segment, percent-encoded (ids are plain, but a step id is whatever the workflow says).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string value, percent-encoded.
pub(crate) fn q(s: &str) -> String {
    seg(s)
}

/// A CSS-class-safe token for a state name (`awaiting_approval` → `awaiting_approval`).
pub(crate) fn class_token(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A JSON value as readable, escaped text in a `<code>` block (never a secret: callers pass
/// the API's redacted views).
pub(crate) fn json_block(v: &serde_json::Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    format!("<pre class=\"json\"><code>{}</code></pre>", E(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_inert() {
        assert_eq!(
            E("<script>alert('x')</script> & \"q\"").to_string(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(E("plain ünïcode").to_string(), "plain ünïcode");
        assert_eq!(seg("a b/../c?"), "a%20b%2F..%2Fc%3F");
        assert_eq!(class_token("x\" onclick=y"), "x__onclick_y");
    }
}
