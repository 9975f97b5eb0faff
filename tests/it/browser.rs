//! The console in a real browser (SPEC §11): headless Chromium driven over WebDriver
//! by chromedriver (Debian packages `chromium` and `chromium-driver`), with a
//! screenshot of every page it visits written under `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::harness::{VIEWER_TOKEN, free_port, spawn_app};

/// chromedriver on a free loopback port, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver runs (apt-get install chromium chromium-driver)");
    let driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/status")).await
            && r.status() == 200
        {
            return driver;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A headless Chromium, `width` pixels wide.
async fn browser(driver: &Driver, width: u32) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            format!("--window-size={width},1000"),
        ] }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// Writes the page as it is now to `target/console-screenshots/{name}.png`.
async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, client.screenshot().await.unwrap()).unwrap();
    println!("screenshot: {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_session_in_a_browser_sees_a_promoted_job_and_no_buttons() {
    let app = spawn_app(
        r#"
[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#,
    )
    .await;
    app.upstream_answers(200).await;
    let r = app
        .send(
            "ci",
            br#"{"event":"test-passed","repo":"dev","image":"team-a/api","tag":"1.4.2","note":"<script>alert(1)</script>"}"#,
        )
        .await;
    let v: serde_json::Value = r.json().await.unwrap();
    let id = v["jobs"][0]["id"].as_str().unwrap().to_string();
    app.wait_final(&id).await;

    let driver = driver().await;
    let c = browser(&driver, 1280).await;
    c.goto(&format!("{}/ui/jobs/{id}", app.base)).await.unwrap();
    // Sent to sign in, and back to the job afterwards.
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/ui/sign-in")
    );
    screenshot(&c, "sign-in").await;
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(VIEWER_TOKEN)
        .await
        .unwrap();
    c.find(Locator::XPath("//button[text()='Sign in']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrives_at(&c, &format!("/ui/jobs/{id}")).await;
    let html = c.source().await.unwrap();
    assert!(
        html.contains("dev/team-a/api:1.4.2 → staging/team-a/api:1.4.2"),
        "{html}"
    );
    assert!(html.contains("succeeded"));
    // The payload's script is text on the page, and never ran.
    let shown = c
        .find(Locator::Css("pre"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(shown.contains("<script>alert(1)</script>"), "{shown}");
    assert!(c.get_alert_text().await.is_err(), "no alert opened");
    let buttons = c.find_all(Locator::Css("main button")).await.unwrap();
    assert!(buttons.is_empty(), "a read session sees no action button");
    screenshot(&c, "job").await;
    for (page, path) in [
        ("overview", "/ui/"),
        ("jobs", "/ui/jobs"),
        ("approvals", "/ui/approvals"),
        ("audit", "/ui/audit?verify=1"),
        ("rules", "/ui/rules"),
        ("freezes", "/ui/freezes"),
    ] {
        c.goto(&format!("{}{path}", app.base)).await.unwrap();
        assert_eq!(
            c.current_url().await.unwrap().path(),
            path.split('?').next().unwrap()
        );
        if page == "audit" {
            let verdict = c.find(Locator::Css("#verdict")).await.unwrap();
            let verdict = verdict.text().await.unwrap();
            assert!(verdict.starts_with("The chain verifies"), "{verdict}");
        }
        screenshot(&c, page).await;
    }
    c.close().await.unwrap();

    // Usable at 390 px: signing in and the overview.
    let narrow = browser(&driver, 390).await;
    narrow
        .goto(&format!("{}/ui/sign-in?next=%2Fui%2F", app.base))
        .await
        .unwrap();
    narrow
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(VIEWER_TOKEN)
        .await
        .unwrap();
    narrow
        .find(Locator::XPath("//button[text()='Sign in']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrives_at(&narrow, "/ui/").await;
    screenshot(&narrow, "overview-390").await;
    narrow.close().await.unwrap();
    app.stop().await;
}

/// Signs in at `base` with `token` through the form.
async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/sign-in")).await.unwrap();
    c.find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::XPath("//button[text()='Sign in']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    arrives_at(c, "/ui/").await;
}

/// Waits until a submitted form's answer has loaded at `path`: a click returns
/// when the browser has dispatched it, not when the next page is there.
async fn arrives_at(c: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = c.current_url().await.unwrap();
        if now.path() == path {
            return;
        }
        assert!(Instant::now() < deadline, "still at {now}, not {path}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the page's source satisfies `done`, for `what`.
async fn until(c: &Client, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&c.source().await.unwrap()) {
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn click(c: &Client, text: &str) {
    c.find(Locator::XPath(&format!("//button[text()='{text}']")))
        .await
        .unwrap_or_else(|e| panic!("a `{text}` button: {e}"))
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_in_a_browser_approves_retries_and_freezes() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};
    let app = spawn_app(
        r#"
[[rules]]
name = "to-prod"
source = "ci"
event = "test-passed"
match = { repo = "staging" }
action = { type = "promote", target = "jfrog", to_repo = "prod" }
approval = { count = 1 }

[[rules]]
name = "to-staging"
source = "ci"
event = "test-passed"
match = { repo = "dev" }
action = { type = "promote", target = "jfrog", to_repo = "staging" }
"#,
    )
    .await;
    Mock::given(method("POST"))
        .and(path("/artifactory/api/docker/staging/v2/promote"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/artifactory/api/docker/dev/v2/promote"))
        .respond_with(ResponseTemplate::new(400))
        .mount(&app.upstream)
        .await;
    let job = |repo: &'static str| {
        let app = &app;
        async move {
            let body =
                format!(r#"{{"event":"test-passed","repo":"{repo}","image":"api","tag":"2.0"}}"#);
            let v: serde_json::Value = app.send("ci", body.as_bytes()).await.json().await.unwrap();
            v["jobs"][0]["id"].as_str().unwrap().to_string()
        }
    };
    let awaiting = job("staging").await;
    let failing = job("dev").await;
    assert_eq!(app.wait_final(&failing).await["state"], "failed");

    let driver = driver().await;
    let c = browser(&driver, 1280).await;
    sign_in(&c, &app.base, crate::harness::OPS_TOKEN).await;

    // Approve from the Approvals page: promoted at the fake Artifactory.
    c.goto(&format!("{}/ui/approvals", app.base)).await.unwrap();
    screenshot(&c, "approvals-operate").await;
    c.find(Locator::Css("input[name=comment]"))
        .await
        .unwrap()
        .send_keys("CAB-7")
        .await
        .unwrap();
    click(&c, "Approve").await;
    arrives_at(&c, &format!("/ui/jobs/{awaiting}")).await;
    let done = app.wait_final(&awaiting).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["approvals"][0]["comment"], "CAB-7");
    assert_eq!(
        crate::harness::posts(&app.upstream).await,
        2,
        "one promote each"
    );

    // Retry the failed job from its page: a second attempt.
    c.goto(&format!("{}/ui/jobs/{failing}", app.base))
        .await
        .unwrap();
    click(&c, "Retry").await;
    let retried = app
        .wait_for(&failing, |j| {
            j["attempts"].as_array().map_or(0, Vec::len) == 2 && j["state"] == "failed"
        })
        .await;
    assert_eq!(retried["attempts"].as_array().unwrap().len(), 2);

    // Start a freeze, then end it (after the page's confirmation).
    c.goto(&format!("{}/ui/freezes", app.base)).await.unwrap();
    c.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys("hotfix-week")
        .await
        .unwrap();
    c.find(Locator::Css("input[name=reason]"))
        .await
        .unwrap()
        .send_keys("release week")
        .await
        .unwrap();
    click(&c, "Start freeze").await;
    until(&c, "the freeze to show", |html| {
        html.contains("hotfix-week")
    })
    .await;
    screenshot(&c, "freezes-operate").await;
    click(&c, "End freeze").await;
    c.accept_alert().await.unwrap();
    until(&c, "the freeze to end", |html| {
        !html.contains("hotfix-week")
    })
    .await;
    let ended = app.audit("kind=freeze.ended").await;
    assert_eq!(ended[0]["actor"], "ops");
    c.close().await.unwrap();
    app.stop().await;
}
