//! Real Envoy: an app reading more
//! distinct patients than `anomaly_brake` allows is refused with a 429 OperationOutcome and
//! Retry-After for the cool-down, with a metric and an audit record naming it, while another app
//! continues.

use serde_json::json;
use wasm_tests::http1::Server;
use wasm_tests::real_envoy::{config_file, with_plugin_config, Envoy};
use wasm_tests::stack::*;

fn user_token(app: &str) -> String {
    let mut c = claims("user/Patient.rs", None);
    c["client_id"] = json!(app);
    token(&c)
}

fn upstream_count(up: &Server, app: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.header("x-smart-client-id") == Some(app))
        .count()
}

#[test]
fn an_app_touching_too_many_patients_is_braked_and_another_app_continues() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let mut config = plugin_config();
    config["anomaly_brake"] = json!({"window_s": 60, "max_distinct_patients": 3, "cooldown_s": 120});
    let yaml = with_plugin_config(&config_file("test.yaml"), &config);
    let envoy = Envoy::start(&yaml, up.port(), idp.port());
    let (a, b) = (bearer(&user_token("app-a")), bearer(&user_token("app-b")));
    for p in ["p1", "p2", "p3", "p1"] {
        let r = envoy.get(&format!("/fhir/Patient/{p}"), &[("authorization", &a)]);
        assert_eq!(r.status, 200, "{p}: {}", r.body_str());
    }
    for p in ["p4", "p1"] {
        let r = envoy.get(
            &format!("/fhir/Patient/{p}"),
            &[("authorization", &a), ("x-request-id", "brake-1")],
        );
        assert_outcome(&r, 429, "throttled");
        let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!((100..=120).contains(&retry), "Retry-After {retry}");
    }
    for p in ["p1", "p2", "p3", "p4", "p5"].iter().take(3) {
        let r = envoy.get(&format!("/fhir/Patient/{p}"), &[("authorization", &b)]);
        assert_eq!(r.status, 200, "app B {p}: {}", r.body_str());
    }
    assert_eq!(
        upstream_count(&up, "app-a"),
        4,
        "nothing of app A went upstream once braked"
    );
    assert_eq!(upstream_count(&up, "app-b"), 3);
    assert_eq!(
        envoy.stat("wasmcustom.smart_fhir_edge.anomaly_brake_total.outcome.tripped"),
        Some(1)
    );
    assert_eq!(
        envoy.stat("wasmcustom.smart_fhir_edge.anomaly_brake_total.outcome.refused"),
        Some(2)
    );
    let braked: Vec<String> = envoy
        .filter_log()
        .into_iter()
        .filter(|l| l.contains(r#""reason":"anomaly_brake""#))
        .collect();
    assert_eq!(braked.len(), 2, "{braked:#?}");
    assert!(
        braked.iter().all(|l| l.contains(r#""client_id":"app-a""#)),
        "{braked:#?}"
    );
}
