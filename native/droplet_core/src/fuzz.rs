//! A deterministic mutation test with no fuzzing crate: a seeded xorshift
//! generator mutates the example pages (and builds random JSON-ish values)
//! and pushes them through parsing, selection and the URL helpers. The
//! only assertion that matters is "no panic"; a few invariants come along.
//!
//! Runs a bounded number of iterations by default; set `DROPLET_FUZZ_ITERS`
//! to run longer and `DROPLET_FUZZ_SEED` to explore other sequences.

use crate::links::{
    normalize_api_url, page_number, parse_url, query_param, resolve_location, same_origin,
    with_query_param, Origin,
};
use crate::model::tests::{ALL, TAGGED};
use crate::model::{parse_page, Status};
use crate::ratelimit::RateLimit;
use crate::select::{Network, Selector};

const DEFAULT_ITERS: u64 = 25_000;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
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

fn mutate(rng: &mut XorShift, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut doc = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = doc.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                doc[i] = rng.next() as u8;
            }
            1 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(16).min(len - i);
                doc.drain(i..i + n);
            }
            2 => {
                let i = rng.below(len + 1);
                let token = rng.pick(TOKENS).as_bytes().to_vec();
                doc.splice(i..i, token);
            }
            3 => doc.truncate(rng.below(len + 1)),
            4 if !other.is_empty() => {
                let i = rng.below(len + 1);
                let j = rng.below(other.len());
                let k = j + rng.below(other.len() - j + 1);
                doc.splice(i..len.min(i + rng.below(64)), other[j..k].iter().copied());
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let j = i + rng.below(len - i);
                let copy = doc[i..j].to_vec();
                doc.splice(j..j, copy);
            }
            _ => {
                // Swap a digit run's last digit: ids and totals drift.
                if let Some(i) = (0..len)
                    .map(|_| rng.below(len))
                    .find(|&i| doc[i].is_ascii_digit())
                {
                    doc[i] = b'0' + (rng.next() % 10) as u8;
                }
            }
        }
    }
    doc
}

fn random_value(rng: &mut XorShift, depth: usize, out: &mut String) {
    let choice = if depth > 6 {
        rng.below(5)
    } else {
        rng.below(8)
    };
    match choice {
        0 => out.push_str("null"),
        1 => out.push_str(if rng.next() & 1 == 0 { "true" } else { "false" }),
        2 => out.push_str(&format!("{}", rng.next() >> rng.below(64))),
        3 => out.push_str(rng.pick(&["-0", "1.5", "-7", "1e400", "18446744073709551616", "0"])),
        4 => {
            out.push('"');
            out.push_str(rng.pick(&[
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
            ]));
            out.push('"');
        }
        5 | 6 => {
            out.push('{');
            for i in 0..rng.below(6) {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!("\"{}\":", rng.pick(KEYS)));
                random_value(rng, depth + 1, out);
            }
            out.push('}');
        }
        _ => {
            out.push('[');
            for i in 0..rng.below(5) {
                if i > 0 {
                    out.push(',');
                }
                random_value(rng, depth + 1, out);
            }
            out.push(']');
        }
    }
}

/// A page-shaped random document: the right top-level keys with random
/// values, so parsing gets past the first field more often.
fn random_page(rng: &mut XorShift) -> String {
    let mut out = String::from("{\"droplets\":[");
    for i in 0..rng.below(4) {
        if i > 0 {
            out.push(',');
        }
        random_value(rng, 1, &mut out);
    }
    out.push_str("],\"links\":");
    random_value(rng, 1, &mut out);
    out.push_str(",\"meta\":");
    random_value(rng, 1, &mut out);
    out.push('}');
    out
}

/// Returns whether the document parsed, so the test can tell it is not
/// only ever exercising the error paths.
fn exercise(doc: &[u8]) -> bool {
    let selectors = [
        Selector::new(Network::Private, false),
        Selector::new(Network::Public, false),
        Selector::new(Network::Public, true),
    ];
    let parsed = parse_page(doc, 200, &Default::default());
    if let Ok(page) = &parsed {
        for d in &page.droplets {
            for sel in selectors.iter().flatten() {
                if let Some(addr) = sel.select(d) {
                    assert_eq!(d.status, Status::Active);
                    let family = if sel.ipv6() {
                        &d.networks.v6
                    } else {
                        &d.networks.v4
                    };
                    assert!(family.iter().any(|a| a.ip_address == addr));
                    assert!(addr.parse::<std::net::IpAddr>().is_ok(), "{addr}");
                }
            }
        }
        for link in [&page.links.pages.next, &page.links.pages.last]
            .into_iter()
            .flatten()
        {
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
    let _ = same_origin(base, &s);
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
    let _ = RateLimit::from_headers([
        ("ratelimit-remaining", s.as_str()),
        ("retry-after", s.as_str()),
    ]);
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[test]
fn mutated_inputs_never_panic() {
    let iters = env_u64("DROPLET_FUZZ_ITERS").unwrap_or(DEFAULT_ITERS);
    let seed = env_u64("DROPLET_FUZZ_SEED").unwrap_or(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rng = XorShift(seed);
    let bases = [ALL.as_bytes(), TAGGED.as_bytes()];
    let mut parsed = 0u64;
    for _ in 0..iters {
        let doc = match rng.below(4) {
            0 => random_page(&mut rng).into_bytes(),
            1 => {
                let mut s = String::new();
                random_value(&mut rng, 0, &mut s);
                s.into_bytes()
            }
            _ => {
                let base = rng.pick(&bases);
                let other = rng.pick(&bases);
                mutate(&mut rng, base, other)
            }
        };
        parsed += u64::from(exercise(&doc));
    }
    assert!(
        iters < 1_000 || parsed > iters / 100,
        "{parsed} of {iters} parsed"
    );
}

#[test]
fn the_examples_survive_every_single_truncation() {
    for end in 0..TAGGED.len() {
        assert!(parse_page(&TAGGED.as_bytes()[..end], 200, &Default::default()).is_err());
    }
}
