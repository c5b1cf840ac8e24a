//! The R4 Patient compartment.
