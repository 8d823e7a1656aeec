//! Other proxies, named by the user as command templates, measured beside zmesh.
//!
//! A template is `key=value` pairs separated by commas, `cmd=` last (it takes the rest of the
//! string, commas included):
//!
//! ```text
//! name=envoy,listen=127.0.3.1:{port},config=perf/envoy.yaml,cmd=envoy -c {dir}/envoy.yaml
//! ```
//!
//! - `name` (required): the system's name in the report (letters, digits, `-`, `_`).
//! - `listen` (default `127.0.3.1:{port}`): where the proxy accepts the client's connections.
//! - `config` (optional): a file whose placeholders are filled in and which is written to
//!   `{dir}/<its file name>` before the command starts.
//! - `cmd` (required): run by `sh -c 'exec …'`, so quoting and `$VARS` work and the PID is
//!   the proxy's own.
//!
//! Placeholders in `listen`, `config` and `cmd`: `{port}` (a free port picked by the harness),
//! `{listen}` (the listen address), `{upstream}` (the server, `ip:port`), `{upstream_ip}`,
//! `{upstream_port}`, `{dir}` (a fresh directory for this proxy), `{perf}` (this executable).
//! The proxy must forward every connection on `listen` to `{upstream}` unchanged (an L4
//! proxy, as a node proxy is). It is ready when `listen` accepts a TCP connection.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::procfs::{Proc, log_file};

/// How long a proxy may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_LISTEN: &str = "127.0.3.1:{port}";
const PLACEHOLDERS: [&str; 7] = [
    "port",
    "listen",
    "upstream",
    "upstream_ip",
    "upstream_port",
    "dir",
    "perf",
];

/// A parsed `--proxy` template.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProxySpec {
    pub name: String,
    pub listen: String,
    pub config: Option<PathBuf>,
    pub cmd: String,
}

impl std::str::FromStr for ProxySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxySpec, String> {
        let (head, cmd) = match s.find("cmd=") {
            Some(0) => ("", &s[4..]),
            Some(i) if s[..i].ends_with(',') => (&s[..i - 1], &s[i + 4..]),
            _ => return Err(format!("{s:?}: no cmd= (it must come last)")),
        };
        let (mut name, mut listen, mut config) = (None, None, None);
        for pair in head.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            match k.trim() {
                "name" => name = Some(v.trim().to_string()),
                "listen" => listen = Some(v.trim().to_string()),
                "config" => config = Some(PathBuf::from(v.trim())),
                other => {
                    return Err(format!("unknown key {other:?} (name, listen, config, cmd)"));
                }
            }
        }
        let name = name.ok_or_else(|| format!("{s:?}: name= is required"))?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "proxy name {name:?}: use letters, digits, '-' and '_'"
            ));
        }
        if cmd.trim().is_empty() {
            return Err(format!("{s:?}: cmd= is empty"));
        }
        let spec = ProxySpec {
            name,
            listen: listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            config,
            cmd: cmd.trim().to_string(),
        };
        for t in [&spec.listen, &spec.cmd] {
            check_placeholders(t)?;
        }
        Ok(spec)
    }
}

/// An error for `{x}` where x is not a known placeholder (a typo would otherwise reach the
/// proxy's command line).
fn check_placeholders(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else { break };
        let key = &after[..j];
        if !PLACEHOLDERS.contains(&key) {
            return Err(format!(
                "unknown placeholder {{{key}}} in {t:?} (known: {})",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
            ));
        }
        rest = &after[j + 1..];
    }
    Ok(())
}

/// The values of the placeholders for one proxy.
struct Vars {
    port: u16,
    listen: String,
    upstream: SocketAddr,
    dir: PathBuf,
    perf: PathBuf,
}

impl Vars {
    fn fill(&self, t: &str) -> String {
        t.replace("{port}", &self.port.to_string())
            .replace("{listen}", &self.listen)
            .replace("{upstream}", &self.upstream.to_string())
            .replace("{upstream_ip}", &self.upstream.ip().to_string())
            .replace("{upstream_port}", &self.upstream.port().to_string())
            .replace("{dir}", &self.dir.display().to_string())
            .replace("{perf}", &self.perf.display().to_string())
    }
}

/// A started proxy and where clients reach it.
pub struct Running {
    pub proc: Proc,
    pub listen: SocketAddr,
    /// The command line as run, placeholders filled in.
    pub cmd: String,
}

/// Starts the proxy in `dir` (created) and waits until it accepts connections. An error if
/// it exits first or is not ready within [`READY_TIMEOUT`].
pub fn start(spec: &ProxySpec, upstream: SocketAddr, dir: &Path) -> anyhow::Result<Running> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let mut vars = Vars {
        port,
        listen: String::new(),
        upstream,
        dir: dir.to_path_buf(),
        perf: std::env::current_exe()?,
    };
    vars.listen = vars.fill(&spec.listen);
    let listen: SocketAddr = vars.listen.parse().with_context(|| {
        format!(
            "proxy {}: listen {:?} is not ip:port",
            spec.name, vars.listen
        )
    })?;
    if let Some(cfg) = &spec.config {
        let text = std::fs::read_to_string(cfg)
            .with_context(|| format!("proxy {}: reading config {}", spec.name, cfg.display()))?;
        let to = dir.join(cfg.file_name().context("config has no file name")?);
        std::fs::write(&to, vars.fill(&text))?;
    }
    let cmd = vars.fill(&spec.cmd);
    let log = dir.join(format!("{}.log", spec.name));
    let (out, err) = log_file(&log)?;
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("proxy {}: starting `{cmd}`", spec.name))?;
    let mut proc = Proc {
        name: spec.name.clone(),
        child,
        log,
    };
    wait_listening(&mut proc, listen)
        .with_context(|| format!("proxy {} (`{cmd}`) did not start", spec.name))?;
    Ok(Running { proc, listen, cmd })
}

fn wait_listening(p: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        p.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // A command that forks a listener and exits at once is caught here.
            std::thread::sleep(Duration::from_millis(50));
            return p.check_alive();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not accepting on {addr} after {READY_TIMEOUT:?}; last log lines:\n{}",
            p.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port nothing listens on right now (the kernel's pick, released at once).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.3.1:0").context("finding a free port on 127.0.3.1")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_template() {
        let p: ProxySpec = "name=envoy,config=x.yaml,cmd=envoy -c {dir}/x.yaml --a=b,c"
            .parse()
            .expect("parse");
        assert_eq!(p.name, "envoy");
        assert_eq!(p.listen, DEFAULT_LISTEN);
        assert_eq!(p.config, Some(PathBuf::from("x.yaml")));
        assert_eq!(p.cmd, "envoy -c {dir}/x.yaml --a=b,c");
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "name=x",
            "cmd=relay",
            "name=a b,cmd=x",
            "name=x,colour=red,cmd=x",
            "name=x,cmd={prot}",
            "name=x,cmd=",
        ] {
            assert!(bad.parse::<ProxySpec>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fills_placeholders() {
        let v = Vars {
            port: 4242,
            listen: "127.0.3.1:4242".into(),
            upstream: "127.0.2.10:8080".parse().expect("addr"),
            dir: "/tmp/d".into(),
            perf: "/bin/perf".into(),
        };
        assert_eq!(
            v.fill("{perf} relay --listen {listen} --to {upstream_ip} {upstream_port} {dir}"),
            "/bin/perf relay --listen 127.0.3.1:4242 --to 127.0.2.10 8080 /tmp/d"
        );
    }
}
