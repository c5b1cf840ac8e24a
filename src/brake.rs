//! The anomaly brake: per app (the verified `client_id`), the distinct patients and FHIR resource
//! types its allowed requests touched in a sliding window, and what happens above the configured
//! thresholds (audit only, or refuse for a cool-down).
//!
//! The window is [`BUCKETS`] fixed sub-buckets of `window_s / BUCKETS` each; the window is the
//! union of the live buckets, so it slides by one bucket at a time. Each bucket holds a
//! linear-counting bitmap of [`PATIENT_BITS`] bits (a hash of each patient id sets one bit; the
//! union of buckets is their OR, and the distinct count is estimated from the zero bits) and an
//! exact bitset of the R4 resource types (by index in the generated table). One app is one
//! fixed-size value ([`RECORD_BYTES`]) in the host's shared data, so every worker counts into the
//! same window; writes use compare-and-swap and retry. Apps live in `max_apps` slots (open
//! addressing with [`MAX_PROBES`] probes), so shared data stays bounded: at most
//! `max_apps × RECORD_BYTES` bytes. Nothing here talks to the host: the store and the time are
//! parameters.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::fhir::resource_types;
use crate::jwks::cache::SharedStore;

/// Sub-buckets per window.
pub const BUCKETS: usize = 6;
/// Bits of a bucket's patient bitmap (linear counting).
pub const PATIENT_BITS: usize = 1024;
const PATIENT_WORDS: usize = PATIENT_BITS / 64;
/// 64-bit words of a bucket's resource-type bitset (146 R4 types).
const TYPE_WORDS: usize = 3;
const BUCKET_BYTES: usize = 8 + 8 * (PATIENT_WORDS + TYPE_WORDS);
/// Bytes of one app's shared-data value: owner hash, cool-down end, buckets.
pub const RECORD_BYTES: usize = 16 + BUCKETS * BUCKET_BYTES;
/// Largest `max_distinct_patients`: the bitmap estimates well below this.
pub const MAX_PATIENTS_LIMIT: u64 = 2000;
/// Slots probed for an app before it counts as untracked.
pub const MAX_PROBES: u32 = 8;
/// Compare-and-swap attempts before a request counts as untracked.
pub const CAS_ATTEMPTS: usize = 4;
/// Shared-data key prefix of the slots (`smart_fhir_edge.brake.<slot>`).
pub const KEY_PREFIX: &str = "smart_fhir_edge.brake.";

/// What the brake does above a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrakeAction {
    /// Record and count the trip, refuse nothing.
    Audit,
    /// Refuse the app's requests for the cool-down (the default).
    #[default]
    Refuse,
}

/// The validated `anomaly_brake` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrakeConfig {
    pub window_s: u64,
    /// Trip above this many distinct patients in the window (`None`: not counted).
    pub max_distinct_patients: Option<u32>,
    /// Trip above this many distinct resource types in the window (`None`: not counted).
    pub max_distinct_resource_types: Option<u32>,
    pub action: BrakeAction,
    /// 429 or 403.
    pub status: u16,
    pub cooldown_s: u64,
    pub max_apps: u32,
}

/// The `anomaly_brake` block as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrake {
    window_s: Option<u64>,
    max_distinct_patients: Option<u64>,
    max_distinct_resource_types: Option<u64>,
    action: Option<BrakeAction>,
    status: Option<u16>,
    cooldown_s: Option<u64>,
    max_apps: Option<u64>,
}

fn in_range(v: Option<u64>, default: u64, min: u64, max: u64, field: String) -> Result<u64, ConfigError> {
    let n = v.unwrap_or(default);
    if n < min || n > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(n)
}

fn as_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl RawBrake {
    /// Validates the block found at `at`; every error names its field.
    pub fn validate(self, at: &str) -> Result<BrakeConfig, ConfigError> {
        let f = |name: &str| format!("{at}.{name}");
        let window_s = in_range(self.window_s, 300, BUCKETS as u64, 86_400, f("window_s"))?;
        let max_distinct_patients = self
            .max_distinct_patients
            .map(|n| in_range(Some(n), n, 1, MAX_PATIENTS_LIMIT, f("max_distinct_patients")))
            .transpose()?
            .map(as_u32);
        let types = resource_types::all().len() as u64;
        let max_distinct_resource_types = self
            .max_distinct_resource_types
            .map(|n| in_range(Some(n), n, 1, types - 1, f("max_distinct_resource_types")))
            .transpose()?
            .map(as_u32);
        if max_distinct_patients.is_none() && max_distinct_resource_types.is_none() {
            return Err(ConfigError::new(
                at,
                "names no threshold: set max_distinct_patients or max_distinct_resource_types",
            ));
        }
        let status = self.status.unwrap_or(429);
        if status != 429 && status != 403 {
            return Err(ConfigError::new(f("status"), "must be 429 or 403"));
        }
        Ok(BrakeConfig {
            window_s,
            max_distinct_patients,
            max_distinct_resource_types,
            action: self.action.unwrap_or_default(),
            status,
            cooldown_s: in_range(self.cooldown_s, 300, 1, 86_400, f("cooldown_s"))?,
            max_apps: as_u32(in_range(self.max_apps, 1024, 1, 65_536, f("max_apps"))?),
        })
    }
}

/// What one allowed request touched.
#[derive(Debug, Clone, Copy)]
pub struct Touch<'a> {
    /// The verified client id.
    pub app: &'a str,
    pub patient: Option<&'a str>,
    pub resource_type: Option<&'a str>,
}

/// The brake's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; the window is within the thresholds.
    Counted { patients: u32, resource_types: u32 },
    /// This request took the app over a threshold: the cool-down starts now.
    Tripped {
        patients: u32,
        resource_types: u32,
        retry_after_s: u32,
    },
    /// The app is cooling down after a trip (the request is not counted).
    CoolingDown { retry_after_s: u32 },
    /// No slot for the app, or the compare-and-swap kept failing: not counted.
    Untracked,
}

/// One bucket: its number (time / bucket length), the patient bitmap, the resource-type bitset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    epoch: u64,
    patients: [u64; PATIENT_WORDS],
    types: [u64; TYPE_WORDS],
}

/// One app's window as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AppWindow {
    /// Hash of the client id owning the slot (never 0).
    owner: u64,
    cooldown_until_ms: u64,
    buckets: [Bucket; BUCKETS],
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = bytes.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

impl AppWindow {
    fn new(owner: u64) -> AppWindow {
        AppWindow {
            owner,
            cooldown_until_ms: 0,
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn decode(bytes: &[u8]) -> Option<AppWindow> {
        if bytes.len() != RECORD_BYTES {
            return None;
        }
        let mut w = AppWindow::new(read_u64(bytes, 0));
        w.cooldown_until_ms = read_u64(bytes, 8);
        let mut at = 16;
        for b in w.buckets.iter_mut() {
            b.epoch = read_u64(bytes, at);
            at += 8;
            for word in b.patients.iter_mut().chain(b.types.iter_mut()) {
                *word = read_u64(bytes, at);
                at += 8;
            }
        }
        Some(w)
    }

    fn encode(&self, out: &mut [u8; RECORD_BYTES]) {
        let mut words = out.chunks_exact_mut(8);
        let mut put = |v: u64| {
            if let Some(c) = words.next() {
                c.copy_from_slice(&v.to_le_bytes());
            }
        };
        put(self.owner);
        put(self.cooldown_until_ms);
        for b in &self.buckets {
            put(b.epoch);
            for w in b.patients.iter().chain(b.types.iter()) {
                put(*w);
            }
        }
    }

    /// No live bucket and no cool-down: the slot may be taken by another app.
    fn idle(&self, now_ms: u64, epoch: u64) -> bool {
        self.cooldown_until_ms <= now_ms && !self.buckets.iter().any(|b| live(b, epoch) && !b.is_empty())
    }

    /// Distinct patients (estimated) and resource types (exact) in the live buckets.
    fn counts(&self, epoch: u64) -> (u32, u32) {
        let mut patients = [0u64; PATIENT_WORDS];
        let mut types = [0u64; TYPE_WORDS];
        for b in self.buckets.iter().filter(|b| live(b, epoch)) {
            for (u, w) in patients.iter_mut().zip(b.patients.iter()) {
                *u |= w;
            }
            for (u, w) in types.iter_mut().zip(b.types.iter()) {
                *u |= w;
            }
        }
        let set: u32 = patients.iter().map(|w| w.count_ones()).sum();
        (linear_count(set), types.iter().map(|w| w.count_ones()).sum())
    }
}

impl Bucket {
    fn is_empty(&self) -> bool {
        self.patients.iter().chain(self.types.iter()).all(|w| *w == 0)
    }
}

fn live(b: &Bucket, epoch: u64) -> bool {
    b.epoch <= epoch && b.epoch + BUCKETS as u64 > epoch
}

/// The linear-counting estimate of distinct items from the set bits of the bitmap
/// (`-m ln(zeros / m)`), saturating when every bit is set.
fn linear_count(set: u32) -> u32 {
    let m = PATIENT_BITS as f64;
    let zeros = PATIENT_BITS as u32 - set.min(PATIENT_BITS as u32);
    if zeros == 0 {
        return u32::MAX;
    }
    let estimate = -m * (f64::from(zeros) / m).ln();
    // In range: at most m ln m (about 7,100).
    estimate.round() as u32
}

/// FNV-1a 64 with a final avalanche (splitmix64), never 0.
fn hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h.max(1)
}

/// The shared-data key of a slot.
pub fn slot_key(slot: u32) -> String {
    let mut k = String::with_capacity(KEY_PREFIX.len() + 5);
    k.push_str(KEY_PREFIX);
    k.push_str(&slot.to_string());
    k
}

impl BrakeConfig {
    fn bucket_ms(&self) -> u64 {
        (self.window_s * 1000 / BUCKETS as u64).max(1)
    }

    fn over(&self, patients: u32, types: u32) -> bool {
        self.max_distinct_patients.is_some_and(|m| patients > m)
            || self.max_distinct_resource_types.is_some_and(|m| types > m)
    }

    /// Counts one allowed request of `touch.app` at `now_ms` and answers whether the app is over a
    /// threshold. The store is the host's shared data (every worker sees the same windows).
    pub fn observe(&self, store: &mut dyn SharedStore, touch: &Touch<'_>, now_ms: u64) -> Verdict {
        let owner = hash(touch.app);
        let epoch = now_ms / self.bucket_ms();
        let patient_bit = touch.patient.map(|p| (hash(p) % PATIENT_BITS as u64) as usize);
        let type_bit = touch
            .resource_type
            .and_then(|t| resource_types::all().binary_search(&t).ok());
        let mut out = [0u8; RECORD_BYTES];
        for _ in 0..CAS_ATTEMPTS {
            let Some((key, mut w, cas)) = self.find_slot(store, owner, now_ms, epoch) else {
                return Verdict::Untracked;
            };
            if w.cooldown_until_ms > now_ms {
                return Verdict::CoolingDown {
                    retry_after_s: retry_after(w.cooldown_until_ms - now_ms),
                };
            }
            let idx = (epoch % BUCKETS as u64) as usize;
            if let Some(b) = w.buckets.get_mut(idx) {
                if b.epoch != epoch {
                    *b = Bucket {
                        epoch,
                        ..Bucket::default()
                    };
                }
                if let Some(word) = patient_bit.and_then(|bit| b.patients.get_mut(bit / 64)) {
                    *word |= 1 << (patient_bit.unwrap_or(0) % 64);
                }
                if let Some(word) = type_bit.and_then(|bit| b.types.get_mut(bit / 64)) {
                    *word |= 1 << (type_bit.unwrap_or(0) % 64);
                }
            }
            let (patients, resource_types) = w.counts(epoch);
            let verdict = if self.over(patients, resource_types) {
                // The cool-down is the penalty: the app starts a fresh window after it.
                w.cooldown_until_ms = now_ms.saturating_add(self.cooldown_s * 1000);
                w.buckets = [Bucket::default(); BUCKETS];
                Verdict::Tripped {
                    patients,
                    resource_types,
                    retry_after_s: as_u32(self.cooldown_s),
                }
            } else {
                Verdict::Counted {
                    patients,
                    resource_types,
                }
            };
            w.encode(&mut out);
            if store.set(&key, &out, cas).is_ok() {
                return verdict;
            }
        }
        Verdict::Untracked
    }

    /// The app's slot (its own, else the first idle one on its probe sequence, which it takes),
    /// with the value's CAS; `None` when all probed slots belong to other active apps.
    fn find_slot(
        &self,
        store: &dyn SharedStore,
        owner: u64,
        now_ms: u64,
        epoch: u64,
    ) -> Option<(String, AppWindow, Option<u32>)> {
        let apps = u64::from(self.max_apps.max(1));
        let mut idle = None;
        for probe in 0..MAX_PROBES.min(self.max_apps) {
            let slot = ((owner % apps + u64::from(probe)) % apps) as u32;
            let key = slot_key(slot);
            let (value, cas) = store.get(&key);
            let current = value.as_deref().and_then(AppWindow::decode);
            match current {
                Some(w) if w.owner == owner => return Some((key, w, cas)),
                Some(w) if !w.idle(now_ms, epoch) => {}
                Some(_) => {
                    if idle.is_none() {
                        idle = Some((key, AppWindow::new(owner), cas));
                    }
                }
                // Never written (slots are never removed): the app is not further on.
                None => return Some(idle.unwrap_or((key, AppWindow::new(owner), cas))),
            }
        }
        idle
    }
}

fn retry_after(ms: u64) -> u32 {
    as_u32(ms.div_ceil(1000).max(1))
}

/// The patient a request touches: the token's patient in context, else the `Patient/{id}` the
/// path names (read, vread, history, compartment search, instance operation), else the
/// `patient` or `subject` search parameter (`Patient/` prefix removed).
pub fn patient_of<'a>(token_patient: Option<&'a str>, fhir_base: &str, path: &'a str) -> Option<&'a str> {
    if let Some(p) = token_patient {
        return Some(p);
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let rest = path.strip_prefix(fhir_base)?.trim_start_matches('/');
    let mut segments = rest.split('/');
    if segments.next() == Some("Patient") {
        if let Some(id) = segments
            .next()
            .filter(|s| !s.is_empty() && !s.starts_with(['_', '$']))
        {
            return Some(id);
        }
    }
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        let name = k.split(':').next().unwrap_or(k);
        if name != "patient" && name != "subject" {
            return None;
        }
        let v = v
            .strip_prefix("Patient/")
            .or_else(|| v.strip_prefix("Patient%2F"))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::jwks::cache::CasMismatch;

    #[derive(Default)]
    struct Store {
        values: HashMap<String, (Vec<u8>, u32)>,
        next: u32,
        /// Writes to refuse with a CAS mismatch (another worker wrote first).
        lose: usize,
    }

    impl SharedStore for Store {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.values
                .get(key)
                .map_or((None, None), |(v, c)| (Some(v.clone()), Some(*c)))
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
            if self.lose > 0 {
                self.lose -= 1;
                self.next += 1;
                if let Some(e) = self.values.get_mut(key) {
                    e.1 = self.next;
                }
                return Err(CasMismatch);
            }
            if let (Some((_, cur)), Some(c)) = (self.values.get(key), cas) {
                if *cur != c {
                    return Err(CasMismatch);
                }
            }
            self.next += 1;
            self.values.insert(key.to_string(), (value.to_vec(), self.next));
            Ok(())
        }
    }

    fn brake(v: serde_json::Value) -> BrakeConfig {
        let raw: RawBrake = serde_json::from_value(v).unwrap();
        raw.validate("anomaly_brake").unwrap()
    }

    fn touch<'a>(app: &'a str, patient: &'a str, rt: &'a str) -> Touch<'a> {
        Touch {
            app,
            patient: Some(patient),
            resource_type: Some(rt),
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn validates_every_field_naming_it() {
        let table = [
            (
                json!({"max_distinct_patients": 5, "window_s": 5}),
                "anomaly_brake.window_s",
            ),
            (
                json!({"max_distinct_patients": 5, "window_s": 86_401}),
                "anomaly_brake.window_s",
            ),
            (
                json!({"max_distinct_patients": 0}),
                "anomaly_brake.max_distinct_patients",
            ),
            (
                json!({"max_distinct_patients": 2001}),
                "anomaly_brake.max_distinct_patients",
            ),
            (
                json!({"max_distinct_resource_types": 0}),
                "anomaly_brake.max_distinct_resource_types",
            ),
            (
                json!({"max_distinct_resource_types": 146}),
                "anomaly_brake.max_distinct_resource_types",
            ),
            (
                json!({"max_distinct_patients": 5, "status": 503}),
                "anomaly_brake.status",
            ),
            (
                json!({"max_distinct_patients": 5, "cooldown_s": 0}),
                "anomaly_brake.cooldown_s",
            ),
            (
                json!({"max_distinct_patients": 5, "max_apps": 0}),
                "anomaly_brake.max_apps",
            ),
            (
                json!({"max_distinct_patients": 5, "max_apps": 65_537}),
                "anomaly_brake.max_apps",
            ),
            (json!({"window_s": 60}), "anomaly_brake"),
        ];
        for (v, field) in table {
            let raw: RawBrake = serde_json::from_value(v.clone()).unwrap();
            let e = raw.validate("anomaly_brake").unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
        for bad in [
            json!({"action": "block"}),
            json!({"max_distinct_patients": 5, "extra": 1}),
        ] {
            assert!(serde_json::from_value::<RawBrake>(bad).is_err());
        }
        let b = brake(json!({"max_distinct_patients": 5}));
        assert_eq!(
            b,
            BrakeConfig {
                window_s: 300,
                max_distinct_patients: Some(5),
                max_distinct_resource_types: None,
                action: BrakeAction::Refuse,
                status: 429,
                cooldown_s: 300,
                max_apps: 1024,
            }
        );
    }

    #[test]
    fn trips_above_the_patient_threshold_and_refuses_for_the_cool_down() {
        let b = brake(json!({"window_s": 60, "max_distinct_patients": 3, "cooldown_s": 30}));
        let mut s = Store::default();
        let mut now = T0;
        for (i, p) in ["p1", "p2", "p2", "p3"].iter().enumerate() {
            let v = b.observe(&mut s, &touch("app-a", p, "Patient"), now);
            let expected = [1, 2, 2, 3][i];
            assert_eq!(
                v,
                Verdict::Counted {
                    patients: expected,
                    resource_types: 1
                }
            );
            now += 1000;
        }
        let v = b.observe(&mut s, &touch("app-a", "p4", "Patient"), now);
        assert_eq!(
            v,
            Verdict::Tripped {
                patients: 4,
                resource_types: 1,
                retry_after_s: 30
            }
        );
        // Cooling down: refused whatever it touches, with the time left.
        let v = b.observe(&mut s, &touch("app-a", "p1", "Patient"), now + 10_500);
        assert_eq!(v, Verdict::CoolingDown { retry_after_s: 20 });
        // Another app is untouched by app A's brake.
        let v = b.observe(&mut s, &touch("app-b", "p9", "Patient"), now + 10_500);
        assert!(matches!(v, Verdict::Counted { patients: 1, .. }), "{v:?}");
        // After the cool-down the app starts a fresh window.
        let v = b.observe(&mut s, &touch("app-a", "p5", "Patient"), now + 30_000);
        assert_eq!(
            v,
            Verdict::Counted {
                patients: 1,
                resource_types: 1
            }
        );
    }

    #[test]
    fn the_window_slides_bucket_by_bucket() {
        // 60 s window, 10 s buckets.
        let b = brake(json!({"window_s": 60, "max_distinct_patients": 3}));
        let mut s = Store::default();
        for (i, p) in ["p1", "p2", "p3"].iter().enumerate() {
            b.observe(&mut s, &touch("app", p, "Observation"), T0 + i as u64 * 20_000);
        }
        // At T0 + 60 s the bucket of p1 has left the window: p4 makes three, not four.
        let v = b.observe(&mut s, &touch("app", "p4", "Observation"), T0 + 60_000);
        assert_eq!(
            v,
            Verdict::Counted {
                patients: 3,
                resource_types: 1
            }
        );
        // Within the window of p2..p4, a fifth patient trips it.
        let v = b.observe(&mut s, &touch("app", "p5", "Observation"), T0 + 65_000);
        assert!(matches!(v, Verdict::Tripped { patients: 4, .. }), "{v:?}");
    }

    #[test]
    fn counts_resource_types_exactly_and_ignores_unknown_ones() {
        let b = brake(json!({"window_s": 60, "max_distinct_resource_types": 2}));
        let mut s = Store::default();
        let types = ["Patient", "Observation", "Observation", "NotAType"];
        for t in types {
            let v = b.observe(&mut s, &touch("app", "p1", t), T0);
            assert!(matches!(v, Verdict::Counted { .. }), "{t}: {v:?}");
        }
        let v = b.observe(&mut s, &touch("app", "p1", "Condition"), T0);
        assert!(
            matches!(
                v,
                Verdict::Tripped {
                    resource_types: 3,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    #[test]
    fn the_patient_estimate_is_close_up_to_the_largest_threshold() {
        let b = brake(json!({"window_s": 60, "max_distinct_patients": 2000}));
        let mut s = Store::default();
        let mut last = 0;
        for i in 0..2000 {
            if let Verdict::Counted { patients, .. } =
                b.observe(&mut s, &touch("app", &format!("patient-{i}"), "Patient"), T0)
            {
                last = patients;
            }
        }
        let error = (f64::from(last) - 2000.0).abs() / 2000.0;
        assert!(error < 0.08, "estimate {last} for 2000");
        let mut small = Store::default();
        for i in 1..=20u32 {
            let v = b.observe(&mut small, &touch("app", &format!("p{i}"), "Patient"), T0);
            let Verdict::Counted { patients, .. } = v else {
                panic!("{v:?}")
            };
            assert!(patients.abs_diff(i) <= 1, "{patients} for {i}");
        }
    }

    #[test]
    fn a_lost_compare_and_swap_is_retried_and_bounded() {
        let b = brake(json!({"window_s": 60, "max_distinct_patients": 3}));
        let mut s = Store {
            lose: 2,
            ..Store::default()
        };
        b.observe(&mut s, &touch("app", "p0", "Patient"), T0);
        let v = b.observe(&mut s, &touch("app", "p1", "Patient"), T0);
        assert!(
            matches!(v, Verdict::Counted { patients: 2, .. }),
            "retried: {v:?}"
        );
        s.lose = CAS_ATTEMPTS;
        assert_eq!(
            b.observe(&mut s, &touch("app", "p2", "Patient"), T0),
            Verdict::Untracked
        );
    }

    #[test]
    fn apps_live_in_a_bounded_number_of_fixed_size_slots() {
        let b = brake(json!({"window_s": 60, "max_distinct_patients": 3, "max_apps": 4}));
        let mut s = Store::default();
        let mut untracked = 0;
        for i in 0..10 {
            let v = b.observe(&mut s, &touch(&format!("app-{i}"), "p", "Patient"), T0);
            if v == Verdict::Untracked {
                untracked += 1;
            }
        }
        assert_eq!(untracked, 6, "four slots, four apps tracked");
        assert_eq!(s.values.len(), 4);
        assert!(s.values.values().all(|(v, _)| v.len() == RECORD_BYTES));
        // Once a slot's window has passed, another app takes it.
        let v = b.observe(&mut s, &touch("app-9", "p", "Patient"), T0 + 61_000);
        assert!(matches!(v, Verdict::Counted { patients: 1, .. }), "{v:?}");
        assert_eq!(s.values.len(), 4);
    }

    #[test]
    fn finds_the_patient_a_request_touches() {
        let table = [
            (Some("123"), "/fhir/Observation?patient=9", Some("123")),
            (None, "/fhir/Patient/9", Some("9")),
            (None, "/fhir/Patient/9/_history/2", Some("9")),
            (None, "/fhir/Patient/9/Observation?code=x", Some("9")),
            (None, "/fhir/Patient/$everything", None),
            (None, "/fhir/Patient?name=x", None),
            (None, "/fhir/Observation?code=x&patient=Patient/7", Some("7")),
            (None, "/fhir/Observation?subject:Patient=8", Some("8")),
            (None, "/fhir/Observation?code=x", None),
            (None, "/other/Patient/9", None),
        ];
        for (token, path, expected) in table {
            assert_eq!(patient_of(token, "/fhir", path), expected, "{path}");
        }
    }
}
