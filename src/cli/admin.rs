//! Admin commands: a thin client of the server's `/api/v1` routes, printing tables
//! for people and JSON (Lines, for listings) for scripts.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;

use super::{Failure, Output};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One job with its attempts.
    Show {
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Put a failed or cancelled job back in the queue, its history kept.
    Retry { id: String },
    /// Cancel a queued, retrying or failed job.
    Cancel { id: String },
}

pub struct Client {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(url: &str, token: Option<&str>) -> Result<Self, Failure> {
        let base = reqwest::Url::parse(url)
            .map_err(|e| Failure::Config(format!("error: --url `{url}`: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Client {
            base,
            token: token.map(str::to_string),
            http: reqwest::Client::new(),
            runtime,
        })
    }

    /// Calls the API; a non-2xx answer becomes the failure, in the API's own words.
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, Failure> {
        let mut url = self.base.clone();
        url.set_path(path);
        let mut req = self.http.request(method, url).query(query);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.runtime.block_on(async {
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach gantry at {}", self.base))?;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                return Ok(body);
            }
            let code = body["error"]["code"].as_str().unwrap_or("error");
            let message = body["error"]["message"].as_str().unwrap_or("");
            Err(Failure::Other(anyhow::anyhow!(
                "{status}: {code}: {message}"
            )))
        })
    }

    pub fn jobs(&self, command: JobsCommand) -> Result<(), Failure> {
        match command {
            JobsCommand::List {
                state,
                rule,
                limit,
                output,
            } => {
                let mut query = vec![("limit", limit.to_string())];
                query.extend(state.map(|s| ("state", s)));
                query.extend(rule.map(|r| ("rule", r)));
                let page = self.call(reqwest::Method::GET, "/api/v1/jobs", &query)?;
                let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
                match output {
                    Output::Json => jobs.iter().for_each(|j| println!("{j}")),
                    Output::Table => print_jobs(&jobs),
                }
            }
            JobsCommand::Show { id, output } => {
                let job = self.call(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), &[])?;
                match output {
                    Output::Json => println!("{job}"),
                    Output::Table => print_job(&job),
                }
            }
            JobsCommand::Retry { id } => {
                let job = self.call(
                    reqwest::Method::POST,
                    &format!("/api/v1/jobs/{id}/retry"),
                    &[],
                )?;
                println!("job {id} is {}", text(&job["state"]));
            }
            JobsCommand::Cancel { id } => {
                let job = self.call(
                    reqwest::Method::POST,
                    &format!("/api/v1/jobs/{id}/cancel"),
                    &[],
                )?;
                println!("job {id} is {}", text(&job["state"]));
            }
        }
        Ok(())
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `repo/image:tag@digest` of an action side.
fn image_ref(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let mut s = format!(
        "{}/{}:{}",
        text(&v["repo"]),
        text(&v["image"]),
        text(&v["tag"])
    );
    if let Some(d) = v["digest"].as_str() {
        s.push('@');
        s.push_str(d);
    }
    s
}

fn print_jobs(jobs: &[Value]) {
    println!(
        "{:<26}  {:<9}  {:<24}  {:>3}  {:<24}  PROMOTION / LAST ERROR",
        "ID", "STATE", "RULE", "N", "UPDATED"
    );
    for j in jobs {
        let detail = match j["last_error"]["code"].as_str() {
            Some(code) if j["state"] != "succeeded" => {
                format!("{code}: {}", text(&j["last_error"]["message"]))
            }
            _ => format!(
                "{} → {}",
                image_ref(&j["action"]["from"]),
                image_ref(&j["action"]["to"])
            ),
        };
        println!(
            "{:<26}  {:<9}  {:<24}  {:>3}  {:<24}  {detail}",
            text(&j["id"]),
            text(&j["state"]),
            text(&j["rule"]),
            j["attempts"].as_array().map_or(0, Vec::len),
            text(&j["updated_at"]),
        );
    }
}

fn print_job(j: &Value) {
    let copy = if j["action"]["copy"] == Value::Bool(false) {
        "move"
    } else {
        "copy"
    };
    println!("job       {}", text(&j["id"]));
    println!(
        "state     {} (outcome {})",
        text(&j["state"]),
        text(&j["outcome"])
    );
    println!(
        "rule      {} → target {}",
        text(&j["rule"]),
        text(&j["target"])
    );
    println!("event     {}", text(&j["event_id"]));
    println!(
        "action    {} {} → {} ({copy})",
        text(&j["action"]["type"]),
        image_ref(&j["action"]["from"]),
        image_ref(&j["action"]["to"])
    );
    println!(
        "created   {}   updated {}",
        text(&j["created_at"]),
        text(&j["updated_at"])
    );
    if let Some(code) = j["last_error"]["code"].as_str() {
        println!("error     {code}: {}", text(&j["last_error"]["message"]));
    }
    for a in j["attempts"].as_array().into_iter().flatten() {
        let outcome = match a["error"]["code"].as_str() {
            Some(code) => format!("{code}: {}", text(&a["error"]["message"])),
            None => "ok".into(),
        };
        println!(
            "attempt {:>2}  {}  {:>6} ms  status {:<4}  {outcome}",
            text(&a["n"]),
            text(&a["started_at"]),
            text(&a["duration_ms"]),
            text(&a["upstream_status"]),
        );
    }
}
