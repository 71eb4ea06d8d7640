//! The caller's filters as the listings DigitalOcean accepts: one `tag_name`
//! per listing, never with `name` or `type`, and GPU droplets only with
//! `type=gpus`, which lists only them. So several tags are several listings,
//! GPU droplets one more, whose tags are checked here.

use std::collections::HashSet;

use crate::error::Error;
use crate::links::{Filter, Kind};
use crate::model::Droplet;

/// Each tag is a listing of its own: more would spend the rate limit.
pub const MAX_TAGS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFilter {
    All,
    /// Droplets carrying any of these tags.
    Tags(Vec<String>),
    /// The exact, case-insensitive name.
    Name(String),
}

/// GPU droplets: left out (the API's default), listed too, or listed alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpus {
    Exclude,
    Include,
    Only,
}

/// One listing, and the tags checked here on its droplets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    pub kind: Kind,
    pub tags_here: Option<HashSet<String>>,
}

impl Query {
    fn server(filter: Filter, kind: Kind) -> Query {
        Query { filter, kind, tags_here: None }
    }

    /// Whether `droplet` passes the checks made here. One listed without
    /// `tags` (no `tag:read`) fails the listing: passing it would cluster
    /// any droplet, dropping it would quietly cluster none.
    pub fn keeps(&self, droplet: &Droplet) -> Result<bool, Error> {
        let Some(wanted) = &self.tags_here else {
            return Ok(true);
        };
        let Some(tags) = &droplet.tags else {
            return Err(Error::TagsUnknown);
        };
        Ok(tags.iter().any(|t| wanted.contains(t.as_str())))
    }
}

/// The listings covering `filter` and `gpus`: one per distinct tag (or
/// one), then the GPU one (narrowed to the tags here).
pub fn queries(filter: &ListFilter, gpus: Gpus) -> Result<Vec<Query>, Error> {
    let (ordinary, gpu) = match filter {
        ListFilter::All => (
            vec![Query::server(Filter::None, Kind::Droplets)],
            Query::server(Filter::None, Kind::Gpus),
        ),
        ListFilter::Name(name) => (
            vec![Query::server(Filter::Name(name.clone()), Kind::Droplets)],
            Query::server(Filter::Name(name.clone()), Kind::Gpus),
        ),
        ListFilter::Tags(tags) => {
            if tags.is_empty() || tags.len() > MAX_TAGS {
                return Err(Error::InvalidRequest(format!(
                    "tag_name must name 1 to {MAX_TAGS} tags"
                )));
            }
            let tags = distinct(tags);
            let ordinary = tags
                .iter()
                .map(|t| Query::server(Filter::Tag(t.clone()), Kind::Droplets))
                .collect();
            let gpu = Query {
                filter: Filter::None,
                kind: Kind::Gpus,
                tags_here: Some(tags.into_iter().collect()),
            };
            (ordinary, gpu)
        }
    };
    Ok(match gpus {
        Gpus::Exclude => ordinary,
        Gpus::Include => ordinary.into_iter().chain([gpu]).collect(),
        Gpus::Only => vec![gpu],
    })
}

fn distinct(tags: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    tags.iter().filter(|t| seen.insert(t.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Networks, Status};

    fn tags(list: &[&str]) -> ListFilter {
        ListFilter::Tags(list.iter().map(|s| s.to_string()).collect())
    }

    fn droplet(tags: Option<&[&str]>) -> Droplet {
        Droplet {
            id: 1,
            name: "n".into(),
            status: Status::Active,
            tags: tags.map(|t| t.iter().map(|s| s.to_string()).collect()),
            region: None,
            vpc_uuid: None,
            networks: Networks { v4: vec![], v6: vec![] },
            fields: vec![],
        }
    }

    fn plain(filter: Filter, kind: Kind) -> Query {
        Query::server(filter, kind)
    }

    #[test]
    fn without_gpus_one_listing_per_filter() {
        assert_eq!(
            queries(&ListFilter::All, Gpus::Exclude),
            Ok(vec![plain(Filter::None, Kind::Droplets)])
        );
        assert_eq!(
            queries(&ListFilter::Name("a".into()), Gpus::Exclude),
            Ok(vec![plain(Filter::Name("a".into()), Kind::Droplets)])
        );
        assert_eq!(
            queries(&tags(&["web"]), Gpus::Exclude),
            Ok(vec![plain(Filter::Tag("web".into()), Kind::Droplets)])
        );
    }

    #[test]
    fn several_tags_are_one_listing_each_repeats_dropped() {
        assert_eq!(
            queries(&tags(&["web", "db", "web"]), Gpus::Exclude),
            Ok(vec![
                plain(Filter::Tag("web".into()), Kind::Droplets),
                plain(Filter::Tag("db".into()), Kind::Droplets),
            ])
        );
    }

    #[test]
    fn gpus_add_one_listing_and_tags_are_checked_here_on_it() {
        assert_eq!(
            queries(&ListFilter::All, Gpus::Include),
            Ok(vec![plain(Filter::None, Kind::Droplets), plain(Filter::None, Kind::Gpus)])
        );
        assert_eq!(
            queries(&ListFilter::Name("a".into()), Gpus::Include),
            Ok(vec![
                plain(Filter::Name("a".into()), Kind::Droplets),
                plain(Filter::Name("a".into()), Kind::Gpus)
            ])
        );
        let gpu = Query {
            filter: Filter::None,
            kind: Kind::Gpus,
            tags_here: Some(HashSet::from(["web".into(), "db".into()])),
        };
        assert_eq!(
            queries(&tags(&["web", "db"]), Gpus::Include),
            Ok(vec![
                plain(Filter::Tag("web".into()), Kind::Droplets),
                plain(Filter::Tag("db".into()), Kind::Droplets),
                gpu.clone(),
            ])
        );
        assert_eq!(queries(&tags(&["web", "db"]), Gpus::Only), Ok(vec![gpu]));
        assert_eq!(
            queries(&ListFilter::All, Gpus::Only),
            Ok(vec![plain(Filter::None, Kind::Gpus)])
        );
    }

    #[test]
    fn no_query_ever_sends_a_tag_with_a_type() {
        for filter in [ListFilter::All, ListFilter::Name("a".into()), tags(&["x", "y"])] {
            for gpus in [Gpus::Exclude, Gpus::Include, Gpus::Only] {
                for q in queries(&filter, gpus).unwrap_or_default() {
                    assert!(!(q.kind == Kind::Gpus && matches!(q.filter, Filter::Tag(_))), "{q:?}");
                }
            }
        }
    }

    #[test]
    fn an_empty_or_overlong_tag_list_is_refused() {
        let refused = Err(Error::InvalidRequest("tag_name must name 1 to 64 tags".into()));
        assert_eq!(queries(&tags(&[]), Gpus::Include), refused);
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert_eq!(queries(&ListFilter::Tags(many.clone()), Gpus::Exclude), refused);
        let most = ListFilter::Tags(many[..MAX_TAGS].to_vec());
        assert_eq!(queries(&most, Gpus::Exclude).map(|q| q.len()), Ok(MAX_TAGS));
        // Refused without a look at the tags: a million cost what 65 do.
        let million = ListFilter::Tags(vec!["t".to_string(); 1_000_000]);
        assert_eq!(queries(&million, Gpus::Include), refused);
    }

    #[test]
    fn repeats_are_dropped_in_first_order() {
        let t = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(distinct(&t(&["b", "a", "b", "c", "a"])), t(&["b", "a", "c"]));
        assert_eq!(distinct(&t(&[])), t(&[]));
    }

    #[test]
    fn tags_checked_here_keep_droplets_with_any_of_them() {
        let q = Query {
            filter: Filter::None,
            kind: Kind::Gpus,
            tags_here: Some(HashSet::from(["web".into(), "db".into()])),
        };
        assert_eq!(q.keeps(&droplet(Some(&["x", "db"]))), Ok(true));
        assert_eq!(q.keeps(&droplet(Some(&["x"]))), Ok(false));
        assert_eq!(q.keeps(&droplet(Some(&[]))), Ok(false));
        assert_eq!(q.keeps(&droplet(None)), Err(Error::TagsUnknown));
        // Nothing checked here: anything passes, tags listed or not.
        let server = plain(Filter::Tag("web".into()), Kind::Droplets);
        assert_eq!(server.keeps(&droplet(None)), Ok(true));
    }
}
