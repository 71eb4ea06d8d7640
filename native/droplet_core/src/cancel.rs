//! Cancelling a call whose handle is dropped or cancelled: its threads start
//! no new item. They hold a [`Cancel`] only, never the handle, which they
//! would otherwise keep alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared flag, set once and never cleared. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    pub fn cancel(&self) {
        // Relaxed: seen an item late, it costs an item.
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Owned by the caller's handle: cancels the call when dropped.
#[derive(Debug)]
pub struct CancelOnDrop(pub Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{list_with, ListRequest, Stats};
    use crate::transport::{Exchange, Transport};
    use crate::Error;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    #[test]
    fn clones_share_one_flag_that_stays_set() {
        let cancel = Cancel::new();
        let seen_by_worker = cancel.clone();
        assert!(!seen_by_worker.is_cancelled());
        cancel.cancel();
        assert!(seen_by_worker.is_cancelled());
        cancel.cancel();
        assert!(seen_by_worker.is_cancelled());
    }

    #[test]
    fn dropping_the_guard_cancels_and_so_does_an_explicit_cancel() {
        let cancel = Cancel::new();
        let guard = CancelOnDrop(cancel.clone());
        assert!(!cancel.is_cancelled());
        drop(guard);
        assert!(cancel.is_cancelled());

        let cancel = Cancel::new();
        let guard = CancelOnDrop(cancel.clone());
        guard.0.cancel();
        assert!(cancel.is_cancelled());
    }

    const API: &str = "https://api.example.test";

    fn page_body(id: u64, next: Option<String>, last: Option<String>, total: u64) -> Vec<u8> {
        let link = |name: &str, url: Option<String>| {
            url.map(|u| format!(r#""{name}":"{u}""#)).unwrap_or_default()
        };
        let links = [link("next", next), link("last", last)]
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        format!(
            r#"{{"droplets":[{{"id":{id},"name":"n{id}","status":"active","tags":[],
                "networks":{{"v4":[],"v6":[]}}}}],
                "links":{{"pages":{{{links}}}}},"meta":{{"total":{total}}}}}"#
        )
        .into_bytes()
    }

    fn page_url(n: u64) -> String {
        format!("{API}/v2/droplets?page={n}&per_page=200")
    }

    /// Serves an endless chain of pages of one droplet each (or, with
    /// `redirects`, a chain of redirects), and cancels the listing once
    /// `cancel_after` requests have been answered. Page 1 says how many
    /// pages follow through `meta.total` (1: none, so the listing walks the
    /// `next` links one by one) or, `with_last`, a `last` link.
    struct Chain {
        cancel: Cancel,
        cancel_after: usize,
        redirects: bool,
        with_last: bool,
        total: u64,
        asked: Mutex<Vec<String>>,
    }

    impl Chain {
        fn new(cancel: &Cancel, cancel_after: usize) -> Chain {
            Chain {
                cancel: cancel.clone(),
                cancel_after,
                redirects: false,
                with_last: false,
                total: 1,
                asked: Mutex::new(Vec::new()),
            }
        }

        fn asked(&self) -> usize {
            self.asked.lock().map(|a| a.len()).unwrap_or(0)
        }
    }

    impl Transport for Chain {
        fn get(&self, url: &str, _timeout: Duration) -> Result<Exchange, Error> {
            // Cancelled under the lock, so every later request sees it.
            let n = {
                let mut asked = self.asked.lock().map_err(|_| Error::Timeout)?;
                asked.push(url.to_string());
                if asked.len() >= self.cancel_after {
                    self.cancel.cancel();
                }
                asked.len()
            };
            let exchange = if self.redirects && n > 1 {
                Exchange {
                    status: 302,
                    location: Some(format!("{API}/v2/droplets?hop={n}")),
                    rate_limit: None,
                    body: Ok(Vec::new()),
                }
            } else {
                let last = self.with_last.then(|| page_url(1_000));
                Exchange {
                    status: 200,
                    location: None,
                    rate_limit: None,
                    body: Ok(page_body(n as u64, Some(page_url(n as u64 + 1)), last, self.total)),
                }
            };
            Ok(exchange)
        }
    }

    fn cancellable_request(cancel: &Cancel) -> ListRequest {
        let mut req = ListRequest::new(API, "dop_v1_cancel_test").expect("valid request");
        req.cancel = cancel.clone();
        req
    }

    #[test]
    fn a_cancelled_listing_requests_no_further_page() {
        // Walking `next` links one at a time.
        let cancel = Cancel::new();
        let chain = Chain::new(&cancel, 3);
        let req = cancellable_request(&cancel);
        let result = list_with(&chain, &req, &Stats::default(), Instant::now());
        assert_eq!(result, Err(Error::Cancelled));
        assert_eq!(chain.asked(), 3);

        // Pages 2..1000 known from page 1, fetched by the listing thread
        // alone.
        let cancel = Cancel::new();
        let mut chain = Chain::new(&cancel, 3);
        chain.total = 1_000;
        let mut req = cancellable_request(&cancel);
        req.page_concurrency = 1;
        let result = list_with(&chain, &req, &Stats::default(), Instant::now());
        assert_eq!(result, Err(Error::Cancelled));
        assert_eq!(chain.asked(), 3);
    }

    #[test]
    fn a_cancelled_listing_follows_no_further_redirect() {
        let cancel = Cancel::new();
        let mut chain = Chain::new(&cancel, 3);
        chain.redirects = true;
        let req = cancellable_request(&cancel);
        let result = list_with(&chain, &req, &Stats::default(), Instant::now());
        assert_eq!(result, Err(Error::Cancelled));
        // Page 1, then two hops of page 2's redirects: the third stopped it.
        assert_eq!(chain.asked(), 3);
    }

    #[test]
    fn a_listing_cancelled_before_it_starts_sends_nothing() {
        let cancel = Cancel::new();
        cancel.cancel();
        let chain = Chain::new(&cancel, usize::MAX);
        let req = cancellable_request(&cancel);
        let result = list_with(&chain, &req, &Stats::default(), Instant::now());
        assert_eq!(result, Err(Error::Cancelled));
        assert_eq!(chain.asked(), 0);
    }

    #[test]
    fn cancelled_concurrent_pages_start_no_new_page() {
        // Page 1 names 1,000 pages; the listing is cancelled on the 5th
        // request, so the pool stops long before the 999 others.
        let cancel = Cancel::new();
        let mut chain = Chain::new(&cancel, 5);
        chain.with_last = true;
        let mut req = cancellable_request(&cancel);
        req.page_concurrency = 2;
        let result = list_with(&chain, &req, &Stats::default(), Instant::now());
        assert_eq!(result, Err(Error::Cancelled));
        // The request that cancelled, plus at most one already in flight
        // on the other thread.
        assert!(chain.asked() <= 6, "{} requests", chain.asked());
    }
}
