//! Authorization: may a verified token perform a classified FHIR request?
//!
//! [`authorize`] takes the request, the token's claims, its compiled [`GrantedScopes`] and the
//! configuration, and returns either [`Authorized`] (with the scope context that allowed it, and a
//! parameter to append when a patient search must be confined) or a typed [`Forbidden`] naming what
//! was missing. It never panics and never allows by default.
//!
//! # Permissions per interaction (SMART v2 letters)
//!
//! | interaction | needs |
//! |---|---|
//! | create | `c` (`cs` when conditional, `If-None-Exist`) |
//! | read, vread, instance history | `r` |
//! | update, patch | `u`; conditional forms `us` |
//! | delete | `d`; conditional delete `ds` |
//! | type search, type history, compartment search | `s` on the type |
//! | system search, system history, `Patient/{id}/*` | `s` on `*` (only a wildcard scope grants it) |
//! | capabilities | nothing |
//!
//! # How scopes are combined
//!
//! Scopes are a union within a context; contexts are judged one at a time and never combined for
//! one request. `system/` and `user/` grants are tried first and carry no patient restriction at the
//! edge; then `patient/` grants, which confine the request to the token's patient (see
//! [`patient`]). Granular scopes (`?param=value`) count only for searches (type, compartment,
//! system) and conditional deletes that carry their constraints; reads by id and writes under
//! granular-only grants are refused as not verifiable at the edge yet.
//!
//! # Fail closed on what the edge cannot see (patient-level and granular grants only)
//!
//! Refused with [`ForbiddenKind::NotEnforceableAtEdge`]: `POST _search`, chained parameters, `_has`,
//! `_revinclude`, `_include:iterate`, `_include=*`, `_include` without a target type
//! (`Source:param` rather than `Source:param:Target`), `_query`, `_filter`, and write bodies.
//! `_include=Source:param:Target` is allowed when `Source` is the searched type and the same context
//! grants plain `r` on `Target`; under patient grants `Target` must also be outside the Patient
//! compartment (an included compartment resource could belong to another patient).
//!
//! # Operations
//!
//! Refused unless configured, except the built-in `Patient/{id}/$everything`, which needs plain `rs`
//! on `*` (its result spans every compartment type) and, under patient grants, the patient in
//! context. A configured rule (name, levels, resource types, permissions) needs its permissions on
//! the operation's type (on `*` at system level); a matching rule takes precedence over the
//! built-in. Granular scopes never grant operations.
//!
//! # Batch and transaction
//!
//! Entries are not inspected yet, so a Bundle is allowed only with plain `cruds` on `*` in the
//! `user/` or `system/` context (every entry's interaction is then covered), and refused otherwise.

mod patient;
#[cfg(test)]
mod tests;

use crate::claims::VerifiedClaims;
use crate::config::{Config, OperationLevel};
use crate::denial::{Denial, ForbiddenReason};
use crate::fhir::resource_types::is_resource_type;
use crate::fhir::{FhirRequest, Interaction, OperationTarget, SearchParam};
use crate::scope::{Context, GrantedScopes, Permission, Permissions};

/// A request allowed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// The scope context whose grant allowed it (for audit); `None` when no scope was needed
    /// (capabilities).
    pub context: Option<Context>,
    /// Whether a granular (`?param=value`) scope was needed to allow it.
    pub granular: bool,
    /// Whether a patient-level grant allowed it, so the patient compartment rules were applied.
    pub patient_scoped: bool,
    /// A `(name, value)` search parameter the pipeline must append to the query before forwarding
    /// (`unconstrained_search: constrain`), for example `("subject", "Patient/123")` or
    /// `("_id", "123")`. The value is built from a validated FHIR id and needs no escaping.
    pub append_query: Option<(String, String)>,
}

impl Authorized {
    fn public() -> Authorized {
        Authorized {
            context: None,
            granular: false,
            patient_scoped: false,
            append_query: None,
        }
    }

    fn by(ctx: Context) -> Authorized {
        Authorized {
            context: Some(ctx),
            granular: false,
            patient_scoped: ctx == Context::Patient,
            append_query: None,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenKind {
    /// No granted scope has the permission the interaction needs.
    InsufficientScope,
    /// Only granular scopes grant the permission, and the search does not carry their constraints.
    GranularScopeNotMet,
    /// Patient-level scopes would allow it, but the token has no (usable) patient in context.
    PatientContextMissing,
    /// Patient-level scopes would allow it, but the request reaches outside that patient: why.
    OutsidePatientCompartment(&'static str),
    /// The edge cannot verify this under the granted scopes yet (a later, body-aware feature may):
    /// what it cannot verify.
    NotEnforceableAtEdge(&'static str),
    /// The operation is neither built in nor configured for this level and type.
    OperationNotAllowed,
}

impl ForbiddenKind {
    /// Short stable name for audit records, metrics and tests.
    pub fn code(self) -> &'static str {
        match self {
            ForbiddenKind::InsufficientScope => "insufficient-scope",
            ForbiddenKind::GranularScopeNotMet => "granular-scope-not-met",
            ForbiddenKind::PatientContextMissing => "patient-context-missing",
            ForbiddenKind::OutsidePatientCompartment(_) => "outside-patient-compartment",
            ForbiddenKind::NotEnforceableAtEdge(_) => "not-enforceable-at-edge",
            ForbiddenKind::OperationNotAllowed => "operation-not-allowed",
        }
    }

    /// The reason the denial mapping answers with.
    pub fn reason(self) -> ForbiddenReason {
        match self {
            ForbiddenKind::InsufficientScope | ForbiddenKind::GranularScopeNotMet => {
                ForbiddenReason::InsufficientScope
            }
            ForbiddenKind::PatientContextMissing => ForbiddenReason::PatientContextMissing,
            ForbiddenKind::OutsidePatientCompartment(_) => ForbiddenReason::OutsidePatientCompartment,
            ForbiddenKind::NotEnforceableAtEdge(_) => ForbiddenReason::NotEnforceableAtEdge,
            ForbiddenKind::OperationNotAllowed => ForbiddenReason::OperationNotAllowed,
        }
    }
}

/// A refusal (HTTP 403, `insufficient_scope`), naming what was missing. Holds no claim values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    pub kind: ForbiddenKind,
    /// [`Interaction::kind`] of the refused request.
    pub interaction: &'static str,
    /// A scope that would have allowed the request, for `WWW-Authenticate: ... scope="..."`, for
    /// example `patient/Observation.r` or `user/*.s`.
    pub required_scope: Option<String>,
    /// The first permission the granted scopes lacked.
    pub missing_permission: Option<Permission>,
}

impl Forbidden {
    fn new(kind: ForbiddenKind, interaction: &'static str) -> Forbidden {
        Forbidden {
            kind,
            interaction,
            required_scope: None,
            missing_permission: None,
        }
    }

    /// What was missing, in one line without the reason's lead: interaction, resource type and
    /// permission names, never claim values.
    pub fn detail(&self) -> String {
        let what = self.interaction;
        match self.kind {
            ForbiddenKind::InsufficientScope => {
                let mut s = match &self.required_scope {
                    Some(scope) => format!("{what} needs a scope such as {scope}"),
                    None => format!("{what} is not granted by the token's scopes"),
                };
                if let Some(p) = self.missing_permission {
                    s.push_str(&format!(" (missing {} permission)", p.name()));
                }
                s
            }
            ForbiddenKind::GranularScopeNotMet => {
                format!("{what}: the search does not carry the parameters of the granted granular scope")
            }
            ForbiddenKind::PatientContextMissing => {
                format!("{what} under patient-level scopes needs a patient in context")
            }
            ForbiddenKind::OutsidePatientCompartment(why) => format!("{what}: {why}"),
            ForbiddenKind::NotEnforceableAtEdge(why) => {
                format!("{what}: {why} cannot be verified at the edge yet")
            }
            ForbiddenKind::OperationNotAllowed => {
                format!("{what}: not enabled at this level and type (see `operations` in the configuration)")
            }
        }
    }

    /// The denial the pipeline answers with (403, `WWW-Authenticate` naming `required_scope`).
    pub fn to_denial(&self) -> Denial {
        Denial::Forbidden {
            reason: self.kind.reason(),
            scope: self.required_scope.clone(),
            detail: self.detail(),
        }
    }

    /// The OperationOutcome diagnostics line the client will see (lead and detail).
    pub fn diagnostics(&self) -> String {
        // The realm only shapes `WWW-Authenticate`, not the diagnostics.
        self.to_denial().reply("").diagnostics
    }
}

/// What an interaction needs: permissions on a resource type (`None`: on every type at once).
#[derive(Debug, Clone, Copy)]
struct Need<'a> {
    resource_type: Option<&'a str>,
    permissions: Permissions,
    /// Whether granular scopes may grant it (the query is a search the scope's constraints narrow).
    search_like: bool,
}

impl<'a> Need<'a> {
    fn of(interaction: &'a Interaction, conditional_create: bool) -> Option<Need<'a>> {
        use Permission::{Create, Delete, Read, Search, Update};
        let (rt, perms, search_like): (Option<&str>, &[Permission], bool) = match interaction {
            Interaction::Read { resource_type, .. }
            | Interaction::Vread { resource_type, .. }
            | Interaction::HistoryInstance { resource_type, .. } => (Some(resource_type), &[Read], false),
            Interaction::Update { resource_type, .. } | Interaction::Patch { resource_type, .. } => {
                (Some(resource_type), &[Update], false)
            }
            Interaction::ConditionalUpdate { resource_type }
            | Interaction::ConditionalPatch { resource_type } => {
                (Some(resource_type), &[Update, Search], false)
            }
            Interaction::Delete { resource_type, .. } => (Some(resource_type), &[Delete], false),
            Interaction::ConditionalDelete { resource_type } => {
                (Some(resource_type), &[Delete, Search], true)
            }
            Interaction::Create { resource_type } if conditional_create => {
                (Some(resource_type), &[Create, Search], false)
            }
            Interaction::Create { resource_type } => (Some(resource_type), &[Create], false),
            Interaction::HistoryType { resource_type } => (Some(resource_type), &[Search], false),
            Interaction::SearchType { resource_type, .. } => (Some(resource_type), &[Search], true),
            Interaction::SearchCompartment { resource_type, .. } => {
                (resource_type.as_deref(), &[Search], true)
            }
            Interaction::HistorySystem => (None, &[Search], false),
            Interaction::SearchSystem { .. } => (None, &[Search], true),
            Interaction::Capabilities | Interaction::BatchOrTransaction | Interaction::Operation { .. } => {
                return None
            }
        };
        Some(Need {
            resource_type: rt,
            permissions: Permissions::of(perms),
            search_like,
        })
    }
}

/// Decides whether the token may perform the request.
///
/// `conditional_create` says a create carries `If-None-Exist` (it then also needs `s`).
pub fn authorize(
    req: &FhirRequest,
    conditional_create: bool,
    claims: &VerifiedClaims,
    granted: &GrantedScopes,
    config: &Config,
) -> Result<Authorized, Forbidden> {
    let kind = req.interaction.kind();
    match &req.interaction {
        Interaction::Capabilities => return Ok(Authorized::public()),
        Interaction::BatchOrTransaction => return authorize_bundle(claims, granted),
        Interaction::Operation { name, target } => {
            return authorize_operation(req, name, target, claims, granted, config)
        }
        _ => {}
    }
    let Some(need) = Need::of(&req.interaction, conditional_create) else {
        // Every other interaction has a need; refuse rather than guess if that ever changes.
        return Err(insufficient(kind, Context::User, None, Permissions::ALL, granted));
    };

    let mut denial = None;
    for ctx in [Context::System, Context::User] {
        if granted
            .permissions(ctx, need.resource_type)
            .covers(need.permissions)
        {
            return Ok(Authorized::by(ctx));
        }
    }
    for ctx in [Context::System, Context::User] {
        match granular_cover(req, need, ctx, granted) {
            Cover::Yes => match check_query(req, ctx, granted, false) {
                Ok(()) => {
                    return Ok(Authorized {
                        granular: true,
                        ..Authorized::by(ctx)
                    })
                }
                Err(k) => keep(&mut denial, forbid(k, kind)),
            },
            Cover::Refused(f) => keep(&mut denial, f),
            Cover::No => {}
        }
    }

    let plain = granted.permissions(Context::Patient, need.resource_type);
    let patient_path = if plain.covers(need.permissions) {
        Some(false)
    } else {
        match granular_cover(req, need, Context::Patient, granted) {
            Cover::Yes => Some(true),
            Cover::Refused(f) => {
                keep(&mut denial, f);
                None
            }
            Cover::No => None,
        }
    };
    if let Some(granular) = patient_path {
        match patient::authorize(req, claims, granted, config, granular) {
            Ok(a) => return Ok(a),
            Err(f) => keep(&mut denial, f),
        }
    }

    Err(denial.unwrap_or_else(|| {
        let ctx = suggested_context(claims, granted);
        insufficient(kind, ctx, need.resource_type, need.permissions, granted)
    }))
}

/// Whether granular scopes of one context (with its plain grants) cover the need.
enum Cover {
    /// They do, for this query.
    Yes,
    /// They would, but not for this request: why.
    Refused(Forbidden),
    /// They do not.
    No,
}

fn granular_cover(req: &FhirRequest, need: Need<'_>, ctx: Context, granted: &GrantedScopes) -> Cover {
    let kind = req.interaction.kind();
    let plain = granted.permissions(ctx, need.resource_type);
    let any = granted
        .granular(ctx, need.resource_type)
        .fold(plain, |acc, s| acc.union(s.permissions));
    if !any.covers(need.permissions) {
        return Cover::No;
    }
    if !need.search_like {
        let why = if need.permissions.contains(Permission::Create)
            || need.permissions.contains(Permission::Update)
        {
            "a write body under granular scopes"
        } else {
            "a request by id under granular scopes"
        };
        return Cover::Refused(Forbidden::new(ForbiddenKind::NotEnforceableAtEdge(why), kind));
    }
    let met = granted
        .granular(ctx, need.resource_type)
        .filter(|s| s.is_met_by(&req.query))
        .fold(plain, |acc, s| acc.union(s.permissions));
    if met.covers(need.permissions) {
        Cover::Yes
    } else {
        let mut f = Forbidden::new(ForbiddenKind::GranularScopeNotMet, kind);
        f.required_scope = scope_string(ctx, need.resource_type, need.permissions);
        f.missing_permission = met.lacking(need.permissions).first();
        Cover::Refused(f)
    }
}

/// Keeps the first denial: the most specific reason found in evaluation order.
fn keep(slot: &mut Option<Forbidden>, f: Forbidden) {
    if slot.is_none() {
        *slot = Some(f);
    }
}

fn forbid(f: Refusal, interaction: &'static str) -> Forbidden {
    match f {
        Refusal::Kind(k) => Forbidden::new(k, interaction),
        Refusal::Scope { scope, missing } => Forbidden {
            kind: ForbiddenKind::InsufficientScope,
            interaction,
            required_scope: scope,
            missing_permission: Some(missing),
        },
    }
}

/// A refusal before the interaction name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    Kind(ForbiddenKind),
    /// A permission on another type (an `_include` target) is missing.
    Scope {
        scope: Option<String>,
        missing: Permission,
    },
}

impl From<ForbiddenKind> for Refusal {
    fn from(k: ForbiddenKind) -> Refusal {
        Refusal::Kind(k)
    }
}

fn not_enforceable(why: &'static str) -> Refusal {
    Refusal::Kind(ForbiddenKind::NotEnforceableAtEdge(why))
}

/// `ctx/Type.letters` (`*` for every type). `None` unless the type is an R4 resource type: the
/// scope is echoed in a header, so nothing else from the request goes into it.
fn scope_string(ctx: Context, resource_type: Option<&str>, perms: Permissions) -> Option<String> {
    match resource_type {
        None => Some(format!("{ctx}/*.{}", perms.letters())),
        Some(t) if is_resource_type(t) => Some(format!("{ctx}/{t}.{}", perms.letters())),
        Some(_) => None,
    }
}

fn insufficient(
    interaction: &'static str,
    ctx: Context,
    resource_type: Option<&str>,
    needed: Permissions,
    granted: &GrantedScopes,
) -> Forbidden {
    Forbidden {
        kind: ForbiddenKind::InsufficientScope,
        interaction,
        required_scope: scope_string(ctx, resource_type, needed),
        missing_permission: granted.permissions(ctx, resource_type).lacking(needed).first(),
    }
}

/// The context a suggested scope should use: the one the token already uses (patient, then user,
/// then system), else patient when a patient is in context, else user.
fn suggested_context(claims: &VerifiedClaims, granted: &GrantedScopes) -> Context {
    [Context::Patient, Context::User, Context::System]
        .into_iter()
        .find(|c| granted.has_context(*c))
        .unwrap_or(if claims.patient.is_some() {
            Context::Patient
        } else {
            Context::User
        })
}

/// The type a search is about, for `_include` sources.
fn searched_type(interaction: &Interaction) -> Option<&str> {
    match interaction {
        Interaction::SearchType { resource_type, .. }
        | Interaction::ConditionalDelete { resource_type }
        | Interaction::ConditionalUpdate { resource_type }
        | Interaction::ConditionalPatch { resource_type } => Some(resource_type),
        Interaction::SearchCompartment { resource_type, .. } => resource_type.as_deref(),
        _ => None,
    }
}

fn via_post(interaction: &Interaction) -> bool {
    matches!(
        interaction,
        Interaction::SearchType { via_post: true, .. }
            | Interaction::SearchSystem { via_post: true }
            | Interaction::SearchCompartment { via_post: true, .. }
    )
}

/// The refusals of what the edge cannot see, for patient-level and granular grants.
fn check_query(
    req: &FhirRequest,
    ctx: Context,
    granted: &GrantedScopes,
    in_patient_context: bool,
) -> Result<(), Refusal> {
    if via_post(&req.interaction) {
        return Err(not_enforceable("POST _search (parameters in the body)"));
    }
    let searched = searched_type(&req.interaction);
    for p in &req.query.params {
        if p.chain.is_some() {
            return Err(not_enforceable("chained search parameters"));
        }
        match p.name.as_str() {
            "_has" => return Err(not_enforceable("_has (reverse chaining)")),
            "_revinclude" => return Err(not_enforceable("_revinclude")),
            "_query" => return Err(not_enforceable("named queries (_query)")),
            "_filter" => return Err(not_enforceable("_filter")),
            "_include" => check_include(p, searched, ctx, granted, in_patient_context)?,
            _ => {}
        }
    }
    Ok(())
}

fn check_include(
    p: &SearchParam,
    searched: Option<&str>,
    ctx: Context,
    granted: &GrantedScopes,
    in_patient_context: bool,
) -> Result<(), Refusal> {
    if p.modifier.is_some() {
        return Err(not_enforceable("_include:iterate"));
    }
    for v in &p.values {
        if v.contains('*') {
            return Err(not_enforceable("_include=*"));
        }
        let mut parts = v.split(':');
        let (Some(source), Some(_param), Some(target), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not_enforceable(
                "_include without a target type (Source:param:Target)",
            ));
        };
        if Some(source) != searched {
            return Err(not_enforceable(
                "_include from a type other than the one searched",
            ));
        }
        if !is_resource_type(target) {
            return Err(not_enforceable("_include of an unknown target type"));
        }
        if in_patient_context && patient::is_compartment_type(target) {
            return Err(not_enforceable("_include of patient-compartment resources"));
        }
        if !granted.permissions(ctx, Some(target)).contains(Permission::Read) {
            return Err(Refusal::Scope {
                scope: scope_string(ctx, Some(target), Permissions::of(&[Permission::Read])),
                missing: Permission::Read,
            });
        }
    }
    Ok(())
}

fn authorize_bundle(claims: &VerifiedClaims, granted: &GrantedScopes) -> Result<Authorized, Forbidden> {
    for ctx in [Context::System, Context::User] {
        if granted.permissions(ctx, None) == Permissions::ALL {
            return Ok(Authorized::by(ctx));
        }
    }
    let mut f = Forbidden::new(
        ForbiddenKind::NotEnforceableAtEdge(
            "a batch/transaction Bundle (without cruds on * for user or system)",
        ),
        Interaction::BatchOrTransaction.kind(),
    );
    let ctx = suggested_context(claims, granted);
    if ctx != Context::Patient {
        f.required_scope = scope_string(ctx, None, Permissions::ALL);
        f.missing_permission = granted.permissions(ctx, None).lacking(Permissions::ALL).first();
    }
    Err(f)
}

fn authorize_operation(
    req: &FhirRequest,
    name: &str,
    target: &OperationTarget,
    claims: &VerifiedClaims,
    granted: &GrantedScopes,
    config: &Config,
) -> Result<Authorized, Forbidden> {
    let kind = req.interaction.kind();
    let (level, resource_type) = match target {
        OperationTarget::System => (OperationLevel::System, None),
        OperationTarget::Type { resource_type } => (OperationLevel::Type, Some(resource_type.as_str())),
        OperationTarget::Instance { resource_type, .. } => {
            (OperationLevel::Instance, Some(resource_type.as_str()))
        }
    };
    let rule = config.operations.iter().find(|r| {
        r.name == name
            && r.levels.contains(&level)
            && (level == OperationLevel::System
                || r.resource_types.is_empty()
                || resource_type.is_some_and(|t| r.resource_types.iter().any(|x| x == t)))
    });
    let is_builtin_everything = name == "$everything"
        && matches!(target, OperationTarget::Instance { resource_type, .. } if resource_type == "Patient");
    let (needed, on_type) = match rule {
        Some(r) => match Permissions::parse_v2(&r.permissions) {
            Some(p) => (
                p,
                if level == OperationLevel::System {
                    None
                } else {
                    resource_type
                },
            ),
            None => return Err(Forbidden::new(ForbiddenKind::OperationNotAllowed, kind)),
        },
        None if is_builtin_everything => (Permissions::of(&[Permission::Read, Permission::Search]), None),
        None => return Err(Forbidden::new(ForbiddenKind::OperationNotAllowed, kind)),
    };
    for ctx in [Context::System, Context::User] {
        if granted.permissions(ctx, on_type).covers(needed) {
            return Ok(Authorized::by(ctx));
        }
    }
    if granted.permissions(Context::Patient, on_type).covers(needed) {
        return patient::authorize_operation(req, target, claims, granted);
    }
    let ctx = suggested_context(claims, granted);
    Err(insufficient(kind, ctx, on_type, needed, granted))
}
