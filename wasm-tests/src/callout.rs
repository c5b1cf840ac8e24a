//! HTTP callouts (`proxy_http_call`) as the test sees and answers them.

use std::time::Duration;

use crate::host::{Host, PendingCallout};
use crate::types::Headers;

/// How a callout ends.
#[derive(Clone, Debug)]
pub(crate) enum CallResult {
    /// A response (real, or synthesised by Envoy such as the 504 of a timeout).
    Response {
        headers: Headers,
        body: Vec<u8>,
        trailers: Option<Headers>,
    },
    /// The stream was reset: Envoy calls back with no headers and no body and `proxy_get_status`
    /// answers `BrokenConnection` / "reset".
    Reset,
}

impl CallResult {
    /// What Envoy's async client delivers when the callout's timeout expires: the router's local
    /// reply, a 504 with body "upstream request timeout", through the success path.
    pub(crate) fn timeout() -> CallResult {
        let body = b"upstream request timeout".to_vec();
        let headers = Headers::from_pairs(&[
            (":status", "504".to_string()),
            ("content-length", body.len().to_string()),
            ("content-type", "text/plain".to_string()),
        ]);
        CallResult::Response {
            headers,
            body,
            trailers: None,
        }
    }
}

/// A pending HTTP callout. Answer it with [`Callout::respond`], [`Callout::time_out`] or
/// [`Callout::fail`]; it is then delivered to the VM that dispatched it.
#[derive(Clone)]
pub struct Callout {
    host: Host,
    seq: u64,
    /// Index of the VM that dispatched it.
    pub vm: usize,
    /// Token the module got back.
    pub token: u32,
    /// Target cluster (the `upstream` argument).
    pub cluster: String,
    /// Request headers as Envoy would send them (`content-length` set when there is a body).
    pub headers: Headers,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: Headers,
    /// Timeout the module asked for (`None` = 0 = no timeout).
    pub timeout: Option<Duration>,
    /// When it was dispatched (test clock, ns since the Unix epoch).
    pub dispatched_at_ns: u64,
}

impl std::fmt::Debug for Callout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callout")
            .field("vm", &self.vm)
            .field("token", &self.token)
            .field("cluster", &self.cluster)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Callout {
    pub(crate) fn from_pending(host: Host, c: &PendingCallout) -> Callout {
        Callout {
            host,
            seq: c.seq,
            vm: c.vm,
            token: c.token,
            cluster: c.cluster.clone(),
            headers: c.headers.clone(),
            body: c.body.clone(),
            trailers: c.trailers.clone(),
            timeout: c.timeout,
            dispatched_at_ns: c.dispatched_at_ns,
        }
    }

    /// A request header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// `:path`.
    pub fn path(&self) -> &str {
        self.headers.get(":path").unwrap_or("")
    }

    /// `:method`.
    pub fn method(&self) -> &str {
        self.headers.get(":method").unwrap_or("")
    }

    /// `:authority`.
    pub fn authority(&self) -> &str {
        self.headers.get(":authority").unwrap_or("")
    }

    /// Whether it is still pending.
    pub fn is_pending(&self) -> bool {
        self.host
            .inner
            .state
            .borrow()
            .callouts
            .iter()
            .any(|c| c.seq == self.seq)
    }

    #[track_caller]
    fn take(&self) -> PendingCallout {
        self.host.take_callout(self.seq).unwrap_or_else(|| {
            panic!("callout {self:?} is no longer pending (answered, timed out or cancelled)")
        })
    }

    /// Answers with `status`, `headers` (`:status` is added) and `body`.
    #[track_caller]
    pub fn respond(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.respond_with_trailers(status, headers, body, None);
    }

    /// Answers with a JSON body and `content-type: application/json`.
    #[track_caller]
    pub fn respond_json(&self, status: u16, json: &str) {
        self.respond(status, &[("content-type", "application/json")], json.as_bytes());
    }

    /// Answers with trailers too.
    #[track_caller]
    pub fn respond_with_trailers(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: Option<&[(&str, &str)]>,
    ) {
        let pending = self.take();
        let mut h = Headers::new();
        h.add(":status", &status.to_string());
        for (k, v) in headers {
            h.add(k, v);
        }
        let result = CallResult::Response {
            headers: h,
            body: body.to_vec(),
            trailers: trailers.map(Headers::from_pairs),
        };
        self.host.deliver_callout(pending, result);
    }

    /// Times it out now, as Envoy does when the timeout expires: the module receives a 504 with body
    /// "upstream request timeout" (Envoy's router local reply), not an empty response.
    #[track_caller]
    pub fn time_out(&self) {
        let pending = self.take();
        self.host.deliver_callout(pending, CallResult::timeout());
    }

    /// Fails it with a reset: the module is called back with 0 headers, 0 body bytes, 0 trailers, and
    /// `proxy_get_status` answers `BrokenConnection` ("reset").
    #[track_caller]
    pub fn fail(&self) {
        let pending = self.take();
        self.host.deliver_callout(pending, CallResult::Reset);
    }
}
