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
    /// Put a failed, cancelled, rejected or expired job back in the queue (or back
    /// to awaiting approval when its rule needs one), its history kept.
    Retry { id: String },
    /// Cancel an awaiting, queued, retrying, frozen or failed job.
    Cancel { id: String },
    /// Approve a job awaiting approval.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        /// The group to approve as, when the token is in several.
        #[arg(long = "as")]
        as_group: Option<String>,
    },
    /// Reject a job awaiting approval; it ends `rejected`.
    Reject {
        id: String,
        #[arg(long)]
        comment: String,
    },
    /// Let a frozen job run now despite the freezes holding it.
    OverrideFreeze {
        id: String,
        #[arg(long)]
        comment: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Query the trail, oldest first (`--output json` gives JSON Lines).
    List {
        /// RFC 3339, or a duration meaning that long ago (`24h`).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Re-compute the hash chain; exit 1 naming the first broken record.
    Verify,
    /// Every record as JSON Lines, for archiving.
    Export {
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum FreezeCommand {
    /// Start a run-time freeze; it always has an end (`--for` or `--until`).
    Start {
        name: String,
        /// A glob over the destination repo; repeatable; every repo when absent.
        #[arg(long = "to-repo")]
        to_repos: Vec<String>,
        /// Repeatable; every target when absent.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// How long from now (`2h`).
        #[arg(long = "for", value_parser = humantime::parse_duration, conflicts_with = "until", required_unless_present = "until")]
        length: Option<std::time::Duration>,
        /// RFC 3339.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// End a run-time freeze now.
    End { name: String },
    /// Active and upcoming freezes, from the config and run time.
    List {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotificationsCommand {
    /// List notifications, newest first.
    List {
        /// `pending`, `delivered`, `failed` or `dropped`.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        sink: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Send a failed notification again, its retry schedule from the start.
    Retry { id: String },
    /// The configured sinks and which a 410 Gone disabled.
    Sinks {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Enable a sink a 410 Gone disabled.
    Enable { sink: String },
}

/// A server that does not accept within this long is not there.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Client {
    base: reqwest::Url,
    token: Option<String>,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client whose every request gives up after `timeout`: a server that
    /// accepts and never answers must not hang a script.
    pub fn new(
        url: &str,
        token: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<Self, Failure> {
        let base = reqwest::Url::parse(url)
            .map_err(|e| Failure::Config(format!("error: --url `{url}`: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Client {
            base,
            token: token.map(str::to_string),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(CONNECT_TIMEOUT))
                .build()
                .context("cannot build the HTTP client")?,
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
        self.call_with(method, path, query, None)
    }

    /// A call with an optional JSON body.
    fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut url = self.base.clone();
        url.set_path(path);
        let mut req = self.http.request(method, url).query(query);
        if let Some(body) = body {
            req = req.json(body);
        }
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
            JobsCommand::Retry { id } => self.act(&id, "retry", None)?,
            JobsCommand::Cancel { id } => self.act(&id, "cancel", None)?,
            JobsCommand::Approve {
                id,
                comment,
                as_group,
            } => {
                let body = serde_json::json!({ "comment": comment, "as": as_group });
                self.act(&id, "approve", Some(&body))?;
            }
            JobsCommand::Reject { id, comment } => {
                let body = serde_json::json!({ "comment": comment });
                self.act(&id, "reject", Some(&body))?;
            }
            JobsCommand::OverrideFreeze { id, comment } => {
                let body = serde_json::json!({ "comment": comment });
                self.act(&id, "override-freeze", Some(&body))?;
            }
        }
        Ok(())
    }

    /// Posts an action on a job and says the state it left the job in.
    fn act(&self, id: &str, action: &str, body: Option<&Value>) -> Result<(), Failure> {
        let path = format!("/api/v1/jobs/{id}/{action}");
        let job = self.call_with(reqwest::Method::POST, &path, &[], body)?;
        println!("job {id} is {}", text(&job["state"]));
        Ok(())
    }
}

impl Client {
    pub fn notifications(&self, command: NotificationsCommand) -> Result<(), Failure> {
        match command {
            NotificationsCommand::List {
                state,
                sink,
                limit,
                output,
            } => {
                let mut query = vec![("limit", limit.to_string())];
                query.extend(state.map(|s| ("state", s)));
                query.extend(sink.map(|s| ("sink", s)));
                let page = self.call(reqwest::Method::GET, "/api/v1/notifications", &query)?;
                let list = page["notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                match output {
                    Output::Json => list.iter().for_each(|n| println!("{n}")),
                    Output::Table => print_notifications(&list),
                }
            }
            NotificationsCommand::Retry { id } => {
                let path = format!("/api/v1/notifications/{id}/retry");
                let n = self.call(reqwest::Method::POST, &path, &[])?;
                println!("notification {id} is {}", text(&n["state"]));
            }
            NotificationsCommand::Sinks { output } => {
                let answer = self.call(reqwest::Method::GET, "/api/v1/notifications/sinks", &[])?;
                let sinks = answer["sinks"].as_array().cloned().unwrap_or_default();
                match output {
                    Output::Json => sinks.iter().for_each(|s| println!("{s}")),
                    Output::Table => {
                        println!("{:<24}  {:<18}  DISABLED SINCE", "NAME", "FORMAT");
                        for s in &sinks {
                            println!(
                                "{:<24}  {:<18}  {}",
                                text(&s["name"]),
                                text(&s["format"]),
                                text(&s["disabled_at"])
                            );
                        }
                    }
                }
            }
            NotificationsCommand::Enable { sink } => {
                let path = format!("/api/v1/notifications/sinks/{sink}/enable");
                self.call(reqwest::Method::POST, &path, &[])?;
                println!("sink {sink} is enabled");
            }
        }
        Ok(())
    }

    pub fn freeze(&self, command: FreezeCommand) -> Result<(), Failure> {
        match command {
            FreezeCommand::Start {
                name,
                to_repos,
                targets,
                length,
                until,
                reason,
            } => {
                let until = match (until, length) {
                    (Some(until), _) => until,
                    (None, Some(d)) => chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                        .ok_or_else(|| Failure::Config("error: --for is too long".into()))?
                        .to_rfc3339(),
                    (None, None) => {
                        return Err(Failure::Config("error: give --for or --until".into()));
                    }
                };
                let some = |l: Vec<String>| (!l.is_empty()).then_some(l);
                let body = serde_json::json!({
                    "name": name, "to_repos": some(to_repos), "targets": some(targets),
                    "until": until, "reason": reason,
                });
                let f =
                    self.call_with(reqwest::Method::POST, "/api/v1/freezes", &[], Some(&body))?;
                println!("freeze {name} until {}", text(&f["until"]));
            }
            FreezeCommand::End { name } => {
                self.call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/freezes/{name}"),
                    &[],
                )?;
                println!("freeze {name} ended");
            }
            FreezeCommand::List { output } => {
                let answer = self.call(reqwest::Method::GET, "/api/v1/freezes", &[])?;
                let freezes = answer["freezes"].as_array().cloned().unwrap_or_default();
                match output {
                    Output::Json => freezes.iter().for_each(|f| println!("{f}")),
                    Output::Table => print_freezes(&freezes),
                }
            }
        }
        Ok(())
    }

    pub fn audit(&self, command: AuditCommand) -> Result<(), Failure> {
        match command {
            AuditCommand::List {
                since,
                until,
                rule,
                image,
                tag,
                kind,
                job,
                limit,
                output,
            } => {
                let mut query = vec![("limit", limit.to_string())];
                let optional = [
                    ("since", since),
                    ("until", until),
                    ("rule", rule),
                    ("image", image),
                    ("tag", tag),
                    ("kind", kind),
                    ("job", job),
                ];
                query.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
                let page = self.call(reqwest::Method::GET, "/api/v1/audit", &query)?;
                let records = page["records"].as_array().cloned().unwrap_or_default();
                match output {
                    Output::Json => records.iter().for_each(|r| println!("{r}")),
                    Output::Table => print_records(&records),
                }
            }
            AuditCommand::Verify => {
                let v = self.call(reqwest::Method::GET, "/api/v1/audit/verify", &[])?;
                if v["ok"] == Value::Bool(true) {
                    println!(
                        "ok: {} records verified; head seq {} hash {}",
                        text(&v["records"]),
                        text(&v["head_seq"]),
                        text(&v["head_hash"])
                    );
                } else {
                    return Err(Failure::Other(anyhow::anyhow!(
                        "the audit trail is broken at seq {}: {}",
                        text(&v["first_broken"]),
                        text(&v["reason"])
                    )));
                }
            }
            AuditCommand::Export { since } => {
                let mut after: Option<String> = None;
                loop {
                    let mut query = vec![("limit", "1000".to_string())];
                    query.extend(since.clone().map(|s| ("since", s)));
                    query.extend(after.clone().map(|a| ("after", a)));
                    let page = self.call(reqwest::Method::GET, "/api/v1/audit", &query)?;
                    for r in page["records"].as_array().into_iter().flatten() {
                        println!("{r}");
                    }
                    match page["next"].as_str() {
                        Some(next) => after = Some(next.to_string()),
                        None => break,
                    }
                }
            }
        }
        Ok(())
    }
}

fn print_records(records: &[Value]) {
    println!(
        "{:>6}  {:<24}  {:<21}  {:<12}  {:<20}  WHAT / WHY",
        "SEQ", "AT", "KIND", "ACTOR", "RULE"
    );
    for r in records {
        let what = match (r["from"].as_str(), r["to"].as_str()) {
            (Some(from), Some(to)) => format!("{from} → {to}"),
            _ => String::new(),
        };
        let why = [
            r["outcome"].as_str().map(str::to_string),
            r["upstream_status"].as_u64().map(|s| format!("status {s}")),
            r["message"].as_str().map(str::to_string),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ");
        let sep = if what.is_empty() || why.is_empty() {
            ""
        } else {
            "  "
        };
        println!(
            "{:>6}  {:<24}  {:<21}  {:<12}  {:<20}  {what}{sep}{why}",
            text(&r["seq"]),
            text(&r["at"]),
            text(&r["kind"]),
            text(&r["actor"]),
            r["rule"].as_str().unwrap_or(""),
        );
    }
}

fn print_freezes(freezes: &[Value]) {
    println!(
        "{:<20}  {:<7}  {:<6}  {:<25}  {:<25}  SCOPE / REASON",
        "NAME", "SOURCE", "ACTIVE", "STARTS", "ENDS"
    );
    let list = |v: &Value| match v.as_array() {
        Some(l) => l.iter().map(text).collect::<Vec<_>>().join(","),
        None => "all".into(),
    };
    for f in freezes {
        println!(
            "{:<20}  {:<7}  {:<6}  {:<25}  {:<25}  repos {}; targets {}; {}",
            text(&f["name"]),
            text(&f["source"]),
            text(&f["active"]),
            text(&f["starts_at"]),
            text(&f["ends_at"]),
            list(&f["to_repos"]),
            list(&f["targets"]),
            text(&f["reason"]),
        );
    }
}

fn print_notifications(list: &[Value]) {
    println!(
        "{:<30}  {:<18}  {:<22}  {:<9}  {:>5}  {:<26}  LAST ERROR",
        "ID", "SINK", "TYPE", "STATE", "TRIES", "JOB"
    );
    for n in list {
        println!(
            "{:<30}  {:<18}  {:<22}  {:<9}  {:>5}  {:<26}  {}",
            text(&n["id"]),
            text(&n["sink"]),
            text(&n["type"]),
            text(&n["state"]),
            text(&n["tries"]),
            text(&n["job_id"]),
            text(&n["last_error"]),
        );
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
    let names = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect::<Vec<_>>()
    };
    if j["frozen"].is_object() {
        println!(
            "frozen    by {} until {}",
            names(&j["frozen"]["by"]).join(", "),
            text(&j["frozen"]["until"])
        );
    }
    let o = &j["freeze_override"];
    if o.is_object() {
        println!(
            "override  of {} by {} at {}: {}",
            names(&o["freezes"]).join(", "),
            text(&o["by"]),
            text(&o["at"]),
            text(&o["comment"])
        );
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
