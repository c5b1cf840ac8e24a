//! Real Envoy with tokens from a real, certified OpenID Connect provider (panva `oidc-provider`, the
//! demo's `envoy/demo/idp.mjs`): the access tokens it issues (RFC 9068 `at+jwt`, RS256 or ES256 per
//! app, kids that are JWK thumbprints, SMART scopes next to OpenID Connect ones) are verified and
//! enforced through Envoy, with its keys fetched from its JWKS endpoint or found through its
//! OpenID Connect discovery document.
//!
//! Needs `./envoy/demo/run.sh install` (Node 22 and the npm packages; `make test` runs it): without
//! it these tests fail and say so.

use serde_json::{json, Value};
use wasm_tests::http1::{Response, Server};
use wasm_tests::node_idp::{decode_jwt, NodeIdp};
use wasm_tests::real_envoy::Envoy;
use wasm_tests::stack::{assert_outcome, bearer, envoy, fhir_upstream, now};

/// The resource server the provider issues tokens for (`aud`).
const AUDIENCE: &str = "http://127.0.0.1/fhir";

/// The plugin configuration for `idp` with `keys` as the provider's key source.
fn config_for(idp: &NodeIdp, keys: (&str, Value)) -> Value {
    let mut provider = json!({
        "issuer": idp.issuer,
        "audiences": [AUDIENCE],
        // What the demo provider signs with: RS256 for the apps, ES256 for the backend services.
        "algorithms": ["RS256", "ES256"],
    });
    provider[keys.0] = keys.1;
    json!({"fhir_base": "/fhir", "providers": [provider], "clock_skew_s": 30})
}

fn remote_jwks(idp: &NodeIdp) -> (&'static str, Value) {
    (
        "remote_jwks",
        json!({"uri": idp.jwks_uri, "cluster": "idp", "timeout_ms": 2000, "cache_duration_s": 300}),
    )
}

fn access_token(response: &Value) -> String {
    response["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

fn start(idp: &NodeIdp, keys: (&str, Value)) -> (Server, Envoy) {
    let up = fhir_upstream();
    let envoy = envoy(&config_for(idp, keys), &up, idp.port);
    (up, envoy)
}

#[test]
fn the_provider_issues_rfc9068_access_tokens_signed_per_app() {
    let idp = NodeIdp::start(AUDIENCE);
    let jwks = wasm_tests::http1::get(idp.port, "/jwks", &[]).body_json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    let backend = idp.client_credentials("demo-backend", "system/*.rs");
    let patient = idp.authorization_code("demo-patient-app", "amy", None);
    // (token response, alg, client_id, sub, scope, patient)
    let cases = [
        (
            &backend,
            "ES256",
            "demo-backend",
            "demo-backend",
            "system/*.rs",
            None,
        ),
        (
            &patient,
            "RS256",
            "demo-patient-app",
            "amy",
            "openid fhirUser launch/patient patient/*.rs",
            Some("pat-amy"),
        ),
    ];
    for (response, alg, client, sub, scope, pat) in cases {
        let (header, claims) = decode_jwt(&access_token(response));
        assert_eq!(header["typ"], "at+jwt", "RFC 9068 type: {header}");
        assert_eq!(header["alg"], alg, "{header}");
        let kid = header["kid"].as_str().expect("a kid");
        assert!(kids.contains(&kid), "the kid {kid} is in the JWKS {kids:?}");
        assert_eq!(claims["iss"], idp.issuer.as_str());
        assert_eq!(
            claims["aud"], AUDIENCE,
            "aud is the resource indicator, as a string"
        );
        assert_eq!(claims["client_id"], client);
        assert_eq!(claims["sub"], sub);
        assert_eq!(
            claims["scope"], scope,
            "OpenID Connect and launch scopes sit next to resource ones"
        );
        assert_eq!(
            response["scope"], scope,
            "the token response names the granted scopes"
        );
        assert_eq!(claims["patient"].as_str(), pat);
        assert_eq!(
            response["patient"].as_str(),
            pat,
            "the token response names the patient"
        );
        let (iat, exp) = (
            claims["iat"].as_u64().expect("iat"),
            claims["exp"].as_u64().expect("exp"),
        );
        assert!(iat <= now() + 5 && exp > now(), "valid now: iat {iat} exp {exp}");
        assert!(claims["jti"].is_string());
    }
}

/// Expected upstream headers of an allowed request.
struct Forwarded {
    client_id: &'static str,
    patient: Option<&'static str>,
    fhir_user: Option<&'static str>,
}

#[test]
fn its_tokens_are_verified_and_enforced_through_envoy() {
    let idp = NodeIdp::start(AUDIENCE);
    // The tokens are obtained while Envoy starts.
    let ([backend, backend_patients, amy, carter, expired], (up, envoy)) = std::thread::scope(|s| {
        let tokens = s.spawn(|| {
            [
                idp.client_credentials("demo-backend", "system/*.rs"),
                idp.client_credentials("demo-backend", "system/Patient.rs"),
                idp.authorization_code("demo-patient-app", "amy", None),
                idp.authorization_code("demo-clinician-app", "dr-carter", None),
                idp.client_credentials("demo-expired", "system/*.rs"),
            ]
        });
        let stack = start(&idp, remote_jwks(&idp));
        (tokens.join().expect("tokens from the provider"), stack)
    });

    let system = |client_id| Forwarded {
        client_id,
        patient: None,
        fhir_user: None,
    };
    let as_amy = Forwarded {
        client_id: "demo-patient-app",
        patient: Some("pat-amy"),
        fhir_user: Some("Patient/pat-amy"),
    };
    let as_carter = Forwarded {
        client_id: "demo-clinician-app",
        patient: None,
        fhir_user: Some("Practitioner/prac-carter"),
    };
    // (token response, method, path, status, OperationOutcome code of a refusal, upstream headers)
    type Case<'a> = (
        Option<&'a Value>,
        &'a str,
        &'a str,
        u16,
        Option<&'a str>,
        Option<Forwarded>,
    );
    let cases: Vec<Case> = vec![
        (None, "GET", "/fhir/Patient/pat-amy", 401, Some("login"), None),
        (None, "GET", "/fhir/metadata", 200, None, None),
        (
            Some(&backend),
            "GET",
            "/fhir/Observation?patient=pat-ben",
            200,
            None,
            Some(system("demo-backend")),
        ),
        (
            Some(&backend),
            "GET",
            "/fhir/Patient",
            200,
            None,
            Some(system("demo-backend")),
        ),
        (
            Some(&backend),
            "POST",
            "/fhir/Observation",
            403,
            Some("forbidden"),
            None,
        ),
        (
            Some(&backend_patients),
            "GET",
            "/fhir/Patient/pat-amy",
            200,
            None,
            Some(system("demo-backend")),
        ),
        (
            Some(&backend_patients),
            "GET",
            "/fhir/Observation",
            403,
            Some("forbidden"),
            None,
        ),
        (
            Some(&amy),
            "GET",
            "/fhir/Patient/pat-amy",
            200,
            None,
            Some(as_amy),
        ),
        (
            Some(&amy),
            "GET",
            "/fhir/Patient/pat-ben",
            403,
            Some("forbidden"),
            None,
        ),
        (
            Some(&amy),
            "GET",
            "/fhir/Condition?patient=pat-ben",
            403,
            Some("forbidden"),
            None,
        ),
        (
            Some(&carter),
            "GET",
            "/fhir/Patient?family=Synthetic",
            200,
            None,
            Some(as_carter),
        ),
        (Some(&expired), "GET", "/fhir/Patient", 401, Some("expired"), None),
    ];
    for (token, method, path, status, refusal, forwarded) in cases {
        let label = format!(
            "{method} {path} with {}",
            token.map_or("no token".to_string(), |t| decode_jwt(&access_token(t)).1
                ["client_id"]
                .to_string())
        );
        let auth = token.map(|t| bearer(&access_token(t)));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let body = if method == "POST" {
            br#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#.as_slice()
        } else {
            b""
        };
        let before = up.request_count();
        let r: Response = envoy.send(method, path, &headers, body);
        match refusal {
            Some(code) => {
                assert_outcome(&r, status, code);
                assert_eq!(
                    up.request_count(),
                    before,
                    "{label}: a refusal never reaches the upstream"
                );
            }
            None => {
                assert_eq!(
                    r.status,
                    status,
                    "{label}: {}\nfilter log:\n{}",
                    r.body_str(),
                    envoy.filter_log().join("\n")
                );
                assert_eq!(up.request_count(), before + 1, "{label}: reached the upstream");
            }
        }
        let Some(f) = forwarded else { continue };
        let token = token.expect("an allowed request with forwarded facts has a token");
        let claims = decode_jwt(&access_token(token)).1;
        let seen = up.requests().pop().expect("the upstream request");
        assert_eq!(seen.header("x-smart-client-id"), Some(f.client_id), "{label}");
        assert_eq!(seen.header("x-smart-patient"), f.patient, "{label}");
        assert_eq!(seen.header("x-smart-fhir-user"), f.fhir_user, "{label}");
        assert_eq!(seen.header("x-smart-sub"), claims["sub"].as_str(), "{label}");
        assert_eq!(seen.header("x-smart-scope"), claims["scope"].as_str(), "{label}");
    }
}

#[test]
fn its_keys_are_found_through_its_openid_configuration() {
    let idp = NodeIdp::start(AUDIENCE);
    // One token per signing key, ES256 (backend) and RS256 (patient app), obtained while Envoy starts.
    let ([backend, amy], (up, envoy)) = std::thread::scope(|s| {
        let tokens = s.spawn(|| {
            [
                idp.client_credentials("demo-backend", "system/*.rs"),
                idp.authorization_code("demo-patient-app", "amy", None),
            ]
        });
        let stack = start(&idp, ("discovery", json!({"cluster": "idp", "timeout_ms": 2000})));
        (tokens.join().expect("tokens from the provider"), stack)
    });
    for (token, path) in [(&backend, "/fhir/Observation"), (&amy, "/fhir/Patient/pat-amy")] {
        let r = envoy.get(path, &[("authorization", &bearer(&access_token(token)))]);
        assert_eq!(
            r.status,
            200,
            "{path}: {}\nfilter log:\n{}",
            r.body_str(),
            envoy.filter_log().join("\n")
        );
    }
    assert_eq!(up.request_count(), 2);
    let forged = format!("{}x", access_token(&amy));
    let r = envoy.get("/fhir/Patient/pat-amy", &[("authorization", &bearer(&forged))]);
    assert_outcome(&r, 401, "unknown");
}
