//! Real Envoy with its HTTP cache filter behind the filter (`envoy/cache.yaml`): a cached response
//! is served again to the same app, user and patient (the upstream is asked once), but never to
//! another patient, user or app (the upstream is asked again, or the filter refuses first); and a
//! response the filter refuses is refused again when it comes from the cache.

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
            json!({"resourceType": "Practitioner", "id": id})
        } else if let Some(id) = p.strip_prefix("/fhir/Observation/") {
            // Every observation belongs to patient 456.
            json!({"resourceType": "Observation", "id": id, "status": "final",
                   "code": {"text": "x"}, "subject": {"reference": "Patient/456"}})
        } else {
            return Response::json(
                404,
                r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
            );
        };
        Response::json(200, body.to_string()).with_header("cache-control", "max-age=60")
    })
}

fn start() -> (Idp, Server, Envoy) {
    let (idp, up) = (Idp::start(default_jwks()), cacheable_upstream());
    let yaml = with_plugin_config(&config_file("cache.yaml"), &plugin_config());
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

#[test]
fn a_cached_read_is_served_to_the_same_identity_only() {
    let (_idp, up, envoy) = start();
    let path = "/fhir/Practitioner/p1";
    let user1_app1 = token_of("app-1", "user-1", "user/Practitioner.rs", None);
    let user2_app1 = token_of("app-1", "user-2", "user/Practitioner.rs", None);
    let user1_app2 = token_of("app-2", "user-1", "user/Practitioner.rs", None);
    // (token, who, upstream reads after the request, served from the cache)
    let table: [(&str, &str, usize, bool); 6] = [
        (&user1_app1, "user 1 of app 1, first", 1, false),
        (&user1_app1, "user 1 of app 1, again", 1, true),
        (&user2_app1, "another user of the same app", 2, false),
        (&user1_app2, "the same user in another app", 3, false),
        (&user2_app1, "user 2, again", 3, true),
        (&user1_app2, "app 2, again", 3, true),
    ];
    for (t, who, reads, hit) in table {
        let r = get(&envoy, path, t);
        assert_eq!(r.status, 200, "{who}: {}", r.body_str());
        assert_eq!(r.body_json()["id"], "p1", "{who}");
        assert_eq!(upstream_reads(&up, path), reads, "{who}");
        assert_eq!(r.header("age").is_some(), hit, "{who}: {:?}", r.headers);
    }
    // Every upstream request carried the verified identity, never the token.
    for req in up.requests() {
        assert!(req.header("authorization").is_none(), "{req:?}");
        assert!(req.header("x-smart-client-id").is_some(), "{req:?}");
    }
}

#[test]
fn patient_a_cached_record_is_never_returned_to_patient_b() {
    let (_idp, up, envoy) = start();
    let path = "/fhir/Patient/123";
    let scope = "launch/patient patient/Patient.rs";
    let a = token_of("app-1", "user-a", scope, Some("123"));
    let b = token_of("app-1", "user-b", scope, Some("456"));
    for (i, hit) in [(1, false), (2, true)] {
        let r = get(&envoy, path, &a);
        assert_eq!(r.status, 200, "read {i}: {}", r.body_str());
        assert_eq!(r.header("age").is_some(), hit, "read {i}: {:?}", r.headers);
    }
    assert_eq!(upstream_reads(&up, path), 1, "the second read was a cache hit");
    // Patient B asks for A's record (whatever headers it sends): refused before the cache.
    let auth = bearer(&b);
    let r = envoy.get(
        path,
        &[
            ("authorization", auth.as_str()),
            ("x-smart-patient", "123"),
            ("x-smart-client-id", "app-1"),
            ("x-smart-sub", "user-a"),
        ],
    );
    assert_outcome(&r, 403, "forbidden");
    assert!(!r.body_str().contains("Family-123"));
    // B's own record is B's, fetched from the upstream, not A's from the cache.
    let r = get(&envoy, "/fhir/Patient/456", &b);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_json()["id"], "456");
    assert_eq!(upstream_reads(&up, path), 1);
    assert_eq!(upstream_reads(&up, "/fhir/Patient/456"), 1);
}

#[test]
fn a_response_the_filter_refuses_is_refused_again_when_served_from_the_cache() {
    let (_idp, up, envoy) = start();
    // Patient 123's token reads an Observation of patient 456: only the response tells.
    let a = token_of(
        "app-1",
        "user-a",
        "launch/patient patient/Observation.rs",
        Some("123"),
    );
    let path = "/fhir/Observation/o-456";
    for i in 0..2 {
        let r = get(&envoy, path, &a);
        let v: Value = assert_outcome(&r, 403, "forbidden");
        assert!(!r.body_str().contains("Patient/456"), "read {i}: {v}");
    }
    assert_eq!(
        upstream_reads(&up, path),
        1,
        "the second answer came from the cache, and was checked again"
    );
}
