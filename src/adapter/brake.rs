//! The anomaly brake's host side: counts an allowed request into its app's window in Envoy's
//! shared data ([`crate::brake`]) and turns the verdict into what the stream acts on.

use super::host::{HostMetrics, HostSharedData};
use super::root::Vm;
use crate::brake::{patient_of, BrakeAction, Touch, Verdict};
use crate::decision::Decision;
use crate::denial::Denial;
use crate::metrics::{tagged, ANOMALY_BRAKE};

/// Runs the brake on an allowed request of an app (a verified `client_id`). Returns the decision
/// to act on (an allowed request refused while the brake is on, when `action` is `refuse`) and,
/// when `action` is `audit`, the refusal the audit record notes without sending it.
pub fn apply(vm: &mut Vm, decision: Decision, path: &str, now_ms: u64) -> (Decision, Option<Denial>) {
    let config = vm.engine.config().clone();
    let Some(brake) = &config.anomaly_brake else {
        return (decision, None);
    };
    let Decision::Allow(allowed) = decision else {
        return (decision, None);
    };
    let Some(claims) = allowed.facts.claims.clone() else {
        return (Decision::Allow(allowed), None);
    };
    let Some(app) = claims.client_id.as_deref() else {
        return (Decision::Allow(allowed), None);
    };
    let touch = Touch {
        app,
        patient: patient_of(claims.patient.as_deref(), &config.fhir_base, path),
        resource_type: allowed.facts.resource_type.as_deref(),
    };
    let verdict = brake.observe(&mut HostSharedData, &touch, now_ms);
    let count = |vm: &mut Vm, outcome: &str| {
        vm.metrics.count(
            &mut HostMetrics,
            tagged(ANOMALY_BRAKE, &[("outcome", outcome)]),
            1,
        );
    };
    let retry_after_s = match verdict {
        Verdict::Counted { .. } => return (Decision::Allow(allowed), None),
        Verdict::Untracked => {
            count(vm, "untracked");
            return (Decision::Allow(allowed), None);
        }
        Verdict::Tripped { retry_after_s, .. } => {
            count(vm, "tripped");
            log::warn!(
                "smart-fhir-edge: anomaly brake tripped for app {} ({})",
                crate::token::token_fingerprint(app),
                if brake.action == BrakeAction::Refuse {
                    "refusing for the cool-down"
                } else {
                    "audit only"
                }
            );
            retry_after_s
        }
        Verdict::CoolingDown { retry_after_s } => retry_after_s,
    };
    let denial = Denial::AnomalyBrake {
        status: brake.status,
        retry_after_s,
    };
    match brake.action {
        BrakeAction::Refuse => {
            count(vm, "refused");
            (Decision::Deny(denial, Box::new(allowed.facts)), None)
        }
        BrakeAction::Audit => {
            count(vm, "audited");
            (Decision::Allow(allowed), Some(denial))
        }
    }
}
