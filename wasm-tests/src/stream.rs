//! HTTP streams through the filter, modelled on Envoy's filter manager with this filter followed by
//! the router: what the filter sees (and when its header/body pointers are valid), what it holds
//! (Pause), what it releases upstream/downstream, and local replies — which, like in Envoy, are
//! sent after the current callback returns and then run through the filter's own response
//! callbacks.

use std::collections::HashMap;

use crate::types::{Headers, Outcome, Response, ResponseOrigin, UpstreamRequest};
use crate::vm::{VmInner, VmState};
use crate::Vm;

/// Iteration state of a direction's headers at this filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadersState {
    NotReached,
    Stopped,
    Continued,
}

/// One direction (request: decode, response: encode) of a stream.
#[derive(Clone, Debug)]
pub(crate) struct Side {
    pub headers: Headers,
    pub headers_state: HeadersState,
    pub headers_access: bool,
    pub body: Vec<u8>,
    pub body_access: bool,
    pub buffering: bool,
    pub trailers: Option<Headers>,
    pub trailers_access: bool,
    pub end_seen: bool,
    pub out_headers: Option<Headers>,
    pub out_body: Vec<u8>,
    pub out_trailers: Option<Headers>,
    pub out_complete: bool,
    /// The headers callback stopped all iteration (`StopAllIterationAndWatermark`): body and
    /// trailers are buffered without calling the filter until it continues.
    pub stopped_all: bool,
}

impl Side {
    fn new() -> Side {
        Side {
            headers: Headers::new(),
            headers_state: HeadersState::NotReached,
            headers_access: false,
            body: Vec::new(),
            body_access: false,
            buffering: false,
            trailers: None,
            trailers_access: false,
            end_seen: false,
            out_headers: None,
            out_body: Vec::new(),
            out_trailers: None,
            out_complete: false,
            stopped_all: false,
        }
    }

    /// The filter let everything it received so far through (a callback returned Continue, or
    /// the module called `continue_stream`).
    fn resume(&mut self) {
        if self.headers_state != HeadersState::NotReached && self.out_headers.is_none() {
            self.out_headers = Some(self.headers.clone());
        }
        if self.headers_state == HeadersState::Stopped {
            self.headers_state = HeadersState::Continued;
        }
        if !self.body.is_empty() {
            let body = std::mem::take(&mut self.body);
            self.out_body.extend_from_slice(&body);
        }
        self.buffering = false;
        if let Some(t) = &self.trailers {
            self.out_trailers = Some(t.clone());
        }
        if self.end_seen {
            self.out_complete = true;
        }
    }

    fn holding(&self) -> bool {
        self.stopped_all
            || self.headers_state == HeadersState::Stopped
            || self.buffering
            || (self.trailers.is_some() && self.out_trailers.is_none())
    }
}

/// Envoy-side state of one HTTP context.
#[derive(Clone, Debug)]
pub(crate) struct StreamState {
    pub root: u32,
    pub created: bool,
    pub deleted: bool,
    pub req: Side,
    pub resp: Side,
    pub test_props: HashMap<String, Vec<u8>>,
    pub module_props: HashMap<Vec<u8>, Vec<u8>>,
    /// A local reply was sent while decoding: the request side is over.
    pub local_reply_sent: bool,
    /// Response headers exist in the filter manager (upstream or local reply).
    pub response_started: bool,
    pub origin: ResponseOrigin,
    pub response_code: Option<u16>,
    pub code_details: Option<String>,
    pub reset: bool,
    pub log_phase: bool,
    /// `failure_local_reply_sent_`: the VM failed on this stream; the filter is bypassed.
    pub failed: bool,
    pub finished: bool,
}

impl StreamState {
    pub(crate) fn new(root: u32, headers: Headers) -> StreamState {
        let mut req = Side::new();
        req.headers = headers;
        StreamState {
            root,
            created: false,
            deleted: false,
            req,
            resp: Side::new(),
            test_props: HashMap::new(),
            module_props: HashMap::new(),
            local_reply_sent: false,
            response_started: false,
            origin: ResponseOrigin::Upstream,
            response_code: None,
            code_details: None,
            reset: false,
            log_phase: false,
            failed: false,
            finished: false,
        }
    }

    fn response_over(&self) -> bool {
        self.reset || self.resp.out_complete
    }

    pub(crate) fn outcome(&self) -> Outcome {
        if self.reset {
            return Outcome::Reset;
        }
        if self.response_started {
            if self.resp.holding() || self.resp.out_headers.is_none() {
                return Outcome::Paused;
            }
            let headers = self.resp.out_headers.clone().unwrap_or_default();
            let status = headers.get(":status").and_then(|s| s.parse().ok()).unwrap_or(0);
            let response = Response {
                status,
                headers,
                body: self.resp.out_body.clone(),
                trailers: self.resp.out_trailers.clone(),
                complete: self.resp.out_complete,
                origin: self.origin.clone(),
            };
            return match self.origin {
                ResponseOrigin::Upstream => Outcome::Responded(response),
                _ => Outcome::LocalReply(response),
            };
        }
        match self.req.headers_state {
            HeadersState::NotReached => Outcome::NotStarted,
            _ if self.req.holding() => Outcome::Paused,
            _ => match &self.req.out_headers {
                Some(h) => Outcome::Continued { headers: h.clone() },
                None => Outcome::Paused,
            },
        }
    }

    pub(crate) fn upstream(&self) -> UpstreamRequest {
        UpstreamRequest {
            headers: self.req.out_headers.clone(),
            body: self.req.out_body.clone(),
            trailers: self.req.out_trailers.clone(),
            complete: self.req.out_complete,
        }
    }
}

/// Envoy's local reply headers (`Utility::prepareLocalReply`): `:status`, then the module's
/// headers appended (names lowercased), then `content-length` and a default
/// `content-type: text/plain` if there is a body — or neither if the body is empty.
pub(crate) fn local_reply_headers(status: u32, additional: &[(String, String)], body: &[u8]) -> Headers {
    let mut h = Headers::new();
    h.add(":status", &status.to_string());
    for (k, v) in additional {
        h.add(k, v);
    }
    if body.is_empty() {
        h.remove("content-length");
        h.remove("content-type");
    } else {
        h.set("content-length", &body.len().to_string());
        if !h.contains("content-type") {
            h.add("content-type", "text/plain");
        }
    }
    h
}

#[derive(Clone, Copy)]
enum Dir {
    Request,
    Response,
}

impl VmInner {
    fn stream(&self, ctx: u32) -> &StreamState {
        self.store
            .data()
            .streams
            .get(&ctx)
            .unwrap_or_else(|| panic!("no stream {ctx}"))
    }

    fn stream_mut(&mut self, ctx: u32) -> &mut StreamState {
        self.store
            .data_mut()
            .streams
            .get_mut(&ctx)
            .unwrap_or_else(|| panic!("no stream {ctx}"))
    }

    pub(crate) fn new_stream(&mut self, headers: Headers) -> u32 {
        let d: &mut VmState = self.store.data_mut();
        let ctx = d.next_context_id;
        d.next_context_id += 1;
        let root = d.root_id;
        d.streams.insert(ctx, StreamState::new(root, headers));
        ctx
    }

    pub(crate) fn outcome(&self, ctx: u32) -> Outcome {
        self.stream(ctx).outcome()
    }

    /// Whether the filter runs for this stream (context created, not bypassed after a failure).
    fn filter_active(&self, ctx: u32) -> bool {
        let st = self.stream(ctx);
        st.created && !st.failed && !self.failed()
    }

    fn ensure_created(&mut self, ctx: u32) {
        if self.stream(ctx).created || self.failed() {
            return;
        }
        let root = self.stream(ctx).root;
        self.stream_mut(ctx).created = true;
        if let Some(f) = self.exports.on_context_create.clone() {
            if self
                .guest_call("proxy_on_context_create", ctx, |s| f.call(s, (ctx, root)))
                .is_none()
            {
                self.fail_stream(ctx, Dir::Request);
            }
        }
    }

    /// The module trapped on this stream: Envoy's `failStream` sends a 503 with no body
    /// (`wasm_fail_stream`), bypassing the filter.
    fn fail_stream(&mut self, ctx: u32, dir: Dir) {
        let st = self.stream_mut(ctx);
        if st.failed {
            return;
        }
        st.failed = true;
        let _ = dir;
        self.local_reply_inner(
            ctx,
            503,
            "wasm_fail_stream".into(),
            Vec::new(),
            Vec::new(),
            ResponseOrigin::WasmFailure,
        );
    }

    // ---- request path ---------------------------------------------------------------------------

    pub(crate) fn send_request_headers(&mut self, ctx: u32, end_of_stream: bool) {
        {
            let st = self.stream(ctx);
            assert!(
                st.req.headers_state == HeadersState::NotReached,
                "request headers were already sent on this stream"
            );
        }
        {
            let st = self.stream_mut(ctx);
            st.req.headers_state = HeadersState::Stopped;
            st.req.end_seen = end_of_stream;
        }
        if self.failed() {
            // Fail closed: Envoy answers 503 without running the failed module.
            let st = self.stream_mut(ctx);
            st.failed = true;
            self.local_reply_inner(
                ctx,
                503,
                "wasm_fail_stream".into(),
                Vec::new(),
                Vec::new(),
                ResponseOrigin::WasmFailure,
            );
            return;
        }
        self.ensure_created(ctx);
        if self.stream(ctx).failed {
            return;
        }
        let n = self.stream(ctx).req.headers.len() as u32;
        self.stream_mut(ctx).req.headers_access = true;
        let action = match self.exports.on_request_headers.clone() {
            Some(f) => self.guest_call("proxy_on_request_headers", ctx, |s| {
                f.call(s, (ctx, n, u32::from(end_of_stream)))
            }),
            None => Some(0),
        };
        let forced_stop = self.store.data().stop_iteration;
        let Some(action) = action else {
            self.fail_stream(ctx, Dir::Request);
            return;
        };
        self.apply_headers_action(ctx, Dir::Request, action, forced_stop);
        self.run_after_call();
    }

    pub(crate) fn send_request_body(&mut self, ctx: u32, chunk: &[u8], end_of_stream: bool) {
        {
            let st = self.stream(ctx);
            assert!(
                st.req.headers_state != HeadersState::NotReached,
                "send the request headers before the body"
            );
            assert!(
                !st.req.end_seen || st.local_reply_sent || st.reset,
                "the request already ended"
            );
            if st.local_reply_sent || st.reset || st.failed {
                return; // Envoy stops decoding once a local reply went out.
            }
        }
        {
            let st = self.stream_mut(ctx);
            if st.req.stopped_all {
                // Buffered by Envoy; the filter sees it when it continues.
                st.req.body.extend_from_slice(chunk);
                st.req.end_seen = end_of_stream;
                return;
            }
            if !st.req.buffering {
                st.req.body.clear();
            }
            st.req.body.extend_from_slice(chunk);
            st.req.end_seen = end_of_stream;
            st.req.body_access = true;
        }
        let size = self.stream(ctx).req.body.len() as u32;
        let action = match self.exports.on_request_body.clone() {
            Some(f) => self.guest_call("proxy_on_request_body", ctx, |s| {
                f.call(s, (ctx, size, u32::from(end_of_stream)))
            }),
            None => Some(0),
        };
        let forced_stop = self.store.data().stop_iteration;
        let Some(action) = action else {
            self.fail_stream(ctx, Dir::Request);
            return;
        };
        self.apply_data_action(ctx, Dir::Request, if forced_stop { 1 } else { action });
        self.run_after_call();
    }

    pub(crate) fn send_request_trailers(&mut self, ctx: u32, trailers: Headers) {
        {
            let st = self.stream(ctx);
            assert!(
                st.req.headers_state != HeadersState::NotReached,
                "send the request headers before trailers"
            );
            if st.local_reply_sent || st.reset || st.failed {
                return;
            }
            assert!(!st.req.end_seen, "the request already ended");
        }
        let n = trailers.len() as u32;
        {
            let st = self.stream_mut(ctx);
            st.req.trailers = Some(trailers);
            st.req.end_seen = true;
            if st.req.stopped_all {
                return;
            }
            st.req.trailers_access = true;
        }
        let action = match self.exports.on_request_trailers.clone() {
            Some(f) => self.guest_call("proxy_on_request_trailers", ctx, |s| f.call(s, (ctx, n))),
            None => Some(0),
        };
        let forced_stop = self.store.data().stop_iteration;
        let Some(action) = action else {
            self.fail_stream(ctx, Dir::Request);
            return;
        };
        self.apply_trailers_action(ctx, Dir::Request, if forced_stop { 1 } else { action });
        self.run_after_call();
    }

    fn side_mut(&mut self, ctx: u32, dir: &Dir) -> &mut Side {
        let st = self.stream_mut(ctx);
        match dir {
            Dir::Request => &mut st.req,
            Dir::Response => &mut st.resp,
        }
    }

    fn apply_headers_action(&mut self, ctx: u32, dir: Dir, action: u32, forced_stop: bool) {
        // proxy-wasm-cpp-host turns a header callback's StopIteration (1) into
        // StopAllIterationAndWatermark unless `allow_on_headers_stop_iteration` is set; a forced
        // stop and the StopAll codes (3, 4) stop all iteration anyway.
        let allow = self
            .store
            .data()
            .host
            .borrow()
            .options
            .allow_on_headers_stop_iteration;
        let stop_all = forced_stop || action >= 3 || (action == 1 && !allow);
        let side = self.side_mut(ctx, &dir);
        if action == 0 && !forced_stop {
            // decodeHeaders/encodeHeaders null the header pointer on Continue.
            side.headers_access = false;
            side.resume();
        } else if stop_all {
            side.stopped_all = true;
        }
    }

    /// Continuing after a StopAll: the headers go on, and the filter is shown what Envoy buffered
    /// meanwhile (`CanStartFromCurrent`): the body, then the trailers.
    fn continue_after_stop_all(&mut self, ctx: u32, dir: Dir) {
        {
            let side = self.side_mut(ctx, &dir);
            side.stopped_all = false;
            side.headers_access = false;
            if side.out_headers.is_none() {
                side.out_headers = Some(side.headers.clone());
            }
            side.headers_state = HeadersState::Continued;
        }
        let (has_body, has_trailers, end) = {
            let side = self.side_mut(ctx, &dir);
            (!side.body.is_empty(), side.trailers.is_some(), side.end_seen)
        };
        if has_body || (end && !has_trailers) {
            let size = self.side_mut(ctx, &dir).body.len() as u32;
            let end_of_stream = end && !has_trailers;
            self.side_mut(ctx, &dir).body_access = true;
            let export = match dir {
                Dir::Request => self.exports.on_request_body.clone(),
                Dir::Response => self.exports.on_response_body.clone(),
            };
            let action = match export {
                Some(f) => self.guest_call("proxy_on_body", ctx, |s| {
                    f.call(s, (ctx, size, u32::from(end_of_stream)))
                }),
                None => Some(0),
            };
            let Some(action) = action else {
                self.fail_stream(ctx, dir);
                return;
            };
            if self.stream(ctx).reset
                || self.stream(ctx).resp.out_complete
                || self.stream(ctx).local_reply_sent
            {
                return;
            }
            let forced = self.store.data().stop_iteration;
            self.apply_data_action(ctx, dir, if forced { 1 } else { action });
            if self.side_mut(ctx, &dir).buffering {
                return;
            }
        }
        if has_trailers {
            let n = self.side_mut(ctx, &dir).trailers.as_ref().map_or(0, |t| t.len()) as u32;
            self.side_mut(ctx, &dir).trailers_access = true;
            let export = match dir {
                Dir::Request => self.exports.on_request_trailers.clone(),
                Dir::Response => self.exports.on_response_trailers.clone(),
            };
            let action = match export {
                Some(f) => self.guest_call("proxy_on_trailers", ctx, |s| f.call(s, (ctx, n))),
                None => Some(0),
            };
            let Some(action) = action else {
                self.fail_stream(ctx, dir);
                return;
            };
            self.apply_trailers_action(ctx, dir, action);
        } else {
            self.side_mut(ctx, &dir).resume();
        }
    }

    fn apply_data_action(&mut self, ctx: u32, dir: Dir, action: u32) {
        let side = self.side_mut(ctx, &dir);
        match action {
            0 => {
                side.body_access = false;
                side.resume();
            }
            // StopIterationNoBuffer: the filter keeps nothing.
            3 => {
                side.body.clear();
                side.buffering = false;
            }
            // StopIterationAndBuffer / AndWatermark.
            _ => side.buffering = true,
        }
    }

    fn apply_trailers_action(&mut self, ctx: u32, dir: Dir, action: u32) {
        let side = self.side_mut(ctx, &dir);
        if action == 0 {
            side.trailers_access = false;
            side.resume();
        }
    }

    /// `continue_stream(HttpRequest)` after the VM call: Envoy's `continueDecoding`.
    pub(crate) fn continue_request(&mut self, ctx: u32) {
        let Some(st) = self.store.data_mut().streams.get_mut(&ctx) else {
            return;
        };
        if st.local_reply_sent || st.reset || st.finished {
            return;
        }
        if st.req.stopped_all {
            self.continue_after_stop_all(ctx, Dir::Request);
            self.run_after_call();
        } else if st.req.holding() {
            st.req.resume();
        }
    }

    /// `continue_stream(HttpResponse)` after the VM call: Envoy's `continueEncoding`.
    pub(crate) fn continue_response(&mut self, ctx: u32) {
        let Some(st) = self.store.data_mut().streams.get_mut(&ctx) else {
            return;
        };
        if st.reset || st.finished || !st.response_started {
            return;
        }
        if st.resp.stopped_all {
            self.continue_after_stop_all(ctx, Dir::Response);
            self.run_after_call();
        } else if st.resp.holding() {
            st.resp.resume();
        }
    }

    pub(crate) fn reset_stream(&mut self, ctx: u32) {
        if let Some(st) = self.store.data_mut().streams.get_mut(&ctx) {
            st.reset = true;
        }
    }

    // ---- local replies --------------------------------------------------------------------------

    /// A local reply requested by the module, run after its callback returned.
    pub(crate) fn local_reply(
        &mut self,
        ctx: u32,
        status: u32,
        details: String,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    ) {
        if !self.store.data().streams.contains_key(&ctx) {
            return;
        }
        let origin = ResponseOrigin::LocalReply {
            details: details.clone(),
        };
        self.local_reply_inner(ctx, status, details, body, headers, origin);
    }

    /// A local reply by Envoy itself after the filter passed the request headers (the router's
    /// `no_healthy_upstream`, a later filter's refusal), as `sendLocalReply` makes it: through the
    /// filter's response callbacks, with `response.code_details` = `details`.
    pub(crate) fn envoy_local_reply(&mut self, ctx: u32, status: u16, details: &str, body: &[u8]) {
        {
            let st = self.stream(ctx);
            assert!(
                st.req.out_headers.is_some(),
                "Envoy cannot reply after the filter: the request headers never passed it ({:?})",
                st.outcome()
            );
            if st.local_reply_sent || st.reset {
                return; // The stream already has its answer.
            }
        }
        // Envoy replaces whitespace in details with '_'.
        let details: String = details
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        let origin = ResponseOrigin::LocalReply {
            details: details.clone(),
        };
        self.local_reply_inner(ctx, u32::from(status), details, body.to_vec(), Vec::new(), origin);
    }

    fn local_reply_inner(
        &mut self,
        ctx: u32,
        status: u32,
        details: String,
        body: Vec<u8>,
        additional: Vec<(String, String)>,
        origin: ResponseOrigin,
    ) {
        let st = self.stream(ctx);
        if st.reset || st.finished || st.resp.out_complete {
            return;
        }
        let is_head = st
            .req
            .headers
            .get(":method")
            .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"));
        let headers = local_reply_headers(status, &additional, &body);
        let status16 = u16::try_from(status).unwrap_or(0);
        if st.response_started {
            // The response already started: Envoy sends the reply directly to the codec if the
            // response headers have not gone out yet, and resets the stream otherwise.
            let st = self.stream_mut(ctx);
            if st.resp.out_headers.is_some() {
                st.reset = true;
                return;
            }
            st.origin = origin;
            st.response_code = Some(status16);
            st.code_details = Some(details);
            st.resp.headers = headers.clone();
            st.resp.headers_state = HeadersState::Continued;
            st.resp.headers_access = false;
            st.resp.body.clear();
            st.resp.body_access = false;
            st.resp.buffering = false;
            st.resp.stopped_all = false;
            st.resp.trailers = None;
            st.resp.out_headers = Some(headers);
            st.resp.out_body = if is_head { Vec::new() } else { body };
            st.resp.out_trailers = None;
            st.resp.end_seen = true;
            st.resp.out_complete = true;
            return;
        }
        // Through the filter chain: the filter's own encoder callbacks see the reply.
        {
            let st = self.stream_mut(ctx);
            st.local_reply_sent = true;
            st.origin = origin;
            st.response_code = Some(status16);
            st.code_details = Some(details);
        }
        let headers_only = body.is_empty() || is_head;
        self.encode_headers(ctx, headers, headers_only);
        if !headers_only && !self.stream(ctx).response_over() {
            self.encode_data(ctx, &body, true);
        }
    }

    // ---- response path --------------------------------------------------------------------------

    fn encode_headers(&mut self, ctx: u32, headers: Headers, end_of_stream: bool) {
        {
            let st = self.stream_mut(ctx);
            st.response_started = true;
            st.resp.headers = headers;
            st.resp.headers_state = HeadersState::Stopped;
            st.resp.end_seen = end_of_stream;
        }
        if !self.filter_active(ctx) {
            self.side_mut(ctx, &Dir::Response).resume();
            return;
        }
        let n = self.stream(ctx).resp.headers.len() as u32;
        self.stream_mut(ctx).resp.headers_access = true;
        let action = match self.exports.on_response_headers.clone() {
            Some(f) => self.guest_call("proxy_on_response_headers", ctx, |s| {
                f.call(s, (ctx, n, u32::from(end_of_stream)))
            }),
            None => Some(0),
        };
        let forced_stop = self.store.data().stop_iteration;
        let Some(action) = action else {
            self.fail_stream(ctx, Dir::Response);
            return;
        };
        if !self.stream(ctx).response_over() {
            self.apply_headers_action(ctx, Dir::Response, action, forced_stop);
        }
        self.run_after_call();
    }

    fn encode_data(&mut self, ctx: u32, chunk: &[u8], end_of_stream: bool) {
        {
            let st = self.stream_mut(ctx);
            if st.resp.stopped_all {
                st.resp.body.extend_from_slice(chunk);
                st.resp.end_seen = end_of_stream;
                return;
            }
            if !st.resp.buffering {
                st.resp.body.clear();
            }
            st.resp.body.extend_from_slice(chunk);
            st.resp.end_seen = end_of_stream;
        }
        if !self.filter_active(ctx) {
            self.side_mut(ctx, &Dir::Response).resume();
            return;
        }
        self.stream_mut(ctx).resp.body_access = true;
        let size = self.stream(ctx).resp.body.len() as u32;
        let action = match self.exports.on_response_body.clone() {
            Some(f) => self.guest_call("proxy_on_response_body", ctx, |s| {
                f.call(s, (ctx, size, u32::from(end_of_stream)))
            }),
            None => Some(0),
        };
        let forced_stop = self.store.data().stop_iteration;
        let Some(action) = action else {
            self.fail_stream(ctx, Dir::Response);
            return;
        };
        if !self.stream(ctx).response_over() {
            self.apply_data_action(ctx, Dir::Response, if forced_stop { 1 } else { action });
        }
        self.run_after_call();
    }

    pub(crate) fn respond_headers(&mut self, ctx: u32, headers: Headers, end_of_stream: bool) {
        {
            let st = self.stream(ctx);
            assert!(
                st.req.out_headers.is_some() || st.local_reply_sent,
                "the upstream cannot respond: the request headers never went upstream ({:?})",
                st.outcome()
            );
            if st.local_reply_sent || st.reset {
                return; // The stream already has its answer; the upstream response is dropped.
            }
            assert!(!st.response_started, "the upstream already sent response headers");
        }
        let code = headers.get(":status").and_then(|s| s.parse().ok());
        {
            let st = self.stream_mut(ctx);
            st.origin = ResponseOrigin::Upstream;
            st.response_code = code;
            st.code_details = Some("via_upstream".into());
        }
        self.encode_headers(ctx, headers, end_of_stream);
    }

    pub(crate) fn respond_body(&mut self, ctx: u32, chunk: &[u8], end_of_stream: bool) {
        {
            let st = self.stream(ctx);
            if st.local_reply_sent || st.response_over() || st.origin != ResponseOrigin::Upstream {
                return;
            }
            assert!(st.response_started, "send the response headers before the body");
            assert!(!st.resp.end_seen, "the response already ended");
        }
        self.encode_data(ctx, chunk, end_of_stream);
    }

    pub(crate) fn respond_trailers(&mut self, ctx: u32, trailers: Headers) {
        {
            let st = self.stream(ctx);
            if st.local_reply_sent || st.response_over() || st.origin != ResponseOrigin::Upstream {
                return;
            }
            assert!(st.response_started, "send the response headers before trailers");
        }
        let n = trailers.len() as u32;
        {
            let st = self.stream_mut(ctx);
            st.resp.trailers = Some(trailers);
            st.resp.end_seen = true;
            if st.resp.stopped_all {
                return;
            }
            st.resp.trailers_access = true;
        }
        if !self.filter_active(ctx) {
            self.side_mut(ctx, &Dir::Response).resume();
            return;
        }
        let action = match self.exports.on_response_trailers.clone() {
            Some(f) => self.guest_call("proxy_on_response_trailers", ctx, |s| f.call(s, (ctx, n))),
            None => Some(0),
        };
        let Some(action) = action else {
            self.fail_stream(ctx, Dir::Response);
            return;
        };
        if !self.stream(ctx).response_over() {
            self.apply_trailers_action(ctx, Dir::Response, action);
        }
        self.run_after_call();
    }

    /// End of the stream: `proxy_on_log` (request and response headers readable), `proxy_on_done`,
    /// `proxy_on_delete`.
    pub(crate) fn finish_stream(&mut self, ctx: u32) {
        if self.stream(ctx).finished {
            return;
        }
        self.stream_mut(ctx).finished = true;
        if self.stream(ctx).created && !self.failed() {
            self.stream_mut(ctx).log_phase = true;
            if let Some(f) = self.exports.on_log.clone() {
                self.guest_call("proxy_on_log", ctx, |s| f.call(s, ctx));
            }
            self.stream_mut(ctx).log_phase = false;
            if let Some(f) = self.exports.on_done.clone() {
                self.guest_call("proxy_on_done", ctx, |s| f.call(s, ctx));
            }
            if let Some(f) = self.exports.on_delete.clone() {
                self.guest_call("proxy_on_delete", ctx, |s| f.call(s, ctx));
            }
            self.run_after_call();
        }
        self.store.data_mut().streams.remove(&ctx);
    }
}

/// An HTTP stream (one request/response) through a VM's filter.
pub struct Stream {
    vm: Vm,
    ctx: u32,
    finished: std::cell::Cell<bool>,
}

impl Vm {
    /// A new stream whose request carries `headers` (pseudo-headers included, e.g. `:method`,
    /// `:path`, `:authority`, `:scheme`). Nothing reaches the module until [`Stream::send_headers`].
    pub fn request(&self, headers: &[(&str, &str)]) -> Stream {
        let ctx = self.cell.borrow_mut().new_stream(Headers::from_pairs(headers));
        Stream {
            vm: self.clone(),
            ctx,
            finished: std::cell::Cell::new(false),
        }
    }

    /// A `GET` of `path` with these extra headers (`:authority` `fhir.example`, `:scheme` `https`).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Stream {
        let mut all = vec![
            (":method", "GET"),
            (":path", path),
            (":authority", "fhir.example"),
            (":scheme", "https"),
        ];
        all.extend_from_slice(headers);
        self.request(&all)
    }
}

impl Stream {
    /// The HTTP context id.
    pub fn context_id(&self) -> u32 {
        self.ctx
    }

    /// The VM this stream runs on.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    fn with<R>(&self, f: impl FnOnce(&mut VmInner) -> R) -> R {
        assert!(!self.finished.get(), "the stream is finished");
        let r = f(&mut self.vm.cell.borrow_mut());
        self.vm.host.drain_events();
        r
    }

    /// Sets a per-request property (e.g. `source.address`), `.`-separated path.
    pub fn set_property(&self, path: &str, value: impl Into<Vec<u8>>) -> &Self {
        let value = value.into();
        self.with(|vm| {
            if let Some(st) = vm.store.data_mut().streams.get_mut(&self.ctx) {
                st.test_props.insert(path.to_string(), value);
            }
        });
        self
    }

    /// Sends the request headers through the filter (`proxy_on_request_headers`).
    pub fn send_headers(&self, end_of_stream: bool) -> Outcome {
        self.with(|vm| {
            vm.send_request_headers(self.ctx, end_of_stream);
            vm.outcome(self.ctx)
        })
    }

    /// Sends a request body chunk (`proxy_on_request_body`).
    pub fn send_body(&self, chunk: &[u8], end_of_stream: bool) -> Outcome {
        self.with(|vm| {
            vm.send_request_body(self.ctx, chunk, end_of_stream);
            vm.outcome(self.ctx)
        })
    }

    /// Sends request trailers (`proxy_on_request_trailers`); ends the request.
    pub fn send_trailers(&self, trailers: &[(&str, &str)]) -> Outcome {
        self.with(|vm| {
            vm.send_request_trailers(self.ctx, Headers::from_pairs(trailers));
            vm.outcome(self.ctx)
        })
    }

    /// The upstream answers: `:status` + `headers`, then `body` in one chunk (none if empty).
    pub fn respond(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Outcome {
        if body.is_empty() {
            self.respond_chunks(status, headers, &[])
        } else {
            self.respond_chunks(status, headers, &[body])
        }
    }

    /// The upstream answers with the body in several chunks.
    pub fn respond_chunks(&self, status: u16, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Outcome {
        self.respond_headers(status, headers, chunks.is_empty());
        for (i, chunk) in chunks.iter().enumerate() {
            self.respond_body(chunk, i + 1 == chunks.len());
        }
        self.outcome()
    }

    /// The upstream sends response headers (`proxy_on_response_headers`).
    pub fn respond_headers(&self, status: u16, headers: &[(&str, &str)], end_of_stream: bool) -> Outcome {
        let mut h = Headers::new();
        h.add(":status", &status.to_string());
        for (k, v) in headers {
            h.add(k, v);
        }
        self.with(|vm| {
            vm.respond_headers(self.ctx, h, end_of_stream);
            vm.outcome(self.ctx)
        })
    }

    /// The upstream sends a response body chunk (`proxy_on_response_body`).
    pub fn respond_body(&self, chunk: &[u8], end_of_stream: bool) -> Outcome {
        self.with(|vm| {
            vm.respond_body(self.ctx, chunk, end_of_stream);
            vm.outcome(self.ctx)
        })
    }

    /// Envoy answers locally after the filter passed the request (e.g. the router's
    /// `503` `no_healthy_upstream` with body `no healthy upstream`): `:status`, `content-length` and
    /// `content-type: text/plain` (if `body` is not empty), through the filter's response callbacks;
    /// `response.code_details` answers `details`. The origin is [`crate::ResponseOrigin::LocalReply`].
    pub fn envoy_local_reply(&self, status: u16, details: &str, body: &[u8]) -> Outcome {
        self.with(|vm| {
            vm.envoy_local_reply(self.ctx, status, details, body);
            vm.outcome(self.ctx)
        })
    }

    /// The upstream sends response trailers (`proxy_on_response_trailers`).
    pub fn respond_trailers(&self, trailers: &[(&str, &str)]) -> Outcome {
        self.with(|vm| {
            vm.respond_trailers(self.ctx, Headers::from_pairs(trailers));
            vm.outcome(self.ctx)
        })
    }

    /// Where the stream stands now (e.g. after a callout was answered).
    pub fn outcome(&self) -> Outcome {
        self.with(|vm| vm.outcome(self.ctx))
    }

    /// What reached the upstream so far.
    pub fn upstream_request(&self) -> UpstreamRequest {
        self.with(|vm| {
            vm.store
                .data()
                .streams
                .get(&self.ctx)
                .map(|s| s.upstream())
                .unwrap_or_default()
        })
    }

    /// Log lines the module wrote while running on this stream's context.
    pub fn logs(&self) -> Vec<crate::LogEntry> {
        let vm = self.vm.index;
        self.vm
            .host
            .logs()
            .into_iter()
            .filter(|l| l.vm == vm && l.context == self.ctx)
            .collect()
    }

    /// The response the client received, if any.
    pub fn response(&self) -> Option<Response> {
        self.outcome().response().cloned()
    }

    /// Properties the module set on this stream with `proxy_set_property` (raw path → value).
    pub fn module_properties(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.with(|vm| {
            vm.store
                .data()
                .streams
                .get(&self.ctx)
                .map(|s| {
                    s.module_props
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Ends the stream: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete` (dropping the stream does
    /// the same).
    pub fn finish(self) {
        self.finish_inner();
    }

    fn finish_inner(&self) {
        if self.finished.replace(true) {
            return;
        }
        self.vm.cell.borrow_mut().finish_stream(self.ctx);
        self.vm.host.drain_events();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            if let Ok(mut vm) = self.vm.cell.try_borrow_mut() {
                if !self.finished.replace(true) {
                    vm.finish_stream(self.ctx);
                }
            }
            self.vm.host.drain_events();
        }
    }
}
