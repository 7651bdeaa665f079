//! Tier conformance suite.
