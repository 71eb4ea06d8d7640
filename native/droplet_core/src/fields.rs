//! Droplet fields passed through by path (`["size", "slug"]`) for filters
//! declared in Elixir: a second pass over a page that builds only the values
//! on the paths, within the listing's bounds ([`crate::bounds`]).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::bounds::{keep, kept_str, VALUE_OVERHEAD};

pub const MAX_PATHS: usize = 16;
pub const MAX_DEPTH: usize = 4;
/// A list is passed through when it holds at most this many strings only.
pub const MAX_LIST: usize = 256;

/// The value at each path of each droplet of a page, in order: a string,
/// number, boolean or list of strings; `Null` for anything else or nothing.
pub fn read<'de, D: Deserializer<'de>>(
    d: D,
    paths: &[Vec<String>],
) -> Result<Vec<Vec<Value>>, D::Error> {
    d.deserialize_map(PageOf(paths))
}

#[derive(Clone, Copy)]
struct PageOf<'p>(&'p [Vec<String>]);

impl<'de> Visitor<'de> for PageOf<'_> {
    type Value = Vec<Vec<Value>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a page")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut droplets = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            match key == "droplets" {
                true => droplets = map.next_value_seed(self)?,
                false => map.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(droplets)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut droplets = Vec::new();
        loop {
            let mut values = vec![Value::Null; self.0.len()];
            let below = self.0.iter().enumerate().map(|(i, p)| (i, p.as_slice())).collect();
            let droplet = Pick { keep: false, list: false, below, out: &mut values };
            match seq.next_element_seed(droplet)? {
                Some(_) => droplets.push(values),
                None => return Ok(droplets),
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for PageOf<'_> {
    type Value = Vec<Vec<Value>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

/// One value on the way: kept (and counted) when a path ends at it, a list
/// too when `list`; read into when paths go `below` it, each with its index
/// into `out` and the keys it has left. Its value is `Null` unless kept.
struct Pick<'a> {
    keep: bool,
    list: bool,
    below: Vec<(usize, &'a [String])>,
    out: &'a mut [Value],
}

impl Pick<'_> {
    fn scalar<E: de::Error>(self, value: impl Into<Value>) -> Result<Value, E> {
        match self.keep {
            true => keep(VALUE_OVERHEAD).map(|()| value.into()),
            false => Ok(Value::Null),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.keep || !self.below.is_empty() {
            true => d.deserialize_any(self),
            false => d.deserialize_ignored_any(IgnoredAny).map(|_| Value::Null),
        }
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.scalar(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.scalar(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.scalar(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.scalar(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        match self.keep {
            true => kept_str(v).map(Value::String),
            false => Ok(Value::Null),
        }
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    /// Kept if it holds at most `MAX_LIST` strings and nothing else.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut strings = (self.keep && self.list).then(Vec::new);
        loop {
            let keep = strings.as_ref().is_some_and(|s| s.len() < MAX_LIST);
            let item = Pick { keep, list: false, below: Vec::new(), out: &mut [] };
            match seq.next_element_seed(item)? {
                Some(s @ Value::String(_)) if keep => {
                    strings.iter_mut().for_each(|l| l.push(s.clone()))
                }
                Some(_) => strings = None,
                None => return Ok(strings.map_or(Value::Null, Value::Array)),
            }
        }
    }
    /// An object is `Null`; the paths going on are followed into it.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let (mut here, mut below) = (Vec::new(), Vec::new());
            for &(i, path) in &self.below {
                match path.split_first() {
                    Some((first, [])) if *first == key => here.push(i),
                    Some((first, rest)) if *first == key => below.push((i, rest)),
                    _ => {}
                }
            }
            let pick = Pick { keep: !here.is_empty(), list: true, below, out: &mut *self.out };
            let value = map.next_value_seed(pick)?;
            here.into_iter().for_each(|i| self.out[i] = value.clone());
        }
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounds::{Bound, Limits, Tally};
    use crate::error::Error;
    use crate::model::parse_bounded;
    use serde_json::json;

    fn paths(list: &[&[&str]]) -> Vec<Vec<String>> {
        list.iter().map(|p| p.iter().map(|k| k.to_string()).collect()).collect()
    }

    fn page(droplets: &[Value]) -> String {
        json!({"droplets": droplets, "links": {}, "meta": {"total": droplets.len()}}).to_string()
    }

    fn pick(body: &str, wanted: &[&[&str]], tally: &Tally) -> Result<Vec<Vec<Value>>, Error> {
        let wanted = paths(wanted);
        parse_bounded(body.as_bytes(), usize::MAX, tally, |de| read(de, &wanted))
    }

    #[test]
    fn each_path_gives_its_scalar_or_list_of_strings_and_anything_else_is_null() {
        let droplet = json!({
            "id": 1, "size_slug": "s-1vcpu-1gb", "memory": 1024, "delta": -3, "load": 0.5,
            "locked": false, "image": null, "features": ["ipv6", "monitoring"],
            "size": {"slug": "s-2vcpu", "vcpus": 2, "regions": {"x": 1}},
            "mixed": ["a", 1], "nested": [["a"]], "empty": []
        });
        let wanted: &[&[&str]] = &[
            &["size_slug"],
            &["memory"],
            &["delta"],
            &["load"],
            &["locked"],
            &["image"],
            &["features"],
            &["size", "slug"],
            &["size", "vcpus"],
            &["size"],
            &["size", "regions"],
            &["mixed"],
            &["nested"],
            &["empty"],
            &["absent"],
            &["size_slug", "deeper"],
        ];
        let picked = pick(&page(&[droplet.clone(), json!({"id": 2})]), wanted, &Tally::default());
        let first = json!([
            "s-1vcpu-1gb",
            1024,
            -3,
            0.5,
            false,
            null,
            ["ipv6", "monitoring"],
            "s-2vcpu",
            2,
            null,
            null,
            null,
            null,
            [],
            null,
            null
        ]);
        let first = first.as_array().cloned().unwrap_or_default();
        assert_eq!(picked, Ok(vec![first, vec![Value::Null; wanted.len()]]));
    }

    #[test]
    fn a_list_of_more_than_256_strings_is_null_and_never_built() {
        let list = |n: usize| json!({"tags_like": vec!["t"; n]});
        let tally = Tally::default();
        let kept = pick(&page(&[list(256)]), &[&["tags_like"]], &tally);
        assert_eq!(kept.map(|p| p[0][0].as_array().map(Vec::len)), Ok(Some(256)));
        let tally = Tally::default();
        assert_eq!(
            pick(&page(&[list(257)]), &[&["tags_like"]], &tally),
            Ok(vec![vec![Value::Null]])
        );
        // Strings past the 256th are skipped, not copied or counted.
        assert_eq!(tally.kept(), 256 * (VALUE_OVERHEAD + 1));
        let tally = Tally::default();
        let body = page(&[list(3_000_000)]);
        assert_eq!(pick(&body, &[&["tags_like"]], &tally), Ok(vec![vec![Value::Null]]));
        assert_eq!(tally.kept(), 256 * (VALUE_OVERHEAD + 1));
    }

    #[test]
    fn only_the_values_picked_are_kept_and_counted() {
        let droplet =
            json!({"name": "abc", "size_slug": "xy", "memory": 5, "big": "z".repeat(5_000)});
        let tally = Tally::default();
        let picked = pick(&page(&[droplet]), &[&["size_slug"], &["memory"]], &tally);
        assert_eq!(picked, Ok(vec![vec![json!("xy"), json!(5)]]));
        assert_eq!(tally.kept(), (VALUE_OVERHEAD + 2) + VALUE_OVERHEAD);
    }

    #[test]
    fn values_are_held_to_the_listing_bounds() {
        let limits = Limits { max_string_bytes: 8, max_listing_bytes: 200, ..Limits::default() };
        let long = page(&[json!({"size_slug": "x".repeat(9)})]);
        let over = Err(Error::ListingTooLarge(Bound::MaxStringBytes, 8));
        assert_eq!(pick(&long, &[&["size_slug"]], &Tally::new(limits)), over);
        let in_list = page(&[json!({"features": ["ok", "x".repeat(9)]})]);
        assert_eq!(pick(&in_list, &[&["features"]], &Tally::new(limits)), over);
        // An unrequested long string is skipped, not refused.
        assert!(pick(&long, &[&["other"]], &Tally::new(limits)).is_ok());
        let many: Vec<Value> = (0..7).map(|i| json!({"n": i})).collect();
        assert_eq!(
            pick(&page(&many), &[&["n"]], &Tally::new(limits)),
            Err(Error::ListingTooLarge(Bound::MaxListingBytes, 200))
        );
    }

    #[test]
    fn deep_nesting_on_a_path_is_skipped_without_recursion() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let body = format!(
            r#"{{"droplets":[{{"a":{deep},"b":{{"c":{deep}}},"d":[{deep}]}}],"meta":{{"total":1}}}}"#
        );
        let wanted: &[&[&str]] = &[&["a"], &["b", "c"], &["d"], &["a", "x"]];
        assert_eq!(pick(&body, wanted, &Tally::default()), Ok(vec![vec![Value::Null; 4]]));
    }
}
