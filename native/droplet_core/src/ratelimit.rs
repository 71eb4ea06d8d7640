//! DigitalOcean's rate-limit headers: per token, shared by every node, so the
//! tightest view of a listing is kept, not merely the last.

/// The rate-limit headers of one response; a header that is absent or not a
/// plain non-negative integer is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Unix time (seconds) when the oldest counted request expires.
    pub reset: Option<u64>,
    pub retry_after: Option<u64>,
}

impl RateLimit {
    /// Reads the headers case-insensitively; `None` when none is present, so
    /// a response without them does not hide one that had them.
    pub fn from_headers<'h>(headers: impl IntoIterator<Item = (&'h str, &'h str)>) -> Option<Self> {
        let mut rl = RateLimit::default();
        let mut seen = false;
        for (name, value) in headers {
            let slot = match name.to_ascii_lowercase().as_str() {
                "ratelimit-limit" => &mut rl.limit,
                "ratelimit-remaining" => &mut rl.remaining,
                "ratelimit-reset" => &mut rl.reset,
                "retry-after" => &mut rl.retry_after,
                _ => continue,
            };
            seen = true;
            if slot.is_none() {
                *slot = parse_seconds(value);
            }
        }
        seen.then_some(rl)
    }

    /// How long a 429 asks us to wait: `retry-after` when given, else the
    /// time to `reset` when the hourly budget is spent, else unknown.
    pub fn retry_seconds(&self, now_unix: u64) -> Option<u64> {
        if self.retry_after.is_some() {
            return self.retry_after;
        }
        match (self.remaining, self.reset) {
            (Some(0), Some(reset)) => Some(reset.saturating_sub(now_unix)),
            _ => None,
        }
    }
}

/// Only delta-seconds: the HTTP-date form of `retry-after` is not used by
/// DigitalOcean, and guessing at it would be worse than reporting `None`.
fn parse_seconds(value: &str) -> Option<u64> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Keeps in `best` the headers with the lowest `remaining`; on a tie the
/// later ones, whose `reset` is the more current.
pub fn keep_tightest(best: &mut Option<RateLimit>, rl: RateLimit) {
    let key = |r: &RateLimit| r.remaining.unwrap_or(u64::MAX);
    if best.is_none_or(|best| key(&rl) <= key(&best)) {
        *best = Some(rl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_case_insensitively() {
        let rl = RateLimit::from_headers([
            ("RateLimit-Limit", "5000"),
            ("ratelimit-remaining", " 4999 "),
            ("RATELIMIT-RESET", "1700000000"),
            ("Content-Type", "application/json"),
        ]);
        assert_eq!(
            rl,
            Some(RateLimit {
                limit: Some(5000),
                remaining: Some(4999),
                reset: Some(1_700_000_000),
                retry_after: None
            })
        );
    }

    #[test]
    fn junk_values_are_none_and_absence_is_none() {
        let rl = RateLimit::from_headers([
            ("ratelimit-limit", "-1"),
            ("ratelimit-remaining", "1e3"),
            ("ratelimit-reset", "99999999999999999999999"),
            ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert_eq!(rl, Some(RateLimit::default()));
        assert_eq!(RateLimit::from_headers([("server", "x")]), None);
        assert_eq!(RateLimit::from_headers([]), None);
    }

    #[test]
    fn first_duplicate_header_wins() {
        let rl = RateLimit::from_headers([("retry-after", "3"), ("Retry-After", "9")]);
        assert_eq!(rl.and_then(|r| r.retry_after), Some(3));
    }

    #[test]
    fn retry_seconds_prefers_retry_after_then_reset() {
        let now = 1_000;
        let rl = |remaining, reset, retry_after| RateLimit {
            limit: Some(5000),
            remaining,
            reset,
            retry_after,
        };
        assert_eq!(rl(Some(0), Some(1_060), Some(5)).retry_seconds(now), Some(5));
        assert_eq!(rl(Some(0), Some(1_060), None).retry_seconds(now), Some(60));
        assert_eq!(rl(Some(0), Some(900), None).retry_seconds(now), Some(0));
        assert_eq!(rl(Some(3), Some(1_060), None).retry_seconds(now), None);
        assert_eq!(rl(None, Some(1_060), None).retry_seconds(now), None);
        assert_eq!(rl(Some(0), None, None).retry_seconds(now), None);
    }

    #[test]
    fn tracker_keeps_the_lowest_remaining_latest_on_ties() {
        let rl = |remaining, reset| RateLimit {
            limit: Some(5000),
            remaining,
            reset: Some(reset),
            retry_after: None,
        };
        let mut t = None;
        assert_eq!(t, None);
        keep_tightest(&mut t, rl(None, 1));
        assert_eq!(t, Some(rl(None, 1)));
        keep_tightest(&mut t, rl(Some(10), 2));
        keep_tightest(&mut t, rl(Some(12), 3));
        assert_eq!(t, Some(rl(Some(10), 2)));
        keep_tightest(&mut t, rl(Some(10), 4));
        assert_eq!(t, Some(rl(Some(10), 4)));
        keep_tightest(&mut t, rl(None, 5));
        assert_eq!(t, Some(rl(Some(10), 4)));
        keep_tightest(&mut t, rl(Some(0), 6));
        assert_eq!(t, Some(rl(Some(0), 6)));
    }
}
