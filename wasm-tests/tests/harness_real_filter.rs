//! The host emulator driving the built filter (`make build` first): what the adapter does today,
//! and that the module only needs what Envoy provides.

use wasm_tests::{HarnessError, Host, RefusalReason};

/// The filter's version, from the workspace manifest (the filter stamps it on responses).
fn filter_version() -> String {
    let manifest = include_str!("../../Cargo.toml");
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[package]")
        .find_map(|l| {
            l.strip_prefix("version = ")
                .map(|v| v.trim_matches('"').to_string())
        })
        .expect("the workspace manifest has a package version")
}

fn valid_config() -> String {
    serde_json::json!({
        "fhir_base": "/fhir",
        "providers": [{
            "issuer": "https://idp.example",
            "audiences": ["https://fhir.example/fhir"],
            "remote_jwks": {"uri": "https://idp.example/jwks", "cluster": "idp"}
        }]
    })
    .to_string()
}

#[test]
fn refuses_invalid_configuration_with_a_log_naming_the_field() {
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
        let host = Host::new();
        let refused = host
            .vm_with_config(config.to_string())
            .err()
            .unwrap_or_else(|| panic!("{field}: accepted"));
        assert_eq!(refused.reason, RefusalReason::ConfigureReturnedFalse, "{field}");
        assert!(refused.logged(&format!("field `{field}`")), "{field}: {refused}");
        assert!(host.vms().is_empty(), "{field}: no worker started");
    }
}

#[test]
fn a_request_passes_and_the_response_gets_the_version_stamp() {
    let host = Host::new();
    let vm = host
        .vm_with_config(valid_config())
        .unwrap_or_else(|e| panic!("{e}"));
    let s = vm.get("/fhir/metadata", &[]);
    let forwarded = s.send_headers(true);
    assert_eq!(forwarded.expect_continued().get(":path"), Some("/fhir/metadata"));
    let out = s.respond(
        200,
        &[("content-type", "application/fhir+json")],
        br#"{"resourceType":"CapabilityStatement"}"#,
    );
    let r = out.expect_responded();
    assert_eq!(r.header("x-smart-fhir-edge"), Some(filter_version().as_str()));
    assert_eq!(r.body_text(), r#"{"resourceType":"CapabilityStatement"}"#);
    assert!(host
        .logs_containing("configured")
        .iter()
        .any(|l| l.message.contains("1 provider(s)")));
}

#[test]
fn the_filter_imports_only_what_envoy_provides() {
    let host = Host::try_new().unwrap_or_else(|e| panic!("{e}"));
    let imports = host.module_imports();
    assert!(
        imports
            .iter()
            .all(|i| i.starts_with("env.proxy_") || i.starts_with("wasi_snapshot_preview1.")),
        "{imports:?}"
    );
}

#[test]
fn an_import_envoy_does_not_provide_is_named_when_the_module_loads() {
    let path = wasm_tests::default_module_path();
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: build it first: make build", path.display()));
    // Rename one import in place (same length keeps the binary valid).
    let (from, to) = (&b"proxy_get_property"[..], &b"proxy_get_propertz"[..]);
    let mut patched = bytes.clone();
    let mut renamed = 0;
    let mut i = 0;
    while i + from.len() <= patched.len() {
        if &patched[i..i + from.len()] == from {
            patched[i..i + from.len()].copy_from_slice(to);
            renamed += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(renamed > 0, "the filter imports proxy_get_property");
    match Host::builder().module_bytes(&patched).build() {
        Err(HarnessError::MissingImports(names)) => {
            assert_eq!(names, vec!["env.proxy_get_propertz".to_string()])
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a module importing env.proxy_get_propertz was accepted"),
    }
}

#[test]
fn every_worker_vm_starts_its_own_root_context_on_one_host() {
    let host = Host::new();
    let (a, b) = (
        host.vm_with_config(valid_config()).unwrap(),
        host.vm_with_config(valid_config()).unwrap(),
    );
    assert_eq!((a.index(), b.index()), (0, 1));
    // One canary plus two workers configured, as Envoy does for one configuration.
    assert_eq!(host.logs_containing("configured").len(), 3);
    for vm in [&a, &b] {
        let s = vm.get("/fhir/Patient/1", &[]);
        assert!(s.send_headers(true).is_continued());
    }
}

#[test]
fn many_streams_keep_the_linear_memory_bounded() {
    let host = Host::new();
    let vm = host.vm_with_config(valid_config()).unwrap();
    let run = |n: usize| {
        for i in 0..n {
            let s = vm.get(
                &format!("/fhir/Patient/{i}"),
                &[("authorization", &format!("Bearer t{i}"))],
            );
            s.send_headers(true).expect_continued();
            s.respond(200, &[], b"{}").expect_responded();
            s.finish();
        }
    };
    run(200);
    let warm = vm.memory_size_bytes();
    run(2_000);
    assert_eq!(
        vm.memory_size_bytes(),
        warm,
        "streams that ended leave nothing behind"
    );
    assert_eq!(vm.live_streams(), 0);
}
