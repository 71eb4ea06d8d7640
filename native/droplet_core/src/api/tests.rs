use super::*;
use crate::bounds::Bound;
use crate::links::parse_url;
use crate::model::tests::ALL;
use crate::scope::MAX_FORBIDDEN_BODY;
use crate::testfs::TempFile;
use crate::testserver::{self, Body, Reply, Server};
use crate::transport::Exchange;
use std::collections::HashMap;

const API: &str = "https://api.example.test";
const TOKEN: &str = "dop_v1_sekret0123456789";

/// A real listing, `page_concurrency` pages at a time.
fn list_droplets(req: &ListRequest, stats: &Stats) -> Result<Listing, Error> {
    super::list_droplets(req, stats, &req.page_concurrency.saturating_sub(1))
}

fn request() -> ListRequest {
    ListRequest::new(API, TOKEN).expect("valid request")
}

fn droplet(id: u64) -> String {
    format!(
        r#"{{"id":{id},"name":"node-{id}","status":"active","tags":["t"],
            "region":{{"slug":"ams3"}},"vpc_uuid":"vpc",
            "networks":{{"v4":[{{"ip_address":"10.0.0.{}","type":"private"}}],"v6":[]}}}}"#,
        id % 250
    )
}

fn page(ids: &[u64], next: Option<&str>, last: Option<&str>, total: u64) -> String {
    let droplets: Vec<String> = ids.iter().map(|&i| droplet(i)).collect();
    let mut links = Vec::new();
    if let Some(n) = next {
        links.push(format!(r#""next":"{n}""#));
    }
    if let Some(l) = last {
        links.push(format!(r#""last":"{l}""#));
    }
    format!(
        r#"{{"droplets":[{}],"links":{{"pages":{{{}}}}},"meta":{{"total":{total}}}}}"#,
        droplets.join(","),
        links.join(",")
    )
}

fn ok(body: &str) -> Exchange {
    Exchange { status: 200, location: None, rate_limit: None, body: Ok(body.as_bytes().to_vec()) }
}

fn status(code: u16) -> Exchange {
    Exchange { status: code, location: None, rate_limit: None, body: Ok(Vec::new()) }
}

fn redirect(to: &str) -> Exchange {
    Exchange { location: Some(to.to_string()), ..status(302) }
}

type Route = Box<dyn Fn() -> Result<Exchange, Error> + Send + Sync>;

/// Answers by exact URL; anything else is a 404. Records every URL asked.
#[derive(Default)]
struct Fake {
    routes: HashMap<String, Route>,
    calls: Mutex<Vec<String>>,
}

impl Fake {
    fn on(
        mut self,
        url: &str,
        reply: impl Fn() -> Result<Exchange, Error> + Send + Sync + 'static,
    ) -> Self {
        self.routes.insert(url.to_string(), Box::new(reply));
        self
    }

    fn page(self, url: &str, body: String) -> Self {
        self.on(url, move || Ok(ok(&body)))
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Transport for Fake {
    fn get(&self, url: &str, _timeout: Duration) -> Result<Exchange, Error> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(url.to_string());
        }
        match self.routes.get(url) {
            Some(route) => route(),
            None => Ok(status(404)),
        }
    }
}

fn run(fake: &Fake, req: &ListRequest) -> (Result<Listing, Error>, Stats) {
    let stats = Stats::default();
    let result = list_with(fake, req, &stats, Instant::now());
    (result, stats)
}

fn ids(listing: &Listing) -> Vec<u64> {
    listing.droplets.iter().map(|d| d.id).collect()
}

fn p1() -> String {
    format!("{API}/v2/droplets?per_page=200&page=1")
}

fn pn(n: u64) -> String {
    format!("{API}/v2/droplets?page={n}&per_page=200")
}

#[test]
fn a_single_page_is_one_request() {
    let fake = Fake::default().page(&p1(), ALL.to_string());
    let (result, stats) = run(&fake, &request());
    let listing = result.expect("listing");
    assert_eq!(ids(&listing), [3164444, 3164459, 3164412]);
    assert_eq!(listing.total, 3);
    assert_eq!(stats.requests(), 1);
    assert_eq!(fake.calls(), [p1()]);
}

#[test]
fn pages_follow_the_last_link_concurrently_and_dedupe() {
    let last = pn(3);
    let fake = Fake::default()
        .page(&p1(), page(&[1, 2], Some(&pn(2)), Some(&last), 6))
        .page(&pn(2), page(&[3, 4], Some(&pn(3)), Some(&last), 6))
        .page(&pn(3), page(&[4, 5, 6], None, None, 6));
    let (result, stats) = run(&fake, &request());
    let listing = result.expect("listing");
    assert_eq!(ids(&listing), [1, 2, 3, 4, 5, 6]);
    assert_eq!(listing.total, 6);
    assert_eq!(stats.requests(), 3);
}

#[test]
fn without_a_last_link_the_total_gives_the_page_count() {
    let fake = Fake::default()
        .page(&p1(), page(&[1, 2], Some(&pn(2)), None, 5))
        .page(&pn(2), page(&[3, 4], Some(&pn(3)), None, 5))
        .page(&pn(3), page(&[5], None, None, 5));
    let (result, stats) = run(&fake, &request());
    assert_eq!(result.map(|l| ids(&l)), Ok(vec![1, 2, 3, 4, 5]));
    assert_eq!(stats.requests(), 3);
}

#[test]
fn the_page_param_is_substituted_in_the_next_link() {
    // The next link carries the filter; pages 2.. must keep it.
    let next = format!("{API}/v2/droplets?tag_name=web&page=2&per_page=1");
    let mut req = request();
    req.filter = ListFilter::Tags(vec!["web".into()]);
    req.per_page = 1;
    let first = format!("{API}/v2/droplets?per_page=1&page=1&tag_name=web");
    let fake = Fake::default()
        .page(&first, page(&[1], Some(&next), None, 3))
        .page(&next, page(&[2], None, None, 3))
        .page(
            &format!("{API}/v2/droplets?tag_name=web&page=3&per_page=1"),
            page(&[3], None, None, 3),
        );
    let (result, _) = run(&fake, &req);
    assert_eq!(result.map(|l| ids(&l)), Ok(vec![1, 2, 3]));
}

#[test]
fn a_last_page_that_links_further_is_walked() {
    // Page 1 counts two pages; page 2 still has a next link.
    let fake = Fake::default()
        .page(&p1(), page(&[1], Some(&pn(2)), Some(&pn(2)), 3))
        .page(&pn(2), page(&[2], Some(&pn(3)), Some(&pn(3)), 3))
        .page(&pn(3), page(&[3], None, None, 3));
    let (result, stats) = run(&fake, &request());
    assert_eq!(result.map(|l| ids(&l)), Ok(vec![1, 2, 3]));
    assert_eq!(stats.requests(), 3);
}

#[test]
fn without_any_page_count_next_links_are_walked() {
    // total 0 and an empty first page, yet a next link: no count is known.
    let fake = Fake::default()
        .page(&p1(), page(&[], Some(&pn(2)), None, 0))
        .page(&pn(2), page(&[7], None, None, 0));
    let (result, _) = run(&fake, &request());
    assert_eq!(result.map(|l| ids(&l)), Ok(vec![7]));
}

#[test]
fn a_revisited_page_is_a_loop() {
    let fake = Fake::default()
        .page(&p1(), page(&[1], Some(&pn(2)), None, 2))
        .page(&pn(2), page(&[2], Some(&pn(2)), None, 2));
    assert_eq!(run(&fake, &request()).0, Err(Error::PaginationLoop));

    let fake = Fake::default()
        .page(&p1(), page(&[1], Some(&pn(2)), None, 2))
        .page(&pn(2), page(&[2], Some(&p1()), None, 2));
    assert_eq!(run(&fake, &request()).0, Err(Error::PaginationLoop));
}

#[test]
fn too_many_pages_fail_before_fetching_them() {
    let last = pn(5_000);
    let fake = Fake::default().page(&p1(), page(&[1], Some(&pn(2)), Some(&last), 5_000));
    let (result, stats) = run(&fake, &request());
    assert_eq!(result, Err(Error::TooManyPages(1_000)));
    assert_eq!(stats.requests(), 1);

    let huge = format!("{API}/v2/droplets?page=18446744073709551615");
    let fake = Fake::default().page(&p1(), page(&[1], Some(&pn(2)), Some(&huge), 1));
    assert_eq!(run(&fake, &request()).0, Err(Error::TooManyPages(1_000)));
}

#[test]
fn endless_next_links_hit_the_page_cap() {
    let mut fake = Fake::default().page(&p1(), page(&[1], Some(&pn(2)), None, 0));
    for n in 2..=10 {
        fake = fake.page(&pn(n), page(&[n], Some(&pn(n + 1)), None, 0));
    }
    let mut req = request();
    req.max_pages = 5;
    let (result, stats) = run(&fake, &req);
    assert_eq!(result, Err(Error::TooManyPages(5)));
    assert_eq!(stats.requests(), 5);
}

#[test]
fn an_empty_first_page_with_a_total_is_inconsistent() {
    let fake = Fake::default().page(&p1(), page(&[], None, None, 4));
    assert!(matches!(run(&fake, &request()).0, Err(Error::Inconsistent(_))));
}

#[test]
fn foreign_links_are_refused_before_any_request() {
    for (next, last) in [
        ("https://evil.test/v2/droplets?page=2", None),
        ("http://api.example.test/v2/droplets?page=2", None),
        ("https://api.example.test:444/v2/droplets?page=2", None),
        ("/v2/droplets?page=2", None),
        (pn(2).as_str(), Some("https://evil.test/v2/droplets?page=3")),
    ] {
        let fake = Fake::default().page(&p1(), page(&[1], Some(next), last, 3));
        let (result, stats) = run(&fake, &request());
        assert_eq!(result, Err(Error::ForeignLink), "{next} {last:?}");
        assert_eq!(fake.calls(), [p1()]);
        assert_eq!(stats.requests(), 1);
    }
    // Default ports are the same origin.
    let explicit = "https://API.example.test:443/v2/droplets?page=2";
    let explicit_page_2 = with_query_param(&parse_url(explicit).expect("parses"), "page", "2");
    let fake = Fake::default()
        .page(&p1(), page(&[1], Some(explicit), None, 2))
        .page(&explicit_page_2, page(&[2], None, None, 2));
    assert_eq!(run(&fake, &request()).0.map(|l| ids(&l)), Ok(vec![1, 2]));
}

#[test]
fn any_failing_page_fails_the_listing() {
    let last = pn(4);
    let fake = Fake::default()
        .page(&p1(), page(&[1], Some(&pn(2)), Some(&last), 4))
        .page(&pn(2), page(&[2], None, None, 4))
        .on(&pn(3), || Ok(status(500)))
        .page(&pn(4), page(&[4], None, None, 4));
    assert_eq!(run(&fake, &request()).0, Err(Error::HttpStatus(500)));

    let fake = Fake::default()
        .page(&p1(), page(&[1], Some(&pn(2)), Some(&pn(2)), 2))
        .page(&pn(2), "{\"droplets\": [".to_string());
    assert!(matches!(run(&fake, &request()).0, Err(Error::InvalidJson(_))));
}

#[test]
fn the_earliest_failing_page_wins_whatever_fails_first() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    // Page 3 fails late, page 4 early: page 3's error is the listing's.
    let page_3_asked = Arc::new(AtomicBool::new(false));
    let asked = page_3_asked.clone();
    let fake = Fake::default()
        .page(&p1(), page(&[1], Some(&pn(2)), Some(&pn(4)), 4))
        .page(&pn(2), page(&[2], None, None, 4))
        .on(&pn(3), move || {
            asked.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            Ok(status(500))
        })
        .on(&pn(4), move || {
            let waiting = Instant::now();
            while !page_3_asked.load(Ordering::SeqCst) && waiting.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(status(404))
        });
    assert_eq!(run(&fake, &request()).0, Err(Error::HttpStatus(500)));
}

#[test]
fn statuses_map_to_reasons() {
    let rl = |remaining, reset, retry_after| RateLimit {
        limit: Some(250),
        remaining: Some(remaining),
        reset: Some(reset),
        retry_after,
    };
    let far = unix_now() + 1_000;
    let cases: Vec<(Exchange, Error)> = vec![
        (status(401), Error::Unauthorized),
        (status(403), Error::Forbidden(None)),
        (
            Exchange {
                body: Ok(br#"{"id":"forbidden","message":"You are missing the required scope: vpc:read"}"#.to_vec()),
                ..status(403)
            },
            Error::Forbidden(Some("vpc:read".into())),
        ),
        (
            Exchange {
                body: Ok(br#"{"id":"forbidden","message":"Denied for dop_v1_sekret0123456789"}"#.to_vec()),
                ..status(403)
            },
            Error::Forbidden(None),
        ),
        (status(500), Error::HttpStatus(500)),
        (status(404), Error::HttpStatus(404)),
        (status(302), Error::HttpStatus(302)),
        (status(429), Error::RateLimited(None)),
        (
            Exchange {
                rate_limit: Some(rl(0, far, Some(7))),
                ..status(429)
            },
            Error::RateLimited(Some(7)),
        ),
        (
            Exchange {
                rate_limit: Some(rl(5, far, None)),
                ..status(429)
            },
            Error::RateLimited(None),
        ),
    ];
    for (exchange, want) in cases {
        let cell = Mutex::new(Some(exchange));
        let fake = Fake::default()
            .on(&p1(), move || cell.lock().ok().and_then(|mut c| c.take()).ok_or(Error::Timeout));
        let (result, stats) = run(&fake, &request());
        assert_eq!(result, Err(want));
        assert_eq!(stats.requests(), 1);
    }
    let fake = Fake::default().on(&p1(), move || {
        Ok(Exchange { rate_limit: Some(rl(0, unix_now() + 60, None)), ..status(429) })
    });
    match run(&fake, &request()).0 {
        Err(Error::RateLimited(Some(s))) => assert!((58..=60).contains(&s), "{s}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn same_origin_redirects_are_followed_and_counted() {
    let moved = format!("{API}/v2/moved?page=1");
    let fake = Fake::default()
        .on(&p1(), || Ok(redirect("/v2/moved?page=1")))
        .page(&moved, ALL.to_string());
    let (result, stats) = run(&fake, &request());
    assert_eq!(result.map(|l| l.droplets.len()), Ok(3));
    assert_eq!(stats.requests(), 2);
    assert_eq!(fake.calls(), [p1(), moved]);
}

#[test]
fn foreign_redirects_are_not_followed() {
    for to in [
        "https://evil.test/v2/droplets",
        "http://api.example.test/v2/droplets",
        "//evil.test/x",
        "https://api.example.test:8443/x",
        "mailto:x@y",
    ] {
        let target = to.to_string();
        let fake = Fake::default().on(&p1(), move || Ok(redirect(&target)));
        let (result, stats) = run(&fake, &request());
        assert_eq!(result, Err(Error::ForeignRedirect), "{to}");
        assert_eq!(fake.calls(), [p1()]);
        assert_eq!(stats.requests(), 1);
    }
}

#[test]
fn redirects_stop_after_three_hops() {
    let hop = |n: u32| format!("{API}/hop{n}");
    let mut fake = Fake::default().on(&p1(), move || Ok(redirect(&format!("{API}/hop1"))));
    for n in 1..=4 {
        let to = hop(n + 1);
        fake = fake.on(&hop(n), move || Ok(redirect(&to)));
    }
    let (result, stats) = run(&fake, &request());
    assert_eq!(result, Err(Error::TooManyRedirects));
    assert_eq!(stats.requests(), 4);

    let fake = Fake::default()
        .on(&p1(), move || Ok(redirect(&format!("{API}/hop1"))))
        .on(&hop(1), move || Ok(redirect(&format!("{API}/hop2"))))
        .on(&hop(2), move || Ok(redirect(&format!("{API}/hop3"))))
        .page(&hop(3), ALL.to_string());
    assert_eq!(run(&fake, &request()).0.map(|l| l.total), Ok(3));
}

#[test]
fn the_deadline_bounds_the_whole_listing() {
    let mut req = request();
    req.deadline = Duration::ZERO;
    let fake = Fake::default().page(&p1(), ALL.to_string());
    assert_eq!(run(&fake, &req).0, Err(Error::Timeout));
    assert!(fake.calls().is_empty());

    struct Slow;
    impl Transport for Slow {
        fn get(&self, url: &str, timeout: Duration) -> Result<Exchange, Error> {
            assert!(timeout <= Duration::from_millis(150));
            std::thread::sleep(timeout);
            let next = format!("{API}/v2/droplets?page=2");
            Ok(ok(&page(&[url.len() as u64], Some(&next), None, 0)))
        }
    }
    let mut req = request();
    req.deadline = Duration::from_millis(150);
    let stats = Stats::default();
    let started = Instant::now();
    let result = list_with(&Slow, &req, &stats, started);
    assert_eq!(result, Err(Error::Timeout));
    assert!(started.elapsed() < Duration::from_millis(1_000));
}

#[test]
fn the_rate_limit_with_the_lowest_remaining_is_reported() {
    let with_rl = |body: String, remaining: u64| {
        move || {
            Ok(Exchange {
                rate_limit: Some(RateLimit {
                    limit: Some(5000),
                    remaining: Some(remaining),
                    reset: Some(100 + remaining),
                    retry_after: None,
                }),
                ..ok(&body)
            })
        }
    };
    let fake = Fake::default()
        .on(&p1(), with_rl(page(&[1], Some(&pn(2)), Some(&pn(3)), 3), 50))
        .on(&pn(2), with_rl(page(&[2], None, None, 3), 48))
        .on(&pn(3), with_rl(page(&[3], None, None, 3), 49));
    let (result, stats) = run(&fake, &request());
    assert!(result.is_ok());
    assert_eq!(stats.rate_limit().and_then(|r| r.remaining), Some(48));
    assert_eq!(stats.rate_limit().and_then(|r| r.reset), Some(148));
}

#[test]
fn body_errors_fail_but_count() {
    let fake = Fake::default()
        .on(&p1(), || Ok(Exchange { body: Err(Error::BodyTooLarge(10)), ..status(200) }));
    let (result, stats) = run(&fake, &request());
    assert_eq!(result, Err(Error::BodyTooLarge(10)));
    assert_eq!(stats.requests(), 1);
}

#[test]
fn the_request_debug_hides_the_token() {
    let shown = format!("{:?}", request());
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("REDACTED"));
}

#[test]
fn requests_are_validated() {
    assert!(matches!(ListRequest::new(API, ""), Err(Error::InvalidRequest(_))));
    assert!(matches!(
        ListRequest::new(API, "a b"),
        Err(Error::InvalidRequest(d)) if !d.contains("a b")
    ));
    assert!(matches!(ListRequest::new(API, "x\r\nEvil: 1"), Err(Error::InvalidRequest(_))));
    assert!(matches!(ListRequest::new("ftp://x", "t"), Err(Error::InvalidRequest(_))));
    assert_eq!(
        ListRequest::new("https://h/api/", "t").map(|r| r.api_url),
        Ok("https://h/api".into())
    );
    assert!(matches!(
        ListRequest::new("http://api.digitalocean.com", "t"),
        Err(Error::InvalidRequest(d)) if d.contains("loopback")
    ));
}

// ---- Caps on the listing's size --------------------------------------------

#[test]
fn a_page_with_more_droplets_than_per_page_fails_the_listing() {
    let mut req = request();
    req.per_page = 2;
    let first = format!("{API}/v2/droplets?per_page=2&page=1");
    let fake = Fake::default().page(&first, page(&[1, 2, 3], None, None, 3));
    assert_eq!(
        run(&fake, &req).0,
        Err(Error::Inconsistent(
            "a page lists more droplets than the 2 asked for (per_page)".into()
        ))
    );
    let fake = Fake::default().page(&first, page(&[1, 2], None, None, 2));
    assert_eq!(run(&fake, &req).0.map(|l| ids(&l)), Ok(vec![1, 2]));
}

#[test]
fn a_total_over_max_droplets_fails_after_page_1() {
    let mut req = request();
    req.max_droplets = 3;
    let fake = Fake::default()
        .page(&p1(), page(&[1, 2], Some(&pn(2)), Some(&pn(2)), 4))
        .page(&pn(2), page(&[3, 4], None, None, 4));
    let (result, stats) = run(&fake, &req);
    assert_eq!(result, Err(Error::TooManyDroplets(3)));
    assert_eq!(stats.requests(), 1);

    // Exactly at the cap is fine.
    req.max_droplets = 4;
    assert_eq!(run(&fake, &req).0.map(|l| l.droplets.len()), Ok(4));
}

#[test]
fn a_page_count_implying_more_than_max_droplets_fails_after_page_1() {
    // meta.total claims 5, but 4 pages as full as page 1 hold at least 7.
    let mut req = request();
    req.max_droplets = 5;
    let fake = Fake::default().page(&p1(), page(&[1, 2], Some(&pn(2)), Some(&pn(4)), 5));
    let (result, stats) = run(&fake, &req);
    assert_eq!(result, Err(Error::TooManyDroplets(5)));
    assert_eq!(stats.requests(), 1);
}

#[test]
fn droplets_are_counted_as_pages_arrive() {
    // Each page is within per_page and the total within the cap, but the
    // pages hold more than the total says.
    let mut req = request();
    req.max_droplets = 5;
    req.page_concurrency = 1;
    let fake = Fake::default()
        .page(&p1(), page(&[1, 2], Some(&pn(2)), Some(&pn(3)), 5))
        .page(&pn(2), page(&[3, 4], Some(&pn(3)), Some(&pn(3)), 5))
        .page(&pn(3), page(&[5, 6], None, None, 5));
    assert_eq!(run(&fake, &req).0, Err(Error::TooManyDroplets(5)));

    // Walking next links without any page count, too.
    let mut fake = Fake::default().page(&p1(), page(&[], Some(&pn(2)), None, 0));
    for n in 2..=10 {
        fake = fake.page(&pn(n), page(&[n], Some(&pn(n + 1)), None, 0));
    }
    req.max_droplets = 3;
    let (result, stats) = run(&fake, &req);
    assert_eq!(result, Err(Error::TooManyDroplets(3)));
    assert_eq!(stats.requests(), 5);
}

#[test]
fn fewest_droplets_follows_offset_pagination() {
    assert_eq!(fewest_droplets(0, 200), 200);
    assert_eq!(fewest_droplets(1, 200), 200);
    assert_eq!(fewest_droplets(2, 200), 201);
    assert_eq!(fewest_droplets(3, 2), 5);
    assert_eq!(fewest_droplets(u64::MAX, u64::MAX), u64::MAX);
}

// ---- meta.total consistency --------------------------------------------------

/// A route answering `bodies` in turn, then the last one forever.
fn in_turn(bodies: Vec<String>) -> impl Fn() -> Result<Exchange, Error> + Send + Sync {
    let next = Mutex::new(0usize);
    move || {
        let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
        let body = bodies.get(*n).or(bodies.last()).cloned().unwrap_or_default();
        *n += 1;
        Ok(ok(&body))
    }
}

#[test]
fn a_total_changing_mid_listing_restarts_the_listing_once() {
    // Droplet 2 was deleted after page 1 was read: page 2 (now holding
    // droplet 4 only, droplet 3 having moved to page 1) says total 3.
    let fake = Fake::default()
        .on(
            &p1(),
            in_turn(vec![
                page(&[1, 2], Some(&pn(2)), Some(&pn(2)), 4),
                page(&[1, 3], Some(&pn(2)), Some(&pn(2)), 3),
            ]),
        )
        .page(&pn(2), page(&[4], None, None, 3));
    let (result, stats) = run(&fake, &request());
    assert_eq!(result.map(|l| (ids(&l), l.total)), Ok((vec![1, 3, 4], 3)));
    assert_eq!(stats.requests(), 4);
    assert_eq!(fake.calls(), [p1(), pn(2), p1(), pn(2)]);
}

#[test]
fn a_listing_started_over_counts_only_what_its_last_attempt_keeps() {
    let attempt = [page(&[1, 3], Some(&pn(2)), Some(&pn(2)), 3), page(&[4], None, None, 3)];
    let tally = crate::bounds::Tally::default();
    for body in &attempt {
        assert!(crate::model::parse_page(body.as_bytes(), 200, &tally).is_ok());
    }
    let fake = Fake::default()
        .on(&p1(), in_turn(vec![page(&[1, 2], Some(&pn(2)), Some(&pn(2)), 4), attempt[0].clone()]))
        .page(&pn(2), attempt[1].clone());
    // Room for the last attempt's droplets and not much more: the first
    // attempt's, dropped when it started over, no longer count.
    let mut req = request();
    req.limits.max_listing_bytes = tally.kept() + 8;
    assert_eq!(run(&fake, &req).0.map(|l| ids(&l)), Ok(vec![1, 3, 4]));
    req.limits.max_listing_bytes = tally.kept() - 1;
    let fake = Fake::default().page(&p1(), attempt[0].clone()).page(&pn(2), attempt[1].clone());
    assert_eq!(
        run(&fake, &req).0,
        Err(Error::ListingTooLarge(crate::bounds::Bound::MaxListingBytes, tally.kept() - 1))
    );
}

#[test]
fn a_total_changing_twice_is_inconsistent() {
    let fake = Fake::default()
        .on(
            &p1(),
            in_turn(vec![
                page(&[1, 2], Some(&pn(2)), Some(&pn(2)), 4),
                page(&[1, 3], Some(&pn(2)), Some(&pn(2)), 3),
            ]),
        )
        .on(&pn(2), in_turn(vec![page(&[4], None, None, 3), page(&[4], None, None, 2)]));
    let (result, stats) = run(&fake, &request());
    assert_eq!(
        result,
        Err(Error::Inconsistent(
            "meta.total changed from 3 to 2 during the listing, 2 times in a row".into()
        ))
    );
    assert_eq!(stats.requests(), 4);
}

#[test]
fn a_total_changing_on_a_walked_page_counts_too() {
    let fake = Fake::default()
        .page(&p1(), page(&[], Some(&pn(2)), None, 0))
        .page(&pn(2), page(&[7], None, None, 1));
    let (result, stats) = run(&fake, &request());
    assert!(matches!(result, Err(Error::Inconsistent(_))), "{result:?}");
    assert_eq!(stats.requests(), 4);
}

// ---- Deadlines and errors leaving the client ----------------------------------

#[test]
fn a_deadline_too_far_to_represent_means_none() {
    let mut req = request();
    req.deadline = Duration::MAX;
    let fake = Fake::default().page(&p1(), ALL.to_string());
    assert_eq!(run(&fake, &req).0.map(|l| l.total), Ok(3));
    assert_eq!(deadline_after(Instant::now(), Duration::MAX), None);
    let now = Instant::now();
    assert_eq!(deadline_after(now, Duration::from_secs(1)), Some(now + Duration::from_secs(1)));
}

#[test]
fn no_piece_of_the_token_comes_back_in_a_listed_value() {
    use crate::redact::tests::{assert_no_piece, TOKEN};
    let piece = |start: usize| &TOKEN[start..start + 12];
    let droplet = format!(
        r#"{{"id":1,"name":"{TOKEN}","status":"{}","tags":["{}","web","x{}x"],
            "region":{{"slug":"{}"}},"vpc_uuid":"{}",
            "networks":{{"v4":[{{"ip_address":"{}","type":"{}"}}],"v6":[]}}}}"#,
        piece(1),
        piece(7),
        piece(30),
        piece(20),
        &TOKEN[10..60],
        piece(40),
        piece(59)
    );
    let mut req = ListRequest::new(API, TOKEN).expect("valid");
    req.filter = ListFilter::Name("a".into());
    let body = format!(r#"{{"droplets":[{droplet}],"meta":{{"total":1}}}}"#);
    let fake = Fake::default().page(&format!("{}&name=a", p1()), body);
    let listing = run(&fake, &req).0.expect("listing");
    assert_no_piece(TOKEN, &format!("{listing:?}"));
    let d = &listing.droplets[0];
    assert_eq!(d.name, "[REDACTED]");
    assert_eq!(d.tags(), ["[REDACTED]", "web", "x[REDACTED]x"]);
    assert_eq!(d.status, crate::model::Status::Other("[REDACTED]".into()));
}

#[test]
fn errors_are_sanitized_as_they_leave_list_with() {
    // The token straddles the 240-byte cut.
    let detail = format!("{}{TOKEN}{}", "x".repeat(230), "y".repeat(50));
    let fake = Fake::default().on(&p1(), move || Err(Error::Transport(detail.clone())));
    match run(&fake, &request()).0 {
        Err(Error::Transport(d)) => {
            assert!(d.len() <= crate::error::MAX_DETAIL_BYTES, "{}", d.len());
            assert!(!d.contains(&TOKEN[..8]), "{d}");
        }
        other => panic!("{other:?}"),
    }
}

// ---- Several listings: tags, GPU droplets -----------------------------------

fn tagged(id: u64, tags: Option<&[&str]>) -> String {
    let tags = match tags {
        Some(t) => format!(
            r#","tags":[{}]"#,
            t.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(",")
        ),
        None => String::new(),
    };
    format!(
        r#"{{"id":{id},"name":"node-{id}","status":"active"{tags},
            "networks":{{"v4":[{{"ip_address":"10.0.0.{id}","type":"private"}}],"v6":[]}}}}"#
    )
}

fn single_page(droplets: &[String]) -> String {
    format!(
        r#"{{"droplets":[{}],"links":{{}},"meta":{{"total":{}}}}}"#,
        droplets.join(","),
        droplets.len()
    )
}

fn tag_p1(tag: &str) -> String {
    format!("{API}/v2/droplets?per_page=200&page=1&tag_name={tag}")
}

fn gpu_p1() -> String {
    format!("{API}/v2/droplets?per_page=200&page=1&type=gpus")
}

fn with_filter(filter: ListFilter, gpus: Gpus) -> ListRequest {
    let mut req = request();
    req.filter = filter;
    req.gpus = gpus;
    req
}

fn tag_list(tags: &[&str]) -> ListFilter {
    ListFilter::Tags(tags.iter().map(|t| t.to_string()).collect())
}

#[test]
fn several_tags_are_one_listing_each_merged_by_id() {
    let fake = Fake::default()
        .page(
            &tag_p1("web"),
            single_page(&[tagged(1, Some(&["web"])), tagged(2, Some(&["web", "db"]))]),
        )
        .page(
            &tag_p1("db"),
            single_page(&[tagged(2, Some(&["web", "db"])), tagged(3, Some(&["db"]))]),
        );
    let (result, stats) = run(&fake, &with_filter(tag_list(&["web", "db"]), Gpus::Exclude));
    let listing = result.expect("listing");
    assert_eq!(ids(&listing), [1, 2, 3]);
    assert_eq!(listing.total, 4, "the sum of both listings' meta.total");
    assert_eq!(stats.requests(), 2);
    assert_eq!(fake.calls(), [tag_p1("web"), tag_p1("db")]);
}

#[test]
fn gpu_droplets_are_one_more_listing_their_tags_checked_here() {
    let fake =
        Fake::default().page(&tag_p1("web"), single_page(&[tagged(1, Some(&["web"]))])).page(
            &gpu_p1(),
            single_page(&[
                tagged(10, Some(&["web"])),
                tagged(11, Some(&["db"])),
                tagged(12, Some(&[])),
            ]),
        );
    let (result, stats) = run(&fake, &with_filter(tag_list(&["web"]), Gpus::Include));
    assert_eq!(result.map(|l| ids(&l)), Ok(vec![1, 10]));
    assert_eq!(stats.requests(), 2);
    // The GPU listing never sends tag_name, which the API refuses with type.
    assert_eq!(fake.calls(), [tag_p1("web"), gpu_p1()]);
}

#[test]
fn gpus_only_lists_only_gpu_droplets() {
    let fake = Fake::default().page(&gpu_p1(), single_page(&[tagged(10, Some(&["web"]))]));
    let (result, stats) = run(&fake, &with_filter(ListFilter::All, Gpus::Only));
    assert_eq!(result.map(|l| ids(&l)), Ok(vec![10]));
    assert_eq!(stats.requests(), 1);
    assert_eq!(fake.calls(), [gpu_p1()]);

    let by_name = format!("{API}/v2/droplets?per_page=200&page=1&name=g&type=gpus");
    let fake = Fake::default().page(&by_name, single_page(&[tagged(10, None)]));
    let (result, _) = run(&fake, &with_filter(ListFilter::Name("g".into()), Gpus::Only));
    assert_eq!(result.map(|l| ids(&l)), Ok(vec![10]));
}

#[test]
fn one_failing_listing_fails_them_all_and_every_request_counts() {
    // The second listing fails: nothing of the first is returned.
    let fake = Fake::default()
        .page(&tag_p1("web"), single_page(&[tagged(1, Some(&["web"]))]))
        .on(&tag_p1("db"), || Ok(status(500)));
    let (result, stats) = run(&fake, &with_filter(tag_list(&["web", "db"]), Gpus::Include));
    assert_eq!(result, Err(Error::HttpStatus(500)));
    assert_eq!(stats.requests(), 2);
    // The GPU listing, after the failed one, is never made.
    assert_eq!(fake.calls(), [tag_p1("web"), tag_p1("db")]);

    let fake = Fake::default()
        .page(&p1(), single_page(&[tagged(1, None)]))
        .on(&gpu_p1(), || Ok(status(503)));
    let (result, stats) = run(&fake, &with_filter(ListFilter::All, Gpus::Include));
    assert_eq!(result, Err(Error::HttpStatus(503)));
    assert_eq!(stats.requests(), 2);
}

#[test]
fn one_deadline_covers_every_listing() {
    // The first listing outlasts the deadline: the second is never asked.
    let fake = Fake::default()
        .on(&tag_p1("web"), || {
            std::thread::sleep(Duration::from_millis(100));
            Ok(ok(&single_page(&[tagged(1, Some(&["web"]))])))
        })
        .page(&tag_p1("db"), single_page(&[tagged(2, Some(&["db"]))]));
    let mut req = with_filter(tag_list(&["web", "db"]), Gpus::Exclude);
    req.deadline = Duration::from_millis(50);
    let (result, stats) = run(&fake, &req);
    assert_eq!(result, Err(Error::Timeout));
    assert_eq!(stats.requests(), 1);
    assert_eq!(fake.calls(), [tag_p1("web")]);
}

#[test]
fn gpu_droplets_listed_without_tags_cannot_be_checked() {
    let fake = Fake::default()
        .page(&gpu_p1(), single_page(&[tagged(10, Some(&["web"])), tagged(11, None)]));
    let (result, _) = run(&fake, &with_filter(tag_list(&["web"]), Gpus::Only));
    assert_eq!(result, Err(Error::TagsUnknown));
    // Without tags to check, a listing without tags is fine.
    let (result, _) = run(&fake, &with_filter(ListFilter::All, Gpus::Only));
    assert_eq!(result.map(|l| ids(&l)), Ok(vec![10, 11]));
}

#[test]
fn the_merged_listing_is_held_to_max_droplets() {
    let fake = Fake::default()
        .page(&tag_p1("a"), single_page(&[tagged(1, Some(&["a"])), tagged(2, Some(&["a"]))]))
        .page(&tag_p1("b"), single_page(&[tagged(2, Some(&["a", "b"])), tagged(3, Some(&["b"]))]));
    let mut req = with_filter(tag_list(&["a", "b"]), Gpus::Exclude);
    req.max_droplets = 3;
    assert_eq!(run(&fake, &req).0.map(|l| ids(&l)), Ok(vec![1, 2, 3]));
    req.max_droplets = 2;
    assert_eq!(run(&fake, &req).0, Err(Error::TooManyDroplets(2)));
}

// ---- Against a real socket -------------------------------------------------

fn local_request(server: &Server) -> ListRequest {
    let mut req = ListRequest::new(&server.url(), TOKEN).expect("valid");
    req.connect_timeout = Duration::from_secs(2);
    req.request_timeout = Duration::from_secs(5);
    req.deadline = Duration::from_secs(10);
    req
}

#[test]
fn http_three_pages_with_headers() {
    let server = Server::start(move |r| {
        let base = r.header("host").map(|h| format!("http://{h}")).unwrap_or_default();
        let link = |n: u64| format!("{base}/v2/droplets?page={n}&per_page=2");
        let page_no = crate::links::page_number(&format!("http://x{}", r.target)).unwrap_or(0);
        let body = match page_no {
            1 => page(&[1, 2], Some(&link(2)), Some(&link(3)), 5),
            2 => page(&[3, 4], Some(&link(3)), Some(&link(3)), 5),
            3 => page(&[5], None, None, 5),
            _ => return Reply::status(404),
        };
        Reply::json(body)
            .header("RateLimit-Limit", "5000")
            .header("RateLimit-Remaining", &(5000 - page_no).to_string())
            .header("RateLimit-Reset", "1700000000")
    });
    let mut req = local_request(&server);
    req.per_page = 2;
    req.filter = ListFilter::Name("node one".into());
    let stats = Stats::default();
    let listing = list_droplets(&req, &stats).expect("listing");
    assert_eq!(ids(&listing), [1, 2, 3, 4, 5]);
    assert_eq!(listing.total, 5);
    assert_eq!(stats.requests(), 3);
    assert_eq!(stats.rate_limit().and_then(|r| r.remaining), Some(4997));
    let recorded = server.recorded();
    assert_eq!(recorded.len(), 3);
    let first = &recorded[0];
    assert_eq!(first.target, "/v2/droplets?per_page=2&page=1&name=node%20one");
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(first.header("authorization"), Some(bearer.as_str()));
    assert_eq!(first.header("accept"), Some("application/json"));
    let ua = format!("libcluster_droplet/{}", crate::VERSION);
    assert_eq!(first.header("user-agent"), Some(ua.as_str()));
    assert!(recorded.iter().all(|r| r.header("authorization") == Some(bearer.as_str())));
}

#[test]
fn http_403_names_the_scope_its_small_body_names() {
    let forbidden = |body: Vec<u8>| {
        move |_: &testserver::Recorded| {
            let mut r = Reply::status(403);
            r.body = Body::Full(body.clone());
            r
        }
    };
    let named =
        br#"{"id":"forbidden","message":"You are missing the required scope: vpc:read"}"#.to_vec();
    let server = Server::start(forbidden(named.clone()));
    let stats = Stats::default();
    assert_eq!(
        list_droplets(&local_request(&server), &stats),
        Err(Error::Forbidden(Some("vpc:read".into())))
    );
    assert_eq!(stats.requests(), 1);

    // Over the cap, the body is not read: a plain 403.
    let mut padded = named[..named.len() - 1].to_vec();
    padded.extend_from_slice(br#","padding":""#);
    padded.resize(MAX_FORBIDDEN_BODY as usize + 10, b'x');
    padded.extend_from_slice(br#""}"#);
    let server = Server::start(forbidden(padded));
    assert_eq!(
        list_droplets(&local_request(&server), &Stats::default()),
        Err(Error::Forbidden(None))
    );
}

#[test]
fn http_401_and_429() {
    let server = Server::start(|_| Reply::status(401));
    let stats = Stats::default();
    assert_eq!(list_droplets(&local_request(&server), &stats), Err(Error::Unauthorized));
    assert_eq!(stats.requests(), 1);

    let server = Server::start(|_| {
        Reply::status(429).header("Retry-After", "17").header("ratelimit-remaining", "0")
    });
    assert_eq!(
        list_droplets(&local_request(&server), &Stats::default()),
        Err(Error::RateLimited(Some(17)))
    );
}

#[test]
fn http_foreign_next_link_never_receives_the_token() {
    let foreign = Server::start(|_| Reply::json(page(&[9], None, None, 1)));
    let next = format!("{}/v2/droplets?page=2", foreign.url());
    let api = Server::start(move |_| Reply::json(page(&[1], Some(&next), None, 2)));
    let result = list_droplets(&local_request(&api), &Stats::default());
    assert_eq!(result, Err(Error::ForeignLink));
    assert_eq!(foreign.connection_count(), 0);
    assert!(foreign.recorded().is_empty());
}

#[test]
fn http_redirect_to_a_foreign_origin_is_not_followed() {
    let foreign = Server::start(|_| Reply::json(page(&[9], None, None, 1)));
    let to = format!("{}/v2/droplets", foreign.url());
    let api = Server::start(move |_| {
        let mut r = Reply::status(301).header("Location", &to);
        r.body = Body::Full(Vec::new());
        r
    });
    let stats = Stats::default();
    let result = list_droplets(&local_request(&api), &stats);
    assert_eq!(result, Err(Error::ForeignRedirect));
    assert_eq!(stats.requests(), 1);
    assert_eq!(foreign.connection_count(), 0);
}

#[test]
fn http_same_origin_redirect_is_followed_with_the_token() {
    let api = Server::start(|r| {
        if r.target.starts_with("/v2/droplets") {
            Reply::status(307).header("Location", "/elsewhere")
        } else {
            Reply::json(ALL)
        }
    });
    let stats = Stats::default();
    let result = list_droplets(&local_request(&api), &stats);
    assert_eq!(result.map(|l| l.droplets.len()), Ok(3));
    assert_eq!(stats.requests(), 2);
    let recorded = api.recorded();
    assert_eq!(recorded[1].target, "/elsewhere");
    assert!(recorded[1].header("authorization").is_some());
}

#[test]
fn http_body_cap() {
    let big = page(&(1..=200).collect::<Vec<_>>(), None, None, 200);
    let size = big.len() as u64;
    let declared = Server::start({
        let big = big.clone();
        move |_| Reply::json(big.clone())
    });
    let mut req = local_request(&declared);
    req.max_body_bytes = size - 1;
    assert_eq!(list_droplets(&req, &Stats::default()), Err(Error::BodyTooLarge(size - 1)));
    req.max_body_bytes = size;
    assert_eq!(list_droplets(&req, &Stats::default()).map(|l| l.droplets.len()), Ok(200));

    let undeclared = Server::start(move |_| {
        let mut r = Reply::json(Vec::new());
        r.body = Body::UntilClose(big.clone().into_bytes());
        r
    });
    let mut req = local_request(&undeclared);
    req.max_body_bytes = 1_000;
    assert_eq!(list_droplets(&req, &Stats::default()), Err(Error::BodyTooLarge(1_000)));
}

#[test]
fn http_truncated_body_is_invalid_json() {
    let server = Server::start(|_| {
        let mut r = Reply::json(Vec::new());
        r.body = Body::Truncated { full: ALL.as_bytes().to_vec(), sent: 500 };
        r
    });
    let stats = Stats::default();
    let result = list_droplets(&local_request(&server), &stats);
    assert!(matches!(result, Err(Error::InvalidJson(_))), "{result:?}");
    assert_eq!(stats.requests(), 1);

    let server = Server::start(|_| {
        let mut r = Reply::json(Vec::new());
        r.body = Body::UntilClose(ALL.as_bytes()[..500].to_vec());
        r
    });
    let result = list_droplets(&local_request(&server), &Stats::default());
    assert!(matches!(result, Err(Error::InvalidJson(_))), "{result:?}");
}

#[test]
fn http_timeouts() {
    let (_listener, port, _held) = testserver::silent();
    let mut req = ListRequest::new(&format!("http://127.0.0.1:{port}"), TOKEN).expect("valid");
    req.request_timeout = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(list_droplets(&req, &Stats::default()), Err(Error::Timeout));
    assert!(started.elapsed() < Duration::from_secs(3));

    // The deadline cuts a request short of its own timeout.
    req.request_timeout = Duration::from_secs(30);
    req.deadline = Duration::from_millis(300);
    let started = Instant::now();
    assert_eq!(list_droplets(&req, &Stats::default()), Err(Error::Timeout));
    assert!(started.elapsed() < Duration::from_secs(3));

    let slow = Server::start(|_| {
        let mut r = Reply::json(ALL);
        r.delay = Duration::from_millis(1_500);
        r
    });
    let mut req = local_request(&slow);
    req.request_timeout = Duration::from_millis(200);
    assert_eq!(list_droplets(&req, &Stats::default()), Err(Error::Timeout));
}

#[test]
fn http_connection_refused_is_transport() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let req = ListRequest::new(&format!("http://127.0.0.1:{port}"), TOKEN).expect("valid");
    let result = list_droplets(&req, &Stats::default());
    assert!(matches!(result, Err(Error::Transport(_))), "{result:?}");
}

#[test]
fn http_garbage_response_is_transport() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.0\r\n\r\n");
        }
    });
    let req = ListRequest::new(&format!("http://127.0.0.1:{port}"), TOKEN).expect("valid");
    let result = list_droplets(&req, &Stats::default());
    assert!(matches!(result, Err(Error::Transport(_))), "{result:?}");
}

/// No piece of `secret` of 8 characters or more appears in `shown`.
fn assert_no_piece_of(secret: &str, shown: &str) {
    for start in 0..=secret.len().saturating_sub(8) {
        let piece = &secret[start..start + 8];
        assert!(!shown.contains(piece), "{piece:?} of the token in {shown}");
    }
}

#[test]
fn http_a_body_reflecting_the_token_never_brings_it_back() {
    let token = "dop_v1_5e1f0c2b7a9d48e3b6c4a1f2e3d4c5b6a7980f1e2d3c4b5a69788796a5b4c3d2";
    let bodies = |bearer: &str| {
        let half = bearer.len() / 2;
        let (head, tail) = (&bearer[..half], &bearer[half..]);
        vec![
            // A wrong type, at offsets where a 240-byte cut of serde's
            // message would split the token.
            format!(
                r#"{{"droplets":[{{"id":"{}{bearer}"}}],"meta":{{"total":1}}}}"#,
                "p".repeat(200)
            ),
            format!(
                r#"{{"droplets":[{{"id":"{}{bearer}"}}],"meta":{{"total":1}}}}"#,
                "p".repeat(190)
            ),
            format!(r#"{{"droplets":[],"meta":{{"total":"{bearer}"}}}}"#),
            // Halves, which no redaction of the whole token would catch.
            format!(r#"{{"droplets":[],"meta":{{"total":"{head}"}},"x":"{tail}"}}"#),
            format!(
                r#"{{"droplets":[{{"id":1,"name":"a","status":{{"{tail}":1}}}}],"meta":{{"total":1}}}}"#
            ),
            // Malformed JSON around it.
            format!(r#"{{"droplets":[{bearer}]}}"#),
            format!(r#"{{"droplets":[],"meta":{{"total":0}}}}{bearer}"#),
        ]
    };
    let count = bodies("").len();
    for n in 0..count {
        let server = Server::start(move |r| {
            let bearer = r.header("authorization").unwrap_or("").to_string();
            Reply::json(bodies(&bearer).swap_remove(n))
        });
        let mut req = ListRequest::new(&server.url(), token).expect("valid");
        req.request_timeout = Duration::from_secs(5);
        let e = list_droplets(&req, &Stats::default()).expect_err("body refused");
        assert_no_piece_of(token, &format!("{e:?}"));
    }
}

#[test]
fn http_a_host_name_is_resolved_on_the_process_pool() {
    let server = Server::start(|_| Reply::json(ALL));
    let mut req =
        ListRequest::new(&format!("http://localhost:{}", server.port), TOKEN).expect("valid");
    req.request_timeout = Duration::from_secs(5);
    let listing = list_droplets(&req, &Stats::default()).expect("listing");
    assert_eq!(ids(&listing), [3164444, 3164459, 3164412]);
    let pool = crate::resolve::tests::threads_named("libcluster_dns");
    assert_eq!(pool, crate::resolve::DNS_THREADS);
}

#[test]
fn http_two_listings_within_the_idle_age_share_one_connection() {
    let server = Server::start(|_| Reply::json(ALL));
    let mut req = local_request(&server);
    req.keep_alive = Duration::from_secs(60);
    assert!(list_droplets(&req, &Stats::default()).is_ok());
    std::thread::sleep(Duration::from_millis(200));
    assert!(list_droplets(&req, &Stats::default()).is_ok());
    assert_eq!(server.connection_count(), 1);
    assert_eq!(server.recorded().len(), 2);
}

#[test]
fn http_a_gap_longer_than_the_idle_age_makes_a_new_connection() {
    let server = Server::start(|_| Reply::json(ALL));
    let mut req = local_request(&server);
    req.keep_alive = Duration::from_millis(50);
    assert!(list_droplets(&req, &Stats::default()).is_ok());
    std::thread::sleep(Duration::from_millis(300));
    assert!(list_droplets(&req, &Stats::default()).is_ok());
    assert_eq!(server.connection_count(), 2);
}

#[test]
fn http_a_kept_connection_the_server_closed_while_idle_is_not_used() {
    // ureq checks an idle connection before reusing it: a close that has
    // arrived costs a new connection, not a failed request.
    let server = Server::start(|_| {
        let mut r = Reply::json(Vec::new());
        r.body = Body::FullThenClose(ALL.as_bytes().to_vec());
        r
    });
    let req = local_request(&server);
    assert!(list_droplets(&req, &Stats::default()).is_ok());
    std::thread::sleep(Duration::from_millis(200));
    assert!(list_droplets(&req, &Stats::default()).is_ok());
    let connections: Vec<(usize, usize)> =
        server.recorded().iter().map(|r| (r.connection, r.earlier_on_connection)).collect();
    assert_eq!(connections, [(1, 0), (2, 0)]);
}

#[test]
fn http_a_kept_connection_the_server_closes_under_a_request_is_retried_once() {
    // The server answers the first request of a connection and hangs up on
    // any later one, as when its idle timeout races our next poll.
    let server = Server::start(|r| {
        if r.earlier_on_connection == 0 {
            Reply::json(ALL)
        } else {
            let mut hangup = Reply::status(200);
            hangup.body = Body::Hangup;
            hangup
        }
    });
    let req = local_request(&server);
    assert!(list_droplets(&req, &Stats::default()).is_ok());
    let stats = Stats::default();
    assert_eq!(list_droplets(&req, &stats).map(|l| l.droplets.len()), Ok(3));
    assert_eq!(stats.requests(), 1);
    let connections: Vec<(usize, usize)> =
        server.recorded().iter().map(|r| (r.connection, r.earlier_on_connection)).collect();
    assert_eq!(connections, [(1, 0), (1, 1), (2, 0)]);

    // Only once: a server hanging up on every request fails the listing.
    let server = Server::start(|_| {
        let mut hangup = Reply::status(200);
        hangup.body = Body::Hangup;
        hangup
    });
    assert_eq!(
        list_droplets(&local_request(&server), &Stats::default()),
        Err(Error::Transport("the server closed the connection".into()))
    );
    assert_eq!(server.recorded().len(), 2);
}

// ---- TLS -------------------------------------------------------------------

#[test]
fn tls_with_an_unknown_issuer_is_a_tls_error() {
    let server = Server::start_tls(|_| Reply::json(ALL));
    let mut req = ListRequest::new(&server.https_url(), TOKEN).expect("valid");
    req.request_timeout = Duration::from_secs(5);
    let result = list_droplets(&req, &Stats::default());
    match result {
        Err(Error::Tls(detail)) => assert!(!detail.contains(TOKEN)),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert!(server.recorded().is_empty());
}

#[test]
fn tls_with_the_extra_ca_succeeds() {
    let server = Server::start_tls(|_| Reply::json(ALL));
    let ca = TempFile::new("ca.pem", crate::ca::tests::TEST_CA.as_bytes());
    let mut req = ListRequest::new(&server.https_url(), TOKEN).expect("valid");
    req.ca_file = Some(ca.path().into());
    let stats = Stats::default();
    let listing = list_droplets(&req, &stats).expect("listing over TLS");
    assert_eq!(ids(&listing), [3164444, 3164459, 3164412]);
    // Twice: the cached agent is reused.
    assert!(list_droplets(&req, &stats).is_ok());
    assert_eq!(stats.requests(), 2);
}

#[test]
fn a_ca_file_rotated_in_place_is_read_again() {
    let server = Server::start_tls(|_| Reply::json(ALL));
    // First the server's own certificate, which is no CA of it: refused.
    let leaf = include_bytes!("../../testdata/server.pem");
    let ca = TempFile::new("rotated_ca.pem", leaf);
    let mut req = ListRequest::new(&server.https_url(), TOKEN).expect("valid");
    req.ca_file = Some(ca.path().into());
    assert!(matches!(list_droplets(&req, &Stats::default()), Err(Error::Tls(_))));
    // The right CA written over it, at the same path: trusted from the
    // next listing on, without a restart.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(ca.path(), crate::ca::tests::TEST_CA).expect("rotate");
    let listing = list_droplets(&req, &Stats::default()).expect("listing over TLS");
    assert_eq!(ids(&listing), [3164444, 3164459, 3164412]);
}

#[test]
fn bad_ca_files_are_ca_file_errors() {
    let mut req = request();
    let garbage = TempFile::new("garbage.pem", b"not a certificate");
    req.ca_file = Some(garbage.path().into());
    assert!(matches!(list_droplets(&req, &Stats::default()), Err(Error::CaFile(_))));
    req.ca_file = Some("/nonexistent/ca.pem".into());
    assert!(matches!(list_droplets(&req, &Stats::default()), Err(Error::CaFile(_))));
}

#[test]
fn a_fifo_as_ca_file_fails_at_once_within_the_deadline() {
    let fifo = TempFile::fifo("ca.fifo");
    let mut req = request();
    req.ca_file = Some(fifo.path().into());
    req.deadline = Duration::from_millis(500);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(list_droplets(&req, &Stats::default()));
    });
    // No writer ever opens the FIFO: a blocking open never returns, so
    // the generous wait only turns that hang into a failure.
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Err(Error::CaFile(d))) => assert!(d.ends_with("not a regular file"), "{d}"),
        Ok(other) => panic!("{other:?}"),
        Err(_) => panic!("a FIFO as the CA file blocked the listing"),
    }
}

#[test]
fn the_ca_file_is_read_within_the_deadline() {
    let mut req = request();
    // Not cached: no agent was built for this file.
    let ca = TempFile::new("deadline_ca.pem", crate::ca::tests::TEST_CA.as_bytes());
    req.ca_file = Some(ca.path().into());
    req.deadline = Duration::ZERO;
    assert_eq!(list_droplets(&req, &Stats::default()), Err(Error::Timeout));
    // A missing file would be a CaFile error: the deadline comes first.
    req.ca_file = Some("/nonexistent/deadline-ca.pem".into());
    assert_eq!(list_droplets(&req, &Stats::default()), Err(Error::Timeout));
}

// ---- Pass-through fields ------------------------------------------------------

#[test]
fn requested_fields_come_through_each_droplet_named_by_their_path() {
    use serde_json::json;
    let sized = |id: u64, slug: &str| {
        droplet(id).replacen('{', &format!(r#"{{"size_slug":"{slug}","size":{{"vcpus":{id}}},"#), 1)
    };
    let fake = Fake::default()
        .page(&p1(), page(&[1], Some(&pn(2)), Some(&pn(2)), 2))
        .page(&pn(2), single_page(&[sized(2, "s-2vcpu")]).replace(r#""total":1"#, r#""total":2"#));
    let mut req = request();
    req.fields = vec![vec!["size_slug".into()], vec!["size".into(), "vcpus".into()]];
    let (result, _) = run(&fake, &req);
    let listing = result.expect("listing");
    assert_eq!(listing.fields, ["size_slug", "size.vcpus"]);
    assert_eq!(listing.droplets[0].fields, [json!(null), json!(null)]);
    assert_eq!(listing.droplets[1].fields, [json!("s-2vcpu"), json!(2)]);
    // Without fields asked for, nothing is read a second time.
    let listing = run(&fake, &request()).0.expect("listing");
    assert!(listing.fields.is_empty() && listing.droplets.iter().all(|d| d.fields.is_empty()));
}

#[test]
fn no_piece_of_the_token_comes_back_in_a_passed_through_field() {
    use crate::redact::tests::{assert_no_piece, TOKEN};
    let body = single_page(&[droplet(1).replacen(
        '{',
        &format!(
            r#"{{"size_slug":"x-{}-y","features":["{}","ok"],"#,
            &TOKEN[3..40],
            &TOKEN[20..32]
        ),
        1,
    )]);
    let mut req = ListRequest::new(API, TOKEN).expect("valid");
    req.fields = vec![vec!["size_slug".into()], vec!["features".into()]];
    let listing = run(&Fake::default().page(&p1(), body), &req).0.expect("listing");
    assert_no_piece(TOKEN, &format!("{listing:?}"));
    let redacted = serde_json::json!(["x-[REDACTED]-y", ["[REDACTED]", "ok"]]);
    assert_eq!(serde_json::Value::Array(listing.droplets[0].fields.clone()), redacted);
}

// ---- Autoscale pools ----------------------------------------------------------

const POOL_ID: &str = "0b2e2b38-4d3c-4bcb-9a2e-2c3a2b9c8d70";

fn pool_json(id: &str, name: &str, tags: &[&str]) -> String {
    format!(
        r#"{{"id":"{id}","name":"{name}","status":"active","active_resources_count":2,
            "config":{{"min_instances":1,"max_instances":3}},
            "droplet_template":{{"size":"s-1vcpu-1gb","region":"nyc3","tags":{}}}}}"#,
        serde_json::json!(tags)
    )
}

fn search_p1(name: &str) -> String {
    format!("{API}/v2/droplets/autoscale?per_page=200&page=1&name={name}")
}

fn pool_lookup() -> String {
    format!("{API}/v2/droplets/autoscale/{POOL_ID}")
}

fn members_p1() -> String {
    format!("{API}/v2/droplets/autoscale/{POOL_ID}/members?per_page=200&page=1")
}

fn members_pn(n: u64) -> String {
    format!("{API}/v2/droplets/autoscale/{POOL_ID}/members?page={n}&per_page=200")
}

fn member(id: u64, status: &str, health: &str) -> String {
    format!(
        r#"{{"droplet_id":{id},"created_at":"2025-01-01T00:00:00Z","status":"{status}",
            "health_status":"{health}","current_utilization":{{"cpu":0.1,"memory":0.2}}}}"#
    )
}

fn members_page(members: &[String], next: Option<&str>, total: usize) -> String {
    let next = next.map(|n| format!(r#""next":"{n}""#)).unwrap_or_default();
    format!(
        r#"{{"droplets":[{}],"links":{{"pages":{{{next}}}}},"meta":{{"total":{total}}}}}"#,
        members.join(",")
    )
}

fn pool_request(wanted: PoolRef) -> ListRequest {
    let mut req = request();
    req.pool = Some(wanted);
    req
}

fn known(tags: &[&str]) -> PoolRef {
    let tags = tags.iter().map(|t| t.to_string()).collect();
    PoolRef::Known(Pool { id: POOL_ID.into(), name: "web".into(), tags, members: vec![] })
}

fn m(id: u64, status: &str, health: Option<&str>) -> Member {
    Member { droplet_id: id, status: status.into(), health_status: health.map(str::to_owned) }
}

#[test]
fn a_pool_by_name_is_found_exactly_then_its_members_and_its_tag_are_listed() {
    let pools = format!(
        r#"{{"autoscale_pools":[{},{}],"links":{{}},"meta":{{"total":2}}}}"#,
        pool_json("other", "web-old", &["old"]),
        pool_json(POOL_ID, "web", &["app", "extra"])
    );
    let fake = Fake::default()
        .page(&search_p1("web"), pools)
        .page(&members_p1(), members_page(&[member(1, "active", "healthy")], None, 1))
        .page(&tag_p1("app"), single_page(&[tagged(1, Some(&["app"])), tagged(9, Some(&["app"]))]));
    let (result, stats) = run(&fake, &pool_request(PoolRef::Name("web".into())));
    let listing = result.expect("listing");
    let pool = listing.pool.expect("a pool");
    assert_eq!((pool.id.as_str(), pool.name.as_str()), (POOL_ID, "web"));
    assert_eq!(pool.tags, ["app", "extra"]);
    assert_eq!(pool.members, [m(1, "active", Some("healthy"))]);
    assert_eq!(ids(&Listing { pool: None, ..listing }), [1, 9]);
    assert_eq!(fake.calls(), [search_p1("web"), members_p1(), tag_p1("app")]);
    assert_eq!((stats.requests(), stats.pool_requests()), (3, 2));
}

#[test]
fn a_pool_by_id_is_looked_up_and_without_a_template_tag_every_droplet_is_listed() {
    // Its members are paged by the id asked for, whatever id the answer echoes.
    let echo = pool_json("an-echo", "web", &[]);
    let fake = Fake::default()
        .page(&pool_lookup(), format!(r#"{{"autoscale_pool":{echo}}}"#))
        .page(&members_p1(), members_page(&[], None, 0))
        .page(&p1(), page(&[1, 2], Some(&pn(2)), Some(&pn(2)), 3))
        .page(&pn(2), page(&[3], None, None, 3));
    let (result, stats) = run(&fake, &pool_request(PoolRef::Id(POOL_ID.into())));
    let listing = result.expect("listing");
    assert_eq!(ids(&listing), [1, 2, 3]);
    let pool = listing.pool.expect("a pool");
    assert_eq!((pool.id.as_str(), pool.name.as_str()), (POOL_ID, "web"));
    assert_eq!((pool.tags.len(), pool.members.len()), (0, 0));
    assert_eq!(fake.calls()[..3], [pool_lookup(), members_p1(), p1()]);
    assert_eq!((stats.requests(), stats.pool_requests()), (4, 2));
}

#[test]
fn a_known_pool_costs_member_pages_and_droplet_pages_only() {
    let members: Vec<String> = (1..=250).map(|i| member(i, "active", "healthy")).collect();
    let fake = Fake::default()
        .page(&members_p1(), members_page(&members[..200], Some(&members_pn(2)), 250))
        .page(&members_pn(2), members_page(&members[200..], None, 250))
        .page(&tag_p1("app"), single_page(&[tagged(1, Some(&["app"]))]));
    let (result, stats) = run(&fake, &pool_request(known(&["app"])));
    let pool = result.expect("listing").pool.expect("a pool");
    assert_eq!(pool.members.len(), 250);
    assert_eq!(pool.members.last(), Some(&m(250, "active", Some("healthy"))));
    assert_eq!((stats.requests(), stats.pool_requests()), (3, 2));
}

#[test]
fn a_member_shifted_onto_the_next_page_is_one_member() {
    let one = member(1, "active", "healthy");
    let fake = Fake::default()
        .page(&members_p1(), members_page(std::slice::from_ref(&one), Some(&members_pn(2)), 2))
        .page(&members_pn(2), members_page(&[one, member(2, "active", "healthy")], None, 2))
        .page(&p1(), page(&[], None, None, 0));
    let pool = run(&fake, &pool_request(known(&[]))).0.expect("listing").pool.expect("pool");
    assert_eq!(pool.members.iter().map(|m| m.droplet_id).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn with_gpus_the_pool_tag_is_checked_here_on_gpu_droplets() {
    let fake = Fake::default()
        .page(&members_p1(), members_page(&[member(1, "active", "healthy")], None, 1))
        .page(&tag_p1("app"), single_page(&[tagged(1, Some(&["app"]))]))
        .page(&gpu_p1(), single_page(&[tagged(2, Some(&["app"])), tagged(3, Some(&["x"]))]));
    let mut req = pool_request(known(&["app"]));
    req.gpus = Gpus::Include;
    assert_eq!(run(&fake, &req).0.map(|l| ids(&l)), Ok(vec![1, 2]));
}

#[test]
fn a_pool_that_is_not_there_is_pool_not_found() {
    let no_match = format!(
        r#"{{"autoscale_pools":[{}],"meta":{{"total":1}}}}"#,
        pool_json(POOL_ID, "WEB", &[])
    );
    let fake = Fake::default().page(&search_p1("web"), no_match);
    let by_name = pool_request(PoolRef::Name("web".into()));
    assert_eq!(run(&fake, &by_name).0, Err(Error::PoolNotFound));
    // A 404 for its id (looked up, or its members), and nothing listed.
    let fake = Fake::default();
    let (result, stats) = run(&fake, &pool_request(PoolRef::Id(POOL_ID.into())));
    assert_eq!((result, stats.pool_requests()), (Err(Error::PoolNotFound), 1));
    assert_eq!(run(&fake, &pool_request(known(&[]))).0, Err(Error::PoolNotFound));
    assert_eq!(fake.calls(), [pool_lookup(), members_p1()]);
    // A 404 of the search itself is no answer about the pool.
    let fake = Fake::default().on(&search_p1("web"), || Ok(status(404)));
    assert_eq!(
        run(&fake, &pool_request(PoolRef::Name("web".into()))).0,
        Err(Error::HttpStatus(404))
    );
}

#[test]
fn pool_requests_fail_as_droplet_pages_do() {
    let forbidden = || {
        let body =
            br#"{"id":"forbidden","message":"You are missing the required scope: autoscale:read"}"#;
        Ok(Exchange { body: Ok(body.to_vec()), ..status(403) })
    };
    let limited = || Ok(Exchange { rate_limit: None, ..status(429) });
    let foreign = members_page(&[member(1, "active", "x")], Some("https://evil.test/m?page=2"), 2);
    let cases: Vec<(Fake, Error)> = vec![
        (
            Fake::default().on(&members_p1(), forbidden),
            Error::Forbidden(Some("autoscale:read".into())),
        ),
        (
            Fake::default().on(&pool_lookup(), forbidden),
            Error::Forbidden(Some("autoscale:read".into())),
        ),
        (Fake::default().on(&pool_lookup(), limited), Error::RateLimited(None)),
        (Fake::default().on(&members_p1(), || Ok(status(401))), Error::Unauthorized),
        (Fake::default().page(&members_p1(), foreign), Error::ForeignLink),
        (
            Fake::default().page(&members_p1(), "<html>".into()),
            Error::InvalidJson("syntax error at line 1 column 1".into()),
        ),
    ];
    for (fake, want) in cases {
        let wanted = if fake.routes.contains_key(&pool_lookup()) {
            PoolRef::Id(POOL_ID.into())
        } else {
            known(&[])
        };
        assert_eq!(run(&fake, &pool_request(wanted)).0, Err(want));
    }
    // A member page whose total changes twice in a row is inconsistent.
    let fake = Fake::default()
        .page(&members_p1(), members_page(&[member(1, "active", "x")], Some(&members_pn(2)), 2))
        .page(&members_pn(2), members_page(&[member(2, "active", "x")], None, 3));
    assert!(matches!(run(&fake, &pool_request(known(&[]))).0, Err(Error::Inconsistent(_))));
}

#[test]
fn pool_requests_are_held_to_the_deadline_and_the_cancel() {
    let mut req = pool_request(PoolRef::Id(POOL_ID.into()));
    req.deadline = Duration::ZERO;
    let fake = Fake::default();
    assert_eq!(run(&fake, &req).0, Err(Error::Timeout));
    assert!(fake.calls().is_empty());

    let req = pool_request(PoolRef::Id(POOL_ID.into()));
    let cancel = req.cancel.clone();
    let lookup = format!(r#"{{"autoscale_pool":{}}}"#, pool_json(POOL_ID, "web", &[]));
    let fake = Fake::default().on(&pool_lookup(), move || {
        cancel.cancel();
        Ok(ok(&lookup))
    });
    let (result, stats) = run(&fake, &req);
    assert_eq!((result, stats.requests()), (Err(Error::Cancelled), 1));
}

#[test]
fn members_are_held_to_max_droplets_and_the_listing_bounds() {
    let members: Vec<String> = (1..=3).map(|i| member(i, "active", "healthy")).collect();
    let fake = Fake::default().page(&members_p1(), members_page(&members, None, 3));
    let mut req = pool_request(known(&[]));
    req.max_droplets = 2;
    assert_eq!(run(&fake, &req).0, Err(Error::TooManyDroplets(2)));

    let mut req = pool_request(known(&[]));
    req.limits.max_string_bytes = 6;
    let long = members_page(&[member(1, "active", "unhealthy")], None, 1);
    let fake = Fake::default().page(&members_p1(), long);
    assert_eq!(run(&fake, &req).0, Err(Error::ListingTooLarge(Bound::MaxStringBytes, 6)));

    // Each member keeps an item's overhead and its strings: 141 bytes here.
    let mut req = pool_request(known(&[]));
    req.limits.max_listing_bytes = 300;
    let fake = Fake::default().page(&members_p1(), members_page(&members, None, 3));
    assert_eq!(run(&fake, &req).0, Err(Error::ListingTooLarge(Bound::MaxListingBytes, 300)));
}

#[test]
fn a_member_is_strict_about_its_id_and_status() {
    for bad in
        [r#"{"status":"active"}"#, r#"{"droplet_id":"1","status":"active"}"#, r#"{"droplet_id":1}"#]
    {
        let fake = Fake::default().page(&members_p1(), members_page(&[bad.to_string()], None, 1));
        assert!(
            matches!(run(&fake, &pool_request(known(&[]))).0, Err(Error::UnexpectedShape(_))),
            "{bad}"
        );
    }
    let no_health = members_page(
        &[
            r#"{"droplet_id":1,"status":"off","health_status":null}"#.into(),
            r#"{"droplet_id":2,"status":"active"}"#.into(),
        ],
        None,
        2,
    );
    let fake = Fake::default().page(&members_p1(), no_health).page(&p1(), page(&[], None, None, 0));
    let pool = run(&fake, &pool_request(known(&[]))).0.expect("listing").pool.expect("pool");
    assert_eq!(pool.members, [m(1, "off", None), m(2, "active", None)]);
}

#[test]
fn an_id_from_the_api_is_encoded_into_the_path() {
    let pools = format!(
        r#"{{"autoscale_pools":[{}],"meta":{{"total":1}}}}"#,
        pool_json("../../x?y", "web", &[])
    );
    let fake = Fake::default().page(&search_p1("web"), pools);
    let _ = run(&fake, &pool_request(PoolRef::Name("web".into())));
    assert_eq!(
        fake.calls()[1],
        format!("{API}/v2/droplets/autoscale/..%2F..%2Fx%3Fy/members?per_page=200&page=1")
    );
}

#[test]
fn no_piece_of_the_token_comes_back_in_a_pool_or_member_value() {
    use crate::redact::tests::{assert_no_piece, TOKEN};
    let piece = |start: usize| &TOKEN[start..start + 12];
    let lookup = format!(
        r#"{{"autoscale_pool":{}}}"#,
        pool_json(POOL_ID, &format!("p-{}", piece(0)), &[piece(5), "web"])
    );
    let mut req = ListRequest::new(API, TOKEN).expect("valid");
    req.pool = Some(PoolRef::Id(POOL_ID.into()));
    let members = members_page(&[member(1, piece(10), &format!("x{}", piece(30)))], None, 1);
    let fake = Fake::default()
        .page(&pool_lookup(), lookup)
        .page(&members_p1(), members)
        .page(&tag_p1(piece(5)), single_page(&[]));
    let (result, _) = run(&fake, &req);
    let pool = result.expect("listing").pool.expect("pool");
    assert_no_piece(TOKEN, &format!("{pool:?}"));
    assert_eq!((pool.name.as_str(), pool.tags[0].as_str()), ("p-[REDACTED]", "[REDACTED]"));
    assert_eq!(pool.members, [m(1, "[REDACTED]", Some("x[REDACTED]"))]);
}
