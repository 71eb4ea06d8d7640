//! One page of `GET /v2/droplets`, reading only the fields the strategy
//! needs. Parsing is strict about those fields (a droplet we cannot address
//! must not silently vanish from the cluster) and ignores everything else.

use serde::{Deserialize, Deserializer};

use crate::error::{short, Error};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Page {
    pub droplets: Vec<Droplet>,
    /// DigitalOcean always sends `links`; a missing one is read as "single
    /// page", which is what it would say anyway.
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
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub last: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Meta {
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Droplet {
    pub id: u64,
    pub name: String,
    pub status: Status,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "region_slug")]
    pub region: Option<String>,
    #[serde(default)]
    pub vpc_uuid: Option<String>,
    pub networks: Networks,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Networks {
    #[serde(default)]
    pub v4: Vec<NetAddress>,
    #[serde(default)]
    pub v6: Vec<NetAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetAddress {
    pub ip_address: String,
    #[serde(rename = "type")]
    pub kind: AddressType,
}

/// Unknown statuses are kept verbatim: a new status must not make the whole
/// listing fail, and only `Active` droplets are ever addressed anyway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
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
    slug: String,
}

fn region_slug<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Region>::deserialize(d)?.map(|r| r.slug))
}

/// Parses one page body. Syntax errors and truncation are `InvalidJson`;
/// well-formed JSON of the wrong shape is `UnexpectedShape`.
pub fn parse_page(body: &[u8]) -> Result<Page, Error> {
    serde_json::from_slice(body).map_err(|e| json_error(&e))
}

pub(crate) fn json_error(e: &serde_json::Error) -> Error {
    use serde_json::error::Category;
    let detail = short(e.to_string());
    match e.classify() {
        Category::Data => Error::UnexpectedShape(detail),
        Category::Io | Category::Syntax | Category::Eof => Error::InvalidJson(detail),
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

    #[test]
    fn parses_the_all_droplets_example() {
        let page = parse_page(ALL.as_bytes()).expect("example parses");
        assert_eq!(page.meta.total, 3);
        assert_eq!(page.links, Links::default());
        let ids: Vec<u64> = page.droplets.iter().map(|d| d.id).collect();
        assert_eq!(ids, [3164444, 3164459, 3164412]);
        let names: Vec<&str> = page.droplets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["example.com", "assets.example.com", "stage.example.com"]
        );

        let d = &page.droplets[0];
        assert_eq!(d.status, Status::Active);
        assert_eq!(d.tags, ["web", "env:prod"]);
        assert_eq!(d.region.as_deref(), Some("nyc3"));
        assert_eq!(
            d.vpc_uuid.as_deref(),
            Some("760e09ef-dc84-11e8-981e-3cfdfeaae000")
        );
        assert_eq!(
            d.networks.v4,
            [
                NetAddress {
                    ip_address: "10.128.192.124".into(),
                    kind: AddressType::Private
                },
                NetAddress {
                    ip_address: "192.241.165.154".into(),
                    kind: AddressType::Public
                },
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
        assert_eq!(stage.tags, ["env:stage"]);
        assert_eq!(
            stage.vpc_uuid.as_deref(),
            Some("5a4981aa-9653-4bd1-bef5-d6bff52042e4")
        );
        assert_eq!(stage.networks.v4[1].ip_address, "192.241.247.248");
        assert!(stage.networks.v6.is_empty());
    }

    #[test]
    fn parses_the_tagged_example() {
        let page = parse_page(TAGGED.as_bytes()).expect("example parses");
        assert_eq!(page.meta.total, 2);
        let ids: Vec<u64> = page.droplets.iter().map(|d| d.id).collect();
        assert_eq!(ids, [3164444, 3164459]);
        let assets = &page.droplets[1];
        assert_eq!(assets.name, "assets.example.com");
        assert_eq!(assets.tags, ["storage", "env:prod"]);
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
        let page = parse_page(droplet_json("").as_bytes()).expect("minimal droplet");
        let d = &page.droplets[0];
        assert!(d.tags.is_empty());
        assert_eq!(d.region, None);
        assert_eq!(d.vpc_uuid, None);
        let page =
            parse_page(droplet_json(r#","region":null,"vpc_uuid":null,"tags":[]"#).as_bytes())
                .expect("nulls");
        assert_eq!(page.droplets[0].region, None);
        let no_links = r#"{"droplets":[],"meta":{"total":0}}"#;
        assert_eq!(
            parse_page(no_links.as_bytes()).map(|p| p.links),
            Ok(Links::default())
        );
    }

    #[test]
    fn unknown_status_and_type_are_kept() {
        let body = r#"{"droplets":[{"id":1,"name":"a","status":"migrating",
            "networks":{"v4":[{"ip_address":"1.2.3.4","type":"anchor"}]}}],"meta":{"total":1}}"#;
        let page = parse_page(body.as_bytes()).expect("parses");
        let d = &page.droplets[0];
        assert_eq!(d.status, Status::Other("migrating".into()));
        assert_eq!(d.networks.v4[0].kind, AddressType::Other("anchor".into()));
        for (s, want) in [
            ("new", Status::New),
            ("off", Status::Off),
            ("archive", Status::Archive),
        ] {
            assert_eq!(Status::from(s.to_string()), want);
        }
    }

    fn assert_shape(body: &str) {
        match parse_page(body.as_bytes()) {
            Err(Error::UnexpectedShape(_)) => {}
            other => panic!("{body}: expected UnexpectedShape, got {other:?}"),
        }
    }

    fn assert_json(body: &[u8]) {
        match parse_page(body) {
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
        assert_eq!(
            parse_page(body.as_bytes()).map(|p| p.droplets[0].id),
            Ok(u64::MAX)
        );
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
        // serde reads structs from arrays too, so this fails as a shape
        // error before the recursion limit; either way it is an error.
        assert!(parse_page(&vec![b'['; 10_000]).is_err());
        assert_json(&vec![b'{'; 10_000]);
        let deep = format!(
            "{{\"droplets\":[],\"meta\":{{\"total\":0}},\"x\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // Unknown fields are skipped without recursion: valid, and no crash.
        assert_eq!(parse_page(deep.as_bytes()).map(|p| p.droplets.len()), Ok(0));
        let deep_known = droplet_json(&format!(r#","tags":{}"#, "[".repeat(10_000)));
        assert!(parse_page(deep_known.as_bytes()).is_err());
    }

    #[test]
    fn overlong_details_are_cut() {
        let long_name = "x".repeat(10_000);
        let body = droplet_json("").replace(r#""id":1"#, &format!(r#""id":"{long_name}""#));
        match parse_page(body.as_bytes()) {
            Err(e) => assert!(e.detail().is_some_and(|d| d.len() <= 240)),
            Ok(_) => panic!("string id accepted"),
        }
    }
}
