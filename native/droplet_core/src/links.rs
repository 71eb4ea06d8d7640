//! URL handling without a URL crate: only what the client needs, namely the
//! origin of a URL (to keep the token on the API's own host), the `page`
//! query parameter, and building the first page's URL.

use crate::error::Error;

/// Scheme, host and port of a URL, with default ports filled in and the
/// case-insensitive parts lowercased, so equal origins compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// `None` for anything that is not a plain `http`/`https` URL. Userinfo
    /// (`user@host`) is refused: a link smuggling credentials is not one
    /// DigitalOcean would send, and it makes "which host" ambiguous.
    pub fn parse(url: &str) -> Option<Origin> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let authority = rest.get(..authority_end(rest)).unwrap_or(rest);
        if authority.contains('@') || authority.chars().any(|c| c.is_whitespace()) {
            return None;
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (inside, after) = bracketed.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (format!("[{inside}]"), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return None;
        }
        let port = match port {
            None | Some("") => default_port,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
        };
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Where the authority of `after_scheme` (the text after `://`) ends.
fn authority_end(after_scheme: &str) -> usize {
    after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len())
}

/// Both URLs parse and name the same scheme, host and port.
pub fn same_origin(a: &str, b: &str) -> bool {
    matches!((Origin::parse(a), Origin::parse(b)), (Some(x), Some(y)) if x == y)
}

/// Checks and canonicalises the configured API base: an `http(s)` URL with a
/// host, an optional path prefix, no query or fragment, no trailing `/`.
pub fn normalize_api_url(raw: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidRequest(format!("api_url {why}"));
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain whitespace"));
    }
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| invalid("must start with http:// or https://"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(invalid("must start with http:// or https://"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid("must not have a query or fragment"));
    }
    let url = format!("{scheme}://{}", rest.trim_end_matches('/'));
    if Origin::parse(&url).is_none() {
        return Err(invalid("must name a host (and a valid port, if any)"));
    }
    Ok(url)
}

/// The raw value of the first `name` parameter in the URL's query.
pub fn query_param<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    let (_, query) = split_query(url);
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `page` parameter of a pagination link, as a page number.
pub fn page_number(url: &str) -> Option<u64> {
    query_param(url, "page")?.parse().ok()
}

/// `url` with its `name` parameter set to `value` (appended when absent,
/// later duplicates dropped) and without fragment.
pub fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, query) = split_query(url);
    let mut pairs: Vec<String> = Vec::new();
    let mut replaced = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if key == name {
            if !replaced {
                pairs.push(format!("{name}={value}"));
                replaced = true;
            }
        } else {
            pairs.push(pair.to_string());
        }
    }
    if !replaced {
        pairs.push(format!("{name}={value}"));
    }
    format!("{base}?{}", pairs.join("&"))
}

/// Splits off the query (without `?`), dropping any fragment.
fn split_query(url: &str) -> (&str, Option<&str>) {
    let without_fragment = url.split_once('#').map_or(url, |(u, _)| u);
    match without_fragment.split_once('?') {
        Some((base, q)) => (base, Some(q)),
        None => (without_fragment, None),
    }
}

/// Percent-encodes a query value: only RFC 3986 unreserved bytes pass.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A server-side filter of the listing. DigitalOcean refuses both at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    None,
    Tag(String),
    Name(String),
}

/// `GET <api>/v2/droplets?per_page=N&page=1[&tag_name=..|&name=..]`.
pub fn first_page_url(api_url: &str, per_page: u32, filter: &Filter) -> String {
    let mut url = format!("{api_url}/v2/droplets?per_page={per_page}&page=1");
    match filter {
        Filter::None => {}
        Filter::Tag(tag) => {
            url.push_str("&tag_name=");
            url.push_str(&encode_query_value(tag));
        }
        Filter::Name(name) => {
            url.push_str("&name=");
            url.push_str(&encode_query_value(name));
        }
    }
    url
}

/// Resolves a `Location` header against the URL that answered with it.
/// `None` when it cannot be understood; the caller treats that as foreign.
pub fn resolve_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.is_empty() {
        return None;
    }
    let (base_scheme, base_rest) = base.split_once("://")?;
    let base_origin_len = base_scheme.len() + 3 + authority_end(base_rest);
    let base_origin = base.get(..base_origin_len)?;
    if has_scheme(location) {
        Some(location.to_string())
    } else if location.starts_with("//") {
        Some(format!("{base_scheme}:{location}"))
    } else if location.starts_with('/') {
        Some(format!("{base_origin}{location}"))
    } else {
        let (base_no_query, _) = split_query(base);
        if location.starts_with('?') {
            return Some(format!("{base_no_query}{location}"));
        }
        let path = base_no_query.get(base_origin_len..).unwrap_or("");
        let dir = path.rfind('/').and_then(|i| path.get(..=i)).unwrap_or("/");
        Some(format!("{base_origin}{dir}{location}"))
    }
}

fn has_scheme(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str, h: &str, p: u16) -> Option<Origin> {
        Some(Origin {
            scheme: s.into(),
            host: h.into(),
            port: p,
        })
    }

    #[test]
    fn origins_fill_default_ports_and_lowercase() {
        assert_eq!(
            Origin::parse("https://API.DigitalOcean.com/v2/x?page=2"),
            origin("https", "api.digitalocean.com", 443)
        );
        assert_eq!(Origin::parse("HTTP://h"), origin("http", "h", 80));
        assert_eq!(Origin::parse("http://h:8080?x"), origin("http", "h", 8080));
        assert_eq!(Origin::parse("http://h:#f"), origin("http", "h", 80));
        assert_eq!(
            Origin::parse("http://[::1]:4000/v2"),
            origin("http", "[::1]", 4000)
        );
        assert_eq!(
            Origin::parse("https://[::1]/"),
            origin("https", "[::1]", 443)
        );
    }

    #[test]
    fn odd_urls_have_no_origin() {
        for url in [
            "",
            "api.digitalocean.com",
            "ftp://h/",
            "http://",
            "http:///path",
            "http://user:pw@h/",
            "http://h:99999/",
            "http://h:-1/",
            "http://h:80:80/",
            "http://[::1/",
            "http://[::1]x/",
            "http://[]/",
            "http://h h/",
        ] {
            assert_eq!(Origin::parse(url), None, "{url}");
        }
    }

    #[test]
    fn same_origin_compares_scheme_host_and_port() {
        let api = "https://api.digitalocean.com";
        assert!(same_origin(
            api,
            "https://api.digitalocean.com/v2/droplets?page=2"
        ));
        assert!(same_origin(api, "https://api.digitalocean.com:443/v2"));
        assert!(same_origin(api, "HTTPS://API.DIGITALOCEAN.COM/v2"));
        assert!(!same_origin(api, "http://api.digitalocean.com/v2"));
        assert!(!same_origin(api, "https://api.digitalocean.com:8443/v2"));
        assert!(!same_origin(api, "https://evil.example/v2"));
        assert!(!same_origin(
            api,
            "https://api.digitalocean.com.evil.example/v2"
        ));
        assert!(!same_origin(
            api,
            "https://api.digitalocean.com@evil.example/v2"
        ));
        assert!(!same_origin(api, "/v2/droplets?page=2"));
        assert!(same_origin("http://127.0.0.1:80", "http://127.0.0.1/v2"));
        assert!(!same_origin(
            "http://127.0.0.1:4000",
            "http://localhost:4000/v2"
        ));
    }

    #[test]
    fn api_urls_are_normalized() {
        assert_eq!(
            normalize_api_url("https://api.digitalocean.com/"),
            Ok("https://api.digitalocean.com".into())
        );
        assert_eq!(
            normalize_api_url("HTTP://127.0.0.1:4000/prefix//"),
            Ok("http://127.0.0.1:4000/prefix".into())
        );
        for bad in [
            "",
            "api.digitalocean.com",
            "ftp://h",
            "https://",
            "https:///x",
            "https://h?x=1",
            "https://h/#f",
            "https://h /",
            "https://u@h",
            "https://h:70000",
        ] {
            assert!(
                matches!(normalize_api_url(bad), Err(Error::InvalidRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn query_params_are_read_and_substituted() {
        let next = "https://api.digitalocean.com/v2/droplets?page=2&per_page=200&tag_name=web";
        assert_eq!(query_param(next, "per_page"), Some("200"));
        assert_eq!(query_param(next, "nope"), None);
        assert_eq!(page_number(next), Some(2));
        assert_eq!(page_number("https://h/v2?page=x"), None);
        assert_eq!(page_number("https://h/v2?page=99999999999999999999"), None);
        assert_eq!(page_number("https://h/v2#page=3"), None);
        assert_eq!(query_param("https://h/?flag&page=3", "flag"), Some(""));
        assert_eq!(
            with_query_param(next, "page", "7"),
            "https://api.digitalocean.com/v2/droplets?page=7&per_page=200&tag_name=web"
        );
        assert_eq!(
            with_query_param("https://h/v2?per_page=1", "page", "3"),
            "https://h/v2?per_page=1&page=3"
        );
        assert_eq!(
            with_query_param("https://h/v2?page=1&x=1&page=2#frag", "page", "5"),
            "https://h/v2?page=5&x=1"
        );
        assert_eq!(
            with_query_param("https://h/v2", "page", "2"),
            "https://h/v2?page=2"
        );
    }

    #[test]
    fn first_page_urls_encode_filters() {
        let api = "https://api.digitalocean.com";
        assert_eq!(
            first_page_url(api, 200, &Filter::None),
            "https://api.digitalocean.com/v2/droplets?per_page=200&page=1"
        );
        assert_eq!(
            first_page_url(api, 20, &Filter::Tag("env:prod & web".into())),
            "https://api.digitalocean.com/v2/droplets?per_page=20&page=1&tag_name=env%3Aprod%20%26%20web"
        );
        assert_eq!(
            first_page_url("http://h/p", 1, &Filter::Name("nöde-1.x_y~".into())),
            "http://h/p/v2/droplets?per_page=1&page=1&name=n%C3%B6de-1.x_y~"
        );
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base = "https://h:8443/v2/droplets?page=1";
        assert_eq!(
            resolve_location(base, "https://other/x").as_deref(),
            Some("https://other/x")
        );
        assert_eq!(
            resolve_location(base, "//other/x").as_deref(),
            Some("https://other/x")
        );
        assert_eq!(
            resolve_location(base, "/v3/droplets?page=1").as_deref(),
            Some("https://h:8443/v3/droplets?page=1")
        );
        assert_eq!(
            resolve_location(base, "?page=2").as_deref(),
            Some("https://h:8443/v2/droplets?page=2")
        );
        assert_eq!(
            resolve_location(base, "list?page=2").as_deref(),
            Some("https://h:8443/v2/list?page=2")
        );
        assert_eq!(
            resolve_location("https://h", "x").as_deref(),
            Some("https://h/x")
        );
        assert_eq!(resolve_location(base, "  "), None);
        assert_eq!(resolve_location("not a url", "/x"), None);
    }
}
