//! The bounds a listing is held to while its pages are parsed (see
//! `native/README.md`). serde's derives take no context, so [`parse_with`]
//! puts the bounds in a thread-local for one parse, where the
//! `deserialize_with` functions of [`crate::model`] find them.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};

/// What each kept value costs on top of its bytes (about a `String` and an
/// Erlang binary), and each item (a droplet, a pool's member).
pub const VALUE_OVERHEAD: u64 = 32;
pub const DROPLET_OVERHEAD: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_listing_bytes: u64,
    pub max_string_bytes: usize,
    pub max_tags_per_droplet: usize,
    /// `networks.v4` and `networks.v6` together.
    pub max_addresses_per_droplet: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // 10,000 of the API's example droplets (the default
            // `max_droplets`) keep 5 MB by this count.
            max_listing_bytes: 32 * 1024 * 1024,
            // DigitalOcean caps names and tags at 255 characters.
            max_string_bytes: 1024,
            max_tags_per_droplet: 1_000,
            max_addresses_per_droplet: 64,
        }
    }
}

/// Which bound a listing went past; named as the option that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    MaxListingBytes,
    MaxStringBytes,
    MaxTagsPerDroplet,
    MaxAddressesPerDroplet,
}

impl Limits {
    pub fn limit(&self, bound: Bound) -> u64 {
        match bound {
            Bound::MaxListingBytes => self.max_listing_bytes,
            Bound::MaxStringBytes => self.max_string_bytes as u64,
            Bound::MaxTagsPerDroplet => self.max_tags_per_droplet as u64,
            Bound::MaxAddressesPerDroplet => self.max_addresses_per_droplet as u64,
        }
    }
}

/// One listing's bounds and what it keeps so far, shared by its threads.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub limits: Limits,
    kept: Arc<AtomicU64>,
}

impl Tally {
    pub fn new(limits: Limits) -> Tally {
        Tally { limits, kept: Arc::default() }
    }

    pub fn kept(&self) -> u64 {
        self.kept.load(Ordering::Relaxed)
    }

    /// Forgets what was kept since `kept()` read `since`.
    pub fn reset_to(&self, since: u64) {
        self.kept.store(since, Ordering::Relaxed);
    }
}

struct Parsing {
    tally: Tally,
    per_page: usize,
    /// Addresses of the droplet being read, v4 and v6 together.
    addresses: usize,
    exceeded: Option<Over>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Bound(Bound),
    /// More droplets than `per_page`.
    PerPage,
}

thread_local! {
    static PARSING: RefCell<Option<Parsing>> = const { RefCell::new(None) };
}

/// Runs `parse` with the bounds in force; `Err(over)` when it failed on one.
pub fn parse_with<T, E>(
    tally: &Tally,
    per_page: usize,
    parse: impl FnOnce() -> Result<T, E>,
) -> Result<Result<T, E>, Over> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            PARSING.with(|p| p.borrow_mut().take());
        }
    }
    let parsing = Parsing { tally: tally.clone(), per_page, addresses: 0, exceeded: None };
    PARSING.with(|p| *p.borrow_mut() = Some(parsing));
    let _reset = Reset;
    let result = parse();
    match PARSING.with(|p| p.borrow().as_ref().and_then(|p| p.exceeded)) {
        Some(over) if result.is_err() => Err(over),
        _ => Ok(result),
    }
}

fn with_parsing<R>(otherwise: R, f: impl FnOnce(&mut Parsing) -> R) -> R {
    PARSING.with(|p| p.borrow_mut().as_mut().map_or(otherwise, f))
}

fn refuse<E: de::Error>(over: Over) -> E {
    with_parsing((), |p| p.exceeded = Some(over));
    E::custom(format_args!("over {over:?}"))
}

/// Counts `bytes` kept; past `max_listing_bytes`, an error.
pub(crate) fn keep<E: de::Error>(bytes: u64) -> Result<(), E> {
    let over = with_parsing(false, |p| {
        let kept = p.tally.kept.fetch_add(bytes, Ordering::Relaxed) + bytes;
        kept > p.tally.limits.max_listing_bytes
    });
    match over {
        true => Err(refuse(Over::Bound(Bound::MaxListingBytes))),
        false => Ok(()),
    }
}

pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text, E> {
                kept_str(s).map(Text)
            }
        }
        d.deserialize_str(V)
    }
}

/// `s` counted and copied, refused before it is copied if it is too long.
pub(crate) fn kept_str<E: de::Error>(s: &str) -> Result<String, E> {
    if with_parsing(false, |p| s.len() > p.tally.limits.max_string_bytes) {
        return Err(refuse(Over::Bound(Bound::MaxStringBytes)));
    }
    keep(s.len() as u64 + VALUE_OVERHEAD)?;
    Ok(s.to_owned())
}

pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Text::deserialize(d).map(|t| t.0)
}

pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

pub fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let tags = Option::<Capped<Text, TAGS>>::deserialize(d)?;
    Ok(tags.map(|c| c.0.into_iter().map(|t| t.0).collect()))
}

pub fn addresses<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Capped::<T, ADDRESSES>::deserialize(d).map(|c| c.0)
}

/// The droplets of a page, refused at the one past `per_page`.
pub fn droplets<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Capped::<T, PER_PAGE>::deserialize(d).map(|c| c.0)
}

/// Counts an item and restarts its address count: on a field read exactly
/// once per item (a droplet's `networks`, a member's id).
pub fn item<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    with_parsing((), |p| p.addresses = 0);
    keep::<D::Error>(DROPLET_OVERHEAD)?;
    T::deserialize(d)
}

const PER_PAGE: u8 = 0;
const TAGS: u8 = 1;
const ADDRESSES: u8 = 2;

/// A list refused at the element past its room, skipped rather than built;
/// v4 and v6 addresses share one room.
struct Capped<T, const KIND: u8>(Vec<T>);

impl<'de, T: Deserialize<'de>, const KIND: u8> Deserialize<'de> for Capped<T, KIND> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const KIND: u8>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const KIND: u8> Visitor<'de> for V<T, KIND> {
            type Value = Capped<T, KIND>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let (room, over) = with_parsing((usize::MAX, Over::PerPage), |p| match KIND {
                    PER_PAGE => (p.per_page, Over::PerPage),
                    TAGS => {
                        (p.tally.limits.max_tags_per_droplet, Over::Bound(Bound::MaxTagsPerDroplet))
                    }
                    _ => {
                        let room = p.tally.limits.max_addresses_per_droplet;
                        (
                            room.saturating_sub(p.addresses),
                            Over::Bound(Bound::MaxAddressesPerDroplet),
                        )
                    }
                });
                let mut items = Vec::new();
                while items.len() < room {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                if items.len() == room && seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(refuse(over));
                }
                if KIND == ADDRESSES {
                    with_parsing((), |p| p.addresses += items.len());
                }
                Ok(Capped(items))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::model::{parse_page, tests::ALL};

    fn page(droplet_fields: &str) -> String {
        format!(
            r#"{{"droplets":[{{"id":1,"name":"a","status":"active",
                "networks":{{"v4":[],"v6":[]}}{droplet_fields}}}],"meta":{{"total":1}}}}"#
        )
    }

    /// `page` with `droplet` listed after its own.
    fn second_droplet(page: &str, droplet: &str) -> String {
        let at = page.rfind("],\"meta\"").expect("a page");
        format!("{},{droplet}{}", &page[..at], &page[at..])
    }

    fn limits() -> Limits {
        Limits {
            max_listing_bytes: 1 << 20,
            max_string_bytes: 8,
            max_tags_per_droplet: 3,
            max_addresses_per_droplet: 2,
        }
    }

    fn parse(body: &str, tally: &Tally) -> Result<usize, Error> {
        parse_page(body.as_bytes(), 200, tally).map(|p| p.droplets.len())
    }

    fn too_large(bound: Bound, limit: u64) -> Result<usize, Error> {
        Err(Error::ListingTooLarge(bound, limit))
    }

    fn strings(n: usize, len: usize) -> String {
        let one = format!("\"{}\"", "t".repeat(len));
        vec![one; n].join(",")
    }

    fn address(ip: &str, kind: &str) -> String {
        format!(r#"{{"ip_address":"{ip}","type":"{kind}"}}"#)
    }

    #[test]
    fn one_droplet_with_three_million_tags_is_refused_at_the_cap() {
        let hostile = page(&format!(r#","tags":[{}]"#, strings(3_000_000, 1)));
        assert!(hostile.len() > 12_000_000, "{}", hostile.len());
        let tally = Tally::new(Limits::default());
        assert_eq!(parse(&hostile, &tally), too_large(Bound::MaxTagsPerDroplet, 1_000));
        // What was kept is the droplet and its first 1,000 tags (the name
        // and status came first), not 3 million strings.
        let kept = DROPLET_OVERHEAD + 2 * VALUE_OVERHEAD + 7 + 1_000 * (VALUE_OVERHEAD + 1);
        assert!(tally.kept() <= kept, "{}", tally.kept());
    }

    #[test]
    fn a_huge_string_is_refused_before_it_is_copied() {
        let huge = "n".repeat(5_000_000);
        let tally = Tally::new(Limits::default());
        let body = page("").replace(r#""name":"a""#, &format!(r#""name":"{huge}""#));
        assert_eq!(parse(&body, &tally), too_large(Bound::MaxStringBytes, 1_024));
        assert_eq!(tally.kept(), 0);
    }

    #[test]
    fn every_string_a_droplet_keeps_is_bounded() {
        let at = "x".repeat(8);
        let over = "x".repeat(9);
        let cases: [fn(&str) -> String; 7] = [
            |s| page("").replace(r#""name":"a""#, &format!(r#""name":"{s}""#)),
            |s| page("").replace(r#""active""#, &format!(r#""{s}""#)),
            |s| page(&format!(r#","tags":["{s}"]"#)),
            |s| page(&format!(r#","region":{{"slug":"{s}"}}"#)),
            |s| page(&format!(r#","vpc_uuid":"{s}""#)),
            |s| page("").replace(r#""v4":[]"#, &format!(r#""v4":[{}]"#, address(s, "private"))),
            |s| page("").replace(r#""v6":[]"#, &format!(r#""v6":[{}]"#, address("::1", s))),
        ];
        for case in &cases {
            let tally = Tally::new(limits());
            assert_eq!(parse(&case(&at), &tally), Ok(1), "{}", case(&at));
            let tally = Tally::new(limits());
            assert_eq!(
                parse(&case(&over), &tally),
                too_large(Bound::MaxStringBytes, 8),
                "{}",
                case(&over)
            );
        }
    }

    #[test]
    fn tags_are_counted_per_droplet_and_one_too_many_is_never_built() {
        let tally = Tally::new(limits());
        let three = page(&format!(r#","tags":[{}]"#, strings(3, 2)));
        assert_eq!(parse(&three, &tally), Ok(1));
        // Two droplets of three tags each: the count is per droplet.
        let two = second_droplet(&three, &droplet_json_tags(3));
        assert_eq!(parse(&two, &Tally::new(limits())), Ok(2));
        // The fourth element is not even parsed: it is not a string.
        let fourth = page(&format!(r#","tags":[{},{{"x":[1]}}]"#, strings(3, 2)));
        assert_eq!(parse(&fourth, &Tally::new(limits())), too_large(Bound::MaxTagsPerDroplet, 3));
    }

    fn droplet_json_tags(n: usize) -> String {
        format!(
            r#"{{"id":2,"name":"b","status":"active","networks":{{}},"tags":[{}]}}"#,
            strings(n, 2)
        )
    }

    #[test]
    fn addresses_are_counted_across_v4_and_v6_per_droplet() {
        let v4 = address("10.0.0.1", "private");
        let v6 = address("::1", "public");
        let body = |n4: usize, n6: usize| {
            page("").replace(
                r#""v4":[],"v6":[]"#,
                &format!(
                    r#""v4":[{}],"v6":[{}]"#,
                    vec![v4.as_str(); n4].join(","),
                    vec![v6.as_str(); n6].join(",")
                ),
            )
        };
        for (n4, n6) in [(2, 0), (1, 1), (0, 2)] {
            assert_eq!(parse(&body(n4, n6), &Tally::new(limits())), Ok(1), "{n4} {n6}");
        }
        for (n4, n6) in [(3, 0), (2, 1), (1, 2), (0, 3)] {
            assert_eq!(
                parse(&body(n4, n6), &Tally::new(limits())),
                too_large(Bound::MaxAddressesPerDroplet, 2),
                "{n4} {n6}"
            );
        }
        // The next droplet counts from zero again.
        let other =
            format!(r#"{{"id":2,"name":"b","status":"off","networks":{{"v6":[{v6},{v6}]}}}}"#);
        let next = second_droplet(&body(2, 0), &other);
        assert_eq!(parse(&next, &Tally::new(limits())), Ok(2));
    }

    #[test]
    fn the_listing_keeps_at_most_its_bytes_across_pages() {
        // Per droplet: 64, then "a" and "active" at 32 each plus their bytes.
        let per_droplet = DROPLET_OVERHEAD + 2 * VALUE_OVERHEAD + 7;
        let tally = Tally::new(Limits { max_listing_bytes: 3 * per_droplet, ..limits() });
        assert_eq!(parse(&page(""), &tally), Ok(1));
        assert_eq!(parse(&page(""), &tally), Ok(1));
        assert_eq!(tally.kept(), 2 * per_droplet);
        assert_eq!(parse(&page(""), &tally), Ok(1));
        assert_eq!(parse(&page(""), &tally), too_large(Bound::MaxListingBytes, 3 * per_droplet));
        // Counting stops near the limit: one value past it at most.
        assert!(tally.kept() <= 3 * per_droplet + DROPLET_OVERHEAD);
        tally.reset_to(0);
        assert_eq!(parse(&page(""), &tally), Ok(1));
    }

    #[test]
    fn a_real_page_keeps_a_few_hundred_bytes_a_droplet() {
        let tally = Tally::default();
        let page = parse_page(ALL.as_bytes(), 200, &tally).expect("parses");
        let per_droplet = tally.kept() / page.droplets.len() as u64;
        assert!((400..=1_000).contains(&per_droplet), "{per_droplet}");
    }

    #[test]
    fn outside_a_parse_nothing_is_bounded_or_counted() {
        let body = page(&format!(r#","tags":[{}]"#, strings(5, 20)));
        let droplets: serde_json::Value = serde_json::from_str(&body).expect("json");
        let droplet: crate::model::Droplet =
            serde_json::from_value(droplets["droplets"][0].clone()).expect("unbounded");
        assert_eq!(droplet.tags().len(), 5);
        // And a failed parse leaves no bounds behind on the thread.
        let tally = Tally::new(limits());
        assert!(parse(&page(&format!(r#","tags":[{}]"#, strings(9, 1))), &tally).is_err());
        assert!(PARSING.with(|p| p.borrow().is_none()));
    }
}
