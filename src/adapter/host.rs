//! Host access used by the root and stream contexts: time, shared data, the `verify_signature`
//! foreign function, properties, headers and local replies. Every host error is handled here
//! (logged, and turned into a fail-closed value); nothing panics.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};

use crate::jwks::cache::{CasMismatch, SharedStore};

/// Milliseconds since the Unix epoch, from the host clock (0 if the host cannot tell, which makes
/// every token look expired: fail closed).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Envoy's shared data, scoped to this plugin's VM id.
pub struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(CasMismatch),
            Err(status) => {
                log::warn!("smart-fhir-edge: shared data write failed: {status:?}");
                Err(CasMismatch)
            }
        }
    }
}

/// Calls Envoy's `verify_signature` foreign function with encoded arguments.
pub fn call_verify_signature(arguments: &[u8]) -> Result<Vec<u8>, String> {
    match hostcalls::call_foreign_function("verify_signature", Some(arguments)) {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Ok(Vec::new()),
        Err(status) => Err(format!("verify_signature failed: {status:?}")),
    }
}

/// Whether the host offers `verify_signature` (Envoy does; other hosts may not). Probed once at
/// configure time with empty arguments: a host without it answers NotFound.
pub fn has_verify_signature() -> bool {
    !matches!(
        hostcalls::call_foreign_function("verify_signature", Some(&[])),
        Err(Status::NotFound)
    )
}

/// A property as UTF-8 text.
pub fn property(path: &[&str]) -> Option<String> {
    hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

pub fn request_headers() -> Vec<(String, String)> {
    hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
}

pub fn header(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value(map, name).ok().flatten()
}

pub fn set_header(map: MapType, name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(map, name, Some(value)) {
        log::warn!("smart-fhir-edge: cannot set header {name}: {status:?}");
    }
}

pub fn remove_header(map: MapType, name: &str) {
    let _ = hostcalls::remove_map_value(map, name);
}

/// Sends a local reply; logs (and leaves the stream paused, which Envoy times out) if the host
/// refuses.
pub fn send_reply(status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let body = if body.is_empty() { None } else { Some(body) };
    if let Err(s) = hostcalls::send_http_response(u32::from(status), headers.to_vec(), body) {
        log::error!("smart-fhir-edge: cannot send the local reply: {s:?}");
    }
}

/// The bytes of a buffer, bounded.
pub fn buffer(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(kind, 0, size).ok().flatten()
}

pub fn set_buffer(kind: BufferType, size: usize, value: &[u8]) -> bool {
    hostcalls::set_buffer(kind, 0, size, value).is_ok()
}
