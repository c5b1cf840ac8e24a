//! FHIR R4 REST knowledge: which interaction a request is, and which patient it reaches.
//!
//! * [`resource_types`]: the R4 resource type names (case-sensitive);
//! * [`compartment`]: the R4 Patient compartment (resource type -> linking search parameters);
//! * [`query`]: the query string read as FHIR search reads it;
//! * [`request`]: method + path + query -> [`Interaction`], refusing what is ambiguous.
//!
//! These types are the contract between request classification and authorization.

pub mod compartment;
pub mod query;
pub mod request;
pub mod resource_types;

pub use query::{Query, SearchParam};
pub use request::{classify, ClassifyError};

/// HTTP method of a request, as the FHIR REST API uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    /// Parses an HTTP method token (case-sensitive, as HTTP methods are). Others are `None`.
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// Where an operation (`$name`) is invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationTarget {
    System,
    Type { resource_type: String },
    Instance { resource_type: String, id: String },
}

/// A FHIR RESTful interaction (R4 `http.html`), as read from method + path + query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// `GET [base]/metadata`
    Capabilities,
    /// `GET [base]/[type]/[id]`
    Read { resource_type: String, id: String },
    /// `GET [base]/[type]/[id]/_history/[vid]`
    Vread {
        resource_type: String,
        id: String,
        version_id: String,
    },
    /// `PUT [base]/[type]/[id]`
    Update { resource_type: String, id: String },
    /// `PUT [base]/[type]?[search]`
    ConditionalUpdate { resource_type: String },
    /// `PATCH [base]/[type]/[id]`
    Patch { resource_type: String, id: String },
    /// `PATCH [base]/[type]?[search]`
    ConditionalPatch { resource_type: String },
    /// `DELETE [base]/[type]/[id]`
    Delete { resource_type: String, id: String },
    /// `DELETE [base]/[type]?[search]`
    ConditionalDelete { resource_type: String },
    /// `POST [base]/[type]` (conditional when `If-None-Exist` is sent)
    Create { resource_type: String },
    /// `GET [base]/[type]/[id]/_history`
    HistoryInstance { resource_type: String, id: String },
    /// `GET [base]/[type]/_history`
    HistoryType { resource_type: String },
    /// `GET [base]/_history`
    HistorySystem,
    /// `GET [base]/[type]?...` or `POST [base]/[type]/_search`
    SearchType { resource_type: String, via_post: bool },
    /// `GET [base]?...` or `POST [base]/_search`
    SearchSystem { via_post: bool },
    /// `GET [base]/[compartment]/[id]/[type]` or `.../*` (`resource_type: None`), and the POST
    /// `_search` form of it.
    SearchCompartment {
        compartment: String,
        id: String,
        resource_type: Option<String>,
        via_post: bool,
    },
    /// `POST [base]` with a Bundle of type batch or transaction.
    BatchOrTransaction,
    /// `[base]/$op`, `[base]/[type]/$op`, `[base]/[type]/[id]/$op` (GET or POST). `name` keeps `$`.
    Operation { name: String, target: OperationTarget },
}

impl Interaction {
    /// Short stable name for logs, audit records and metrics (`read`, `search-type`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Interaction::Capabilities => "capabilities",
            Interaction::Read { .. } => "read",
            Interaction::Vread { .. } => "vread",
            Interaction::Update { .. } => "update",
            Interaction::ConditionalUpdate { .. } => "update-conditional",
            Interaction::Patch { .. } => "patch",
            Interaction::ConditionalPatch { .. } => "patch-conditional",
            Interaction::Delete { .. } => "delete",
            Interaction::ConditionalDelete { .. } => "delete-conditional",
            Interaction::Create { .. } => "create",
            Interaction::HistoryInstance { .. } => "history-instance",
            Interaction::HistoryType { .. } => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::SearchType { .. } => "search-type",
            Interaction::SearchSystem { .. } => "search-system",
            Interaction::SearchCompartment { .. } => "search-compartment",
            Interaction::BatchOrTransaction => "batch",
            Interaction::Operation { .. } => "operation",
        }
    }

    /// The resource type the interaction acts on, when it names one.
    pub fn resource_type(&self) -> Option<&str> {
        match self {
            Interaction::Read { resource_type, .. }
            | Interaction::Vread { resource_type, .. }
            | Interaction::Update { resource_type, .. }
            | Interaction::ConditionalUpdate { resource_type }
            | Interaction::Patch { resource_type, .. }
            | Interaction::ConditionalPatch { resource_type }
            | Interaction::Delete { resource_type, .. }
            | Interaction::ConditionalDelete { resource_type }
            | Interaction::Create { resource_type }
            | Interaction::HistoryInstance { resource_type, .. }
            | Interaction::HistoryType { resource_type }
            | Interaction::SearchType { resource_type, .. } => Some(resource_type),
            Interaction::SearchCompartment { resource_type, .. } => resource_type.as_deref(),
            Interaction::Operation { target, .. } => match target {
                OperationTarget::System => None,
                OperationTarget::Type { resource_type } | OperationTarget::Instance { resource_type, .. } => {
                    Some(resource_type)
                }
            },
            Interaction::Capabilities
            | Interaction::HistorySystem
            | Interaction::SearchSystem { .. }
            | Interaction::BatchOrTransaction => None,
        }
    }
}

/// A classified FHIR request: the interaction and its parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirRequest {
    pub method: Method,
    pub interaction: Interaction,
    pub query: Query,
}
