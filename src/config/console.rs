//! The console's settings (SPEC §11): whether it is served, how long a session lasts,
//! and which SSO proxy may vouch for people, checked into typed values.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::{Problem, Role};

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub proxy: Option<RawProxy>,
    #[serde(default)]
    pub groups: Vec<RawGroup>,
}

/// `[auth.proxy]`: an SSO proxy (oauth2-proxy, an ingress doing OIDC) in front of
/// gantry names the person in headers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub user_header: String,
    pub groups_header: Option<String>,
    /// Addresses or CIDR blocks the proxy connects from; headers from anywhere else
    /// are never believed.
    pub trusted: Vec<String>,
}

/// `[[auth.groups]]`: what a person in a group may do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// `server.console`: `/ui/` is served.
    pub enabled: bool,
    /// `server.session_ttl`: how long a session lasts from its sign-in.
    pub session_ttl: Duration,
    /// Session cookies are `Secure` (the console is reached over https).
    pub secure_cookies: bool,
    pub proxy: Option<ProxyConfig>,
    /// Roles by group, for people the proxy names.
    pub groups: Vec<(String, Role)>,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Lower-case header names.
    pub user_header: String,
    pub groups_header: Option<String>,
    pub trusted: Vec<IpNet>,
}

impl ProxyConfig {
    /// Whether a request from `peer` is the proxy's.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&peer))
    }
}

impl ConsoleConfig {
    /// The highest role any of `groups` has; none when no group has one.
    pub fn role_of(&self, groups: &[String]) -> Option<Role> {
        self.groups
            .iter()
            .filter(|(name, _)| groups.contains(name))
            .map(|(_, role)| *role)
            .max()
    }
}

pub(super) fn check_console(
    enabled: bool,
    session_ttl: Duration,
    public_url: Option<&str>,
    auth: &RawAuth,
    problems: &mut Vec<Problem>,
) -> ConsoleConfig {
    if session_ttl < Duration::from_secs(60) {
        problems.push(Problem::error(
            "server.session_ttl",
            "is shorter than a minute: every page would ask to sign in again",
        ));
    }
    let header = |at: &str, name: &str, problems: &mut Vec<Problem>| {
        match actix_web::http::header::HeaderName::try_from(name) {
            Ok(h) => Some(h.as_str().to_string()),
            Err(_) => {
                problems.push(Problem::error(at, format!("`{name}` is not a header name")));
                None
            }
        }
    };
    let proxy = auth.proxy.as_ref().and_then(|p| {
        let user_header = header("auth.proxy.user_header", &p.user_header, problems);
        let groups_header = p
            .groups_header
            .as_deref()
            .and_then(|g| header("auth.proxy.groups_header", g, problems));
        if p.trusted.is_empty() {
            problems.push(Problem::error(
                "auth.proxy.trusted",
                "lists no address: the proxy's headers would be believed from nowhere",
            ));
        }
        let trusted = p
            .trusted
            .iter()
            .filter_map(|t| {
                t.parse::<IpNet>()
                    .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        problems.push(Problem::error(
                            "auth.proxy.trusted",
                            format!("`{t}` is neither an address nor a CIDR block"),
                        ));
                    })
                    .ok()
            })
            .collect();
        Some(ProxyConfig {
            user_header: user_header?,
            groups_header,
            trusted,
        })
    });
    let mut seen = std::collections::HashSet::new();
    for g in &auth.groups {
        if !seen.insert(g.name.as_str()) {
            problems.push(Problem::error(
                format!("auth.groups[{}].name", g.name),
                "is defined more than once",
            ));
        }
    }
    ConsoleConfig {
        enabled,
        session_ttl,
        secure_cookies: public_url.is_some_and(|u| u.starts_with("https://")),
        proxy,
        groups: auth
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.role))
            .collect(),
    }
}
