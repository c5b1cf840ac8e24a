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
//! [`patient`]). Granular scopes (`?param=value`) count for searches (type, compartment, system)
//! and conditional deletes that carry their constraints, for reads by id (the returned resource
//! must then meet them: a response check) and for creates (the body must meet them: a body check);
//! updates, patches and deletes by id under granular-only grants are refused (the stored resource
//! decides, and the edge does not see it).
//!
//! # What the body decides (patient-level and granular grants)
//!
//! Where the URL cannot decide, [`Authorized`] says what the adapter must check before the
//! request, or its response, goes on ([`crate::body`]):
//!
//! * [`Authorized::body_check`]: `POST _search` (the form parameters are merged with the URL's and
//!   authorized as the GET search), batch/transaction Bundles (every entry authorized; without
//!   plain `cruds` on `*` in `user/` or `system/`), and writes (the body must match the URL, stay in
//!   the patient's compartment and meet granular constraints);
//! * [`Authorized::response_check`]: reads by id, vreads and instance history of compartment types
//!   under patient grants and of any type under granular grants (the resource must be in the
//!   compartment and meet the constraints), and every search under patient or granular grants
//!   (entries outside the grant, `_include`d, `_revinclude`d or `:iterate`d ones too, are removed).
//!
//! So chained parameters, `_has`, `_include` (any form) and `_revinclude` are allowed: whatever
//! they bring back is filtered. `_query` and `_filter` stay refused
//! ([`ForbiddenKind::NotEnforceableAtEdge`]): their semantics are the server's.
//!
//! # Operations
//!
//! Refused unless configured, except the built-in `Patient/{id}/$everything`, which needs plain `rs`
//! on `*` (its result spans every compartment type) and, under patient grants, the patient in
//! context. A configured rule (name, levels, resource types, permissions) needs its permissions on
//! the operation's type (on `*` at system level); a matching rule takes precedence over the
//! built-in. Granular scopes never grant operations. Operation bodies and results are not checked.
//!
//! # Batch and transaction
//!
//! With plain `cruds` on `*` in the `user/` or `system/` context every entry's interaction is
//! covered and the Bundle is allowed as it is. Otherwise, when the token grants any clinical scope,
//! the Bundle is allowed pending its body: [`crate::body::bundle`] authorizes each entry as if it
//! were sent alone and refuses the whole Bundle if any entry is refused.

mod patient;
#[cfg(test)]
mod tests;

use crate::body::{Access, BodyCheck, ResponseCheck, WriteCheck, WriteMode};
use crate::claims::VerifiedClaims;
use crate::config::{Config, OperationLevel};
use crate::denial::{Denial, ForbiddenReason};
use crate::fhir::resource_types::is_resource_type;
use crate::fhir::{FhirRequest, Interaction, OperationTarget};
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
    /// The request body must be read and checked ([`crate::body::check_request`]) before the
    /// request is forwarded; until then nothing is decided.
    pub body_check: Option<BodyCheck>,
    /// The response body must be read and checked ([`crate::body::check_response`]) before the
    /// response is passed on.
    pub response_check: Option<ResponseCheck>,
}

impl Authorized {
    fn public() -> Authorized {
        Authorized {
            context: None,
            granular: false,
            patient_scoped: false,
            append_query: None,
            body_check: None,
            response_check: None,
        }
    }

    fn by(ctx: Context) -> Authorized {
        Authorized {
            context: Some(ctx),
            granular: false,
            patient_scoped: ctx == Context::Patient,
            append_query: None,
            body_check: None,
            response_check: None,
        }
    }

    /// Whether the adapter must read a body (request or response) to finish the decision.
    pub fn needs_body(&self) -> bool {
        self.body_check.is_some() || self.response_check.is_some()
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
    pub(crate) fn new(kind: ForbiddenKind, interaction: &'static str) -> Forbidden {
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
                format!("{what}: {why} cannot be verified at the edge")
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
    if via_post(&req.interaction) {
        return authorize_post_search(req, claims, granted, config);
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
            Cover::Yes => match check_query(req) {
                Ok(()) => {
                    let access = Access {
                        context: ctx,
                        patient: None,
                    };
                    return Ok(Authorized {
                        granular: true,
                        body_check: granular_body_check(&req.interaction, ctx),
                        response_check: response_check(&req.interaction, access),
                        ..Authorized::by(ctx)
                    });
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
        match patient::authorize(req, conditional_create, claims, config, granular) {
            Ok(a) => return Ok(a),
            Err(f) => keep(&mut denial, f),
        }
    }

    Err(denial.unwrap_or_else(|| {
        let ctx = suggested_context(claims, granted);
        insufficient(kind, ctx, need.resource_type, need.permissions, granted)
    }))
}

/// The GET form of a `POST _search`.
pub(crate) fn as_get(req: &FhirRequest) -> FhirRequest {
    let interaction = match &req.interaction {
        Interaction::SearchType { resource_type, .. } => Interaction::SearchType {
            resource_type: resource_type.clone(),
            via_post: false,
        },
        Interaction::SearchSystem { .. } => Interaction::SearchSystem { via_post: false },
        Interaction::SearchCompartment {
            compartment,
            id,
            resource_type,
            ..
        } => Interaction::SearchCompartment {
            compartment: compartment.clone(),
            id: id.clone(),
            resource_type: resource_type.clone(),
            via_post: false,
        },
        other => other.clone(),
    };
    FhirRequest {
        method: crate::fhir::Method::Get,
        interaction,
        query: req.query.clone(),
    }
}

/// `POST _search`: decided as the GET search when the body cannot change the answer (plain
/// `user/`/`system/` grants, or a refusal no added parameter can lift); otherwise allowed pending
/// the form body ([`crate::body::form`]).
fn authorize_post_search(
    req: &FhirRequest,
    claims: &VerifiedClaims,
    granted: &GrantedScopes,
    config: &Config,
) -> Result<Authorized, Forbidden> {
    let pending = |a: Option<&Authorized>| Authorized {
        context: a.and_then(|a| a.context),
        granular: a.is_some_and(|a| a.granular),
        patient_scoped: a.is_some_and(|a| a.patient_scoped),
        append_query: None,
        body_check: Some(BodyCheck::SearchForm),
        response_check: None,
    };
    match authorize(&as_get(req), false, claims, granted, config) {
        Ok(a) if !a.granular && !a.patient_scoped => Ok(a),
        Ok(a) => Ok(pending(Some(&a))),
        // Body parameters may carry the granular constraints or confine the search.
        Err(f) if f.kind == ForbiddenKind::GranularScopeNotMet || f.kind == patient::NOT_CONFINED => {
            Ok(pending(None))
        }
        Err(f) => Err(f),
    }
}

/// The body check a granular-only grant needs: a create's body must meet the constraints.
fn granular_body_check(interaction: &Interaction, ctx: Context) -> Option<BodyCheck> {
    match interaction {
        Interaction::Create { resource_type } => Some(BodyCheck::Write(WriteCheck {
            mode: WriteMode::Create,
            resource_type: resource_type.clone(),
            patient: None,
            granular: Some(ctx),
        })),
        _ => None,
    }
}

/// The response check of a read, history or search decided under `access` (patient-level or
/// granular grants); `None` for interactions whose response holds no resources to check.
pub(crate) fn response_check(interaction: &Interaction, access: Access) -> Option<ResponseCheck> {
    match interaction {
        Interaction::Read { resource_type, id }
        | Interaction::Vread {
            resource_type, id, ..
        } => Some(ResponseCheck::Resource {
            access,
            resource_type: resource_type.clone(),
            id: id.clone(),
        }),
        Interaction::HistoryInstance { .. } => Some(ResponseCheck::History { access }),
        Interaction::SearchType { resource_type, .. } => Some(ResponseCheck::Searchset {
            access,
            vouched: Some(resource_type.clone()),
        }),
        Interaction::SearchCompartment { resource_type, .. } => Some(ResponseCheck::Searchset {
            access,
            vouched: resource_type.clone(),
        }),
        Interaction::SearchSystem { .. } => Some(ResponseCheck::Searchset {
            access,
            vouched: None,
        }),
        Interaction::HistoryType { .. } | Interaction::HistorySystem => {
            Some(ResponseCheck::History { access })
        }
        _ => None,
    }
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
        // Reads by id are checked on the response, plain creates on the body.
        let read = Permissions::of(&[Permission::Read]);
        let create = Permissions::of(&[Permission::Create]);
        let checkable = match req.interaction {
            Interaction::Read { .. } | Interaction::Vread { .. } | Interaction::HistoryInstance { .. } => {
                need.permissions == read
            }
            Interaction::Create { .. } => need.permissions == create,
            _ => false,
        };
        if checkable {
            return Cover::Yes;
        }
        let why = if need.permissions.contains(Permission::Create)
            || need.permissions.contains(Permission::Update)
        {
            "a write to a stored resource under granular scopes"
        } else {
            "a request by id or over history under granular scopes"
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
    }
}

/// A refusal before the interaction name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    Kind(ForbiddenKind),
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

fn via_post(interaction: &Interaction) -> bool {
    matches!(
        interaction,
        Interaction::SearchType { via_post: true, .. }
            | Interaction::SearchSystem { via_post: true }
            | Interaction::SearchCompartment { via_post: true, .. }
    )
}

/// The refusals of what the edge cannot judge even with the response in hand, for patient-level
/// and granular grants: parameters whose semantics are the server's own.
fn check_query(req: &FhirRequest) -> Result<(), Refusal> {
    for p in &req.query.params {
        match p.name.as_str() {
            "_query" => return Err(not_enforceable("named queries (_query)")),
            "_filter" => return Err(not_enforceable("_filter")),
            _ => {}
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
    if !granted.is_empty() {
        return Ok(Authorized {
            body_check: Some(BodyCheck::Bundle),
            ..Authorized::public()
        });
    }
    let ctx = suggested_context(claims, granted);
    Err(insufficient(
        Interaction::BatchOrTransaction.kind(),
        ctx,
        None,
        Permissions::ALL,
        granted,
    ))
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
        return patient::authorize_operation(req, target, claims);
    }
    let ctx = suggested_context(claims, granted);
    Err(insufficient(kind, ctx, on_type, needed, granted))
}
