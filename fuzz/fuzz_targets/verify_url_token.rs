#![no_main]
//! The `UrlToken` verifier on arbitrary queries, headers and bodies: it must answer, never panic.

#[path = "../common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: common::Request<'_>| {
    common::verify(gantry::config::SchemeKind::UrlToken, &input);
});
