//! Checks on text that arrives from people: emails, hostnames, domains.

/// Whether `s` looks like an email address: `local@domain.tld`, no spaces or control
/// characters, at most 254 characters.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !s.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ',' | ';')
        })
        && is_domain(domain)
}

/// An email address as Steward compares them: trimmed and lowercased.
pub fn normalize_email(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Emails as Steward compares them ([`normalize_email`]), without empty entries and duplicates,
/// in their first order.
pub fn normalize_emails<S: AsRef<str>>(list: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in list {
        let e = normalize_email(e.as_ref());
        if !e.is_empty() && !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

/// Whether `s` is a DNS domain with at least two labels (`contoso.com`).
pub fn is_domain(s: &str) -> bool {
    s.contains('.') && is_hostname(s)
}

/// Whether `s` is a hostname: dot-separated labels of letters, digits and `-`, each 1 to 63
/// characters, not starting or ending with `-`; at most 253 characters.
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The Levenshtein distance between two strings (in characters): how "did you mean" finds the
/// closest known name.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_hostnames() {
        for ok in ["a@b.co", "jane.doe+x@contoso.com", "o'brien@msp.example"] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a b@c.co", "a@b.co\n", "<a@b.co>", "a@-b.co",
        ] {
            assert!(!is_email(bad), "{bad:?}");
        }
        for ok in ["DC01", "runner-1", "exch01.contoso.local"] {
            assert!(is_hostname(ok), "{ok}");
        }
        for bad in ["", "-dc", "dc_01", "dc 01", "a..b", &"x".repeat(64)] {
            assert!(!is_hostname(bad), "{bad:?}");
        }
    }

    #[test]
    fn emails_normalise_to_one_spelling() {
        assert_eq!(
            normalize_email("  Jane.Doe@Contoso.COM "),
            "jane.doe@contoso.com"
        );
        assert_eq!(
            normalize_emails(["A@x.co", " a@X.co", "", "  ", "b@x.co", "A@X.CO"]),
            ["a@x.co", "b@x.co"]
        );
    }
}
