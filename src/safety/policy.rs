//! Tier-0 scanners over the original message text: links, e-mail addresses
//! and social handles.
//!
//! Owns only shape recognition on the raw characters (dots, slashes, `@`),
//! which folding would destroy. Which domains are allowed and which
//! top-level domains count come from the safety config; the decision of what
//! a hit means (policy, verdict) belongs to `classifier`. Nothing here
//! allocates: every check walks borrowed slices.

/// Characters that may end a chunk without being part of it.
fn trim_chunk(chunk: &str) -> &str {
    chunk
        .trim_start_matches([
            '(', '[', '<', '"', '\'', '\u{201C}', '\u{2018}', '\u{00BF}', '\u{00A1}',
        ])
        .trim_end_matches([
            '.', ',', ';', ':', '!', '?', ')', ']', '>', '"', '\'', '\u{201D}', '\u{2019}',
        ])
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

/// The host of a chunk that looks like a URL or a bare domain, if any.
fn url_host<'a>(chunk: &'a str, tlds: &[String]) -> Option<&'a str> {
    // A host needs a dot, and a scheme a colon: most words have neither,
    // and this runs for every word of every message that has a dot in it.
    if !chunk.bytes().any(|b| b == b'.' || b == b':') {
        return None;
    }
    let lower_starts = |p: &str| {
        chunk
            .get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    };
    let (rest, explicit) = if let Some(i) = chunk.find("://") {
        (&chunk[i + 3..], true)
    } else if lower_starts("www.") {
        (chunk, true)
    } else {
        (chunk, false)
    };
    // `name@host.tld` is an e-mail address; `host.tld/@name` is a link.
    let slash = chunk.find('/').unwrap_or(chunk.len());
    if !explicit && chunk.find('@').is_some_and(|at| at < slash) {
        return None;
    }
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..host_end];
    let host = host.split(':').next().unwrap_or(host);
    if host.is_empty() {
        return if explicit { Some(host) } else { None };
    }
    let mut labels = 0;
    let mut last = "";
    for label in host.split('.') {
        if label.is_empty() || !label.chars().all(is_label_char) {
            return if explicit { Some(host) } else { None };
        }
        labels += 1;
        last = label;
    }
    if explicit {
        return Some(host);
    }
    if labels < 2 || !host.chars().any(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    if tlds.iter().any(|t| t.eq_ignore_ascii_case(last)) {
        Some(host)
    } else {
        None
    }
}

/// Whether `host` is an allow-listed help-line site or one of its subdomains.
pub(crate) fn domain_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.');
    allowed.iter().any(|a| {
        if host.eq_ignore_ascii_case(a) {
            return true;
        }
        let Some(cut) = host.len().checked_sub(a.len() + 1) else {
            return false;
        };
        host.get(cut..cut + 1) == Some(".")
            && host
                .get(cut + 1..)
                .is_some_and(|t| t.eq_ignore_ascii_case(a))
    })
}

/// Whether the text holds a URL or bare domain that is not allow-listed.
pub(crate) fn has_link(text: &str, allowed: &[String], tlds: &[String]) -> bool {
    if !text.contains('.') {
        return false;
    }
    text.split_whitespace().any(|raw| {
        let chunk = trim_chunk(raw);
        match url_host(chunk, tlds) {
            Some(host) => !domain_allowed(host, allowed),
            None => false,
        }
    })
}

/// Whether the text holds an e-mail address.
pub(crate) fn has_email(text: &str) -> bool {
    if !text.contains('@') {
        return false;
    }
    text.split_whitespace().any(|raw| {
        let chunk = trim_chunk(raw);
        let Some(at) = chunk.find('@') else {
            return false;
        };
        let (local, domain) = (&chunk[..at], &chunk[at + 1..]);
        !local.is_empty()
            && local
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '%'))
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-'))
    })
}

/// Whether `chunk` looks like a personal handle: letters plus a digit, a dot
/// or an underscore, or a leading `@` (`quiet.heron22`, `@luz_93`). Plain
/// words (`all`, `quotes`) are not handles.
pub(crate) fn is_handle(chunk: &str) -> bool {
    let chunk = trim_chunk(chunk);
    let body = chunk.strip_prefix('@').unwrap_or(chunk);
    if body.chars().count() < 3
        || !body
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || !body.chars().any(char::is_alphabetic)
    {
        return false;
    }
    chunk.starts_with('@')
        || body.chars().any(|c| c.is_ascii_digit() || c == '_')
        || body.trim_matches('.').contains('.')
}

/// Whether the text holds an `@handle` that is not part of an e-mail
/// address or a link path (`… slash @name`, `/@name`).
pub(crate) fn has_at_handle(text: &str) -> bool {
    if !text.contains('@') {
        return false;
    }
    let mut prev = "";
    for raw in text.split_whitespace() {
        let chunk = trim_chunk(raw);
        if chunk.starts_with('@') && is_handle(chunk) {
            let after_link = prev.eq_ignore_ascii_case("slash")
                || prev.eq_ignore_ascii_case("barra")
                || prev.ends_with('/');
            if !after_link {
                return true;
            }
        }
        prev = chunk;
    }
    false
}

/// Whether a handle follows byte offset `from` within a few words, skipping
/// linking words (`snap is quiet.heron22`, `insta: @luz`, `mi insta es …`).
pub(crate) fn handle_after(text: &str, from: usize) -> bool {
    let Some(rest) = text.get(from..) else {
        return false;
    };
    for (n, raw) in rest.split_whitespace().enumerate() {
        if n >= 4 {
            break;
        }
        let chunk = trim_chunk(raw);
        let linking = [
            "", "is", "es", "its", "it's", "=", "-", "me", "my", "mi", "name", "nombre",
        ];
        if linking.iter().any(|w| w.eq_ignore_ascii_case(chunk)) {
            continue;
        }
        return is_handle(chunk);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlds() -> Vec<String> {
        ["com", "org", "ly", "be", "net", "uk", "es"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn links_and_allow_list() {
        let allow = vec![
            "findahelpline.com".to_string(),
            "samaritans.org".to_string(),
        ];
        assert!(has_link("helped loads: bit.ly/3Hq9ZtR", &allow, &tlds()));
        assert!(has_link("(https://example.net/x)", &allow, &tlds()));
        assert!(!has_link("findahelpline.com lists lines", &allow, &tlds()));
        assert!(!has_link("see www.samaritans.org.", &allow, &tlds()));
        assert!(!has_link("snap is quiet.heron22", &allow, &tlds()));
        assert!(!has_link("i want to k.i.l.l myself", &allow, &tlds()));
        assert!(!has_link("mail me a.b@gmail.com", &allow, &tlds()));
    }

    #[test]
    fn emails_and_handles() {
        assert!(has_email("email me at mossy.lantern.4471@gmail.com and"));
        assert!(!has_email("@someone hi"));
        assert!(has_at_handle("dm me on insta @slowmorning.recovery"));
        assert!(!has_at_handle("youtube dot com slash @griefdiaries_sam"));
        assert!(is_handle("quiet.heron22"));
        assert!(!is_handle("all"));
        assert!(handle_after("snap is quiet.heron22", 4));
        assert!(!handle_after("my insta is all recovery quotes", 8));
    }
}
