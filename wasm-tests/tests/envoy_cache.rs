//! Real Envoy with its HTTP cache filter (cache_v2) keyed by the verified identity
//! (`envoy/cache.yaml`): a cacheable read is served from the cache to the same app, user and patient
//! (the upstream sees it once), never to another patient, user or app (the upstream is asked again,
//! or the filter refuses first); the upstream never receives the token or the cache key's artefacts
//! (`x-smart-identity`, `x-smart-edge-authority`) and sees the client's Host; a response the filter
//! refuses is refused on every read, also when the cache serves it; a public path keys on
//! `anonymous`, whatever Host the client sends.

use serde_json::{json, Value};
use wasm_tests::http1::{Response, Server};
use wasm_tests::real_envoy::{config_file, with_plugin_config, Envoy};
use wasm_tests::stack::*;

/// An upstream whose reads are cacheable for a minute (`Cache-Control: max-age=60`).
fn cacheable_upstream() -> Server {
    Server::start(|req| {
        let p = req.path.as_str();
        let body = if let Some(id) = p.strip_prefix("/fhir/Patient/") {
            json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("Family-{id}")}]})
        } else if let Some(id) = p.strip_prefix("/fhir/Practitioner/") {
            // The answer depends on who asks: a response served to the wrong identity shows.
            let asker = format!(
                "{}/{}",
                req.header("x-smart-client-id").unwrap_or("-"),
                req.header("x-smart-sub").unwrap_or("-")
            );
            json!({"resourceType": "Practitioner", "id": id, "name": [{"text": asker}]})
        } else if let Some(id) = p.strip_prefix("/fhir/Observation/") {
            // Every observation belongs to patient 456.
            json!({"resourceType": "Observation", "id": id, "status": "final",
                   "code": {"text": "x"}, "subject": {"reference": "Patient/456"}})
        } else if p == "/fhir/metadata" {
            json!({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance"})
        } else {
            return Response::json(
                404,
                r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
            );
        };
        Response::json(200, body.to_string())
            .with_header("cache-control", "max-age=60")
            .with_header("date", &http_date(now()))
    })
}

/// An IMF-fixdate (RFC 9110 §5.6.7), as an origin server sends in `Date`.
fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, rem) = (unix / 86_400, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn start() -> (Idp, Server, Envoy) {
    let (idp, up) = (Idp::start(default_jwks()), cacheable_upstream());
    // The cache keys on x-smart-identity, which is forwarded only when asked for.
    let mut config = plugin_config();
    config["forward_headers"] = serde_json::json!(smart_fhir_edge::config::FORWARDABLE_HEADERS);
    let yaml = with_plugin_config(&config_file("cache.yaml"), &config);
    let envoy = Envoy::start(&yaml, up.port(), idp.port());
    (idp, up, envoy)
}

fn token_of(app: &str, sub: &str, scope: &str, patient: Option<&str>) -> String {
    let mut c = claims(scope, patient);
    c["client_id"] = json!(app);
    c["sub"] = json!(sub);
    token(&c)
}

fn get(envoy: &Envoy, path: &str, token: &str) -> Response {
    let auth = bearer(token);
    envoy.get(path, &[("authorization", auth.as_str())])
}

fn upstream_reads(up: &Server, path: &str) -> usize {
    up.requests().iter().filter(|r| r.path == path).count()
}

/// The cache filter's count of lookups that ended as `event` (`hit`, `miss`, `uncacheable`, ...).
fn cache_events(envoy: &Envoy, event: &str) -> u64 {
    let label = format!(r#"event_type="{event}""#);
    envoy
        .prometheus()
        .lines()
        .filter(|l| l.starts_with("envoy_cache_event{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Every request that reached the upstream carried the verified identity and the client's Host,
/// never the token or the cache key's artefacts.
fn assert_upstream_saw_no_artefacts(up: &Server) {
    for req in up.requests() {
        assert!(req.header("authorization").is_none(), "{req:?}");
        assert!(req.header("x-smart-identity").is_none(), "{req:?}");
        assert!(req.header("x-smart-edge-authority").is_none(), "{req:?}");
        assert_eq!(req.header("host"), Some("127.0.0.1"), "{req:?}");
        assert!(req.header("x-smart-client-id").is_some(), "{req:?}");
    }
}

#[test]
fn each_identity_is_served_its_own_cached_read_and_never_another_identitys() {
    let (_idp, up, envoy) = start();
    let path = "/fhir/Practitioner/p1";
    let user1_app1 = token_of("app-1", "user-1", "user/Practitioner.rs", None);
    let user2_app1 = token_of("app-1", "user-2", "user/Practitioner.rs", None);
    let user1_app2 = token_of("app-2", "user-1", "user/Practitioner.rs", None);
    // (token, who asks, what the upstream answered them, upstream reads after, from the cache)
    let table: [(&str, &str, &str, usize, bool); 6] = [
        (&user1_app1, "user 1 of app 1", "app-1/user-1", 1, false),
        (&user1_app1, "user 1 of app 1 again", "app-1/user-1", 1, true),
        (
            &user2_app1,
            "another user of the same app",
            "app-1/user-2",
            2,
            false,
        ),
        (
            &user1_app2,
            "the same user in another app",
            "app-2/user-1",
            3,
            false,
        ),
        (&user2_app1, "the other user again", "app-1/user-2", 3, true),
        (&user1_app2, "the other app again", "app-2/user-1", 3, true),
    ];
    for (t, who, asker, reads, cached) in table {
        let r = get(&envoy, path, t);
        assert_eq!(r.status, 200, "{who}: {}", r.body_str());
        assert_eq!(r.body_json()["name"][0]["text"], asker, "{who}: its own answer");
        assert_eq!(upstream_reads(&up, path), reads, "{who}");
        assert_eq!(
            r.header("age").is_some(),
            cached,
            "{who}: from the cache: {:?}",
            r.headers
        );
    }
    assert_eq!(
        (cache_events(&envoy, "miss"), cache_events(&envoy, "hit")),
        (3, 3)
    );
    assert_upstream_saw_no_artefacts(&up);
}

#[test]
fn patient_a_cached_record_is_never_returned_to_patient_b_or_another_app() {
    let (_idp, up, envoy) = start();
    let path = "/fhir/Patient/123";
    let scope = "launch/patient patient/Patient.rs";
    let a = token_of("app-1", "user-a", scope, Some("123"));
    let a_other_app = token_of("app-2", "user-a", scope, Some("123"));
    let b = token_of("app-1", "user-b", scope, Some("456"));
    // (read, upstream reads after, from the cache): A's second read is a real hit.
    for (i, reads, cached) in [(1, 1, false), (2, 1, true)] {
        let r = get(&envoy, path, &a);
        assert_eq!(r.status, 200, "read {i}: {}", r.body_str());
        assert_eq!(r.body_json()["id"], "123");
        assert_eq!(upstream_reads(&up, path), reads, "read {i}");
        assert_eq!(r.header("age").is_some(), cached, "read {i}: {:?}", r.headers);
    }
    // Patient B asks for A's record (whatever x-smart-* headers it sends): refused before the cache.
    let auth = bearer(&b);
    let r = envoy.get(
        path,
        &[
            ("authorization", auth.as_str()),
            ("x-smart-patient", "123"),
            ("x-smart-client-id", "app-1"),
            ("x-smart-sub", "user-a"),
            ("x-smart-identity", "anonymous"),
        ],
    );
    assert_outcome(&r, 403, "forbidden");
    assert!(!r.body_str().contains("Family-123"));
    // The same patient in another app: not served app 1's entry (the upstream is asked again).
    let r = get(&envoy, path, &a_other_app);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(
        r.header("age").is_none(),
        "not from app 1's entry: {:?}",
        r.headers
    );
    assert_eq!(upstream_reads(&up, path), 2);
    // B's own record is B's.
    let r = get(&envoy, "/fhir/Patient/456", &b);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_json()["id"], "456");
    assert!(!r.body_str().contains("Family-123"));
    assert_eq!(
        (cache_events(&envoy, "miss"), cache_events(&envoy, "hit")),
        (3, 1)
    );
    assert_upstream_saw_no_artefacts(&up);
}

#[test]
fn a_response_the_filter_refuses_is_refused_on_every_read_also_from_the_cache() {
    let (_idp, up, envoy) = start();
    // Patient 123's token reads an Observation of patient 456: only the response tells. The cache
    // stores the upstream's response and serves the second read, which the filter refuses again.
    let a = token_of(
        "app-1",
        "user-a",
        "launch/patient patient/Observation.rs",
        Some("123"),
    );
    let path = "/fhir/Observation/o-456";
    for i in 1..=2 {
        let r = get(&envoy, path, &a);
        let v: Value = assert_outcome(&r, 403, "forbidden");
        assert!(!r.body_str().contains("Patient/456"), "read {i}: {v}");
        assert_eq!(upstream_reads(&up, path), 1, "read {i}");
    }
    assert_eq!(
        (cache_events(&envoy, "miss"), cache_events(&envoy, "hit")),
        (1, 1)
    );
}

/// `GET path` with the client's own `Host` (the helpers always send `127.0.0.1`): status line and
/// head, lowercased.
fn get_with_host(envoy: &Envoy, path: &str, host: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    let head = out.split("\r\n\r\n").next().unwrap_or_default();
    head.to_ascii_lowercase()
}

#[test]
fn the_client_chosen_host_never_reaches_the_cache_key() {
    let (_idp, up, envoy) = start();
    // A public path has no verified identity: it keys on `anonymous`, whatever Host the client
    // sends (so no Host can name an identity's entry), and the upstream sees the client's Host.
    // (client Host, upstream reads after, from the cache)
    let table = [
        ("fhir.example.org", 1, false),
        ("other.example.org", 1, true),
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            1,
            true,
        ),
    ];
    for (host, reads, cached) in table {
        let head = get_with_host(&envoy, "/fhir/metadata", host);
        assert!(head.starts_with("http/1.1 200"), "{host}: {head}");
        assert_eq!(head.contains("\r\nage:"), cached, "{host}: {head}");
        assert_eq!(upstream_reads(&up, "/fhir/metadata"), reads, "{host}");
    }
    let seen = up.requests();
    assert_eq!(seen[0].header("host"), Some("fhir.example.org"));
    assert!(seen[0].header("x-smart-identity").is_none());
}
