//! Integration tests: gantry driven through its real interfaces (HTTP on a random
//! port, a real SQLite file or PostgreSQL schema, the real binary), with wiremock as
//! Artifactory.

#[macro_use]
mod stores;

mod actions;
mod admin;
mod approvals;
mod audit;
mod browser;
mod chains;
mod cli;
mod console;
mod crash;
mod edges;
mod edges_targets;
mod fake_artifactory;
mod faults;
mod formats;
mod freezes;
mod gates;
mod gates_replicas;
mod group_commit;
mod harness;
mod hostile;
mod ingest;
mod notifications;
mod oci;
mod oidc;
mod pg_cluster;
mod pg_tls;
mod policy_example;
mod promote;
mod protections;
mod registry;
mod reload;
mod replicas;
mod secrets;
mod sources;
mod store_contract;
mod supply;
mod surface;
mod traces;
mod url_token;
