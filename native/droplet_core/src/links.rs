//! URLs on `http::Uri`, the parser ureq connects with, so "which host" is
//! answered here as by the request: origins (the token stays on the API's),
//! the `page` parameter, the first page's URL and redirect targets.

use std::net::{IpAddr, Ipv6Addr};

use http::uri::{Authority, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::Error;

/// Scheme, host and port, default port filled in and lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    pub fn parse(url: &str) -> Option<Origin> {
        Origin::of(&parse_url(url)?)
    }

    fn of(uri: &Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let authority = uri.authority()?;
        let port = explicit_port(authority)?.unwrap_or(default_port);
        Some(Origin { scheme, host: authority.host().to_ascii_lowercase(), port })
    }
}

/// An absolute `http(s)` URL with a host, stricter than `Uri` for an origin:
/// no userinfo (it makes "which host" ambiguous), a port that fits, a
/// bracketed host that is IPv6. Fragments are dropped, as `Uri` does.
pub fn parse_url(url: &str) -> Option<Uri> {
    let uri: Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || !valid_host(authority.host()) {
        return None;
    }
    explicit_port(authority)?;
    Some(uri)
}

fn valid_host(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(bracketed) => {
            bracketed.strip_suffix(']').is_some_and(|inside| inside.parse::<Ipv6Addr>().is_ok())
        }
        None => !host.is_empty(),
    }
}

/// `Some(None)` without a port (or `host:`), `None` when what follows the
/// host is not `:digits` fitting a `u16` (`Uri` accepts `h:99999`, `[::1]x`).
fn explicit_port(authority: &Authority) -> Option<Option<u16>> {
    let after_host = authority.as_str().strip_prefix(authority.host())?;
    match after_host.strip_prefix(':') {
        None if after_host.is_empty() => Some(None),
        None => None,
        Some("") => Some(None),
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse().ok().map(Some),
        Some(_) => None,
    }
}

/// `link` parsed, when it is on `api_url`'s origin; `None` otherwise.
pub fn same_origin_url(api_url: &str, link: &str) -> Option<Uri> {
    let uri = parse_url(link)?;
    (Origin::parse(api_url)? == Origin::of(&uri)?).then_some(uri)
}

/// The API base canonicalised: no query, fragment or trailing `/`; plain
/// `http` only on loopback (the token!).
pub fn normalize_api_url(raw: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidRequest(format!("api_url {why}"));
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain whitespace"));
    }
    let scheme_ok = raw.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
    });
    if !scheme_ok {
        return Err(invalid("must start with http:// or https://"));
    }
    // Checked on the raw text: `Uri` drops a fragment silently.
    if raw.contains(['?', '#']) {
        return Err(invalid("must not have a query or fragment"));
    }
    let uri =
        parse_url(raw).ok_or_else(|| invalid("must name a host (and a valid port, if any)"))?;
    let origin = Origin::of(&uri).ok_or_else(|| invalid("must name a host"))?;
    if origin.scheme == "http" && !is_loopback(&origin.host) {
        return Err(invalid(
            "must use https://: plain http:// would send the token unencrypted \
             and is only accepted for loopback hosts",
        ));
    }
    let authority = uri.authority().map_or("", Authority::as_str);
    Ok(format!("{}://{authority}{}", origin.scheme, uri.path().trim_end_matches('/')))
}

/// 127.0.0.0/8, `[::1]` or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// The raw value of the first `name` parameter in the URL's query.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    uri.query()?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

pub fn page_number(url: &str) -> Option<u64> {
    query_param(url, "page")?.parse().ok()
}

/// `uri` with its `name` parameter set to `value` (later ones dropped).
pub fn with_query_param(uri: &Uri, name: &str, value: &str) -> String {
    let mut pairs: Vec<String> = Vec::new();
    let mut replaced = false;
    for pair in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
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
    format!("{}?{}", without_query(uri), pairs.join("&"))
}

/// `scheme://authority/path` of `uri`, or just its path when relative.
fn without_query(uri: &Uri) -> String {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}{}", uri.path()),
        _ => uri.path().to_string(),
    }
}

const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Only RFC 3986's unreserved bytes pass.
pub fn encode_query_value(value: &str) -> String {
    utf8_percent_encode(value, UNRESERVED).to_string()
}

/// A server-side filter of one listing. DigitalOcean refuses both at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    None,
    Tag(String),
    Name(String),
}

/// The `type` of droplets listed: all but GPU ones (the default), or those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Droplets,
    Gpus,
}

/// `GET <api>/v2/droplets?per_page=N&page=1[&tag_name=..|&name=..][&type=gpus]`.
pub fn first_page_url(api_url: &str, per_page: u32, filter: &Filter, kind: Kind) -> String {
    let mut url = format!("{api_url}/v2/droplets?per_page={per_page}&page=1");
    let param = match filter {
        Filter::None => None,
        Filter::Tag(tag) => Some(("tag_name", tag)),
        Filter::Name(name) => Some(("name", name)),
    };
    if let Some((key, value)) = param {
        url.push_str(&format!("&{key}={}", encode_query_value(value)));
    }
    if kind == Kind::Gpus {
        url.push_str("&type=gpus");
    }
    url
}

/// A `Location` resolved against the URL that answered (no dot-segment
/// removal); `None`, foreign, when not understood.
pub fn resolve_location(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.is_empty() {
        return None;
    }
    let base = parse_url(base)?;
    let scheme = base.scheme_str()?;
    let origin = format!("{scheme}://{}", base.authority()?);
    let resolved = if has_scheme(location) {
        location.to_string()
    } else if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{origin}{location}")
    } else if location.starts_with('?') {
        format!("{origin}{}{location}", base.path())
    } else {
        let path = base.path();
        let dir = path.rfind('/').and_then(|i| path.get(..=i)).unwrap_or("/");
        format!("{origin}{dir}{location}")
    };
    parse_url(&resolved).map(|uri| uri.to_string())
}

/// RFC 3986: a letter then letters, digits, `+`, `-` or `.`, before a `:`.
fn has_scheme(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, _)) => {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_origin(a: &str, b: &str) -> bool {
        same_origin_url(a, b).is_some()
    }

    fn origin(s: &str, h: &str, p: u16) -> Option<Origin> {
        Some(Origin { scheme: s.into(), host: h.into(), port: p })
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
        assert_eq!(Origin::parse("http://[::1]:4000/v2"), origin("http", "[::1]", 4000));
        assert_eq!(Origin::parse("https://[::1]/"), origin("https", "[::1]", 443));
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
            // Refused by the stricter checks on top of `Uri`:
            "http://[fe80::1%25eth0]/",
            "http://[not-v6]/",
            "http://h\\evil.example/",
            "http://h%2fevil/",
            "mailto:x@y",
            "//h/x",
        ] {
            assert_eq!(Origin::parse(url), None, "{url}");
            assert!(parse_url(url).is_none(), "{url}");
        }
    }

    #[test]
    fn an_empty_port_is_the_default_port() {
        assert_eq!(Origin::parse("https://h:/x"), origin("https", "h", 443));
        assert_eq!(Origin::parse("http://h:0/"), origin("http", "h", 0));
        assert_eq!(Origin::parse("http://[::1]:/"), origin("http", "[::1]", 80));
    }

    #[test]
    fn same_origin_compares_scheme_host_and_port() {
        let api = "https://api.digitalocean.com";
        assert!(same_origin(api, "https://api.digitalocean.com/v2/droplets?page=2"));
        assert!(same_origin(api, "https://api.digitalocean.com:443/v2"));
        assert!(same_origin(api, "HTTPS://API.DIGITALOCEAN.COM/v2"));
        assert!(!same_origin(api, "http://api.digitalocean.com/v2"));
        assert!(!same_origin(api, "https://api.digitalocean.com:8443/v2"));
        assert!(!same_origin(api, "https://evil.example/v2"));
        assert!(!same_origin(api, "https://api.digitalocean.com.evil.example/v2"));
        assert!(!same_origin(api, "https://api.digitalocean.com@evil.example/v2"));
        assert!(!same_origin(api, "/v2/droplets?page=2"));
        assert!(same_origin("http://127.0.0.1:80", "http://127.0.0.1/v2"));
        assert!(!same_origin("http://127.0.0.1:4000", "http://localhost:4000/v2"));
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
            assert!(matches!(normalize_api_url(bad), Err(Error::InvalidRequest(_))), "{bad}");
        }
    }

    #[test]
    fn plain_http_is_only_for_loopback_hosts() {
        for ok in [
            "http://127.0.0.1:4000",
            "http://127.5.6.7",
            "http://[::1]:4000/api",
            "http://localhost:4000",
            "http://LocalHost",
            "https://10.0.0.1",
            "https://api.digitalocean.com",
        ] {
            assert!(normalize_api_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.digitalocean.com",
            "HTTP://api.digitalocean.com/v2",
            "http://10.0.0.1:4000",
            "http://128.0.0.1",
            "http://[::2]",
            "http://[::ffff:127.0.0.1]",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example",
            "http://0.0.0.0",
        ] {
            match normalize_api_url(bad) {
                Err(Error::InvalidRequest(d)) => assert!(d.contains("https://"), "{d}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in ["127.0.0.1", "127.255.0.9", "[::1]", "::1", "localhost", "LOCALHOST"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["126.0.0.1", "[::2]", "localhost.", "example.com", "", "[]"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn query_params_are_read_and_substituted() {
        let next = "https://api.digitalocean.com/v2/droplets?page=2&per_page=200&tag_name=web";
        assert_eq!(query_param(next, "per_page").as_deref(), Some("200"));
        assert_eq!(query_param(next, "nope"), None);
        assert_eq!(page_number(next), Some(2));
        assert_eq!(page_number("https://h/v2?page=x"), None);
        assert_eq!(page_number("https://h/v2?page=99999999999999999999"), None);
        assert_eq!(page_number("https://h/v2#page=3"), None);
        assert_eq!(query_param("https://h/?flag&page=3", "flag").as_deref(), Some(""));
        assert_eq!(query_param("not a url?page=3", "page"), None);
        let with_query_param = |url: &str, name: &str, value: &str| {
            let uri = parse_url(url).expect("test URL parses");
            super::with_query_param(&uri, name, value)
        };
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
        assert_eq!(with_query_param("https://h/v2", "page", "2"), "https://h/v2?page=2");
    }

    #[test]
    fn first_page_urls_encode_filters() {
        let api = "https://api.digitalocean.com";
        assert_eq!(
            first_page_url(api, 200, &Filter::None, Kind::Droplets),
            "https://api.digitalocean.com/v2/droplets?per_page=200&page=1"
        );
        assert_eq!(
            first_page_url(
                api,
                20,
                &Filter::Tag("env:prod & web".into()),
                Kind::Droplets
            ),
            "https://api.digitalocean.com/v2/droplets?per_page=20&page=1&tag_name=env%3Aprod%20%26%20web"
        );
        assert_eq!(
            first_page_url("http://h/p", 1, &Filter::Name("nöde-1.x_y~".into()), Kind::Droplets),
            "http://h/p/v2/droplets?per_page=1&page=1&name=n%C3%B6de-1.x_y~"
        );
        assert_eq!(
            first_page_url(api, 200, &Filter::None, Kind::Gpus),
            "https://api.digitalocean.com/v2/droplets?per_page=200&page=1&type=gpus"
        );
        assert_eq!(
            first_page_url(api, 200, &Filter::Name("g".into()), Kind::Gpus),
            "https://api.digitalocean.com/v2/droplets?per_page=200&page=1&name=g&type=gpus"
        );
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base = "https://h:8443/v2/droplets?page=1";
        assert_eq!(resolve_location(base, "https://other/x").as_deref(), Some("https://other/x"));
        assert_eq!(resolve_location(base, "//other/x").as_deref(), Some("https://other/x"));
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
        assert_eq!(resolve_location("https://h", "x").as_deref(), Some("https://h/x"));
        assert_eq!(resolve_location(base, "  "), None);
        assert_eq!(resolve_location("not a url", "/x"), None);
    }

    #[test]
    fn locations_the_parser_refuses_resolve_to_nothing() {
        let base = "https://h/v2/droplets?page=1";
        for location in [
            "https://h/a b",
            "/a b",
            "https://u@h/x",
            "https://h:99999/x",
            "//[::1/x",
            "mailto:x@y",
            "ftp://h/x",
        ] {
            assert_eq!(resolve_location(base, location), None, "{location}");
        }
        // `Uri` takes a backslash in a path as a path character: the host
        // stays the same, whatever a browser would make of it.
        let odd = resolve_location(base, "\\\\evil.example/x");
        assert_eq!(odd.as_deref(), Some("https://h/v2/\\\\evil.example/x"));
        assert!(odd.is_some_and(|u| same_origin(base, &u)));
    }

    #[test]
    fn same_origin_urls_come_back_parsed() {
        let api = "https://api.example.test";
        let link = "https://API.example.test:443/v2/droplets?page=2";
        assert_eq!(same_origin_url(api, link).map(|u| u.to_string()), Some(link.to_string()));
        assert!(same_origin_url(api, "https://evil.example/v2").is_none());
        assert!(same_origin_url("not a url", link).is_none());
    }
}
