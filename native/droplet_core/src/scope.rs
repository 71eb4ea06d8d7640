//! The scope a 403 names (`"message": "You are missing the required scope:
//! vpc:read"`). Errors never carry server text, so only a word of scope
//! shape is kept: `resource:action`, lower-case letters and `_`, and one of
//! DigitalOcean's four actions.

/// The most of a 403 body read: an error message is short.
pub const MAX_FORBIDDEN_BODY: u64 = 4 * 1024;

/// Longest resource name accepted (DigitalOcean's are a few letters).
const MAX_RESOURCE_LEN: usize = 40;

const ACTIONS: [&str; 4] = ["read", "create", "update", "delete"];

/// The first scope named in the `message` of a JSON error body.
pub fn missing_scope(body: &[u8]) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = body.as_object()?.get("message")?.as_str()?;
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')))
        .find(|word| is_scope(word))
        .map(str::to_owned)
}

pub fn is_scope(word: &str) -> bool {
    let Some((resource, action)) = word.split_once(':') else {
        return false;
    };
    (1..=MAX_RESOURCE_LEN).contains(&resource.len())
        && resource.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && ACTIONS.contains(&action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(message: &str) -> Vec<u8> {
        serde_json::json!({"id": "forbidden", "message": message, "request_id": "r"})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn the_scope_of_a_digitalocean_403_is_found() {
        for (message, scope) in [
            ("You are missing the required scope: vpc:read", "vpc:read"),
            ("You are missing the required scope: tag:read.", "tag:read"),
            ("missing scopes: droplet:read, tag:read", "droplet:read"),
            ("needs (\"database_replica:create\")", "database_replica:create"),
        ] {
            assert_eq!(missing_scope(&body(message)).as_deref(), Some(scope));
        }
    }

    #[test]
    fn nothing_but_a_scope_is_kept() {
        for message in [
            "You do not have access for the attempted action.",
            "scope: Vpc:read",
            "scope: vpc:readall",
            "scope: vpc:write",
            "scope: vpc:read:extra",
            "scope: 9vpc:read",
            "scope: vpc-x:read",
            ":read",
            "token dop_v1_sekret:read",
            "",
        ] {
            assert_eq!(missing_scope(&body(message)), None, "{message}");
        }
        let long = format!("scope: {}:read", "a".repeat(MAX_RESOURCE_LEN + 1));
        assert_eq!(missing_scope(&body(&long)), None);
        let longest = format!("{}:read", "a".repeat(MAX_RESOURCE_LEN));
        assert_eq!(missing_scope(&body(&longest)), Some(longest));
    }

    #[test]
    fn bodies_that_are_not_error_bodies_name_nothing() {
        for raw in [
            &b""[..],
            b"<html>vpc:read</html>",
            b"vpc:read",
            br#"{"message": 3}"#,
            br#"{"id": "forbidden"}"#,
            br#"["vpc:read"]"#,
            br#"{"message": "vpc:read""#,
        ] {
            assert_eq!(missing_scope(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn scope_shape() {
        assert!(is_scope("droplet:read"));
        assert!(is_scope("one_click:delete"));
        assert!(!is_scope("droplet"));
        assert!(!is_scope("droplet:"));
        assert!(!is_scope("DROPLET:read"));
        assert!(!is_scope("droplet:READ"));
        assert!(!is_scope("dröplet:read"));
    }
}
