//! A stateful fake Artifactory for fault tests. It speaks just enough HTTP/1.1 over
//! raw TCP to do what a mock server cannot: drop a connection before or after
//! applying a promotion, or never answer. It keeps the docker tags of its
//! repositories, so effects are counted, not just calls.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the next promote call suffers, in order; when none is queued it works.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status (with these headers) and change nothing.
    Status(u16, Vec<(&'static str, String)>),
    /// Never answer; change nothing.
    Hang,
    /// Drop the connection (RST) before changing anything.
    Reset,
    /// Apply the promotion, then never answer: the response is lost.
    EffectThenHang,
    /// Apply the promotion, then drop the connection.
    EffectThenReset,
}

type Tag = (String, String, String);

#[derive(Default)]
struct State {
    tags: HashMap<Tag, String>,
    /// Every promotion applied, by its target tag.
    effects: HashMap<Tag, usize>,
    promote_calls: usize,
    /// When each promote call arrived, with its target tag, in arrival order.
    arrivals: Vec<(String, Instant)>,
    faults: VecDeque<Fault>,
    delay: Duration,
}

#[derive(Clone)]
pub struct FakeArtifactory {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn key(repo: &str, image: &str, tag: &str) -> Tag {
    (repo.to_string(), image.to_string(), tag.to_string())
}

impl FakeArtifactory {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeArtifactory {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(server.clone().serve(stream));
            }
        });
        fake
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn put(&self, repo: &str, image: &str, tag: &str, digest: &str) {
        self.state()
            .tags
            .insert(key(repo, image, tag), digest.to_string());
    }

    pub fn digest(&self, repo: &str, image: &str, tag: &str) -> Option<String> {
        self.state().tags.get(&key(repo, image, tag)).cloned()
    }

    /// How many times a promotion to this tag took effect.
    pub fn effects_on(&self, repo: &str, image: &str, tag: &str) -> usize {
        self.state()
            .effects
            .get(&key(repo, image, tag))
            .copied()
            .unwrap_or(0)
    }

    pub fn effects(&self) -> usize {
        self.state().effects.values().sum()
    }

    pub fn promote_calls(&self) -> usize {
        self.state().promote_calls
    }

    /// When each promote call arrived, by target tag: the end-to-end benchmark's clock.
    #[allow(dead_code, reason = "used by benches/e2e.rs, which shares this fake")]
    pub fn arrivals(&self) -> Vec<(String, Instant)> {
        self.state().arrivals.clone()
    }

    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state().faults.extend(faults);
    }

    /// Every promote call takes this long before it does anything.
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    async fn serve(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let Some((method, path, body)) = read_request(&mut stream, &mut buf).await else {
                return;
            };
            let reply = if method == "POST" && path.ends_with("/v2/promote") {
                match self.promote(&path, &body, &mut stream).await {
                    Some(reply) => reply,
                    None => return,
                }
            } else if let Some(tag) = manifest_path(&path) {
                match self.state().tags.get(&tag) {
                    Some(d) => (
                        200,
                        vec![("Docker-Content-Digest", d.clone())],
                        String::new(),
                    ),
                    None => (404, vec![], String::new()),
                }
            } else {
                (404, vec![], String::new())
            };
            let (status, headers, body) = reply;
            let body = if method == "HEAD" {
                String::new()
            } else {
                body
            };
            let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("Content-Type: application/json\r\n\r\n");
            // One write: a head and a body written apart meet Nagle's algorithm and
            // the client's delayed ACK, and every response would take 40 ms.
            head.push_str(&body);
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Applies (or fails) one promote call; `None` when the connection was dropped.
    async fn promote(
        &self,
        path: &str,
        body: &[u8],
        stream: &mut TcpStream,
    ) -> Option<(u16, Vec<(&'static str, String)>, String)> {
        let (fault, delay) = {
            let arrived = Instant::now();
            let target_tag = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| Some(v["targetTag"].as_str()?.to_string()))
                .unwrap_or_default();
            let mut s = self.state();
            s.promote_calls += 1;
            s.arrivals.push((target_tag, arrived));
            (s.faults.pop_front(), s.delay)
        };
        tokio::time::sleep(delay).await;
        let hang = || tokio::time::sleep(Duration::from_secs(120));
        match &fault {
            Some(Fault::Status(code, headers)) => {
                return Some((
                    *code,
                    headers.clone(),
                    json!({"errors": [{"status": code, "message": "injected"}]}).to_string(),
                ));
            }
            Some(Fault::Hang) => {
                hang().await;
                return None;
            }
            Some(Fault::Reset) => {
                reset(stream);
                return None;
            }
            _ => {}
        }
        let applied = self.apply(path, body);
        match fault {
            Some(Fault::EffectThenHang) => {
                hang().await;
                None
            }
            Some(Fault::EffectThenReset) => {
                reset(stream);
                None
            }
            _ => Some(match applied {
                Ok(()) => (200, vec![], json!({"messages": []}).to_string()),
                Err(message) => (
                    404,
                    vec![],
                    json!({"errors": [{"status": 404, "message": message}]}).to_string(),
                ),
            }),
        }
    }

    fn apply(&self, path: &str, body: &[u8]) -> Result<(), String> {
        let repo = path
            .trim_start_matches("/artifactory/api/docker/")
            .split('/')
            .next()
            .unwrap_or_default();
        let req: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let field = |k: &str| req[k].as_str().unwrap_or_default().to_string();
        let from = key(repo, &field("dockerRepository"), &field("tag"));
        let to = key(
            &field("targetRepo"),
            &field("targetDockerRepository"),
            &field("targetTag"),
        );
        let copy = req["copy"].as_bool().unwrap_or(true);
        let mut s = self.state();
        let digest = s
            .tags
            .get(&from)
            .cloned()
            .ok_or_else(|| format!("Unable to find tag {}/{}:{}", from.0, from.1, from.2))?;
        s.tags.insert(to.clone(), digest);
        if !copy {
            s.tags.remove(&from);
        }
        *s.effects.entry(to).or_default() += 1;
        Ok(())
    }
}

/// Closes with RST instead of FIN, as a crashed or reset peer would.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
}

/// `/artifactory/api/docker/{repo}/v2/{image...}/manifests/{tag}` → the tag.
fn manifest_path(path: &str) -> Option<Tag> {
    let rest = path.strip_prefix("/artifactory/api/docker/")?;
    let (repo, rest) = rest.split_once("/v2/")?;
    let (image, tag) = rest.rsplit_once("/manifests/")?;
    Some(key(repo, image, tag))
}

/// Reads one request: method, path and body. `None` at end of stream.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, String, Vec<u8>)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some((method, path, body))
}
