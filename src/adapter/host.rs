//! Host access used by the root and stream contexts: time, shared data, the `verify_signature`
//! foreign function, properties, headers and local replies. Every host error is handled here
//! (logged, and turned into a fail-closed value); nothing panics.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

use crate::jwks::cache::{CasMismatch, SharedStore};
use crate::metrics::{MetricHost, MetricKind};

/// Milliseconds since the Unix epoch, from the host clock (0 if the host cannot tell, which makes
/// every token look expired: fail closed).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Microseconds since the Unix epoch from the host clock (for durations; 0 if the host cannot tell).
pub fn now_us() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Envoy's stats, through proxy-wasm metrics.
pub struct HostMetrics;

impl MetricHost for HostMetrics {
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        match hostcalls::define_metric(t, name) {
            Ok(id) => Some(id),
            Err(status) => {
                log::warn!("smart-fhir-edge: cannot define metric {name}: {status:?}");
                None
            }
        }
    }

    fn increment(&mut self, id: u32, delta: u64) {
        let _ = hostcalls::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn record(&mut self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Writes an info line to Envoy's log as it is (no formatting on the way).
pub fn log_info(line: &str) {
    let _ = hostcalls::log(proxy_wasm::types::LogLevel::Info, line);
}

/// Sets a filter-state property of the current stream (Envoy stores it as `wasm.<name>`).
pub fn set_filter_state(name: &str, value: &str) {
    if let Err(status) = hostcalls::set_property(vec![name], Some(value.as_bytes())) {
        log::debug!("smart-fhir-edge: cannot set filter state {name}: {status:?}");
    }
}

/// Dispatches an HTTP callout through a cluster; the token identifies the answer.
pub fn dispatch(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout_ms: u64,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        cluster,
        headers,
        body,
        vec![],
        std::time::Duration::from_millis(timeout_ms),
    )
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

/// An integer property (Envoy encodes them as 8 little-endian bytes).
pub fn property_int(path: &[&str]) -> Option<i64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    let raw: [u8; 8] = bytes.as_slice().try_into().ok()?;
    Some(i64::from_le_bytes(raw))
}

// The SDK's `get_map` and `get_map_value` panic on a header value that is not UTF-8 (which any
// client can send: Envoy passes obs-text bytes), so header maps are read through the ABI here and
// decoded by `crate::header_map`, which does not.
#[allow(clashing_extern_declarations)]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

/// `Status::Ok` in the proxy-wasm ABI.
const ABI_OK: u32 = 0;
/// `Status::NotFound` in the proxy-wasm ABI.
const ABI_NOT_FOUND: u32 = 1;

/// Takes ownership of a buffer the host allocated in this module's memory (through the SDK's
/// `proxy_on_memory_allocate`, a `Vec<u8>` of exactly `size` bytes).
fn host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into memory it obtained from `proxy_on_memory_allocate`,
    // which allocates them as a `Vec<u8>` with capacity `size` and leaks it for the host: this
    // takes the allocation back once (as the SDK's own readers do).
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// The request headers in order (names lowercase, as Envoy gives them), or `None` when the host
/// does not give a readable map (the request is then refused).
pub fn request_headers() -> Option<Vec<(String, String)>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: both out-pointers point to live locals; the host writes a pointer and a size.
    let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
    let bytes = host_buffer(data, size);
    if status != ABI_OK {
        log::warn!("smart-fhir-edge: cannot read the request headers (status {status})");
        return None;
    }
    match crate::header_map::decode(&bytes) {
        Ok(pairs) => Some(pairs),
        Err(e) => {
            log::warn!("smart-fhir-edge: the host's request header map is malformed: {e:?}");
            None
        }
    }
}

/// The value of a header (invalid UTF-8 replaced), `None` when absent or unreadable.
pub fn header(map: MapType, name: &str) -> Option<String> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the key is a live `&str` of `name.len()` bytes; both out-pointers point to live locals.
    let status = unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    let bytes = host_buffer(data, size);
    match status {
        ABI_OK => Some(crate::header_map::value_text(bytes)),
        ABI_NOT_FOUND => None,
        other => {
            log::debug!("smart-fhir-edge: cannot read header {name} (status {other})");
            None
        }
    }
}

pub fn set_header(map: MapType, name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(map, name, Some(value)) {
        log::warn!("smart-fhir-edge: cannot set header {name}: {status:?}");
    }
}

pub fn remove_header(map: MapType, name: &str) {
    let _ = hostcalls::remove_map_value(map, name);
}

/// Sends a local reply, stamped with `x-smart-fhir-edge: <version>` when `version_header` asks;
/// logs (and leaves the stream paused, which Envoy times out) if the host refuses.
pub fn send_reply(status: u16, headers: &[(&str, &str)], body: &[u8], version_header: bool) {
    let body = if body.is_empty() { None } else { Some(body) };
    let mut headers = headers.to_vec();
    if version_header {
        headers.push(("x-smart-fhir-edge", crate::VERSION));
    }
    if let Err(s) = hostcalls::send_http_response(u32::from(status), headers, body) {
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
