//! FHIR-native audit: an R4 `AuditEvent` per audit record, following the IHE Basic Audit Log
//! Patterns (BALP) for RESTful activity, and the bounded per-worker queue that sends them in
//! `batch` Bundles.
//!
//! * [`audit_event`] maps an [`AuditRecord`] to the resource: type `rest`, subtype the FHIR
//!   restful-interaction code, action C/R/U/D/E, outcome 0/4/8, agents for the user (OAuth
//!   subject, `fhirUser`, `jti` as policy), the client application (with its network address) and
//!   the server, the filter as source observer, and entities for the `X-Request-Id`, the patient
//!   and the resource or query (search parameter names only, never values);
//! * [`AuditQueue`] holds events until a batch is full or the flush interval passed, keeps at most
//!   one Bundle in flight, requeues a batch the server could not take (timeouts, 5xx, 408, 429) and
//!   drops what exceeds `max_queue` or what the server refuses (other 4xx), counting every drop.
//!   It never blocks a request: [`AuditQueue::push`] only appends or drops.

use std::collections::VecDeque;

use serde_json::{json, Map, Value};

use crate::audit::{AuditRecord, Verdict};
use crate::config::AuditEventSink;

const AUDIT_EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const USER_AGENT_TYPES: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";

/// The R4 restful-interaction code and the AuditEvent action of an interaction kind
/// ([`crate::fhir::Interaction::kind`]). Searches are `E` (execute) as in BALP's Query pattern.
pub fn interaction_code(kind: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        "capabilities" => ("capabilities", "R"),
        "read" => ("read", "R"),
        "vread" => ("vread", "R"),
        "update" | "update-conditional" => ("update", "U"),
        "patch" | "patch-conditional" => ("patch", "U"),
        "delete" | "delete-conditional" => ("delete", "D"),
        "create" => ("create", "C"),
        "history-instance" => ("history-instance", "R"),
        "history-type" => ("history-type", "R"),
        "history-system" => ("history-system", "R"),
        "search-type" => ("search-type", "E"),
        "search-system" => ("search-system", "E"),
        // R4 has no compartment search code; `search` is the parent of every search.
        "search-compartment" => ("search", "E"),
        // `POST [base]` is a batch or a transaction; which one is in the body the edge does not read.
        "batch" => ("batch", "E"),
        "operation" => ("operation", "E"),
        _ => return None,
    })
}

/// AuditEvent outcome: `0` success, `4` minor failure (refused, 4xx), `8` serious failure (5xx or
/// no response).
pub fn outcome_code(record: &AuditRecord) -> &'static str {
    match record.status {
        Some(s) if s < 400 && record.decision != Verdict::Deny => "0",
        Some(s) if s < 500 => "4",
        _ => "8",
    }
}

/// `ip` of an Envoy `source.address` (`ip:port` or `[v6]:port`).
fn address_ip(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => addr,
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

/// A JSON object from key/value pairs, leaving out `None` values.
fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    let map: Map<String, Value> = fields
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect();
    Value::Object(map)
}

/// The `AuditEvent` for a completed record. `observer` names the filter (source and server agent).
pub fn audit_event(record: &AuditRecord, observer: &str) -> Value {
    let code = record.interaction.and_then(interaction_code);
    let mut agents = Vec::new();
    let has_user = record.subject().is_some() || record.fhir_user().is_some();
    if has_user {
        let identifier = record.subject().map(|s| {
            object([
                ("system", record.issuer().map(|i| json!(i))),
                ("value", Some(json!(s))),
            ])
        });
        let who = object([
            ("reference", record.fhir_user().map(|u| json!(u))),
            ("identifier", identifier),
        ]);
        agents.push(object([
            (
                "type",
                Some(json!({"coding": [coding(USER_AGENT_TYPES, "UserOauthAgent", "User OAuth Agent participant")]})),
            ),
            ("who", Some(who)),
            ("requestor", Some(json!(true))),
            (
                "policy",
                record
                    .jti()
                    .map(|j| json!([format!("urn:ietf:params:oauth:jti:{j}")])),
            ),
        ]));
    }
    let client_who = match record.client_id() {
        Some(c) => json!({"identifier": {"value": c}}),
        None => json!({"display": "unidentified client"}),
    };
    agents.push(object([
        (
            "type",
            Some(json!({"coding": [coding(DCM, "110150", "Application")]})),
        ),
        ("who", Some(client_who)),
        ("requestor", Some(json!(!has_user))),
        (
            "network",
            record
                .source_address
                .as_ref()
                .map(|a| json!({"address": address_ip(a), "type": "2"})),
        ),
    ]));
    agents.push(json!({
        "type": {"coding": [coding(DCM, "110152", "Destination Role ID")]},
        "who": {"display": observer},
        "requestor": false,
    }));

    let mut entities = Vec::new();
    if let Some(id) = &record.request_id {
        entities.push(json!({
            "what": {"identifier": {"value": id}},
            "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId"},
        }));
    }
    if let Some(p) = patient_reference(record) {
        entities.push(json!({
            "what": {"reference": p},
            "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    if let Some(e) = data_entity(record) {
        entities.push(e);
    }

    object([
        ("resourceType", Some(json!("AuditEvent"))),
        (
            "type",
            Some(coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation")),
        ),
        (
            "subtype",
            code.map(|(c, _)| json!([coding(RESTFUL_INTERACTION, c, c)])),
        ),
        ("action", Some(json!(code.map_or("E", |(_, action)| action)))),
        ("recorded", Some(json!(record.time))),
        ("outcome", Some(json!(outcome_code(record)))),
        ("outcomeDesc", Some(json!(outcome_desc(record)))),
        ("agent", Some(Value::Array(agents))),
        (
            "source",
            Some(json!({
                "observer": {"display": observer},
                "type": [coding(SOURCE_TYPE, "4", "Application Server")],
            })),
        ),
        ("entity", (!entities.is_empty()).then_some(Value::Array(entities))),
    ])
}

fn outcome_desc(r: &AuditRecord) -> String {
    let mut s = format!("{}: {}", r.decision.as_str(), r.reason);
    if let Some(st) = r.status {
        s.push_str(&format!(" (HTTP {st})"));
    }
    s
}

/// The patient the request concerns: the token's patient in context, else the Patient read.
fn patient_reference(r: &AuditRecord) -> Option<String> {
    if let Some(p) = r.patient() {
        return Some(if p.contains('/') {
            p.to_string()
        } else {
            format!("Patient/{p}")
        });
    }
    match (r.resource_type.as_deref(), &r.resource_id) {
        (Some("Patient"), Some(id)) => Some(format!("Patient/{id}")),
        _ => None,
    }
}

fn data_entity(r: &AuditRecord) -> Option<Value> {
    let kind = r.interaction?;
    if kind.starts_with("search") || !r.search_params.is_empty() && r.resource_id.is_none() {
        // BALP Query entity, with parameter names only: values may carry patient data.
        let target = r.resource_type.as_deref().unwrap_or("(all types)");
        let description = if r.search_params.is_empty() {
            format!("{kind} {target}")
        } else {
            format!("{kind} {target} by {}", r.search_params.join(", "))
        };
        return Some(json!({
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "24", "Query"),
            "description": description,
        }));
    }
    let rt = r.resource_type.as_deref()?;
    let what = match &r.resource_id {
        Some(id) => json!({"reference": format!("{rt}/{id}")}),
        None => json!({"display": rt}),
    };
    Some(json!({
        "what": what,
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
    }))
}

/// A `batch` Bundle that creates every event (`POST AuditEvent`), to be POSTed to the FHIR base.
pub fn batch_bundle(events: &[Value]) -> Value {
    let entries: Vec<Value> = events
        .iter()
        .map(|e| json!({"resource": e, "request": {"method": "POST", "url": "AuditEvent"}}))
        .collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

/// Entries of a `batch-response` Bundle whose `response.status` is not 2xx (0 for anything that
/// is not a batch-response: the HTTP status already judged it).
pub fn refused_entries(body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let field = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    if field(&v, "resourceType") != "Bundle" || field(&v, "type") != "batch-response" {
        return 0;
    }
    v.get("entry").and_then(Value::as_array).map_or(0, |entries| {
        entries
            .iter()
            .filter(|e| {
                !e.get("response")
                    .and_then(|r| r.get("status"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with('2'))
            })
            .count() as u64
    })
}

/// A Bundle ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub body: Vec<u8>,
    /// Events in it.
    pub count: usize,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// The server took it (2xx).
    Accepted,
    /// The callout failed, timed out, or the server answered 408, 429 or 5xx: send again later.
    Retry,
    /// The server refused it (another status): the events are dropped.
    Refused,
}

impl SendResult {
    /// The result for an HTTP status (`None`: no answer).
    pub fn from_status(status: Option<u16>) -> SendResult {
        match status {
            Some(s) if (200..300).contains(&s) => SendResult::Accepted,
            Some(408 | 429) | None => SendResult::Retry,
            Some(s) if s >= 500 => SendResult::Retry,
            Some(_) => SendResult::Refused,
        }
    }
}

/// Counts since start (each call of [`AuditQueue::take_counts`] returns and resets them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub sent: u64,
    pub dropped: u64,
    pub failed_batches: u64,
}

/// The per-worker queue of `AuditEvent`s.
pub struct AuditQueue {
    batch_size: usize,
    flush_interval_ms: u64,
    max_queue: usize,
    timeout_ms: u64,
    queue: VecDeque<Value>,
    in_flight: Option<(Vec<Value>, u64)>,
    last_send_ms: Option<u64>,
    retry_at_ms: u64,
    failures: u32,
    counts: QueueCounts,
}

/// Longest wait before retrying a batch (ms).
pub const MAX_RETRY_MS: u64 = 60_000;

impl AuditQueue {
    pub fn new(sink: &AuditEventSink) -> AuditQueue {
        AuditQueue {
            batch_size: sink.batch_size,
            flush_interval_ms: sink.flush_interval_ms,
            max_queue: sink.max_queue,
            timeout_ms: sink.timeout_ms,
            queue: VecDeque::new(),
            in_flight: None,
            last_send_ms: None,
            retry_at_ms: 0,
            failures: 0,
            counts: QueueCounts::default(),
        }
    }

    /// Events waiting (not counting a batch in flight).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Appends an event; drops it (and counts it) when the queue is full. Never blocks.
    pub fn push(&mut self, event: Value) -> bool {
        if self.queue.len() >= self.max_queue {
            self.counts.dropped += 1;
            return false;
        }
        self.queue.push_back(event);
        true
    }

    /// The batch to send now, if any: a full batch, or a partial one once the flush interval
    /// passed since the last send. At most one batch is in flight; one in flight past its timeout
    /// (plus a second) is treated as failed.
    pub fn poll(&mut self, now_ms: u64) -> Option<Batch> {
        if let Some((_, deadline)) = &self.in_flight {
            if now_ms > deadline.saturating_add(1000) {
                self.on_result(SendResult::Retry, now_ms);
            } else {
                return None;
            }
        }
        if self.queue.is_empty() || now_ms < self.retry_at_ms {
            return None;
        }
        let interval_passed = self
            .last_send_ms
            .map_or(true, |t| now_ms >= t.saturating_add(self.flush_interval_ms));
        if self.queue.len() < self.batch_size && !interval_passed {
            return None;
        }
        let n = self.queue.len().min(self.batch_size);
        let events: Vec<Value> = self.queue.drain(..n).collect();
        let body = serde_json::to_vec(&batch_bundle(&events)).unwrap_or_default();
        self.in_flight = Some((events, now_ms.saturating_add(self.timeout_ms)));
        self.last_send_ms = Some(now_ms);
        Some(Batch { body, count: n })
    }

    /// The batch in flight ended with `result`.
    pub fn on_result(&mut self, result: SendResult, now_ms: u64) {
        let Some((events, _)) = self.in_flight.take() else {
            return;
        };
        let n = events.len() as u64;
        match result {
            SendResult::Accepted => {
                self.counts.sent += n;
                self.failures = 0;
                self.retry_at_ms = 0;
            }
            SendResult::Refused => {
                self.counts.dropped += n;
                self.counts.failed_batches += 1;
            }
            SendResult::Retry => {
                self.counts.failed_batches += 1;
                self.failures = self.failures.saturating_add(1);
                let backoff = self
                    .flush_interval_ms
                    .saturating_mul(1u64 << self.failures.min(16))
                    .min(MAX_RETRY_MS);
                self.retry_at_ms = now_ms.saturating_add(backoff);
                // Back at the front, oldest first; what no longer fits is dropped from the back
                // (the newest events).
                for e in events.into_iter().rev() {
                    self.queue.push_front(e);
                }
                while self.queue.len() > self.max_queue {
                    self.queue.pop_back();
                    self.counts.dropped += 1;
                }
            }
        }
    }

    /// The server took the Bundle but its `batch-response` refused `n` entries: they count as
    /// dropped, not sent.
    pub fn note_refused_entries(&mut self, n: u64) {
        let moved = n.min(self.counts.sent);
        self.counts.sent -= moved;
        self.counts.dropped += moved;
    }

    /// Counts since the last call.
    pub fn take_counts(&mut self) -> QueueCounts {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpUri;

    fn record() -> AuditRecord {
        AuditRecord {
            time: "2023-11-14T22:13:20.123Z".into(),
            request_id: Some("req-1".into()),
            decision: Verdict::Allow,
            reason: "allowed",
            status: Some(200),
            refusal_status: None,
            upstream_status: Some(200),
            method: "GET".into(),
            interaction: Some("read"),
            resource_type: Some("Observation".into()),
            resource_id: Some("obs-1".into()),
            search_params: vec![],
            claims: Some(std::rc::Rc::new(crate::claims::VerifiedClaims {
                issuer: "https://idp.example.org".into(),
                subject: Some("user-1".into()),
                client_id: Some("app-1".into()),
                scopes: vec!["patient/*.rs".into()],
                patient: Some("123".into()),
                encounter: None,
                fhir_user: Some("Practitioner/77".into()),
                jti: Some("jti-9".into()),
                expires_at: 1_700_000_300,
            })),
            token_hash: Some("0123456789ab".into()),
            source_address: Some("10.0.0.7:51234".into()),
            token_cache_hit: Some(false),
            token_source: Some("jwt"),
            allowed_by: Some("patient"),
        }
    }

    #[test]
    fn maps_interactions_to_restful_codes_and_actions() {
        let table = [
            ("read", "read", "R"),
            ("vread", "vread", "R"),
            ("create", "create", "C"),
            ("update", "update", "U"),
            ("update-conditional", "update", "U"),
            ("patch", "patch", "U"),
            ("delete", "delete", "D"),
            ("delete-conditional", "delete", "D"),
            ("search-type", "search-type", "E"),
            ("search-system", "search-system", "E"),
            ("search-compartment", "search", "E"),
            ("history-instance", "history-instance", "R"),
            ("capabilities", "capabilities", "R"),
            ("operation", "operation", "E"),
            ("batch", "batch", "E"),
        ];
        for (kind, code, action) in table {
            assert_eq!(interaction_code(kind), Some((code, action)), "{kind}");
        }
        assert_eq!(interaction_code("nonsense"), None);
    }

    #[test]
    fn a_read_follows_the_balp_rest_pattern() {
        let ev = audit_event(&record(), "edge-1");
        assert_eq!(ev["resourceType"], "AuditEvent");
        assert_eq!(ev["type"]["system"], AUDIT_EVENT_TYPE);
        assert_eq!(ev["type"]["code"], "rest");
        assert_eq!(ev["subtype"][0]["system"], RESTFUL_INTERACTION);
        assert_eq!(ev["subtype"][0]["code"], "read");
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["outcome"], "0");
        assert_eq!(ev["recorded"], "2023-11-14T22:13:20.123Z");
        let user = &ev["agent"][0];
        assert_eq!(user["type"]["coding"][0]["code"], "UserOauthAgent");
        assert_eq!(user["who"]["reference"], "Practitioner/77");
        assert_eq!(user["who"]["identifier"]["system"], "https://idp.example.org");
        assert_eq!(user["who"]["identifier"]["value"], "user-1");
        assert_eq!(user["requestor"], true);
        assert_eq!(user["policy"][0], "urn:ietf:params:oauth:jti:jti-9");
        let client = &ev["agent"][1];
        assert_eq!(client["type"]["coding"][0]["code"], "110150");
        assert_eq!(client["who"]["identifier"]["value"], "app-1");
        assert_eq!(client["network"], json!({"address": "10.0.0.7", "type": "2"}));
        assert_eq!(ev["agent"][2]["who"]["display"], "edge-1");
        assert_eq!(ev["source"]["observer"]["display"], "edge-1");
        assert_eq!(ev["source"]["type"][0]["code"], "4");
        let entities = ev["entity"].as_array().unwrap();
        assert_eq!(entities[0]["type"]["code"], "XrequestId");
        assert_eq!(entities[0]["what"]["identifier"]["value"], "req-1");
        assert_eq!(entities[1]["what"]["reference"], "Patient/123");
        assert_eq!(entities[1]["role"]["code"], "1");
        assert_eq!(entities[2]["what"]["reference"], "Observation/obs-1");
        assert_eq!(entities[2]["role"]["code"], "4");
        assert!(
            !ev.to_string().contains("0123456789ab"),
            "no token hash needed in the resource"
        );
    }

    #[test]
    fn outcomes_follow_the_status() {
        let cases = [
            (Verdict::Allow, Some(200), "0"),
            (Verdict::Allow, Some(304), "0"),
            (Verdict::Allow, Some(404), "4"),
            (Verdict::Deny, Some(401), "4"),
            (Verdict::Deny, Some(403), "4"),
            (Verdict::Deny, Some(503), "8"),
            (Verdict::Allow, Some(502), "8"),
            (Verdict::Allow, None, "8"),
            (Verdict::AuditOnlyDeny, Some(200), "0"),
        ];
        for (decision, status, want) in cases {
            let r = AuditRecord {
                decision,
                status,
                ..record()
            };
            assert_eq!(outcome_code(&r), want, "{decision:?} {status:?}");
        }
    }

    #[test]
    fn a_search_is_a_query_entity_with_parameter_names_only() {
        let r = AuditRecord {
            interaction: Some("search-type"),
            resource_id: None,
            search_params: vec!["code".into(), "patient".into()],
            ..record()
        };
        let ev = audit_event(&r, "edge");
        assert_eq!(ev["action"], "E");
        let q = ev["entity"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(q["role"]["code"], "24");
        assert_eq!(q["description"], "search-type Observation by code, patient");
        assert!(
            q.get("query").is_none(),
            "the raw query (values) is never recorded"
        );
    }

    #[test]
    fn a_refusal_without_a_token_names_no_user_and_an_unidentified_client() {
        let r = AuditRecord {
            decision: Verdict::Deny,
            reason: "missing_token",
            status: Some(401),
            refusal_status: Some(401),
            upstream_status: None,
            claims: None,
            interaction: None,
            source_address: Some("[::1]:4000".into()),
            ..record()
        };
        let ev = audit_event(&r, "edge");
        assert_eq!(ev["outcome"], "4");
        assert_eq!(ev["outcomeDesc"], "deny: missing_token (HTTP 401)");
        assert_eq!(ev["action"], "E");
        assert!(ev.get("subtype").is_none());
        let agents = ev["agent"].as_array().unwrap();
        assert_eq!(agents.len(), 2, "client and server only");
        assert_eq!(agents[0]["requestor"], true);
        assert_eq!(agents[0]["network"]["address"], "::1");
    }

    fn sink(batch_size: usize, max_queue: usize) -> AuditEventSink {
        AuditEventSink {
            uri: HttpUri::parse("http://audit.example.org/fhir").unwrap(),
            cluster: "audit".into(),
            batch_size,
            flush_interval_ms: 1000,
            max_queue,
            timeout_ms: 2000,
            observer: "edge".into(),
        }
    }

    fn ev(i: usize) -> Value {
        json!({"resourceType": "AuditEvent", "id": i.to_string()})
    }

    fn ids(batch: &Batch) -> Vec<String> {
        let v: Value = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "batch");
        v["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["request"], json!({"method": "POST", "url": "AuditEvent"}));
                e["resource"]["id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn sends_full_batches_at_once_and_partial_ones_after_the_flush_interval() {
        let mut q = AuditQueue::new(&sink(3, 10));
        let t = 1_000_000;
        q.push(ev(1));
        assert_eq!(
            ids(&q.poll(t).unwrap()),
            ["1"],
            "first event: nothing sent yet, interval passed"
        );
        q.on_result(SendResult::Accepted, t);
        q.push(ev(2));
        assert!(q.poll(t + 500).is_none(), "partial batch waits for the interval");
        q.push(ev(3));
        q.push(ev(4));
        assert_eq!(
            ids(&q.poll(t + 600).unwrap()),
            ["2", "3", "4"],
            "a full batch goes at once"
        );
        q.push(ev(5));
        assert!(q.poll(t + 700).is_none(), "one batch in flight at a time");
        q.on_result(SendResult::Accepted, t + 700);
        assert!(q.poll(t + 1500).is_none());
        assert_eq!(ids(&q.poll(t + 1600).unwrap()), ["5"]);
        q.on_result(SendResult::Accepted, t + 1600);
        assert_eq!(
            q.take_counts(),
            QueueCounts {
                sent: 5,
                dropped: 0,
                failed_batches: 0
            }
        );
    }

    #[test]
    fn a_failed_batch_is_retried_in_order_after_a_backoff() {
        let mut q = AuditQueue::new(&sink(2, 10));
        let t = 1_000_000;
        for i in 1..=3 {
            q.push(ev(i));
        }
        assert_eq!(ids(&q.poll(t).unwrap()), ["1", "2"]);
        q.on_result(SendResult::from_status(Some(503)), t);
        assert!(q.poll(t + 1999).is_none(), "backoff: 2 x the flush interval");
        assert_eq!(ids(&q.poll(t + 2000).unwrap()), ["1", "2"]);
        q.on_result(SendResult::from_status(None), t + 2000);
        assert!(q.poll(t + 2000 + 3999).is_none(), "backoff doubles");
        assert_eq!(ids(&q.poll(t + 6000).unwrap()), ["1", "2"]);
        q.on_result(SendResult::Accepted, t + 6000);
        assert!(
            q.poll(t + 6999).is_none(),
            "the rest is a partial batch: it waits for the interval"
        );
        assert_eq!(
            ids(&q.poll(t + 7000).unwrap()),
            ["3"],
            "success resets the backoff"
        );
        assert_eq!(q.take_counts().failed_batches, 2);
    }

    #[test]
    fn a_batch_in_flight_past_its_timeout_counts_as_failed() {
        let mut q = AuditQueue::new(&sink(1, 10));
        q.push(ev(1));
        assert!(q.poll(0).is_some());
        assert!(q.poll(3000).is_none(), "still in flight at timeout + 1 s");
        assert!(q.poll(3001).is_none(), "failed now, and backing off");
        assert_eq!(q.len(), 1);
        q.on_result(SendResult::Accepted, 3002);
        assert_eq!(
            q.take_counts().sent,
            0,
            "a late answer for nothing in flight is ignored"
        );
    }

    #[test]
    fn drops_and_counts_what_overflows_and_what_the_server_refuses() {
        let mut q = AuditQueue::new(&sink(2, 3));
        for i in 1..=5 {
            q.push(ev(i));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.take_counts().dropped, 2, "queue full: the newest are dropped");
        assert_eq!(ids(&q.poll(0).unwrap()), ["1", "2"]);
        q.push(ev(6));
        q.push(ev(7));
        q.on_result(SendResult::Retry, 0);
        assert_eq!(q.len(), 3, "requeued, bounded");
        assert_eq!(q.take_counts().dropped, 2, "6 and 7 no longer fit");
        let b = q.poll(10_000).unwrap();
        assert_eq!(ids(&b), ["1", "2"]);
        q.on_result(SendResult::from_status(Some(400)), 10_000);
        assert_eq!(
            q.take_counts(),
            QueueCounts {
                sent: 0,
                dropped: 2,
                failed_batches: 1
            }
        );
    }

    #[test]
    fn entries_a_batch_response_refuses_count_as_dropped() {
        let response = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "201 Created"}},
            {"response": {"status": "400 Bad Request"}},
            {"response": {"status": "201"}},
            {"response": {}},
        ]});
        assert_eq!(refused_entries(response.to_string().as_bytes()), 2);
        assert_eq!(refused_entries(b"not json"), 0);
        assert_eq!(refused_entries(br#"{"resourceType": "OperationOutcome"}"#), 0);
        let mut q = AuditQueue::new(&sink(4, 10));
        for i in 0..4 {
            q.push(ev(i));
        }
        assert!(q.poll(0).is_some());
        q.on_result(SendResult::Accepted, 0);
        q.note_refused_entries(2);
        assert_eq!(
            q.take_counts(),
            QueueCounts {
                sent: 2,
                dropped: 2,
                failed_batches: 0
            }
        );
    }

    #[test]
    fn statuses_map_to_results() {
        for (s, want) in [
            (Some(200), SendResult::Accepted),
            (Some(201), SendResult::Accepted),
            (Some(408), SendResult::Retry),
            (Some(429), SendResult::Retry),
            (Some(500), SendResult::Retry),
            (Some(503), SendResult::Retry),
            (None, SendResult::Retry),
            (Some(400), SendResult::Refused),
            (Some(401), SendResult::Refused),
            (Some(404), SendResult::Refused),
        ] {
            assert_eq!(SendResult::from_status(s), want, "{s:?}");
        }
    }
}
