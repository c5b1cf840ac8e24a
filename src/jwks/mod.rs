//! JSON Web Key Sets: parsing (in progress) and the fetch lifecycle ([`cache`]).

pub mod cache;
