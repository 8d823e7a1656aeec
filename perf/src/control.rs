//! `zmesh-perf control`: the controller benchmark. A generated cluster (pods, services,
//! AuthorizationPolicies) in a config directory, one `zmesh-control`, two `zmesh-node`s on
//! loopback. Measures how long a policy change takes to be enforced on both nodes (seen
//! through the data path), how many bytes a one-pod change pushes against the full initial
//! push, and the controller's start-up time, CPU and memory at a larger scale.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::bench::{compilers_running, machine_info, timestamp, unix_now};
use crate::control_gen::{self as generate, CHANGED_POD_FILE, DENY_FILE, Shape};
use crate::control_procs::{Layout, Probe, XdsCounters, probe_both, probe_servers, settle};
use crate::control_report::{OnePodRecord, PolicyRecord, RunRecord, markdown};
use crate::procfs::{Proc, clk_tck, memory, process_ticks};

/// Flags of `zmesh-perf control`.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct ControlArgs {
    /// Pods of the propagation run (plus a few probe pods on the two real nodes).
    #[arg(long, default_value_t = 1000, value_parser = parse_pods, value_name = "N")]
    pub pods: usize,

    /// AuthorizationPolicies of every run.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100_000), value_name = "N")]
    pub policies: u32,

    /// Repetitions of the policy add/delete and of the one-pod change.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    pub repeat: u32,

    /// Pods of the scale run (controller CPU, memory, bytes of a one-pod change); 0 skips it.
    #[arg(long, default_value_t = 10_000, value_parser = parse_scale_pods, value_name = "N")]
    pub scale_pods: usize,

    /// Directory with `zmesh-control` and `zmesh-node`. Default: the directory of this
    /// executable (target/release after `cargo build --release`).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Parent of the results folder `control-YYYYMMDD-HHMMSS/`; created if missing.
    #[arg(long, default_value = "perf/results", value_name = "DIR")]
    pub out: PathBuf,

    /// Second octet of the loopback addresses (127.X.…); the scale run uses X+1. Lets two
    /// runs (a test and a real run) share a machine.
    #[arg(long, default_value_t = 77, value_parser = clap::value_parser!(u8).range(1..=254), value_name = "X")]
    pub net: u8,
}

fn parse_pods(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of pods"))?;
    if !(1..=100_000).contains(&n) {
        return Err(format!("{s:?}: between 1 and 100000 pods"));
    }
    Ok(n)
}

fn parse_scale_pods(s: &str) -> Result<usize, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_pods(s)
}

/// How long the policy probe may wait for a change (a hang guard, far above any expected
/// propagation time).
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
/// Probe interval of the propagation measurements: the resolution of their numbers.
const POLL: Duration = Duration::from_millis(5);
/// Quiet time after which the initial push counts as done.
const SETTLE_QUIET: Duration = Duration::from_millis(500);
/// Pause after a change is seen before the counters are read, so trailing messages count.
const TRAILING: Duration = Duration::from_millis(150);

pub fn run(args: &ControlArgs) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("zmesh-perf has no parent directory")?
            .to_path_buf(),
    };
    for b in ["zmesh-control", "zmesh-node"] {
        anyhow::ensure!(
            bin_dir.join(b).is_file(),
            "{b} not found in {}: build it with `cargo build --release -p zmesh-control -p zmesh-node`, or pass --bin-dir",
            bin_dir.display()
        );
    }
    let started = unix_now();
    let mut warnings = Vec::new();
    if let Some(c) = compilers_running() {
        warnings.push(format!("when the benchmark started: {c}"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let main_shape = Shape {
        pods: args.pods,
        policies: args.policies as usize,
        net: args.net,
    };
    eprintln!(
        "control: propagation run, {} pods, {} policies",
        args.pods, args.policies
    );
    let main = measure(&rt, &bin_dir, main_shape, args.repeat, true)?;
    let scale = if args.scale_pods > 0 {
        eprintln!("control: scale run, {} pods", args.scale_pods);
        let shape = Shape {
            pods: args.scale_pods,
            net: args.net.wrapping_add(1).max(1),
            ..main_shape
        };
        Some(measure(&rt, &bin_dir, shape, args.repeat, false)?)
    } else {
        None
    };
    let dir = args.out.join(format!("control-{}", timestamp(started)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let md = markdown(&main, scale.as_ref(), &warnings);
    let json = serde_json::json!({
        "tool": "zmesh-perf control",
        "version": env!("CARGO_PKG_VERSION"),
        "started_unix": started,
        "finished_unix": unix_now(),
        "settings": args,
        "bin_dir": bin_dir,
        "clk_tck": clk_tck(),
        "machine": machine_info(),
        "warnings": warnings,
        "runs": std::iter::once(&main).chain(scale.as_ref()).collect::<Vec<_>>(),
    });
    crate::report::write_json(&dir, &json)?;
    std::fs::write(dir.join("report.md"), &md)?;
    print!("{md}");
    println!("\nResults: {}", dir.display());
    Ok(())
}

/// One run: generate, start, measure, stop. The processes and the temp dir go away on return.
fn measure(
    rt: &tokio::runtime::Runtime,
    bin_dir: &std::path::Path,
    shape: Shape,
    repeat: u32,
    propagation: bool,
) -> anyhow::Result<RunRecord> {
    let tmp = tempfile::Builder::new()
        .prefix("zmesh-perf-control-")
        .tempdir()?;
    let layout = Layout {
        bin_dir: bin_dir.to_path_buf(),
        dir: tmp.path().to_path_buf(),
        shape,
    };
    generate::write_cluster(&layout.config_dir(), &shape)?;
    let (mut control, spawned, listening) = layout.start_control()?;
    let mut nodes = layout.start_nodes()?;
    crate::control_procs::wait_nodes_ready(&layout, &mut nodes)?;
    let nodes_ready = spawned.elapsed();
    let (initial, last_change) = settle(&layout, SETTLE_QUIET)?;
    let tck = clk_tck();
    let cpu = |p: &Proc| process_ticks(p.pid()).map(|t| t as f64 / tck);
    let mut rec = RunRecord {
        shape,
        control_listening_s: listening.as_secs_f64(),
        nodes_ready_s: nodes_ready.as_secs_f64(),
        first_full_push_s: last_change.duration_since(spawned).as_secs_f64(),
        initial,
        control_cpu_initial_s: cpu(&control)?,
        control_memory_started: memory(control.pid())?,
        control_memory_end: Default::default(),
        node_memory_end: Default::default(),
        policy: Vec::new(),
        one_pod: Vec::new(),
    };
    eprintln!(
        "control: {} pods: nodes ready {:.2}s after the controller started, full push {} B to node-a",
        shape.pods, rec.nodes_ready_s, initial[0].address_bytes
    );
    if propagation {
        let _servers = rt.block_on(probe_servers(&shape))?;
        wait_probe(rt, &layout, Probe::Served, "probe served before any change")?;
        for r in 1..=repeat {
            rec.policy.push(policy_round(rt, &layout, r)?);
            check_alive(&mut control, &mut nodes)?;
        }
    }
    for r in 1..=repeat {
        let before = [read(&layout, 1)?, read(&layout, 2)?];
        let cpu_before = cpu(&control)?;
        let t0 = Instant::now();
        generate::apply(
            &layout.config_dir(),
            CHANGED_POD_FILE,
            &generate::changed_pod(r + 1),
        )?;
        wait_counters(&layout, &before, t0)?;
        let seen = t0.elapsed();
        std::thread::sleep(TRAILING);
        let after = [read(&layout, 1)?, read(&layout, 2)?];
        rec.one_pod.push(OnePodRecord {
            repetition: r,
            both_nodes_s: seen.as_secs_f64(),
            control_cpu_s: cpu(&control)? - cpu_before,
            node_a: after[0].since(&before[0]),
            node_b: after[1].since(&before[1]),
        });
        check_alive(&mut control, &mut nodes)?;
    }
    rec.control_memory_end = memory(control.pid())?;
    rec.node_memory_end = [memory(nodes[0].pid())?, memory(nodes[1].pid())?];
    Ok(rec)
}

fn read(layout: &Layout, node: u8) -> anyhow::Result<XdsCounters> {
    XdsCounters::read(layout.metrics_addr(node))
}

fn check_alive(control: &mut Proc, nodes: &mut [Proc]) -> anyhow::Result<()> {
    control.check_alive()?;
    nodes.iter_mut().try_for_each(Proc::check_alive)
}

/// Adds the DENY policy and times until both probe servers refuse the probe client, then
/// deletes it and times until both serve it again.
fn policy_round(
    rt: &tokio::runtime::Runtime,
    layout: &Layout,
    repetition: u32,
) -> anyhow::Result<PolicyRecord> {
    let dir = layout.config_dir();
    generate::apply(&dir, DENY_FILE, &generate::deny_policy())?;
    let (apply_s, apply_probes) = wait_probe(rt, layout, Probe::Refused, "DENY enforced")?;
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(dir.join(DENY_FILE)).context("deleting the DENY policy")?;
    let (delete_s, delete_probes) = wait_probe(rt, layout, Probe::Served, "DENY removed")?;
    std::thread::sleep(Duration::from_millis(100));
    eprintln!(
        "control: repetition {repetition}: DENY enforced on both nodes after {:.1} ms, lifted after {:.1} ms",
        apply_s * 1e3,
        delete_s * 1e3
    );
    Ok(PolicyRecord {
        repetition,
        apply_s,
        delete_s,
        apply_probes,
        delete_probes,
    })
}

/// Probes every POLL until both probe servers answer `want`; returns the time since the call
/// (made right after the file change) and the number of probes.
fn wait_probe(
    rt: &tokio::runtime::Runtime,
    layout: &Layout,
    want: Probe,
    what: &str,
) -> anyhow::Result<(f64, u32)> {
    let start = Instant::now();
    let mut probes = 0;
    loop {
        probes += 1;
        let got = rt.block_on(probe_both(layout))?;
        if got == [want, want] {
            return Ok((start.elapsed().as_secs_f64(), probes));
        }
        anyhow::ensure!(
            start.elapsed() < CHANGE_LIMIT,
            "{what}: not seen on both nodes within {CHANGE_LIMIT:?} (last probe: {got:?})"
        );
        std::thread::sleep(POLL);
    }
}

/// Polls both nodes' Address counters every POLL until each received a message since
/// `before`.
fn wait_counters(layout: &Layout, before: &[XdsCounters; 2], t0: Instant) -> anyhow::Result<()> {
    for (node, b) in [1u8, 2].into_iter().zip(before) {
        loop {
            if read(layout, node)?.address_messages > b.address_messages {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < CHANGE_LIMIT,
                "one-pod change: node {node} received no Address message within {CHANGE_LIMIT:?}"
            );
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}
