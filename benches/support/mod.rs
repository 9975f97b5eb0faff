//! What the end-to-end benchmarks share: their knobs, their percentiles, and a
//! release `gantry serve` started on a config and waited for.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// An environment variable's value, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p`-th percentile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The end-to-end benchmarks' gantry: a generic source `ci` verified by HMAC with
/// `BENCH_SECRET`, a fake Artifactory `jfrog` at `upstream`, 16 workers and 16
/// concurrent calls at most, and the ingest benchmark's rule; written in `dir`.
pub fn promote_config(dir: &Path, port: u16, store_url: &str, upstream: &str) -> PathBuf {
    let config = dir.join("gantry.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
[store]
url = "{store_url}"
[worker]
concurrency = 16
[[sources]]
name = "ci"
format = "generic"
verify = {{ scheme = "hmac-sha256", header = "X-Signature", prefix = "sha256=", secrets = ["env:BENCH_SECRET"] }}
[[targets]]
name = "jfrog"
kind = "artifactory"
url = "{upstream}"
token = "env:BENCH_SECRET"
max_concurrency = 16
[[rules]]
name = "tested-to-staging"
source = "ci"
event = "test-passed"
match = {{ repo = "docker-dev", image = "team-a/*" }}
action = {{ type = "promote", target = "jfrog", to_repo = "docker-staging", copy = true }}
"#
        ),
    )
    .expect("write config");
    config
}

/// Starts the release gantry on `config` with `env`, and waits until it is ready:
/// the process (killed when dropped) and its base URL.
pub async fn serve(
    config: &Path,
    port: u16,
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let gantry = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start gantry");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "gantry did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (gantry, base)
}
