//! Real Envoy: the filter loads, runs on every request, and refuses bad configuration.

use wasm_tests::http1::{Response, Server};
use wasm_tests::real_envoy::{config_file, with_plugin_config, Envoy};

fn upstream() -> Server {
    Server::start(|_| Response::json(200, r#"{"resourceType":"CapabilityStatement"}"#))
}

#[test]
fn stamps_every_response_with_its_version_when_configured_to() {
    let up = upstream();
    let envoy = Envoy::start(&config_file("test.yaml"), up.port(), 1);
    let r = envoy.get("/fhir/metadata", &[]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.header("x-smart-fhir-edge"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(up.request_count(), 1);
}

#[test]
fn refuses_invalid_configuration_naming_the_field() {
    let cases = [
        (
            serde_json::json!({"fhir_base": "/fhir", "providers": []}),
            "providers",
        ),
        (
            serde_json::json!({"providers": [{"issuer": "https://idp", "audiences": ["a"],
                "remote_jwks": {"uri": "https://idp/jwks", "cluster": "idp", "timeout_ms": 0}}]}),
            "providers[0].remote_jwks.timeout_ms",
        ),
        (serde_json::json!({"providers": [], "colour": "blue"}), "colour"),
    ];
    for (config, field) in cases {
        let yaml = with_plugin_config(&config_file("test.yaml"), &config);
        let err = match Envoy::try_start(&yaml, 1, 1) {
            Ok(_) => panic!("Envoy started with an invalid configuration naming {field}"),
            Err(e) => e,
        };
        let line = err
            .log
            .lines()
            .find(|l| l.contains("invalid configuration"))
            .unwrap_or_else(|| panic!("no configuration error logged:\n{}", err.log));
        assert!(line.contains(&format!("field `{field}`")), "{line}");
    }
}
