//! Values the tests read: header maps with Envoy's ordering rules, responses, stream outcomes, log
//! entries and property encodings.

use std::fmt;

use crate::abi::LogLevel;

/// An HTTP header map as Envoy keeps it: lowercase names, pseudo-headers (`:path`...) first, and
/// repeated names allowed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// An empty map.
    pub fn new() -> Headers {
        Headers(Vec::new())
    }

    /// A map from `(name, value)` pairs, added in order.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.add(k.as_ref(), v.as_ref());
        }
        h
    }

    /// The first value of `name` (case-insensitive), as Envoy's `getHeaderMapValue` answers.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.0
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Number of entries (what Envoy passes as `num_headers`).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries in Envoy's iteration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The entries as owned pairs.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.0.clone()
    }

    /// Appends an entry (Envoy `addCopy`): the name is lowercased; pseudo-headers go after the
    /// existing pseudo-headers, everything else at the end.
    pub fn add(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        if name.starts_with(':') {
            let at = self
                .0
                .iter()
                .position(|(k, _)| !k.starts_with(':'))
                .unwrap_or(self.0.len());
            self.0.insert(at, (name, value.to_string()));
        } else {
            self.0.push((name, value.to_string()));
        }
    }

    /// Removes every entry of `name`.
    pub fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.0.retain(|(k, _)| *k != name);
    }

    /// Replaces every entry of `name` by one entry (Envoy `setCopy`: remove, then add).
    pub fn set(&mut self, name: &str, value: &str) {
        self.remove(name);
        self.add(name, value);
    }

    pub(crate) fn replace_all(&mut self, pairs: Vec<(String, String)>) {
        self.0.clear();
        for (k, v) in pairs {
            self.add(&k, &v);
        }
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| format!("{k}: {v}")))
            .finish()
    }
}

/// Where a downstream response came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOrigin {
    /// The upstream answered (the test called `respond`).
    Upstream,
    /// A local reply: the filter's (`proxy_send_local_response`) or Envoy's after the filter
    /// (`Stream::envoy_local_reply`); `details` is the response-code detail.
    LocalReply {
        /// `response_code_details` the module passed (empty for the Rust SDK's `send_http_response`),
        /// or Envoy's (e.g. `no_healthy_upstream`).
        details: String,
    },
    /// Envoy replied 503 because the module trapped (`wasm_fail_stream`).
    WasmFailure,
}

/// A response as the downstream client received it.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// `:status`.
    pub status: u16,
    /// Headers as sent downstream, `:status` included.
    pub headers: Headers,
    /// Body bytes sent downstream so far.
    pub body: Vec<u8>,
    /// Trailers, if any were sent.
    pub trailers: Option<Headers>,
    /// Whether the response is complete (end of stream reached downstream).
    pub complete: bool,
    /// Who produced it.
    pub origin: ResponseOrigin,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = match std::str::from_utf8(&self.body) {
            Ok(text) => format!("{text:?}"),
            Err(_) => format!("<{} bytes, not UTF-8>", self.body.len()),
        };
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &format_args!("{body}"))
            .field("trailers", &self.trailers)
            .field("complete", &self.complete)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Response {
    /// The first value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether this is a local reply (the filter's, or Envoy's after it), not the upstream's.
    pub fn is_local_reply(&self) -> bool {
        matches!(self.origin, ResponseOrigin::LocalReply { .. })
    }
}

/// What the upstream received of the request so far.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// Headers as forwarded (after the filter's changes), once released.
    pub headers: Option<Headers>,
    /// Body bytes released so far.
    pub body: Vec<u8>,
    /// Trailers, if released.
    pub trailers: Option<Headers>,
    /// Whether the whole request has been released.
    pub complete: bool,
}

impl fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("trailers", &self.trailers)
            .field("complete", &self.complete)
            .finish()
    }
}

/// Where a stream stands after the last step, as Envoy's filter manager would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was sent through the filter yet.
    NotStarted,
    /// The request headers passed the filter and went upstream (as modified); no response yet.
    Continued {
        /// The forwarded request headers.
        headers: Headers,
    },
    /// The filter holds the stream (a callback returned `Pause` and nothing resumed it yet).
    Paused,
    /// The filter (or Envoy after it, see `Stream::envoy_local_reply`) answered locally; this is
    /// what the client received (after the filter's own response callbacks ran on it, as in Envoy).
    LocalReply(Response),
    /// The upstream's response passed the filter; this is what the client received.
    Responded(Response),
    /// The stream was reset (the module closed it, or replied after response headers had gone out).
    Reset,
}

impl Outcome {
    /// Whether the filter currently holds the stream.
    pub fn is_paused(&self) -> bool {
        matches!(self, Outcome::Paused)
    }

    /// Whether the request went upstream and no response arrived yet.
    pub fn is_continued(&self) -> bool {
        matches!(self, Outcome::Continued { .. })
    }

    /// The response the client received, local or upstream.
    pub fn response(&self) -> Option<&Response> {
        match self {
            Outcome::LocalReply(r) | Outcome::Responded(r) => Some(r),
            _ => None,
        }
    }

    /// The `:status` the client received, if a response was sent.
    pub fn status(&self) -> Option<u16> {
        self.response().map(|r| r.status)
    }

    /// The forwarded request headers; panics (showing the outcome) if the request did not continue.
    #[track_caller]
    pub fn expect_continued(&self) -> &Headers {
        match self {
            Outcome::Continued { headers } => headers,
            other => panic!("expected the request to continue upstream, got {other:#?}"),
        }
    }

    /// The filter's own reply; panics (showing the outcome) otherwise.
    #[track_caller]
    pub fn expect_local_reply(&self) -> &Response {
        match self {
            Outcome::LocalReply(r) => r,
            other => panic!("expected a local reply, got {other:#?}"),
        }
    }

    /// The upstream response as delivered; panics (showing the outcome) otherwise.
    #[track_caller]
    pub fn expect_responded(&self) -> &Response {
        match self {
            Outcome::Responded(r) => r,
            other => panic!("expected the upstream response to be delivered, got {other:#?}"),
        }
    }

    /// Panics (showing the outcome) unless the filter holds the stream.
    #[track_caller]
    pub fn expect_paused(&self) {
        if !self.is_paused() {
            panic!("expected the stream to be paused, got {self:#?}");
        }
    }
}

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogSource {
    /// `proxy_log`.
    Proxy,
    /// WASI `fd_write` to stdout (Envoy logs it at info).
    Stdout,
    /// WASI `fd_write` to stderr (Envoy logs it at error); Rust panics land here.
    Stderr,
    /// The host itself (what Envoy would log about the module, e.g. a trap).
    Host,
}

/// One log line, as Envoy would have logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Level.
    pub level: LogLevel,
    /// Text.
    pub message: String,
    /// Index of the VM that logged it.
    pub vm: usize,
    /// Context it was logged from (root context, HTTP context, or 0 during `_initialize`).
    pub context: u32,
    /// Origin.
    pub source: LogSource,
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[vm {} {:?} {:?}] {}",
            self.vm, self.level, self.source, self.message
        )
    }
}

/// Encodings of property values as Envoy serialises them for `proxy_get_property`.
pub struct Property;

impl Property {
    /// A string property (raw bytes).
    pub fn string(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    /// An int64 property (8 bytes, little-endian), e.g. `response.code`.
    pub fn int(v: i64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// A uint64 property (8 bytes, little-endian), e.g. `connection_id`.
    pub fn uint(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// A bool property (1 byte).
    pub fn bool(v: bool) -> Vec<u8> {
        vec![u8::from(v)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_lowercased_and_pseudo_headers_come_first() {
        let mut h = Headers::new();
        h.add("X-A", "1");
        h.add(":path", "/p");
        h.add(":method", "GET");
        h.add("x-a", "2");
        let got: Vec<(&str, &str)> = h.iter().collect();
        assert_eq!(
            got,
            vec![(":path", "/p"), (":method", "GET"), ("x-a", "1"), ("x-a", "2")]
        );
        assert_eq!(h.get("X-A"), Some("1"));
        assert_eq!(h.get_all("x-a"), vec!["1", "2"]);
    }

    #[test]
    fn set_replaces_every_entry_of_a_name() {
        let mut h = Headers::from_pairs(&[("a", "1"), ("b", "x"), ("a", "2")]);
        h.set("A", "3");
        assert_eq!(h.get_all("a"), vec!["3"]);
        assert_eq!(h.len(), 2);
    }
}
