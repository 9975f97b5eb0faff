#![no_main]
//! The `oidc` verifier on arbitrary bearer tokens (header and claims JSON, signature,
//! or raw text): refused, never a panic, never accepted without the issuer's key.

#[path = "../common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: common::Jwt<'_>| {
    common::verify_oidc(&input);
});
