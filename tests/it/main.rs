//! Integration tests: gantry driven through its real interfaces (HTTP on a random
//! port, a real SQLite file, the real binary), with wiremock as Artifactory.

mod actions;
mod admin;
mod audit;
mod chains;
mod cli;
mod crash;
mod fake_artifactory;
mod faults;
mod harness;
mod hostile;
mod ingest;
mod oci;
mod promote;
mod registry;
mod secrets;
mod sources;
mod surface;
