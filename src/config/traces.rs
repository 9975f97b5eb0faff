//! `[tracing]` (SPEC §12): where OpenTelemetry spans go, if anywhere.

use std::collections::HashMap;

use serde::Deserialize;

use super::Problem;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The OTLP/HTTP base URL (`http://collector:4318`); spans go to `…/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces kept (a continued trace follows its parent's choice).
    pub sample_ratio: Option<f64>,
}

/// Traces are on when an endpoint is set (`[tracing] otlp_endpoint`, else the
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT`); off, nothing of OpenTelemetry runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Where spans are posted: the endpoint with `/v1/traces`.
    pub traces_url: Option<String>,
    pub sample_ratio: f64,
}

pub(super) fn check_tracing(
    raw: &RawTracing,
    env: &HashMap<String, String>,
    problems: &mut Vec<Problem>,
) -> TracingConfig {
    let (at, endpoint) = match &raw.otlp_endpoint {
        Some(e) => ("tracing.otlp_endpoint", Some(e.clone())),
        None => (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .filter(|e| !e.is_empty())
                .cloned(),
        ),
    };
    let traces_url = endpoint.and_then(|e| match reqwest::Url::parse(&e) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Some(format!("{}/v1/traces", url.as_str().trim_end_matches('/')))
        }
        _ => {
            problems.push(Problem::error(
                at,
                format!("`{e}` is not an absolute http(s) URL"),
            ));
            None
        }
    });
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        problems.push(Problem::error(
            "tracing.sample_ratio",
            format!("{sample_ratio} is not between 0 and 1"),
        ));
    }
    TracingConfig {
        traces_url,
        sample_ratio,
    }
}
