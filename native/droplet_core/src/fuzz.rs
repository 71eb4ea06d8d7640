//! Property tests (proptest) of everything that reads outside input: the
//! API's example pages, mutated, and random page-shaped documents pushed
//! through parsing and selection, and any text through the URL helpers and
//! the rate-limit headers. "No panic" is the property that matters; a few
//! invariants come along.
//!
//! Reproducible by default: a fixed seed and a fixed number of cases per
//! property, unless proptest's own variables say otherwise:
//!
//! ```text
//! PROPTEST_CASES=500000 cargo test -p droplet_core fuzz   # run longer
//! PROPTEST_RNG_SEED=42 cargo test -p droplet_core fuzz    # another sequence
//! ```
//!
//! A failure prints the smallest input proptest could shrink it to; the
//! same seed and case count find it again.

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};

use crate::links::{
    normalize_api_url, page_number, parse_url, query_param, resolve_location, same_origin_url,
    with_query_param, Origin,
};
use crate::model::tests::{ALL, TAGGED};
use crate::model::{parse_page, Status};
use crate::ratelimit::RateLimit;
use crate::select::{Network, Selector};

/// The seed of the old xorshift fuzzer, kept as the default sequence.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    // No regression files in the source tree: the seed finds a failure again.
    config.failure_persistence = None;
    config
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e30",
    "18446744073709551616",
    "18446744073709551615",
    "3164444",
    "\"active\"",
    "\"off\"",
    "\"private\"",
    "\"public\"",
    "\"droplets\"",
    "\"networks\"",
    "\"v4\"",
    "\"v6\"",
    "\"ip_address\"",
    "\"type\"",
    "\"id\"",
    "\"meta\"",
    "\"total\"",
    "\"links\"",
    "\"pages\"",
    "\"next\"",
    "\"last\"",
    "\"region\"",
    "\"slug\"",
    "\"tags\"",
    "\\u0000",
    "\\ud800",
    "\u{e9}",
    "\u{1F600}",
    "\u{0}",
    "\\",
    "/",
    "<html>",
];

const KEYS: &[&str] = &[
    "droplets",
    "links",
    "pages",
    "next",
    "last",
    "meta",
    "total",
    "id",
    "name",
    "status",
    "tags",
    "region",
    "slug",
    "vpc_uuid",
    "networks",
    "v4",
    "v6",
    "ip_address",
    "type",
];

const STRINGS: &[&str] = &[
    "active",
    "new",
    "off",
    "archive",
    "private",
    "public",
    "10.0.0.1",
    "::1",
    "https://api.example.test/v2/droplets?page=2",
    "\\n",
    "\u{e9}\u{1F600}",
    "",
];

/// One edit of a document; indices are scaled to its length when applied.
#[derive(Debug, Clone)]
enum Mutation {
    Set(Index, u8),
    Delete(Index, usize),
    Insert(Index, &'static str),
    Truncate(Index),
    /// A piece of the other example, over up to `len` bytes of this one.
    Splice(Index, Index, Index, usize),
    Duplicate(Index, Index),
    /// A digit rewritten: ids and totals drift.
    Digit(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), 0..16usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), proptest::sample::select(TOKENS))
            .prop_map(|(i, t)| Mutation::Insert(i, t)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), any::<Index>(), any::<Index>(), 0..64usize)
            .prop_map(|(i, j, k, n)| Mutation::Splice(i, j, k, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Mutation::Duplicate(i, j)),
        (any::<Index>(), 0..10u8).prop_map(|(i, d)| Mutation::Digit(i, d)),
    ]
}

fn apply(doc: &mut Vec<u8>, other: &[u8], m: &Mutation) {
    let len = doc.len();
    let at = |i: &Index, n: usize| if n == 0 { 0 } else { i.index(n) };
    match m {
        Mutation::Set(i, b) if len > 0 => doc[i.index(len)] = *b,
        Mutation::Delete(i, n) if len > 0 => {
            let i = i.index(len);
            doc.drain(i..i + (*n).min(len - i));
        }
        Mutation::Insert(i, t) => {
            let i = at(i, len + 1);
            doc.splice(i..i, t.bytes());
        }
        Mutation::Truncate(i) => doc.truncate(at(i, len + 1)),
        Mutation::Splice(i, j, k, n) if !other.is_empty() => {
            let i = at(i, len + 1);
            let j = j.index(other.len());
            let k = j + at(k, other.len() - j + 1);
            doc.splice(i..len.min(i + n), other[j..k].iter().copied());
        }
        Mutation::Duplicate(i, j) if len > 0 => {
            let i = i.index(len);
            let j = i + at(j, len - i);
            let copy = doc[i..j].to_vec();
            doc.splice(j..j, copy);
        }
        Mutation::Digit(i, d) if len > 0 => {
            let i = i.index(len);
            if let Some(p) = (i..len).chain(0..i).find(|&p| doc[p].is_ascii_digit()) {
                doc[p] = b'0' + d;
            }
        }
        _ => {}
    }
}

/// JSON-ish values, now and then not quite JSON.
fn value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        (any::<u64>(), 0..64u32).prop_map(|(n, s)| (n >> s).to_string()),
        proptest::sample::select(&["-0", "1.5", "-7", "1e400", "18446744073709551616", "0"][..])
            .prop_map(str::to_string),
        proptest::sample::select(STRINGS).prop_map(|s| format!("\"{s}\"")),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec((proptest::sample::select(KEYS), inner.clone()), 0..6)
                .prop_map(|fields| {
                    let fields: Vec<String> =
                        fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", fields.join(","))
                }),
            proptest::collection::vec(inner, 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
        ]
    })
}

/// The right top-level keys with random values, so that parsing gets past
/// the first field more often.
fn random_page() -> impl Strategy<Value = String> {
    (proptest::collection::vec(value(), 0..4), value(), value()).prop_map(
        |(droplets, links, meta)| {
            format!(r#"{{"droplets":[{}],"links":{links},"meta":{meta}}}"#, droplets.join(","))
        },
    )
}

/// Whether the document parsed; selection's and the links' invariants
/// checked when it did.
fn exercise(doc: &[u8]) -> bool {
    let selectors = [(Network::Private, false), (Network::Public, false), (Network::Public, true)]
        .map(|(network, ipv6)| (Selector::new(network, ipv6), ipv6));
    let parsed = parse_page(doc, 200, &Default::default());
    if let Ok(page) = &parsed {
        for d in &page.droplets {
            for (sel, ipv6) in &selectors {
                if let Some(addr) = sel.as_ref().ok().and_then(|sel| sel.select(d)) {
                    assert_eq!(d.status, Status::Active);
                    let family = if *ipv6 { &d.networks.v6 } else { &d.networks.v4 };
                    assert!(family.iter().any(|a| a.ip_address == addr));
                    assert!(addr.parse::<std::net::IpAddr>().is_ok(), "{addr}");
                }
            }
        }
        for link in [&page.links.pages.next, &page.links.pages.last].into_iter().flatten() {
            exercise_url(link);
        }
    }
    exercise_url(&String::from_utf8_lossy(doc));
    parsed.is_ok()
}

fn exercise_url(s: &str) {
    let s: String = s.chars().take(300).collect();
    let base = "https://api.example.test/v2/droplets?page=1";
    let _ = Origin::parse(&s);
    let _ = same_origin_url(base, &s);
    let _ = normalize_api_url(&s);
    let _ = query_param(&s, "page");
    let _ = page_number(&s);
    if let Some(uri) = parse_url(&s) {
        let _ = with_query_param(&uri, "page", "3");
        assert!(Origin::parse(&s).is_some());
    }
    let _ = resolve_location(base, &s);
    let _ = resolve_location(&s, "/x");
    let _ = resolve_location(&s, &s);
    let _ =
        RateLimit::from_headers([("ratelimit-remaining", s.as_str()), ("retry-after", s.as_str())]);
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn mutated_examples_never_panic(
        tagged in any::<bool>(),
        mutations in proptest::collection::vec(mutation(), 1..5),
    ) {
        let (base, other) = if tagged { (TAGGED, ALL) } else { (ALL, TAGGED) };
        let mut doc = base.as_bytes().to_vec();
        mutations.iter().for_each(|m| apply(&mut doc, other.as_bytes(), m));
        exercise(&doc);
    }

    #[test]
    fn random_documents_never_panic(doc in prop_oneof![random_page(), value()]) {
        exercise(doc.as_bytes());
    }

    #[test]
    fn any_text_is_safe_for_the_url_helpers(text in any::<String>()) {
        exercise_url(&text);
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    /// Not only the error paths: pages of well-formed droplets always parse.
    #[test]
    fn well_formed_pages_parse(
        droplets in proptest::collection::vec(
            (any::<u64>(), proptest::sample::select(STRINGS), proptest::sample::select(STRINGS)),
            0..20,
        ),
    ) {
        let body: Vec<String> = droplets
            .iter()
            .map(|(id, status, ip)| format!(
                r#"{{"id":{id},"name":"n","status":"{status}","networks":{{"v4":[{{"ip_address":"{ip}","type":"private"}}]}}}}"#
            ))
            .collect();
        let doc = format!(r#"{{"droplets":[{}],"meta":{{"total":{}}}}}"#, body.join(","), droplets.len());
        prop_assert!(exercise(doc.as_bytes()), "{}", doc);
    }
}

#[test]
fn the_examples_survive_every_single_truncation() {
    for end in 0..TAGGED.len() {
        assert!(parse_page(&TAGGED.as_bytes()[..end], 200, &Default::default()).is_err());
    }
}
