use serde_json::json;
use wasm_tests::http1::{Response, Server};
use wasm_tests::stack::*;

#[test]
fn experiment() {
    let idp = Idp::start(default_jwks());
    let up = Server::start(|_req| {
        Response::json(
            200,
            json!({"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/456"}})
                .to_string(),
        )
    });
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let auth = bearer(&token(&claims("patient/Observation.rs", Some("123"))));
    let r = envoy.get("/fhir/Observation/o2", &[("authorization", &auth)]);
    eprintln!("{} {:?} {}", r.status, r.headers, r.body_str());
    std::fs::write("/tmp/exp/envoy.log", envoy.log()).unwrap();
}
