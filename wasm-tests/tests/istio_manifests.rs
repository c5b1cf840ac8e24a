//! The Istio deployment examples in `envoy/istio/` (Kubernetes manifests, which `make validate`
//! skips): the plugin configuration they carry is accepted by the filter, the WasmPlugin embeds
//! `plugin-config.json` verbatim, and the cluster the configuration names is the one Istio builds
//! from the identity provider's ServiceEntry.
//!
//! No YAML parser: the WasmPlugin's `pluginConfig` is JSON (a YAML flow mapping) indented under its
//! key, so it is cut out by indentation and compared with the JSON file.

use serde_json::Value;
use smart_fhir_edge::config::{Config, KeySource};
use wasm_tests::real_envoy::repo_root;

fn read(name: &str) -> String {
    let p = repo_root().join("envoy/istio").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines under `key:` (indented deeper, or a sequence at the key's indentation), dedented by
/// the first one's indentation.
fn block_under(yaml: &str, key: &str) -> Option<String> {
    let mut lines = yaml.lines();
    let head = lines.find(|l| l.trim_start() == format!("{key}:"))?;
    let key_indent = indent(head);
    let body: Vec<&str> = lines
        .take_while(|l| {
            l.trim().is_empty()
                || indent(l) > key_indent
                || (indent(l) == key_indent && l.trim_start().starts_with("- "))
        })
        .collect();
    let first = body.first().map(|l| indent(l))?;
    Some(
        body.iter()
            .map(|l| l.get(first..).unwrap_or("").trim_end())
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .to_string(),
    )
}

/// Values of `key: value` lines (any indentation, list dash allowed), in order.
fn values_of<'a>(yaml: &'a str, key: &str) -> Vec<&'a str> {
    yaml.lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim())
        .collect()
}

/// Every number in `v` is an integer Istio's protobuf `Struct` (doubles) carries exactly.
fn numbers_survive_a_struct(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.as_u64().is_some_and(|u| u <= 1 << 53),
        Value::Array(a) => a.iter().all(numbers_survive_a_struct),
        Value::Object(o) => o.values().all(numbers_survive_a_struct),
        _ => true,
    }
}

#[test]
fn the_wasm_plugin_carries_plugin_config_json_verbatim_and_the_filter_accepts_it() {
    let json_text = read("plugin-config.json");
    let yaml = read("wasm-plugin.yaml");
    let embedded = block_under(&yaml, "pluginConfig").expect("a pluginConfig block in wasm-plugin.yaml");
    assert_eq!(
        embedded,
        json_text.trim_end(),
        "wasm-plugin.yaml's pluginConfig must be envoy/istio/plugin-config.json verbatim"
    );
    let value: Value = serde_json::from_str(&json_text).expect("plugin-config.json is JSON");
    assert!(
        numbers_survive_a_struct(&value),
        "numbers must be integers (Istio passes pluginConfig through a protobuf Struct)"
    );
    // Istio re-serializes the Struct; the filter sees equivalent JSON, not these bytes.
    for bytes in [json_text.into_bytes(), value.to_string().into_bytes()] {
        let config = Config::from_json(&bytes).unwrap_or_else(|e| panic!("refused by the filter: {e}"));
        assert_eq!(config.providers.len(), 1);
        assert_eq!(config.fhir_base, "/fhir");
    }
}

#[test]
fn the_configured_cluster_is_the_one_istio_builds_from_the_service_entry() {
    let config = Config::from_json(read("plugin-config.json").as_bytes()).expect("valid");
    let provider = &config.providers[0];
    let KeySource::Remote(remote) = &provider.keys else {
        panic!("the example fetches a remote JWKS");
    };
    // Istio names outbound clusters `outbound|<port>|<subset>|<host>`.
    let parts: Vec<&str> = remote.cluster.split('|').collect();
    assert_eq!(parts.len(), 4, "{}", remote.cluster);
    let (direction, port, subset, host) = (parts[0], parts[1], parts[2], parts[3]);
    assert_eq!((direction, subset), ("outbound", ""), "{}", remote.cluster);
    assert_eq!(remote.uri.scheme, "https");
    assert_eq!(
        remote.uri.authority, host,
        "the JWKS is requested from the cluster's host"
    );
    assert!(provider.issuer.starts_with(&format!("https://{host}")));

    let mesh = read("idp-service-entry.yaml");
    let kinds = values_of(&mesh, "kind");
    assert_eq!(kinds, ["ServiceEntry", "DestinationRule"]);
    let (service_entry, destination_rule) = mesh.split_once("\n---\n").expect("two documents");
    assert_eq!(
        block_under(service_entry, "hosts").as_deref(),
        Some(&*format!("- {host}"))
    );
    assert_eq!(values_of(service_entry, "number"), [port]);
    assert_eq!(values_of(service_entry, "resolution"), ["DNS"]);
    // The filter's callout is plain HTTP: the sidecar originates TLS on that port.
    assert_eq!(values_of(destination_rule, "host"), [host]);
    assert_eq!(values_of(destination_rule, "number"), [port]);
    assert_eq!(values_of(destination_rule, "mode"), ["SIMPLE"]);
    assert_eq!(values_of(destination_rule, "sni"), [host]);
}

#[test]
fn the_wasm_plugin_runs_first_fails_closed_and_pulls_the_image_the_dockerfile_builds() {
    let yaml = read("wasm-plugin.yaml");
    let one = |key: &str| -> String {
        let v = values_of(&yaml, key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0].to_string()
    };
    assert_eq!(one("apiVersion"), "extensions.istio.io/v1alpha1");
    assert_eq!(one("kind"), "WasmPlugin");
    assert_eq!(one("phase"), "AUTHN");
    assert_eq!(one("failStrategy"), "FAIL_CLOSE");
    assert_eq!(one("mode"), "SERVER");
    assert!(one("url").starts_with("oci://"), "an OCI image");
    assert!(one("number").parse::<u16>().is_ok(), "a port to match");
    assert!(block_under(&yaml, "matchLabels").is_some(), "a workload selector");

    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // One layer holding plugin.wasm: the "compat" layout Istio's image fetcher reads.
    assert_eq!(
        instructions,
        ["FROM scratch", "COPY smart_fhir_edge.wasm ./plugin.wasm"]
    );
}
