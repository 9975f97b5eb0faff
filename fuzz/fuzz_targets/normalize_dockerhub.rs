#![no_main]
//! The `Dockerhub` format on arbitrary bodies and headers: events or an error, never a panic.

#[path = "../common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: common::Request<'_>| {
    common::normalize(gantry::config::Format::Dockerhub, &input);
});
