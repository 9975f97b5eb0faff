#![no_main]
//! The `Harbor` format (Default and CloudEvents payloads) on arbitrary bodies and headers: events or an error, never a panic.

#[path = "../common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: common::Request<'_>| {
    common::normalize(gantry::config::Format::Harbor, &input);
});
