//! The proxy-wasm ABI 0.2.1 vocabulary the host emulator speaks: status codes, enumerations and the
//! serialised header-map format, with the numeric values Envoy (proxy-wasm-cpp-host) uses.

/// `WasmResult` as Envoy returns it from host functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The thing asked for does not exist (header, property, shared-data key, metric...).
    NotFound = 1,
    /// The call makes no sense in this context (wrong map for the phase, bad cluster...).
    BadArgument = 2,
    /// A value could not be serialised.
    SerializationFailure = 3,
    /// An argument could not be parsed.
    ParseFailure = 4,
    /// A pointer/size pair points outside the module's memory.
    InvalidMemoryAccess = 6,
    /// A shared queue is empty.
    Empty = 7,
    /// Compare-and-swap on shared data lost the race.
    CasMismatch = 8,
    /// The host failed internally.
    InternalFailure = 10,
    /// An HTTP call's connection was reset (reported through `proxy_get_status`).
    BrokenConnection = 11,
    /// The host does not implement this call.
    Unimplemented = 12,
}

impl Status {
    /// The value as the module sees it.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// Log levels of `proxy_log` (spdlog's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// `trace`
    Trace = 0,
    /// `debug`
    Debug = 1,
    /// `info`
    Info = 2,
    /// `warn`
    Warn = 3,
    /// `error`
    Error = 4,
    /// `critical`
    Critical = 5,
}

impl LogLevel {
    /// The level for an ABI value, if it is one.
    pub fn from_code(code: u32) -> Option<LogLevel> {
        Some(match code {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

/// Header maps addressed by `proxy_*_header_map_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcReceiveInitialMetadata,
    GrpcReceiveTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub(crate) fn from_code(code: u32) -> Option<MapType> {
        Some(match code {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcReceiveInitialMetadata,
            5 => MapType::GrpcReceiveTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Buffers addressed by `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufferType {
    HttpRequestBody,
    HttpResponseBody,
    DownstreamData,
    UpstreamData,
    HttpCallResponseBody,
    GrpcReceiveBuffer,
    VmConfiguration,
    PluginConfiguration,
    CallData,
}

impl BufferType {
    pub(crate) fn from_code(code: u32) -> Option<BufferType> {
        Some(match code {
            0 => BufferType::HttpRequestBody,
            1 => BufferType::HttpResponseBody,
            2 => BufferType::DownstreamData,
            3 => BufferType::UpstreamData,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            8 => BufferType::CallData,
            _ => return None,
        })
    }
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Monotonic counter.
    Counter,
    /// Gauge (set, add, subtract).
    Gauge,
    /// Histogram (recorded samples).
    Histogram,
}

/// Envoy's metric-id layout: the low two bits carry the kind, ids advance by 4.
pub(crate) const METRIC_TYPE_MASK: u32 = 0x3;
pub(crate) const METRIC_ID_INCREMENT: u32 = 0x4;

impl MetricKind {
    pub(crate) fn from_code(code: u32) -> Option<MetricKind> {
        Some(match code {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }

    pub(crate) fn from_metric_id(id: u32) -> Option<MetricKind> {
        MetricKind::from_code(id & METRIC_TYPE_MASK)
    }

    pub(crate) fn tag(self) -> u32 {
        match self {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
            MetricKind::Histogram => 2,
        }
    }
}

/// Decodes proxy-wasm's serialised pairs: `u32 count`, then `count` × (`u32 key_len`, `u32 value_len`),
/// then each key and value followed by a NUL. Like Envoy, a malformed buffer reads as no pairs.
pub(crate) fn decode_pairs(buf: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn u32_at(buf: &[u8], at: usize) -> Option<usize> {
        let bytes = buf.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    }
    let Some(count) = u32_at(buf, 0) else {
        return Vec::new();
    };
    let Some(header_end) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else {
        return Vec::new();
    };
    if header_end > buf.len() {
        return Vec::new();
    }
    let mut lens = Vec::with_capacity(count);
    for i in 0..count {
        let (Some(k), Some(v)) = (u32_at(buf, 4 + i * 8), u32_at(buf, 8 + i * 8)) else {
            return Vec::new();
        };
        lens.push((k, v));
    }
    let mut at = header_end;
    let mut pairs = Vec::with_capacity(count);
    for (k, v) in lens {
        let Some(key) = buf.get(at..at + k) else {
            return Vec::new();
        };
        at += k + 1;
        let Some(value) = buf.get(at..at + v) else {
            return Vec::new();
        };
        at += v + 1;
        pairs.push((key.to_vec(), value.to_vec()));
    }
    pairs
}

/// Encodes pairs in proxy-wasm's serialised format (see [`decode_pairs`]).
pub(crate) fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_through_the_abi_encoding() {
        let pairs = vec![
            (":path".to_string(), "/a".to_string()),
            ("x".to_string(), String::new()),
        ];
        let decoded = decode_pairs(&encode_pairs(&pairs));
        let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn malformed_pairs_read_as_empty_like_envoy() {
        for buf in [
            &b""[..],
            &[1, 0, 0, 0][..],
            &[1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, b'a'][..],
        ] {
            assert!(decode_pairs(buf).is_empty(), "{buf:?}");
        }
    }
}
