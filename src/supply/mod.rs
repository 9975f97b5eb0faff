//! The supply chain (SPEC §15): signatures as evidence for promotion gates. This part
//! decides whether a signature counts — which public keys verify it, and whether the
//! payload it signs names the digest being promoted; reading the signatures from a
//! registry, carrying them along and attesting promotions build on it.

mod cosign;
mod keys;

pub use cosign::{Rejected, verify};
pub use keys::{KeyError, PublicKey};
