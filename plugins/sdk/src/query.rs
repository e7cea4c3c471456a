//! Reading the query string of a request target such as `/chat?room=lobby&nick=ada`.
//!
//! The rules are those of HTML forms (`application/x-www-form-urlencoded`): pairs are separated
//! by `&`, a name from its value by the first `=`, `+` stands for a space and `%XX` for a byte.
//! Malformed escapes are kept as they are and bytes that do not form UTF-8 become U+FFFD, so
//! decoding never fails.

/// The first value of query parameter `name` in `path` (a request target, with or without its
/// query), decoded; `None` when the parameter is absent. A parameter without `=` (`?flag`) has
/// the value `""`. Names are compared after decoding, case-sensitively.
///
/// ```
/// use wsplug_sdk::query_param;
///
/// assert_eq!(query_param("/chat?nick=ada+l%C3%A9&room=", "nick").as_deref(), Some("ada lé"));
/// assert_eq!(query_param("/chat?nick=ada&room=", "room").as_deref(), Some(""));
/// assert_eq!(query_param("/chat?nick=ada", "room"), None);
/// ```
pub fn query_param(path: &str, name: &str) -> Option<String> {
    raw_pairs(path).find(|(n, _)| percent_decode(n) == name).map(|(_, v)| percent_decode(v))
}

/// Every query parameter of `path` (a request target), decoded, in order.
///
/// ```
/// use wsplug_sdk::query_params;
///
/// assert_eq!(
///     query_params("/x?a=1&b&a=2#frag"),
///     [("a".into(), "1".into()), ("b".into(), "".into()), ("a".into(), "2".into())],
/// );
/// ```
pub fn query_params(path: &str) -> Vec<(String, String)> {
    raw_pairs(path).map(|(n, v)| (percent_decode(n), percent_decode(v))).collect()
}

/// Decodes one query component: `+` becomes a space and `%XX` the byte `XX`. A `%` not followed
/// by two hex digits is kept; bytes that are not UTF-8 become U+FFFD.
///
/// ```
/// assert_eq!(wsplug_sdk::percent_decode("a+b%20c%zz%E2%82%AC"), "a b c%zz€");
/// ```
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn hex(b: Option<&u8>) -> Option<u8> {
    match *b? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The undecoded `(name, value)` pairs of the query of `path`, skipping empty pieces.
fn raw_pairs(path: &str) -> impl Iterator<Item = (&str, &str)> {
    let path = path.split_once('#').map_or(path, |(before, _)| before);
    let query = path.split_once('?').map_or("", |(_, query)| query);
    query.split('&').filter(|piece| !piece.is_empty()).map(|piece| piece.split_once('=').unwrap_or((piece, "")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(percent_decode(""), "");
        assert_eq!(percent_decode("abc"), "abc");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("%2B%2b"), "++");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%4g"), "%4g");
        assert_eq!(percent_decode("%ff"), "\u{FFFD}");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn finds_params() {
        let path = "/chat?room=lobby&nick=ada&nick=bob&empty=&flag&%6Eick2=x";
        assert_eq!(query_param(path, "room").as_deref(), Some("lobby"));
        assert_eq!(query_param(path, "nick").as_deref(), Some("ada"));
        assert_eq!(query_param(path, "empty").as_deref(), Some(""));
        assert_eq!(query_param(path, "flag").as_deref(), Some(""));
        assert_eq!(query_param(path, "nick2").as_deref(), Some("x"));
        assert_eq!(query_param(path, "missing"), None);
        assert_eq!(query_param("/chat", "room"), None);
        assert_eq!(query_param("/chat?", "room"), None);
        assert_eq!(query_param("/chat?a=1#room=2", "room"), None);
        assert_eq!(query_param("/chat?a=b=c", "a").as_deref(), Some("b=c"));
    }
}
