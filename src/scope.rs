//! SMART App Launch 2.x scopes: the grammar of one scope word, and a token's granted scopes compiled
//! once into a value that answers "which permissions does context C grant on type T".
//!
//! Accepted forms (case-sensitive, as SMART scopes are):
//!
//! * v1: `patient/Observation.read`, `user/*.write`, `system/*.*` — `read` means `rs`, `write` means
//!   `cud`, `*` means `cruds`;
//! * v2: `patient/Observation.rs` — letters a non-empty subset of `cruds`, in that order, no repeats;
//! * granular v2: `patient/Observation.rs?category=http://…|laboratory&code=1234-5` — every
//!   `name[:modifier]=value[,value]` pair is a constraint a search must carry (see
//!   [`Constraint::is_met_by`]); values are percent-decoded once.
//!
//! Contexts are `patient/`, `user/` and `system/`; the resource type is an R4 resource type name or
//! `*`. Every other word (`launch`, `launch/patient`, `openid`, `fhirUser`, `profile`,
//! `offline_access`, `online_access`, custom words, out-of-order letters such as `.sr`, v1 words with
//! a `?` query, a type that is not an R4 resource type, a malformed query) grants nothing and is never
//! an error. A malformed granular scope is dropped whole: it is never widened into its unconstrained
//! form.

use crate::fhir::resource_types::is_resource_type;
use crate::fhir::{Query, SearchParam};
use std::collections::BTreeMap;
use std::fmt;

/// The launch context a scope applies in (`patient/`, `user/`, `system/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Context {
    /// `patient/`: data about the patient in context only.
    Patient,
    /// `user/`: whatever the user in context may see (no patient restriction at the edge).
    User,
    /// `system/`: backend services (no patient restriction at the edge).
    System,
}

impl Context {
    /// The scope prefix without the slash: `patient`, `user`, `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }

    fn parse(s: &str) -> Option<Context> {
        Some(match s {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return None,
        })
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One SMART v2 permission letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// `c`: create.
    Create,
    /// `r`: read, vread, instance history.
    Read,
    /// `u`: update, patch.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search, type and system history.
    Search,
}

impl Permission {
    /// All permissions in SMART order (`c`, `r`, `u`, `d`, `s`).
    pub const ALL: [Permission; 5] = [
        Permission::Create,
        Permission::Read,
        Permission::Update,
        Permission::Delete,
        Permission::Search,
    ];

    /// The v2 letter: `c`, `r`, `u`, `d` or `s`.
    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }

    /// The word for messages: `create`, `read`, `update`, `delete`, `search`.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Create => "create",
            Permission::Read => "read",
            Permission::Update => "update",
            Permission::Delete => "delete",
            Permission::Search => "search",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Permission::Create => 1,
            Permission::Read => 2,
            Permission::Update => 4,
            Permission::Delete => 8,
            Permission::Search => 16,
        }
    }
}

/// A set of SMART v2 permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Permissions(u8);

impl Permissions {
    /// No permission.
    pub const NONE: Permissions = Permissions(0);
    /// `cruds`.
    pub const ALL: Permissions = Permissions(31);

    /// The set holding exactly these permissions.
    pub fn of(perms: &[Permission]) -> Permissions {
        Permissions(perms.iter().fold(0, |acc, p| acc | p.bit()))
    }

    /// Parses v2 letters: a non-empty subset of `cruds`, in that order, without repeats.
    pub fn parse_v2(letters: &str) -> Option<Permissions> {
        let mut bits = 0u8;
        let mut last: Option<usize> = None;
        for ch in letters.chars() {
            let pos = Permission::ALL.iter().position(|p| p.letter() == ch)?;
            if last.is_some_and(|l| pos <= l) {
                return None;
            }
            last = Some(pos);
            bits |= Permission::ALL.get(pos)?.bit();
        }
        (bits != 0).then_some(Permissions(bits))
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    /// Whether every permission of `needed` is in the set.
    pub fn covers(self, needed: Permissions) -> bool {
        self.0 & needed.0 == needed.0
    }

    /// Both sets together.
    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// What `needed` asks for that this set lacks.
    pub fn lacking(self, needed: Permissions) -> Permissions {
        Permissions(needed.0 & !self.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The first permission of the set in SMART order.
    pub fn first(self) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| self.contains(*p))
    }

    /// The v2 letters in SMART order (`rs`, `cud`, ...); empty for [`Permissions::NONE`].
    pub fn letters(self) -> String {
        Permission::ALL
            .into_iter()
            .filter(|p| self.contains(*p))
            .map(Permission::letter)
            .collect()
    }
}

/// One `name[:modifier]=value[,value...]` constraint of a granular scope, values decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The search parameter name: `category`.
    pub name: String,
    /// The modifier, without the colon: `in` for `code:in=...`.
    pub modifier: Option<String>,
    /// The allowed values (a comma list ORs), each percent-decoded once.
    pub values: Vec<String>,
}

impl Constraint {
    /// Whether a search carries this constraint.
    ///
    /// Some parameter of the query must have the same name and modifier, no chain, and values the
    /// scope allows: without a modifier every value of the parameter must be one of the scope's
    /// values (a subset of an OR list only narrows); with a modifier the value list must be equal.
    /// Values compare as exact strings after decoding: a scope `category=http://s|laboratory` is met
    /// only by that same `system|code`, never by a code-only `laboratory` (which could match other
    /// systems), and a code-only scope `category=laboratory` only by a code-only `laboratory`.
    /// Further occurrences of the same parameter are allowed: repeated parameters AND, which only
    /// narrows the result.
    pub fn is_met_by(&self, query: &Query) -> bool {
        query.params.iter().any(|p| self.is_met_by_param(p))
    }

    fn is_met_by_param(&self, p: &SearchParam) -> bool {
        if p.name != self.name || p.modifier != self.modifier || p.chain.is_some() || p.values.is_empty() {
            return false;
        }
        if self.modifier.is_some() {
            return p.values == self.values;
        }
        p.values.iter().all(|v| self.values.contains(v))
    }
}

/// One parsed clinical-data scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// The R4 resource type, or `None` for `*`.
    pub resource_type: Option<String>,
    pub permissions: Permissions,
    /// Granular constraints (v2 `?param=value`); empty for a plain scope.
    pub constraints: Vec<Constraint>,
}

impl Scope {
    /// Parses one scope word; `None` for anything that is not a well-formed clinical-data scope on
    /// an R4 resource type or `*` (such words grant nothing).
    pub fn parse(word: &str) -> Option<Scope> {
        let (context, rest) = word.split_once('/')?;
        let context = Context::parse(context)?;
        let (head, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let (resource, perms) = head.split_once('.')?;
        let resource_type = match resource {
            "*" => None,
            t if is_resource_type(t) => Some(t.to_string()),
            _ => return None,
        };
        let v1 = match perms {
            "read" => Some(Permissions::of(&[Permission::Read, Permission::Search])),
            "write" => Some(Permissions::of(&[
                Permission::Create,
                Permission::Update,
                Permission::Delete,
            ])),
            "*" => Some(Permissions::ALL),
            _ => None,
        };
        let (permissions, constraints) = match (v1, query) {
            (Some(p), None) => (p, Vec::new()),
            // Granular constraints exist only in the v2 syntax.
            (Some(_), Some(_)) => return None,
            (None, None) => (Permissions::parse_v2(perms)?, Vec::new()),
            (None, Some(q)) => (Permissions::parse_v2(perms)?, parse_constraints(q)?),
        };
        Some(Scope {
            context,
            resource_type,
            permissions,
            constraints,
        })
    }

    /// Whether the scope carries granular constraints.
    pub fn is_granular(&self) -> bool {
        !self.constraints.is_empty()
    }

    /// Whether a search carries every constraint of the scope.
    pub fn is_met_by(&self, query: &Query) -> bool {
        self.constraints.iter().all(|c| c.is_met_by(query))
    }
}

/// `a=1&b:in=x,y` -> constraints; `None` when anything is malformed (the scope is then dropped).
fn parse_constraints(query: &str) -> Option<Vec<Constraint>> {
    let mut out = Vec::new();
    for pair in query.split('&') {
        let (name_part, raw_values) = pair.split_once('=')?;
        let (name, modifier) = match name_part.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (name_part, None),
        };
        if !is_param_token(name) || modifier.is_some_and(|m| !is_param_token(m)) {
            return None;
        }
        // A backslash would need FHIR escaping rules we do not guess at: drop the scope.
        if raw_values.contains('\\') {
            return None;
        }
        let mut values = Vec::new();
        for raw in raw_values.split(',') {
            let v = percent_decode(raw)?;
            if v.is_empty() || v.contains(',') {
                return None;
            }
            values.push(v);
        }
        out.push(Constraint {
            name: name.to_string(),
            modifier: modifier.map(str::to_string),
            values,
        });
    }
    (!out.is_empty()).then_some(out)
}

/// A search parameter name or modifier: letters, digits, `-`, `_` (no `.`: chains are not allowed).
fn is_param_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Decodes `%XX` once; `None` on a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Plain (non-granular) grants of one context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ContextGrants {
    /// From `ctx/*.…`.
    wildcard: Permissions,
    /// From `ctx/Type.…`.
    by_type: BTreeMap<String, Permissions>,
}

impl ContextGrants {
    fn is_empty(&self) -> bool {
        self.wildcard.is_empty() && self.by_type.is_empty()
    }
}

/// A token's scope words compiled once: the union of everything they grant.
///
/// Build it with [`GrantedScopes::parse`] when the token is verified and keep it with the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantedScopes {
    patient: ContextGrants,
    user: ContextGrants,
    system: ContextGrants,
    granular: Vec<Scope>,
}

impl GrantedScopes {
    /// Compiles scope words; words that are not clinical-data scopes are ignored.
    pub fn parse(words: &[String]) -> GrantedScopes {
        let mut g = GrantedScopes::default();
        for scope in words.iter().filter_map(|w| Scope::parse(w)) {
            if scope.is_granular() {
                if !g.granular.contains(&scope) {
                    g.granular.push(scope);
                }
                continue;
            }
            let grants = g.context_mut(scope.context);
            match scope.resource_type {
                None => grants.wildcard = grants.wildcard.union(scope.permissions),
                Some(t) => {
                    let p = grants.by_type.entry(t).or_default();
                    *p = p.union(scope.permissions);
                }
            }
        }
        g
    }

    fn context(&self, ctx: Context) -> &ContextGrants {
        match ctx {
            Context::Patient => &self.patient,
            Context::User => &self.user,
            Context::System => &self.system,
        }
    }

    fn context_mut(&mut self, ctx: Context) -> &mut ContextGrants {
        match ctx {
            Context::Patient => &mut self.patient,
            Context::User => &mut self.user,
            Context::System => &mut self.system,
        }
    }

    /// Plain (non-granular) permissions of `ctx` on `resource_type`: the union of `ctx/*` and
    /// `ctx/{resource_type}`. `None` asks for every type at once (system-level interactions): only
    /// `ctx/*` scopes answer it.
    pub fn permissions(&self, ctx: Context, resource_type: Option<&str>) -> Permissions {
        let g = self.context(ctx);
        let typed = resource_type
            .and_then(|t| g.by_type.get(t).copied())
            .unwrap_or_default();
        g.wildcard.union(typed)
    }

    /// Granular scopes of `ctx` that apply to `resource_type` (their own type or `*`); for `None`
    /// only `*` ones.
    pub fn granular<'a>(
        &'a self,
        ctx: Context,
        resource_type: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Scope> + 'a {
        self.granular.iter().filter(move |s| {
            s.context == ctx
                && match (&s.resource_type, resource_type) {
                    (None, _) => true,
                    (Some(st), Some(t)) => st == t,
                    (Some(_), None) => false,
                }
        })
    }

    /// Whether any scope (plain or granular) of this context was granted.
    pub fn has_context(&self, ctx: Context) -> bool {
        !self.context(ctx).is_empty() || self.granular.iter().any(|s| s.context == ctx)
    }

    /// Whether no clinical-data scope was granted at all.
    pub fn is_empty(&self) -> bool {
        [Context::Patient, Context::User, Context::System]
            .into_iter()
            .all(|c| !self.has_context(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn perms(letters: &str) -> Permissions {
        Permissions::parse_v2(letters).unwrap()
    }

    fn param(name: &str, modifier: Option<&str>, values: &[&str]) -> SearchParam {
        SearchParam {
            name: name.into(),
            modifier: modifier.map(str::to_string),
            chain: None,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn query(params: Vec<SearchParam>) -> Query {
        Query { params }
    }

    #[test]
    fn names_exactly_the_r4_resource_types() {
        for t in crate::fhir::resource_types::all() {
            let scope = Scope::parse(&format!("patient/{t}.rs"));
            assert_eq!(scope.and_then(|s| s.resource_type), Some(t.to_string()), "{t}");
        }
        for t in [
            "Resource",
            "DomainResource",
            "patient",
            "Patients",
            "Citation",
            "",
        ] {
            assert_eq!(Scope::parse(&format!("patient/{t}.rs")), None, "{t:?}");
        }
    }

    #[test]
    fn v2_letters_must_be_a_non_empty_ordered_subset_of_cruds() {
        let cases: &[(&str, Option<&str>)] = &[
            ("cruds", Some("cruds")),
            ("rs", Some("rs")),
            ("c", Some("c")),
            ("ud", Some("ud")),
            ("", None),
            ("sr", None),
            ("rr", None),
            ("rsx", None),
            ("R", None),
            ("crudss", None),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Permissions::parse_v2(input).map(Permissions::letters).as_deref(),
                *expected,
                "{input}"
            );
        }
    }

    #[test]
    fn parses_v1_and_v2_scopes_into_the_same_permissions() {
        let cases: &[(&str, Context, Option<&str>, &str)] = &[
            (
                "patient/Observation.read",
                Context::Patient,
                Some("Observation"),
                "rs",
            ),
            (
                "patient/Observation.rs",
                Context::Patient,
                Some("Observation"),
                "rs",
            ),
            ("user/*.write", Context::User, None, "cud"),
            ("user/*.cud", Context::User, None, "cud"),
            ("patient/*.*", Context::Patient, None, "cruds"),
            ("system/Patient.cruds", Context::System, Some("Patient"), "cruds"),
            ("system/Encounter.s", Context::System, Some("Encounter"), "s"),
        ];
        for (word, ctx, rt, letters) in cases {
            let s = Scope::parse(word).unwrap_or_else(|| panic!("{word} should parse"));
            assert_eq!(s.context, *ctx, "{word}");
            assert_eq!(s.resource_type.as_deref(), *rt, "{word}");
            assert_eq!(s.permissions.letters(), *letters, "{word}");
            assert!(!s.is_granular(), "{word}");
        }
    }

    #[test]
    fn ignores_words_that_are_not_clinical_data_scopes() {
        for word in [
            "launch",
            "launch/patient",
            "launch/encounter",
            "openid",
            "fhirUser",
            "profile",
            "offline_access",
            "online_access",
            "__x",
            "patient/Observation.sr",
            "patient/Observation.rrs",
            "patient/Observation.",
            "patient/Observation",
            "patient/.rs",
            "patient/observation.rs",
            "Patient/Observation.rs",
            "patient/Observation.READ",
            "patient/Widget.rs",
            "practitioner/Observation.rs",
            "patient/Observation.read?category=laboratory",
            "patient/Observation.rs?",
            "patient/Observation.rs?category",
            "patient/Observation.rs?category=",
            "patient/Observation.rs?=laboratory",
            "patient/Observation.rs?subject.name=x",
            "patient/Observation.rs?category=%zz",
            "patient/Observation.rs?category=a,,b",
            "patient/Observation.rs?category=a%2Cb",
            "patient/Observation.rs?category=a\\,b",
            "patient/Observation.rs?category=lab&",
            "patient/Observation.r.s",
        ] {
            assert_eq!(Scope::parse(word), None, "{word}");
            assert!(GrantedScopes::parse(&words(word)).is_empty(), "{word}");
        }
    }

    #[test]
    fn parses_granular_constraints_with_system_code_values_decoded_once() {
        let s = Scope::parse(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory&code:in=http%3A%2F%2Fvs.example.org%2Fdiabetes",
        )
        .unwrap();
        assert_eq!(s.permissions.letters(), "rs");
        assert_eq!(
            s.constraints,
            vec![
                Constraint {
                    name: "category".into(),
                    modifier: None,
                    values: vec![
                        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".into()
                    ],
                },
                Constraint {
                    name: "code".into(),
                    modifier: Some("in".into()),
                    values: vec!["http://vs.example.org/diabetes".into()],
                },
            ]
        );
        let list = Scope::parse("user/Observation.s?category=laboratory,vital-signs").unwrap();
        assert_eq!(list.constraints[0].values, vec!["laboratory", "vital-signs"]);
    }

    #[test]
    fn granted_scopes_are_the_union_per_context_and_type() {
        let g = GrantedScopes::parse(&words(
            "openid patient/Observation.r patient/Observation.s patient/*.c user/Practitioner.read launch",
        ));
        assert_eq!(
            g.permissions(Context::Patient, Some("Observation")).letters(),
            "crs"
        );
        assert_eq!(g.permissions(Context::Patient, Some("Condition")).letters(), "c");
        assert_eq!(g.permissions(Context::Patient, None).letters(), "c");
        assert_eq!(g.permissions(Context::User, Some("Practitioner")).letters(), "rs");
        assert_eq!(
            g.permissions(Context::User, Some("Observation")),
            Permissions::NONE
        );
        assert_eq!(
            g.permissions(Context::System, Some("Observation")),
            Permissions::NONE
        );
        assert!(g.has_context(Context::Patient) && g.has_context(Context::User));
        assert!(!g.has_context(Context::System));
    }

    #[test]
    fn granular_scopes_stay_apart_from_plain_grants() {
        let g = GrantedScopes::parse(&words(
            "patient/Observation.rs?category=laboratory patient/*.rs?_security=R user/Condition.rs",
        ));
        assert_eq!(
            g.permissions(Context::Patient, Some("Observation")),
            Permissions::NONE
        );
        assert_eq!(g.granular(Context::Patient, Some("Observation")).count(), 2);
        assert_eq!(g.granular(Context::Patient, Some("Condition")).count(), 1);
        assert_eq!(g.granular(Context::Patient, None).count(), 1);
        assert_eq!(g.granular(Context::User, Some("Observation")).count(), 0);
        assert!(g.has_context(Context::Patient));
    }

    #[test]
    fn a_constraint_is_met_only_by_the_same_parameter_and_allowed_values() {
        let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
        let scoped = Scope::parse(&format!("patient/Observation.rs?category={lab}")).unwrap();
        let code_only = Scope::parse("patient/Observation.rs?category=laboratory").unwrap();
        let either = Scope::parse("patient/Observation.rs?category=laboratory,vital-signs").unwrap();
        let with_modifier = Scope::parse("patient/Observation.rs?code:in=http://vs/x").unwrap();
        let two = Scope::parse("patient/Observation.rs?category=laboratory&status=final").unwrap();
        let mut chained = param("category", None, &["laboratory"]);
        chained.chain = Some("code".into());

        let cases: Vec<(&Scope, Query, bool)> = vec![
            (&scoped, query(vec![param("category", None, &[lab])]), true),
            (
                &scoped,
                query(vec![param("category", None, &["laboratory"])]),
                false,
            ),
            (
                &scoped,
                query(vec![param("category", None, &[lab, "laboratory"])]),
                false,
            ),
            (&scoped, query(vec![]), false),
            (
                &code_only,
                query(vec![param("category", None, &["laboratory"])]),
                true,
            ),
            (&code_only, query(vec![param("category", None, &[lab])]), false),
            (
                &code_only,
                query(vec![param("category", Some("not"), &["laboratory"])]),
                false,
            ),
            (
                &code_only,
                query(vec![param("category", Some("text"), &["laboratory"])]),
                false,
            ),
            (&code_only, query(vec![chained]), false),
            (&code_only, query(vec![param("category", None, &[])]), false),
            (
                &code_only,
                query(vec![
                    param("category", None, &["laboratory"]),
                    param("category", None, &["vital-signs"]),
                ]),
                true,
            ),
            (
                &code_only,
                query(vec![param("code", None, &["laboratory"])]),
                false,
            ),
            (
                &either,
                query(vec![param("category", None, &["vital-signs"])]),
                true,
            ),
            (
                &either,
                query(vec![param("category", None, &["laboratory", "vital-signs"])]),
                true,
            ),
            (
                &either,
                query(vec![param("category", None, &["laboratory", "social"])]),
                false,
            ),
            (
                &with_modifier,
                query(vec![param("code", Some("in"), &["http://vs/x"])]),
                true,
            ),
            (
                &with_modifier,
                query(vec![param("code", None, &["http://vs/x"])]),
                false,
            ),
            (
                &two,
                query(vec![
                    param("status", None, &["final"]),
                    param("category", None, &["laboratory"]),
                ]),
                true,
            ),
            (&two, query(vec![param("category", None, &["laboratory"])]), false),
        ];
        for (i, (scope, q, expected)) in cases.iter().enumerate() {
            assert_eq!(scope.is_met_by(q), *expected, "case {i}: {q:?}");
        }
    }

    #[test]
    fn permission_sets_report_what_is_lacking() {
        let granted = perms("rs");
        let needed = perms("us");
        assert!(!granted.covers(needed));
        assert_eq!(granted.lacking(needed).letters(), "u");
        assert_eq!(granted.lacking(needed).first(), Some(Permission::Update));
        assert!(perms("cruds").covers(needed));
        assert_eq!(Permissions::ALL, perms("cruds"));
        assert_eq!(
            Permissions::of(&[Permission::Search, Permission::Read]),
            perms("rs")
        );
    }
}
