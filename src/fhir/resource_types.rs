//! The R4 resource type names.
