//! One page of `GET /v2/droplets`, strict about the fields the strategy needs
//! (a droplet we cannot address must not silently vanish from the cluster)
//! and ignoring everything else.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::de::SliceRead;
use serde_json::Value;

use crate::bounds::{self, Over, Tally};
use crate::error::Error;
use crate::fields;

/// One page of droplets, or of other items; unknown fields skipped,
/// repeated ones refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Page<T = Droplet> {
    /// A pool's members are `droplets` too; pools are `autoscale_pools`.
    #[serde(alias = "autoscale_pools", deserialize_with = "bounds::droplets")]
    pub droplets: Vec<T>,
    /// Missing: a single page, as it would say anyway.
    #[serde(default)]
    pub links: Links,
    pub meta: Meta,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Links {
    #[serde(default)]
    pub pages: PageLinks,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PageLinks {
    pub next: Option<String>,
    pub last: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Meta {
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Droplet {
    pub id: u64,
    #[serde(deserialize_with = "bounds::text")]
    pub name: String,
    #[serde(deserialize_with = "status")]
    pub status: Status,
    /// `None`: listed without `tags` (no `tag:read`), not with none.
    #[serde(default, deserialize_with = "bounds::tags")]
    pub tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "region_slug")]
    pub region: Option<String>,
    #[serde(default, deserialize_with = "bounds::opt_text")]
    pub vpc_uuid: Option<String>,
    #[serde(deserialize_with = "bounds::item")]
    pub networks: Networks,
    /// The values of the paths the listing passes through, in their order.
    #[serde(skip)]
    pub fields: Vec<Value>,
}

/// What a listing pages through: droplets, a pool's members, pools.
pub trait Item: DeserializeOwned + Send {
    /// Items of one id are one, the first kept (a creation shifts offset
    /// pages); `None`: never merged.
    fn id(&self) -> Option<u64>;

    /// Reads what a second pass over their page adds: a droplet's
    /// pass-through `fields` at `paths`.
    fn pick(_: &mut [Self], _body: &[u8], _paths: &[Vec<String>], _: &Tally) -> Result<(), Error> {
        Ok(())
    }
}

impl Item for Droplet {
    fn id(&self) -> Option<u64> {
        Some(self.id)
    }

    fn pick(
        droplets: &mut [Self],
        body: &[u8],
        paths: &[Vec<String>],
        tally: &Tally,
    ) -> Result<(), Error> {
        if paths.is_empty() {
            return Ok(());
        }
        let picked = parse_bounded(body, usize::MAX, tally, |de| fields::read(de, paths))?;
        if picked.len() != droplets.len() {
            return Err(Error::Inconsistent("a page read twice differs".into()));
        }
        droplets.iter_mut().zip(picked).for_each(|(d, values)| d.fields = values);
        Ok(())
    }
}

impl Droplet {
    /// The droplet's tags; none when they were not listed.
    pub fn tags(&self) -> &[String] {
        self.tags.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Networks {
    #[serde(default, deserialize_with = "bounds::addresses")]
    pub v4: Vec<NetAddress>,
    #[serde(default, deserialize_with = "bounds::addresses")]
    pub v6: Vec<NetAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetAddress {
    #[serde(deserialize_with = "bounds::text")]
    pub ip_address: String,
    #[serde(rename = "type", deserialize_with = "address_type")]
    pub kind: AddressType,
}

/// Unknown statuses kept verbatim: a new one must not fail the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    New,
    Active,
    Off,
    Archive,
    Other(String),
}

impl From<String> for Status {
    fn from(s: String) -> Self {
        match s.as_str() {
            "new" => Status::New,
            "active" => Status::Active,
            "off" => Status::Off,
            "archive" => Status::Archive,
            _ => Status::Other(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressType {
    Public,
    Private,
    Other(String),
}

impl From<String> for AddressType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "public" => AddressType::Public,
            "private" => AddressType::Private,
            _ => AddressType::Other(s),
        }
    }
}

#[derive(Deserialize)]
struct Region {
    #[serde(deserialize_with = "bounds::text")]
    slug: String,
}

fn region_slug<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Region>::deserialize(d)?.map(|r| r.slug))
}

fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
    bounds::text(d).map(Status::from)
}

fn address_type<'de, D: Deserializer<'de>>(d: D) -> Result<AddressType, D::Error> {
    bounds::text(d).map(AddressType::from)
}

#[cfg(test)]
pub fn parse_page(body: &[u8], per_page: usize, tally: &Tally) -> Result<Page, Error> {
    parse_bounded(body, per_page, tally, |de| Page::deserialize(de))
}

/// `read` of the whole of `body`: at most `per_page` items (one more:
/// `Inconsistent`) within `tally`'s bounds (`ListingTooLarge`), stopped at
/// the first value past one; bad syntax is `InvalidJson`, the wrong shape
/// `UnexpectedShape`.
pub fn parse_bounded<'b, T>(
    body: &'b [u8],
    per_page: usize,
    tally: &Tally,
    read: impl FnOnce(&mut serde_json::Deserializer<SliceRead<'b>>) -> serde_json::Result<T>,
) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed =
        bounds::parse_with(tally, per_page, || read(&mut de).and_then(|t| de.end().map(|()| t)));
    match parsed {
        Ok(parsed) => parsed.map_err(|e| json_error(&e)),
        Err(Over::Bound(bound)) => Err(Error::ListingTooLarge(bound, tally.limits.limit(bound))),
        Err(Over::PerPage) => Err(Error::Inconsistent(format!(
            "a page lists more droplets than the {per_page} asked for (per_page)"
        ))),
    }
}

/// Only serde's category and position: its message quotes the value, which
/// a server could make echo the token.
pub(crate) fn json_error(e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let at = format!("at line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Data => {
            Error::UnexpectedShape(format!("a missing field or a value of the wrong type {at}"))
        }
        Category::Syntax => Error::InvalidJson(format!("syntax error {at}")),
        Category::Eof => Error::InvalidJson(format!("unexpected end of input {at}")),
        Category::Io => Error::InvalidJson("the body could not be read".into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const ALL: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/digitalocean-api/list_droplets_all.json"
    ));
    pub const TAGGED: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/digitalocean-api/list_droplets_tagged.json"
    ));

    /// Pages as the client asks for them: up to 200 droplets.
    pub fn parse(body: &[u8]) -> Result<Page, Error> {
        parse_page(body, 200, &Tally::default())
    }

    #[test]
    fn parses_the_all_droplets_example() {
        let page = parse(ALL.as_bytes()).expect("example parses");
        assert_eq!(page.meta.total, 3);
        assert_eq!(page.links, Links::default());
        let ids: Vec<u64> = page.droplets.iter().map(|d| d.id).collect();
        assert_eq!(ids, [3164444, 3164459, 3164412]);
        let names: Vec<&str> = page.droplets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["example.com", "assets.example.com", "stage.example.com"]);

        let d = &page.droplets[0];
        assert_eq!(d.status, Status::Active);
        assert_eq!(d.tags(), ["web", "env:prod"]);
        assert_eq!(d.region.as_deref(), Some("nyc3"));
        assert_eq!(d.vpc_uuid.as_deref(), Some("760e09ef-dc84-11e8-981e-3cfdfeaae000"));
        assert_eq!(
            d.networks.v4,
            [
                NetAddress { ip_address: "10.128.192.124".into(), kind: AddressType::Private },
                NetAddress { ip_address: "192.241.165.154".into(), kind: AddressType::Public },
            ]
        );
        assert_eq!(
            d.networks.v6,
            [NetAddress {
                ip_address: "2604:a880:0:1010::18a:a001".into(),
                kind: AddressType::Public
            }]
        );

        let stage = &page.droplets[2];
        assert_eq!(stage.tags(), ["env:stage"]);
        assert_eq!(stage.vpc_uuid.as_deref(), Some("5a4981aa-9653-4bd1-bef5-d6bff52042e4"));
        assert_eq!(stage.networks.v4[1].ip_address, "192.241.247.248");
        assert!(stage.networks.v6.is_empty());
    }

    #[test]
    fn parses_the_tagged_example() {
        let page = parse(TAGGED.as_bytes()).expect("example parses");
        assert_eq!(page.meta.total, 2);
        let ids: Vec<u64> = page.droplets.iter().map(|d| d.id).collect();
        assert_eq!(ids, [3164444, 3164459]);
        let assets = &page.droplets[1];
        assert_eq!(assets.name, "assets.example.com");
        assert_eq!(assets.tags(), ["storage", "env:prod"]);
        assert_eq!(assets.networks.v4[0].ip_address, "10.128.192.138");
        assert_eq!(assets.networks.v4[1].ip_address, "162.243.0.4");
        assert_eq!(assets.region.as_deref(), Some("nyc3"));
    }

    fn droplet_json(extra: &str) -> String {
        format!(
            r#"{{"droplets":[{{"id":1,"name":"a","status":"active",
                "networks":{{"v4":[],"v6":[]}}{extra}}}],"links":{{}},"meta":{{"total":1}}}}"#
        )
    }

    #[test]
    fn optional_fields_default() {
        let page = parse(droplet_json("").as_bytes()).expect("minimal droplet");
        let d = &page.droplets[0];
        assert_eq!(d.tags, None);
        assert!(d.tags().is_empty());
        assert_eq!(d.region, None);
        assert_eq!(d.vpc_uuid, None);
        let page = parse(droplet_json(r#","region":null,"vpc_uuid":null,"tags":[]"#).as_bytes())
            .expect("nulls");
        assert_eq!(page.droplets[0].region, None);
        // Listed without tags is not the same as listed with none.
        assert_eq!(page.droplets[0].tags, Some(vec![]));
        let no_links = r#"{"droplets":[],"meta":{"total":0}}"#;
        assert_eq!(parse(no_links.as_bytes()).map(|p| p.links), Ok(Links::default()));
    }

    #[test]
    fn unknown_status_and_type_are_kept() {
        let body = r#"{"droplets":[{"id":1,"name":"a","status":"migrating",
            "networks":{"v4":[{"ip_address":"1.2.3.4","type":"anchor"}]}}],"meta":{"total":1}}"#;
        let page = parse(body.as_bytes()).expect("parses");
        let d = &page.droplets[0];
        assert_eq!(d.status, Status::Other("migrating".into()));
        assert_eq!(d.networks.v4[0].kind, AddressType::Other("anchor".into()));
        for (s, want) in [("new", Status::New), ("off", Status::Off), ("archive", Status::Archive)]
        {
            assert_eq!(Status::from(s.to_string()), want);
        }
    }

    fn assert_shape(body: &str) {
        match parse(body.as_bytes()) {
            Err(Error::UnexpectedShape(_)) => {}
            other => panic!("{body}: expected UnexpectedShape, got {other:?}"),
        }
    }

    fn assert_json(body: &[u8]) {
        match parse(body) {
            Err(Error::InvalidJson(_)) => {}
            other => panic!("expected InvalidJson, got {other:?}"),
        }
    }

    #[test]
    fn wrong_shapes_are_errors() {
        assert_shape(r#"{"droplets":{},"meta":{"total":0}}"#);
        assert_shape(r#"{"droplets":[],"meta":{}}"#);
        assert_shape(r#"{"droplets":[]}"#);
        assert_shape(r#"{"meta":{"total":0}}"#);
        assert_shape(r#"[]"#);
        assert_shape(r#"null"#);
        assert_shape(r#""droplets""#);
        assert_shape(r#"{"droplets":[],"meta":{"total":-1}}"#);
        assert_shape(r#"{"droplets":[],"links":{"pages":{"next":5}},"meta":{"total":0}}"#);
        // A droplet without networks cannot be addressed: refuse the page.
        assert_shape(r#"{"droplets":[{"id":1,"name":"a","status":"active"}],"meta":{"total":1}}"#);
        assert_shape(&droplet_json("").replace(r#""id":1"#, r#""id":"1""#));
        assert_shape(&droplet_json("").replace(r#""id":1"#, r#""id":1e30"#));
        assert_shape(&droplet_json("").replace(r#""id":1"#, r#""id":18446744073709551616"#));
        assert_shape(&droplet_json("").replace(r#""id":1"#, r#""id":-1"#));
        assert_shape(&droplet_json("").replace(r#""id":1"#, r#""id":1.5"#));
        assert_shape(&droplet_json("").replace(r#""id":1,"#, ""));
        assert_shape(&droplet_json("").replace(r#""name":"a""#, r#""name":7"#));
        assert_shape(&droplet_json("").replace(r#""status":"active""#, r#""status":null"#));
        assert_shape(&droplet_json(r#","tags":"web""#));
        assert_shape(&droplet_json(r#","tags":[1]"#));
        assert_shape(&droplet_json(r#","region":{"name":"x"}"#));
        assert_shape(&droplet_json(r#","region":"nyc3""#));
        assert_shape(&droplet_json(r#","vpc_uuid":5"#));
        assert_shape(&droplet_json("").replace(r#""v4":[]"#, r#""v4":[{"type":"public"}]"#));
        assert_shape(&droplet_json("").replace(r#""v4":[]"#, r#""v4":[{"ip_address":"1.2.3.4"}]"#));
        assert_shape(&droplet_json("").replace(r#""v4":[]"#, r#""v4":{}"#));
    }

    #[test]
    fn the_largest_id_is_accepted() {
        let body = droplet_json("").replace(r#""id":1"#, r#""id":18446744073709551615"#);
        assert_eq!(parse(body.as_bytes()).map(|p| p.droplets[0].id), Ok(u64::MAX));
    }

    #[test]
    fn malformed_bytes_are_invalid_json() {
        assert_json(b"");
        assert_json(b"   ");
        assert_json(b"<html><body>502 Bad Gateway</body></html>");
        assert_json(&ALL.as_bytes()[..ALL.len() / 2]);
        assert_json(b"{\"droplets\":[],\"meta\":{\"total\":0}} trailing");
        let mut bad_utf8 = droplet_json("").into_bytes();
        let at = bad_utf8.iter().position(|&b| b == b'a').unwrap_or(0);
        bad_utf8[at] = 0xff;
        assert_json(&bad_utf8);
        // A page is an object: an array fails at its first byte.
        assert_shape(&"[".repeat(10_000));
        assert_json(&vec![b'{'; 10_000]);
        let deep = format!(
            "{{\"droplets\":[],\"meta\":{{\"total\":0}},\"x\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // Unknown fields are skipped without recursion: valid, and no crash.
        assert_eq!(parse(deep.as_bytes()).map(|p| p.droplets.len()), Ok(0));
        let deep_known = droplet_json(&format!(r#","tags":{}"#, "[".repeat(10_000)));
        assert!(parse(deep_known.as_bytes()).is_err());
    }

    #[test]
    fn errors_give_a_position_but_never_quote_the_body() {
        let echoed = "dop_v1_c0ffee0123456789abcdefECHOED";
        for body in [
            droplet_json("").replace(r#""id":1"#, &format!(r#""id":"{echoed}""#)),
            droplet_json("").replace(r#""active""#, &format!(r#"{{"{echoed}":1}}"#)),
            droplet_json(&format!(r#","tags":[{{"{echoed}":1}}]"#)),
            format!(r#"{{"droplets":[],"meta":{{"total":"{echoed}"}}}}"#),
            format!(r#"{{"droplets":[],"meta":{{"total":0}}}} {echoed}"#),
            format!(r#"{{"droplets":[{echoed}],"meta":{{"total":0}}}}"#),
        ] {
            let e = parse(body.as_bytes()).expect_err(&body);
            {
                let shown = format!("{e:?}");
                assert!(!shown.contains("ECHOED"), "{shown}");
                assert!(!shown.contains("c0ffee"), "{shown}");
            }
            assert!(e.detail().is_some_and(|d| d.contains(" at line ")), "{e:?}");
        }
        assert_eq!(
            parse(br#"{"droplets":{},"meta":{"total":0}}"#),
            Err(Error::UnexpectedShape(
                "a missing field or a value of the wrong type at line 1 column 12".into()
            ))
        );
        assert_eq!(
            parse(b"{\"droplets\": ["),
            Err(Error::InvalidJson("unexpected end of input at line 1 column 14".into()))
        );
    }

    fn droplets_json(n: usize) -> String {
        let one = r#"{"id":1,"name":"a","status":"active","networks":{}}"#;
        format!(r#"{{"droplets":[{}],"meta":{{"total":{n}}}}}"#, vec![one; n].join(","))
    }

    #[test]
    fn a_page_with_more_droplets_than_per_page_is_refused() {
        assert_eq!(
            parse_page(droplets_json(3).as_bytes(), 3, &Tally::default()).map(|p| p.droplets.len()),
            Ok(3)
        );
        assert_eq!(
            parse_page(droplets_json(4).as_bytes(), 3, &Tally::default()),
            Err(Error::Inconsistent(
                "a page lists more droplets than the 3 asked for (per_page)".into()
            ))
        );
        // The element one too many is not even parsed as a droplet.
        let extra_garbage = droplets_json(1).replace("}]", r#"},{"x":[1,2]}]"#);
        assert!(matches!(
            parse_page(extra_garbage.as_bytes(), 1, &Tally::default()),
            Err(Error::Inconsistent(_))
        ));
        assert_eq!(
            parse_page(extra_garbage.as_bytes(), 2, &Tally::default()).map(|p| p.droplets.len()),
            Err(Error::UnexpectedShape(
                "a missing field or a value of the wrong type at line 1 column 76".into()
            ))
        );
    }

    #[test]
    fn the_top_level_object_is_read_like_the_derive_would() {
        let dup = r#"{"droplets":[],"droplets":[],"meta":{"total":0}}"#;
        assert!(matches!(parse(dup.as_bytes()), Err(Error::UnexpectedShape(_))));
        let dup = r#"{"droplets":[],"meta":{"total":0},"meta":{"total":0}}"#;
        assert!(matches!(parse(dup.as_bytes()), Err(Error::UnexpectedShape(_))));
        let dup = r#"{"droplets":[],"links":{},"links":{},"meta":{"total":0}}"#;
        assert!(matches!(parse(dup.as_bytes()), Err(Error::UnexpectedShape(_))));
        let nulls = r#"{"droplets":[],"links":null,"meta":{"total":0}}"#;
        assert!(matches!(parse(nulls.as_bytes()), Err(Error::UnexpectedShape(_))));
        let extra = r#"{"x":{"droplets":1},"droplets":[],"meta":{"total":2},"y":[]}"#;
        assert_eq!(parse(extra.as_bytes()).map(|p| p.meta.total), Ok(2));
    }
}
