//! The console (SPEC §11) at the HTTP level: signing in and out, sessions kept in
//! the store, the cookie's flags, CSRF, the security headers, and the switch that
//! turns it off.

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE};
use reqwest::redirect::Policy;

use crate::harness::{OPS_TOKEN, TestApp, VIEWER_TOKEN, spawn_app, spawn_app_with_env};

/// `pairs` as an HTML form's body.
fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

trait Form {
    fn form_of(self, pairs: &[(&str, &str)]) -> Self;
}

impl Form for reqwest::RequestBuilder {
    fn form_of(self, pairs: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
    }
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; the session cookie (`name=value`) and the whole
/// `Set-Cookie` header.
async fn sign_in(app: &TestApp, token: &str, next: &str) -> (String, String) {
    let r = browser()
        .post(format!("{}/ui/sign-in", app.base))
        .form_of(&[("token", token), ("next", next)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], next);
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let pair = set.split(';').next().unwrap().to_string();
    (pair, set)
}

async fn get(app: &TestApp, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = browser().get(format!("{}{path}", app.base));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

/// The CSRF token of the page's `Sign out` form.
fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn signing_in_and_out_keeps_the_session_in_the_store() {
    let app = spawn_app("").await;
    // Without a session: to the sign-in page, and back afterwards.
    let r = get(&app, "/ui/", None).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/sign-in?next=%2Fui%2F");
    let r = get(&app, "/ui/sign-in?next=%2Fui%2F", None).await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()[CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let form = r.text().await.unwrap();
    assert!(
        form.contains(r#"<label for="token">Token</label>"#),
        "{form}"
    );
    assert!(form.contains(r#"type="password""#));
    assert!(form.contains(r#"<button type="submit">Sign in</button>"#));
    assert!(!form.contains("<script>"), "no inline script");

    let (cookie, set) = sign_in(&app, VIEWER_TOKEN, "/ui/").await;
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Lax"), "{set}");
    assert!(set.contains("Path=/ui"), "{set}");
    assert!(!set.contains("Secure"), "plain http: {set}");
    let page = get(&app, "/ui/", Some(&cookie)).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains("viewer (read)"), "{page}");
    assert!(page.contains("awaiting_approval"));
    assert!(page.contains("0 failed promotions"), "{page}");
    assert!(!page.contains(VIEWER_TOKEN), "a token is never rendered");

    // Signing out without the form's CSRF token changes nothing.
    let r = browser()
        .post(format!("{}/ui/sign-out", app.base))
        .header("cookie", &cookie)
        .form_of(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(get(&app, "/ui/", Some(&cookie)).await.status(), 200);
    // With it, the session ends on the server: the same cookie signs no one in.
    let r = browser()
        .post(format!("{}/ui/sign-out", app.base))
        .header("cookie", &cookie)
        .form_of(&[("csrf", csrf_of(&page).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/sign-in");
    assert_eq!(get(&app, "/ui/", Some(&cookie)).await.status(), 303);
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_refused_slowly_and_counted() {
    let app = spawn_app("").await;
    let started = Instant::now();
    let r = browser()
        .post(format!("{}/ui/sign-in", app.base))
        .form_of(&[("token", "not-a-token"), ("next", "/ui/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(r.headers().get(SET_COOKIE).is_none());
    assert!(r.text().await.unwrap().contains("That token is not valid."));
    sign_in(&app, OPS_TOKEN, "/ui/").await;
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"gantry_console_sign_ins_total{outcome="failed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gantry_console_sign_ins_total{outcome="ok"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_session_past_its_end_leads_to_the_sign_in_page() {
    let app = spawn_app("").await;
    let (cookie, _) = sign_in(&app, VIEWER_TOKEN, "/ui/").await;
    assert_eq!(get(&app, "/ui/", Some(&cookie)).await.status(), 200);
    let db = rusqlite::Connection::open(app.db_path()).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute("UPDATE sessions SET expires_at = 0", [])
        .unwrap();
    let r = get(&app, "/ui/", Some(&cookie)).await;
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/ui/sign-in")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_cookie_is_secure_under_an_https_public_url_and_next_stays_home() {
    let app = spawn_app_with_env(
        "",
        &[("GANTRY__SERVER__PUBLIC_URL", "https://gantry.example")],
    )
    .await;
    let (_, set) = sign_in(&app, VIEWER_TOKEN, "/ui/").await;
    assert!(set.contains("Secure"), "{set}");
    // A `next` elsewhere is not followed.
    let r = browser()
        .post(format!("{}/ui/sign-in", app.base))
        .form_of(&[("token", VIEWER_TOKEN), ("next", "//evil.example/ui/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[LOCATION], "/ui/");
    app.stop().await;
}

#[tokio::test]
async fn the_console_switched_off_is_not_there() {
    let app = spawn_app_with_env("", &[("GANTRY__SERVER__CONSOLE", "false")]).await;
    for path in ["/ui/", "/ui/sign-in", "/ui/assets/app.js"] {
        assert_eq!(get(&app, path, None).await.status(), 404, "{path}");
    }
    app.stop().await;
}

/// A promote rule for `dev` (no approval) and one for `gated` that needs one.
const RULES: &str = r#"
[[rules]]
name = "plain"
source = "ci"
event = "test-passed"
match = { repo = "dev" }
action = { type = "promote", target = "jfrog", to_repo = "staging" }

[[rules]]
name = "approved"
source = "ci"
event = "test-passed"
match = { repo = "gated" }
action = { type = "promote", target = "jfrog", to_repo = "prod" }
approval = { count = 1 }
"#;

async fn job_for(app: &TestApp, body: &str) -> String {
    let r = app.send("ci", body.as_bytes()).await;
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    v["jobs"][0]["id"].as_str().unwrap().to_string()
}

async fn post_form(
    app: &TestApp,
    path: &str,
    cookie: &str,
    pairs: &[(&str, &str)],
) -> reqwest::Response {
    browser()
        .post(format!("{}{path}", app.base))
        .header("cookie", cookie)
        .form_of(pairs)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_read_session_sees_the_whole_job_escaped_and_no_buttons() {
    let app = spawn_app(RULES).await;
    app.upstream_answers(200).await;
    let id = job_for(
        &app,
        r#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0","note":"<script>alert(1)</script>"}"#,
    )
    .await;
    app.wait_final(&id).await;
    let (cookie, _) = sign_in(&app, VIEWER_TOKEN, "/ui/").await;
    let page = get(&app, &format!("/ui/jobs/{id}"), Some(&cookie)).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("succeeded") && page.contains("promoted"),
        "{page}"
    );
    assert!(page.contains("dev/app:1.0 → staging/app:1.0"), "{page}");
    assert!(
        page.contains("<td>1</td>") && page.contains("200"),
        "the attempt: {page}"
    );
    assert!(page.contains("job.succeeded"), "the record");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "escaped: {page}"
    );
    assert!(!page.contains("<script>alert(1)</script>"));
    for button in ["Retry", "Cancel", "Approve", "Reject", "Override freeze"] {
        assert!(
            !page.contains(&format!(">{button}</button>")),
            "{button} shown to read"
        );
    }
    let list = get(&app, "/ui/jobs?state=succeeded", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains(&id), "{list}");
    app.stop().await;
}

#[tokio::test]
async fn an_operate_session_approves_with_its_csrf_token_only() {
    let app = spawn_app(RULES).await;
    app.upstream_answers(200).await;
    let id = job_for(
        &app,
        r#"{"event":"test-passed","repo":"gated","image":"app","tag":"2.0"}"#,
    )
    .await;
    let (viewer, _) = sign_in(&app, VIEWER_TOKEN, "/ui/").await;
    let (ops, _) = sign_in(&app, OPS_TOKEN, "/ui/").await;
    let approvals = get(&app, "/ui/approvals", Some(&ops))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        approvals.contains(&id) && approvals.contains(">Approve</button>"),
        "{approvals}"
    );
    let csrf = csrf_of(&approvals);

    // No token, a wrong one, or a read session: refused, nothing changed.
    let path = format!("/ui/jobs/{id}/approve");
    assert_eq!(
        post_form(&app, &path, &ops, &[("comment", "ok")])
            .await
            .status(),
        403
    );
    assert_eq!(
        post_form(&app, &path, &ops, &[("csrf", "x"), ("comment", "ok")])
            .await
            .status(),
        403
    );
    let viewer_page = get(&app, "/ui/approvals", Some(&viewer))
        .await
        .text()
        .await
        .unwrap();
    assert!(!viewer_page.contains(">Approve</button>"));
    let viewer_csrf = csrf_of(&viewer_page);
    let r = post_form(
        &app,
        &path,
        &viewer,
        &[("csrf", &viewer_csrf), ("comment", "ok")],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.job(&id).await["state"], "awaiting_approval");
    assert_eq!(crate::harness::posts(&app.upstream).await, 0);

    let r = post_form(&app, &path, &ops, &[("csrf", &csrf), ("comment", "CAB-1")]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], format!("/ui/jobs/{id}"));
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["approvals"][0]["by"], "ops");
    assert_eq!(job["approvals"][0]["comment"], "CAB-1");
    assert_eq!(crate::harness::posts(&app.upstream).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_operate_session_retries_a_failed_job() {
    let app = spawn_app(RULES).await;
    app.upstream_answers(400).await;
    let id = job_for(
        &app,
        r#"{"event":"test-passed","repo":"dev","image":"app","tag":"3.0"}"#,
    )
    .await;
    assert_eq!(app.wait_final(&id).await["state"], "failed");
    let (ops, _) = sign_in(&app, OPS_TOKEN, "/ui/").await;
    let page = get(&app, &format!("/ui/jobs/{id}"), Some(&ops))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(">Retry</button>") && page.contains(">Cancel</button>"),
        "{page}"
    );
    let r = post_form(
        &app,
        &format!("/ui/jobs/{id}/retry"),
        &ops,
        &[("csrf", &csrf_of(&page))],
    )
    .await;
    assert_eq!(r.status(), 303);
    let job = app.wait_final(&id).await;
    assert_eq!(job["attempts"].as_array().unwrap().len(), 2);
    let retried = app.audit(&format!("kind=job.retried&job={id}")).await;
    assert_eq!(retried[0]["actor"], "ops");
    // A second retry of a job that is not failed any more is refused, in words.
    let r = post_form(
        &app,
        &format!("/ui/jobs/{id}/cancel"),
        &ops,
        &[("csrf", &csrf_of(&page))],
    )
    .await;
    assert!(r.status() == 303 || r.status() == 409);
    app.stop().await;
}

/// The SSO proxy at `trusted`, and release managers who operate.
fn proxied(trusted: &str) -> String {
    format!(
        r#"{RULES}
[auth.proxy]
user_header = "X-Forwarded-User"
groups_header = "X-Forwarded-Groups"
trusted = ["{trusted}"]

[[auth.groups]]
name = "release-managers"
role = "operate"
"#
    )
}

/// A request as the proxy forwards it for alice.
fn as_alice(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("X-Forwarded-User", "alice")
        .header("X-Forwarded-Groups", "developers, release-managers")
}

#[tokio::test]
async fn a_trusted_proxy_names_the_person_who_approves() {
    let app = spawn_app(&proxied("127.0.0.1/32")).await;
    app.upstream_answers(200).await;
    let id = job_for(
        &app,
        r#"{"event":"test-passed","repo":"gated","image":"app","tag":"4.0"}"#,
    )
    .await;
    // The first visit gets a session for alice (her CSRF token), and the same address.
    let r = as_alice(browser().get(format!("{}/ui/approvals", app.base)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/approvals");
    let cookie = r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = as_alice(browser().get(format!("{}/ui/approvals", app.base)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("alice (operate)"), "{page}");
    let r = as_alice(browser().post(format!("{}/ui/jobs/{id}/approve", app.base)))
        .header("cookie", &cookie)
        .form_of(&[("csrf", csrf_of(&page).as_str()), ("comment", "looks good")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let job = app.wait_final(&id).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["approvals"][0]["by"], "alice");
    let approved = app.audit(&format!("kind=job.approved&job={id}")).await;
    assert_eq!(approved[0]["actor"], "alice");
    app.stop().await;
}

#[tokio::test]
async fn proxy_headers_from_an_untrusted_address_are_ignored() {
    let app = spawn_app(&proxied("10.0.0.0/8")).await;
    let r = as_alice(browser().get(format!("{}/ui/approvals", app.base)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/ui/sign-in"),
        "not believed: to the sign-in page"
    );
    assert!(r.headers().get(SET_COOKIE).is_none());
    app.stop().await;
}

#[tokio::test]
async fn freezes_start_and_end_and_the_audit_chain_verifies_from_the_console() {
    let app = spawn_app(RULES).await;
    let (ops, _) = sign_in(&app, OPS_TOKEN, "/ui/").await;
    let page = get(&app, "/ui/freezes", Some(&ops))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(">Start freeze</button>"), "{page}");
    let csrf = csrf_of(&page);
    let start = |name: &'static str, length: &'static str| {
        let (ops, csrf) = (ops.clone(), csrf.clone());
        let app = &app;
        async move {
            post_form(
                app,
                "/ui/freezes",
                &ops,
                &[
                    ("csrf", &csrf),
                    ("name", name),
                    ("to_repos", "prod*"),
                    ("length", length),
                    ("reason", "release week"),
                ],
            )
            .await
        }
    };
    assert_eq!(start("bad name!", "2h").await.status(), 400);
    assert_eq!(start("release", "soon").await.status(), 400);
    let r = start("release", "2h").await;
    assert_eq!(r.status(), 303);
    let listed: serde_json::Value = app
        .get("/api/v1/freezes", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["freezes"][0]["name"], "release");
    assert_eq!(listed["freezes"][0]["started_by"], "ops");
    assert_eq!(listed["freezes"][0]["to_repos"][0], "prod*");
    let page = get(&app, "/ui/freezes", Some(&ops))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("release week") && page.contains(">End freeze</button>"),
        "{page}"
    );
    let r = post_form(&app, "/ui/freezes/release/end", &ops, &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    let listed: serde_json::Value = app
        .get("/api/v1/freezes", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert!(listed["freezes"].as_array().unwrap().is_empty(), "{listed}");

    let audit = get(&app, "/ui/audit?verify=1", Some(&ops))
        .await
        .text()
        .await
        .unwrap();
    assert!(audit.contains("The chain verifies: 2 records."), "{audit}");
    assert!(
        audit.contains("freeze.started") && audit.contains("freeze.ended"),
        "{audit}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_session_ends_when_its_token_leaves_the_config() {
    use crate::harness::{ChildApp, free_port, write_config_on};
    let upstream = wiremock::MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = crate::stores::TestStore::Sqlite.url(dir.path());
    let config = write_config_on(dir.path(), &upstream.uri(), "", "30s", &url);
    let port = free_port();
    let app = ChildApp::start(&config, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let signed = |token: &'static str| {
        let base = base.clone();
        async move {
            let r = browser()
                .post(format!("{base}/ui/sign-in"))
                .form_of(&[("token", token), ("next", "/ui/")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 303);
            r.headers()[SET_COOKIE]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string()
        }
    };
    let (viewer, ops) = (signed(VIEWER_TOKEN).await, signed(OPS_TOKEN).await);
    app.terminate(Duration::from_secs(10)).await;

    // The viewer token is gone from the config; ops stays.
    let text = std::fs::read_to_string(&config).unwrap();
    let without = text.replace(
        "[[admin.tokens]]\nname = \"viewer\"\ntoken = \"env:TEST_VIEWER_TOKEN\"\nrole = \"read\"\n",
        "",
    );
    assert_ne!(text, without, "the viewer token was in the config");
    std::fs::write(&config, without).unwrap();
    let app = ChildApp::start(&config, port).await;
    let at = |cookie: String| {
        let base = base.clone();
        async move {
            browser()
                .get(format!("{base}/ui/"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        at(viewer).await,
        303,
        "the viewer's session ended with its token"
    );
    assert_eq!(at(ops).await, 200, "a configured token's session goes on");
    drop(app);
}

#[tokio::test]
async fn a_job_page_links_its_chain_children_and_jobs_filter_by_image() {
    let app = spawn_app(&format!(
        r#"{RULES}
[[rules]]
name = "onward"
source = "gantry"
event = "gantry.promoted"
match = {{ repo = "staging" }}
action = {{ type = "promote", target = "jfrog", to_repo = "qa" }}
"#
    ))
    .await;
    app.upstream_answers(200).await;
    let parent = job_for(
        &app,
        r#"{"event":"test-passed","repo":"dev","image":"team/web","tag":"1.0"}"#,
    )
    .await;
    let other = job_for(
        &app,
        r#"{"event":"test-passed","repo":"dev","image":"team/api","tag":"1.0"}"#,
    )
    .await;
    app.wait_final(&parent).await;
    let children: serde_json::Value = app
        .get(&format!("/api/v1/jobs?parent={parent}"), Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    let child = children["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(children["jobs"].as_array().unwrap().len(), 1, "{children}");
    assert_eq!(children["jobs"][0]["rule"], "onward");

    let (cookie, _) = sign_in(&app, VIEWER_TOKEN, "/ui/").await;
    let page = get(&app, &format!("/ui/jobs/{parent}"), Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(r#"href="/ui/jobs/{child}""#)),
        "the child: {page}"
    );
    let page = get(&app, &format!("/ui/jobs/{child}"), Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(
            r#"Follows <a class="mono" href="/ui/jobs/{parent}""#
        )),
        "the parent: {page}"
    );

    let list = get(&app, "/ui/jobs?image=team%2Fapi", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains(&other), "{list}");
    assert!(!list.contains(&parent) && !list.contains(&child), "{list}");
    app.stop().await;
}

#[tokio::test]
async fn the_audit_page_filters_by_kind_and_time_and_the_overview_shows_the_chain() {
    let app = spawn_app(RULES).await;
    app.upstream_answers(200).await;
    let id = job_for(
        &app,
        r#"{"event":"test-passed","repo":"dev","image":"app","tag":"1.0"}"#,
    )
    .await;
    app.wait_final(&id).await;
    let (cookie, _) = sign_in(&app, VIEWER_TOKEN, "/ui/").await;
    let audit = |query: &'static str| {
        let (app, cookie) = (&app, cookie.clone());
        async move { get(app, &format!("/ui/audit?{query}"), Some(&cookie)).await }
    };
    let page = audit("kind=job.succeeded").await.text().await.unwrap();
    assert_eq!(page.matches("<td>job.succeeded</td>").count(), 1, "{page}");
    assert!(!page.contains("<td>job.created</td>"), "{page}");
    let page = audit("since=1h").await.text().await.unwrap();
    assert!(page.contains("<td>job.created</td>"), "{page}");
    let page = audit("until=2001-01-01T00:00:00Z")
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<td>job.created</td>"), "{page}");
    assert_eq!(audit("since=yesterday-ish").await.status(), 400);

    let overview = get(&app, "/ui/", Some(&cookie)).await.text().await.unwrap();
    let records = app.audit("").await.len();
    assert!(
        overview.contains(&format!("verifies</span>: {records} records")),
        "{overview}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_rules_page_simulates_a_body_without_storing_it() {
    let app = spawn_app(RULES).await;
    let (cookie, _) = sign_in(&app, VIEWER_TOKEN, "/ui/").await;
    let page = get(&app, "/ui/rules", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&page);
    let body = r#"{"event":"test-passed","repo":"gated","image":"app","tag":"<b>2.0</b>"}"#;
    let r = post_form(
        &app,
        "/ui/rules",
        &cookie,
        &[
            ("csrf", &csrf),
            ("source", "ci"),
            ("headers", ""),
            ("body", body),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("rule approved → target jfrog")
            && page.contains("gated/app:&lt;b&gt;2.0&lt;/b&gt; → prod/app:&lt;b&gt;2.0&lt;/b&gt;")
            && page.contains("awaits approval"),
        "{page}"
    );
    assert!(!page.contains("rule plain"), "{page}");
    // Without the CSRF token nothing is tried; a body that is not JSON says why.
    let r = post_form(
        &app,
        "/ui/rules",
        &cookie,
        &[("source", "ci"), ("headers", ""), ("body", body)],
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = post_form(
        &app,
        "/ui/rules",
        &cookie,
        &[
            ("csrf", &csrf),
            ("source", "ci"),
            ("headers", ""),
            ("body", "not json"),
        ],
    )
    .await;
    assert_eq!(r.status(), 400);
    let events: serde_json::Value = app
        .get("/api/v1/events", Some(VIEWER_TOKEN))
        .await
        .json()
        .await
        .unwrap();
    assert!(events["events"].as_array().unwrap().is_empty(), "{events}");
    app.stop().await;
}
