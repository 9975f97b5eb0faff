//! gantry: signed webhooks in, promotions out.
//!
//! A request travels: `api` (HTTP) → `ingest` (verify the signature, normalize to
//! events) → `rules` (match, render the actions) → `store` (event and jobs in one
//! transaction) → answer → `worker` (lease a job) → `targets` (perform the
//! promotion) → `store` (result and `audit` record, and in every transaction the
//! notifications its records make) → `notify` (deliver them). `console` is the web
//! view on the same store. `config` validates everything before any of it starts;
//! `live` holds the config in force, which a reload swaps whole; `app` wires the
//! parts; `cli` is the command line.

pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod domain;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod rules;
pub mod signing;
pub mod store;
pub mod supply;
pub mod targets;
pub mod telemetry;
pub mod worker;
