//! Droplet autoscale pools: which pool a listing asks for, the requests that
//! find it and page its members, and what it reads of them. A member carries
//! no name and no address: the droplet listing does, matched by id in Elixir.

use serde::Deserialize;

use crate::bounds;
use crate::filters::{ListFilter, MAX_TAGS};
use crate::links::encode_query_value;
use crate::model::Item;

/// The pool to list: looked up by name or by id, or known from a lookup
/// before (which spares it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolRef {
    Name(String),
    Id(String),
    Known(Pool),
}

/// A pool, its droplet template's tags (at most [`MAX_TAGS`]) and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub members: Vec<Member>,
}

impl Pool {
    /// Every droplet carrying the template's first tag, or every droplet.
    pub fn droplets(&self) -> ListFilter {
        match self.tags.first().filter(|tag| !tag.is_empty()) {
            Some(tag) => ListFilter::Tags(vec![tag.clone()]),
            None => ListFilter::All,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    #[serde(deserialize_with = "bounds::item")]
    pub droplet_id: u64,
    #[serde(deserialize_with = "bounds::text")]
    pub status: String,
    #[serde(default, deserialize_with = "bounds::opt_text")]
    pub health_status: Option<String>,
}

impl Item for Member {
    fn id(&self) -> Option<u64> {
        Some(self.droplet_id)
    }
}

/// A pool as the API lists it or looks it up by id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Described {
    #[serde(deserialize_with = "bounds::text")]
    pub id: String,
    #[serde(deserialize_with = "bounds::text")]
    pub name: String,
    #[serde(default)]
    pub droplet_template: Template,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Template {
    #[serde(default, deserialize_with = "bounds::tags")]
    pub tags: Option<Vec<String>>,
}

impl Item for Described {
    fn id(&self) -> Option<u64> {
        None
    }
}

impl Described {
    /// The pool of `id` (the one asked for, not the API's echo).
    pub fn pool(self, id: String) -> Pool {
        let mut tags = self.droplet_template.tags.unwrap_or_default();
        tags.truncate(MAX_TAGS);
        Pool { id, name: self.name, tags, members: Vec::new() }
    }
}

/// `GET /v2/droplets/autoscale/{id}`: `{"autoscale_pool": {...}}`.
#[derive(Debug, Deserialize)]
pub struct Lookup {
    pub autoscale_pool: Described,
}

/// The pools named `name` (the API's filter; the exact name is checked here).
pub fn search_url(api_url: &str, per_page: u32, name: &str) -> String {
    let name = encode_query_value(name);
    format!("{api_url}/v2/droplets/autoscale?per_page={per_page}&page=1&name={name}")
}

pub fn pool_url(api_url: &str, id: &str) -> String {
    format!("{api_url}/v2/droplets/autoscale/{}", encode_query_value(id))
}

pub fn members_url(api_url: &str, per_page: u32, id: &str) -> String {
    format!("{}/members?per_page={per_page}&page=1", pool_url(api_url, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounds::Tally;
    use crate::model::parse_bounded;

    fn pool(tags: &[&str]) -> Pool {
        let tags = tags.iter().map(|t| t.to_string()).collect();
        Pool { id: "p".into(), name: "n".into(), tags, members: vec![] }
    }

    #[test]
    fn droplets_are_listed_by_the_first_template_tag_or_all() {
        assert_eq!(pool(&["app", "web"]).droplets(), ListFilter::Tags(vec!["app".into()]));
        assert_eq!(pool(&[]).droplets(), ListFilter::All);
        assert_eq!(pool(&["", "web"]).droplets(), ListFilter::All);
    }

    #[test]
    fn urls_encode_the_name_and_the_id() {
        let api = "https://api.test";
        assert_eq!(
            search_url(api, 200, "web pool&x=1"),
            "https://api.test/v2/droplets/autoscale?per_page=200&page=1&name=web%20pool%26x%3D1"
        );
        assert_eq!(pool_url(api, "a/b?c"), "https://api.test/v2/droplets/autoscale/a%2Fb%3Fc");
        assert_eq!(
            members_url(api, 5, "id-1"),
            "https://api.test/v2/droplets/autoscale/id-1/members?per_page=5&page=1"
        );
    }

    fn described(json: &str) -> Described {
        let tally = Tally::default();
        parse_bounded(json.as_bytes(), 1, &tally, |de| Described::deserialize(de)).expect("parses")
    }

    #[test]
    fn a_described_pool_keeps_the_id_asked_for_and_at_most_64_tags() {
        let tags: Vec<String> = (0..70).map(|i| format!("t{i}")).collect();
        let json =
            serde_json::json!({"id": "echo", "name": "web", "droplet_template": {"tags": tags}});
        let pool = described(&json.to_string()).pool("asked".into());
        assert_eq!((pool.id.as_str(), pool.name.as_str()), ("asked", "web"));
        assert_eq!(pool.tags, tags[..MAX_TAGS]);
        let bare = described(r#"{"id":"i","name":"web"}"#).pool("i".into());
        assert!(bare.tags.is_empty() && bare.members.is_empty());
        let null_tags = described(r#"{"id":"i","name":"w","droplet_template":{"tags":null}}"#);
        assert!(null_tags.pool("i".into()).tags.is_empty());
    }
}
