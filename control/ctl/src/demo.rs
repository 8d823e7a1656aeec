//! `zmeshctl demo`: a two-node mesh on this machine's network namespaces (root), the sample
//! app on it, an mTLS request, an L4 AuthorizationPolicy denying a second client, the metrics
//! that show both, then a clean teardown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use zmesh_ctl::topology::{Bins, Capture, Options, Pod, PodSpec, Topology, namespace_yaml};

/// Options of `zmeshctl demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of zmesh-node, zmesh-control, zmesh-agent and zmesh-cni (default: beside
    /// this binary).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Capture back end of the node proxies: auto, ebpf or nftables.
    #[arg(long, default_value = "auto", value_parser = ["auto", "ebpf", "nftables"])]
    capture: String,
    /// Keep the mesh running until Ctrl-C instead of cleaning up at once.
    #[arg(long)]
    keep: bool,
    /// The older demo without root: two node proxies on loopback addresses, clients entering
    /// through SOCKS5 (no capture, no controller).
    #[arg(long)]
    loopback: bool,
}

const VIP: &str = "198.19.1.10";

const APP: &str = r#"# The sample app: Service "web" in front of the pods labelled app=web.
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  clusterIP: 198.19.1.10
  clusterIPs: [198.19.1.10]
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

const POLICY: &str = r#"# Only the client's identity may reach the web pods (L4: identities, not paths).
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow-client, namespace: demo}
spec:
  selector:
    matchLabels: {app: web}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/client"]
"#;

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.loopback {
        return crate::loopback::run(args.bin_dir.map(|d| d.join("zmesh-node")), args.keep);
    }
    if !cfg!(target_os = "linux") {
        bail!("the demo needs Linux (network namespaces, cgroup v2, eBPF or nftables)");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the demo builds network namespaces, cgroups and eBPF capture, so it needs root: \
             run it with sudo (`sudo {}`), or try `zmeshctl demo --loopback` (no root, no capture)",
            std::env::args().collect::<Vec<_>>().join(" ")
        );
    }
    let bins = match &args.bin_dir {
        Some(d) => Bins::in_dir(d),
        None => Bins::discover()?,
    };
    bins.check_mesh()?;
    for tool in ["curl", "ip"] {
        std::process::Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .output()
            .with_context(|| {
                format!(
                    "the demo runs `{tool}`: install it (apt-get install {})",
                    if tool == "ip" { "iproute2" } else { "curl" }
                )
            })?;
    }
    let stop = ctrl_c_flag()?;
    let capture = match args.capture.as_str() {
        "ebpf" => Capture::Ebpf,
        "nftables" => Capture::Nftables,
        _ => Capture::Auto,
    };

    step("1/6", "building a two-node cluster from network namespaces");
    let t0 = Instant::now();
    let mut t = Topology::up(Options {
        capture,
        bins: Some(bins),
        ..Options::default()
    })?;
    for n in 1..=2 {
        let backend = backend(&t, n);
        println!(
            "      node{n} 198.19.0.{n}: zmesh-agent (pid {}) and zmesh-node (pid {}, capture: {backend}) ready",
            t.agent_pid(n).unwrap_or(0),
            t.proxy_pid(n).unwrap_or(0)
        );
    }
    println!(
        "      controller zmesh-control on 198.19.0.254:15012 ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    check(&stop)?;

    step(
        "2/6",
        "applying the sample app: namespace demo (istio.io/dataplane-mode=ambient), web ×2, client, intruder",
    );
    t.apply("namespace.yaml", &namespace_yaml("demo", true))?;
    t.apply("app.yaml", APP)?;
    let mut pods = Vec::new();
    for (name, node, sa, app) in [
        ("web-1", 1, "web", Some("web")),
        ("web-2", 2, "web", Some("web")),
        ("client", 1, "client", None),
        ("intruder", 2, "intruder", None),
    ] {
        let mut spec = PodSpec::new("demo", name, node).service_account(sa);
        if let Some(a) = app {
            spec = spec.label("app", a).port(8080);
        }
        let started = Instant::now();
        let pod = t.add_pod(spec)?;
        println!(
            "      pod demo/{name:<8} on node{node}  {:<12} captured (CNI ADD {} ms)",
            pod.ip4,
            started.elapsed().as_millis()
        );
        pods.push(pod);
    }
    for web in &pods[..2] {
        let p = t.spawn(
            web,
            "zmeshctl",
            &["serve-http", "--port", "8080", "--name", &web.name],
        )?;
        t.keep(p);
    }
    let (client, intruder) = (pods[2].clone(), pods[3].clone());
    check(&stop)?;

    step(
        "3/6",
        &format!("client → http://web.demo (VIP {VIP}:80) with curl, through the node proxies"),
    );
    let url = format!("http://{VIP}/");
    wait_ok(&mut t, &client, &url)?;
    for _ in 0..4 {
        let (code, body) = curl(&mut t, &client, &url)?;
        println!("      {code} {}", reply(&body));
    }
    check(&stop)?;

    step(
        "4/6",
        "over mTLS (HBONE, port 15008): what the receiving node proxies saw",
    );
    for n in 1..=2 {
        let m = t.metrics(n)?;
        for line in m.lines().filter(|l| {
            l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("reporter=\"destination\"")
                && !l.ends_with(" 0")
        }) {
            println!(
                "      node{n}: {}",
                crate::metrics_line::shorten(line, SHOWN_LABELS)
            );
        }
    }
    check(&stop)?;

    step(
        "5/6",
        "AuthorizationPolicy web-allow-client: only spiffe://cluster.local/ns/demo/sa/client may reach app=web",
    );
    t.apply("policy.yaml", POLICY)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let denied = loop {
        let (code, body) = curl(&mut t, &intruder, &url)?;
        if code != "200" {
            break body;
        }
        if Instant::now() > deadline {
            bail!("the intruder is still let through: {body}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("      intruder (sa/intruder): refused: {}", denied.trim());
    let (code, body) = curl(&mut t, &client, &url)?;
    println!("      client   (sa/client):   {code} {}", reply(&body));
    check(&stop)?;

    step(
        "6/6",
        "metrics (istio_tcp_*, reporter=destination, both nodes)",
    );
    for n in 1..=2 {
        let m = t.metrics(n)?;
        for line in m.lines().filter(|l| {
            (l.starts_with("istio_tcp_connections_opened_total")
                || l.starts_with("istio_tcp_connections_failed_total"))
                && l.contains("reporter=\"destination\"")
                && !l.ends_with(" 0")
        }) {
            println!(
                "      node{n}: {}",
                crate::metrics_line::shorten(line, SHOWN_LABELS)
            );
        }
    }
    if args.keep {
        println!(
            "\nThe mesh keeps running (work dir {}; logs, config, pcap-able node netns). Ctrl-C to stop.",
            t.dir().display()
        );
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(t);
    println!("\nDone: processes stopped; namespaces, cgroups, bpffs and temporary files removed.");
    Ok(())
}

/// The server's greeting, with the peer address it saw (the client pod's own: the node proxy
/// keeps the source address).
fn reply(body: &str) -> &str {
    body.trim()
}

fn step(n: &str, what: &str) {
    println!("[{n}] {what}");
}

/// Set on Ctrl-C or SIGTERM, so the demo stops between steps and still cleans up.
fn ctrl_c_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            set.store(true, Ordering::SeqCst);
        });
    });
    Ok(flag)
}

fn check(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// The capture back end node N's proxy logged at start-up.
fn backend(t: &Topology, n: usize) -> String {
    let log = t
        .proxy_log(n)
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    log.lines()
        .find_map(|l| {
            l.split_once("backend=\"")?
                .1
                .split('"')
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// curl in the pod: (status code, body or curl's error).
fn curl(t: &mut Topology, pod: &Pod, url: &str) -> anyhow::Result<(String, String)> {
    let out = t.run(
        pod,
        "curl",
        &["-sS", "--max-time", "5", "-w", "\n%{http_code}", url],
        Duration::from_secs(15),
    )?;
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", "000"));
    let body = if out.success {
        body.to_string()
    } else {
        format!(
            "curl exit {}: {}",
            out.code.unwrap_or(-1),
            out.stderr.trim()
        )
    };
    Ok((code.trim().to_string(), body))
}

/// Waits until the config reached the proxies and the first request succeeds.
fn wait_ok(t: &mut Topology, pod: &Pod, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = curl(t, pod, url)?;
        if code == "200" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no answer from {url}: {code} {body}\n{}", t.log_tails(20));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The labels a reader of the demo cares about.
const SHOWN_LABELS: &[&str] = &[
    "source_principal",
    "destination_principal",
    "connection_security_policy",
    "response_flags",
];
