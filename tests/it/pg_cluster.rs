//! A private PostgreSQL cluster for one test: `initdb` and `pg_ctl` from the machine's
//! PostgreSQL installation, in a temporary directory, on a free loopback port, run as
//! the `postgres` user when the test runs as root (the server refuses root). Stopped
//! (immediately) and removed when the test ends.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::free_port;

/// A server certificate and key (PEM) the cluster serves over TLS.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// When set, TLS connections must present a client certificate this CA signed,
    /// whose common name is the user (`cert` authentication); plain ones stay
    /// trusted, for the test's own connections.
    pub client_ca_pem: Option<String>,
}

pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's `bin` directory.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `program` with `args`, as `postgres` when the test runs as root.
fn server_command(program: &Path, args: &[&str]) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Starts a cluster (with TLS when `tls` is given); `None`, loudly, when the
    /// machine has no PostgreSQL installation (a failure under CI).
    pub fn start(tls: Option<&ServerTls>) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty()),
                "no PostgreSQL installation under /usr/lib/postgresql and CI is set"
            );
            eprintln!("\n!!!!!!!!\nSKIPPED: no initdb under /usr/lib/postgresql\n!!!!!!!!\n");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if as_root() {
            // The server runs as `postgres`: it owns the directory.
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let data_arg = data.to_str().unwrap();
        run(
            server_command(
                &bin.join("initdb"),
                &["-D", data_arg, "-A", "trust", "-U", "postgres", "--no-sync"],
            ),
            "initdb",
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 60\n",
            dir.path().display()
        );
        if let Some(tls) = tls {
            let (cert, key) = (data.join("server.crt"), data.join("server.key"));
            write_server_file(&cert, &tls.cert_pem);
            write_server_file(&key, &tls.key_pem);
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            if let Some(ca) = &tls.client_ca_pem {
                write_server_file(&data.join("client-ca.crt"), ca);
                conf.push_str("ssl_ca_file = 'client-ca.crt'\n");
                write_server_file(
                    &data.join("pg_hba.conf"),
                    "local all all trust\nhostnossl all all 127.0.0.1/32 trust\n\
                     hostssl all all 127.0.0.1/32 cert\n",
                );
            }
        } else {
            conf.push_str("ssl = off\n");
        }
        let mut file = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        file.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), file).unwrap();
        let log = dir.path().join("server.log");
        run(
            server_command(
                &bin.join("pg_ctl"),
                &["-D", data_arg, "-l", log.to_str().unwrap(), "-w", "start"],
            ),
            "pg_ctl start",
        );
        Some(Cluster {
            bin,
            data,
            port,
            _dir: dir,
        })
    }

    /// A plain-text URL for the test's own administrative connections.
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

/// A file the server reads: its own, readable by it alone (it refuses a key others
/// can read).
fn write_server_file(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if as_root() {
        let mut c = Command::new("chown");
        c.arg("postgres:postgres").arg(path);
        run(c, "chown");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().into_owned();
        let _ = server_command(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}
