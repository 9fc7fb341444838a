//! `cargo xtask bench-redis`: Debian's redis-server (on jemalloc) under
//! redis-benchmark on loopback, untraced, traced exact and traced sampled
//! (512k), interleaved over a few rounds: requests per second, and the
//! leaktrace daemon's CPU (share of one core while the benchmark ran) and
//! resident memory.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::workspace_root;

const PORT: &str = "6399";
const REQUESTS: &str = "200000";

fn ensure_redis() -> Result<()> {
    if Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_ok()
    {
        return Ok(());
    }
    eprintln!("xtask: installing Debian's redis-server and redis-tools");
    crate::run(Command::new("apt-get").args(["install", "-y", "-q", "redis-server", "redis-tools"]))
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

pub(crate) fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// (SET, GET) requests per second.
pub(crate) fn benchmark() -> Result<(f64, f64)> {
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            PORT,
            "-t",
            "set,get",
            "-n",
            REQUESTS,
            "-q",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&output.stdout).replace('\r', "\n");
    let rate = |name: &str| -> Option<f64> {
        let line = text.lines().rev().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    match (rate("SET:"), rate("GET:")) {
        (Some(set), Some(get)) => Ok((set, get)),
        _ => bail!("unexpected redis-benchmark output: {text}"),
    }
}

/// Debian's redis-server on loopback, once it answers (installed first if
/// missing).
pub(crate) fn start_server() -> Result<Child> {
    ensure_redis()?;
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            PORT,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    let started = Instant::now();
    while Command::new("redis-cli")
        .args(["-p", PORT, "ping"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        if started.elapsed() > Duration::from_secs(10) {
            let _: Result<_, _> = redis.kill();
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(redis)
}

struct Traced {
    child: Child,
}

fn attach(redis: u32, sample: &str, report: &std::path::Path) -> Result<Traced> {
    let child = crate::trace_pid(redis, &["--sample-bytes", sample], report)?;
    Ok(Traced { child })
}

impl Traced {
    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { kill(self.child.id() as i32, 15) };
        self.child.wait()?;
        Ok(())
    }
}

unsafe extern "C" {
    pub(crate) fn kill(pid: i32, signal: i32) -> i32;
}

/// One mode's measurements over the rounds.
#[derive(Default)]
struct Samples {
    set: Vec<f64>,
    get: Vec<f64>,
    /// The daemon's CPU, % of one core while the benchmark ran.
    cpu: Vec<f64>,
    rss_mib: Vec<f64>,
    lost: u64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub(crate) fn run(rounds: usize) -> Result<()> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut redis = start_server()?;
    let pid = redis.id();
    let modes = [
        ("untraced", None),
        ("leaktrace exact", Some("0")),
        ("leaktrace sampled 512k", Some("512k")),
    ];
    // Per mode: SET rates, GET rates, daemon CPU %, daemon RSS MiB, losses.
    let mut results: Vec<Samples> = modes.iter().map(|_| Samples::default()).collect();
    let ticks_per_second = 100.0; // USER_HZ on Linux.
    let outcome = (|| -> Result<()> {
        for round in 0..rounds {
            for (i, (name, sample)) in modes.iter().enumerate() {
                eprintln!("xtask: round {round}, {name}");
                let report = dir.join("redis-report.json");
                let traced = sample.map(|s| attach(pid, s, &report)).transpose()?;
                let daemon = traced.as_ref().map(|t| t.child.id());
                let ticks_before = daemon.map_or(0, cpu_ticks);
                let clock = Instant::now();
                let (set, get) = benchmark()?;
                let seconds = clock.elapsed().as_secs_f64();
                let entry = &mut results[i];
                entry.set.push(set);
                entry.get.push(get);
                if let (Some(daemon), Some(traced)) = (daemon, traced) {
                    let ticks = cpu_ticks(daemon) - ticks_before;
                    entry
                        .cpu
                        .push(100.0 * ticks as f64 / ticks_per_second / seconds);
                    entry.rss_mib.push(rss_mib(daemon));
                    traced.stop()?;
                    let json = std::fs::read_to_string(&report).unwrap_or_default();
                    let lost = json
                        .split("\"total\": ")
                        .nth(1)
                        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                    entry.lost += lost;
                }
            }
        }
        Ok(())
    })();
    let _: Result<_, _> = redis.kill();
    let _: Result<_, _> = redis.wait();
    outcome?;
    let base_set = median(&mut results[0].set.clone());
    let base_get = median(&mut results[0].get.clone());
    println!(
        "redis-server {REQUESTS} SET/GET requests (redis-benchmark -q), median of {rounds} rounds:"
    );
    println!(
        "  {:<24} {:>10} {:>10} {:>8} {:>12} {:>12} {:>6}",
        "mode", "SET/s", "GET/s", "x base", "daemon CPU", "daemon RSS", "lost"
    );
    for (i, (name, _)) in modes.iter().enumerate() {
        let Samples {
            set: sets,
            get: gets,
            cpu,
            rss_mib: rss,
            lost,
        } = &mut results[i];
        let set = median(sets);
        let get = median(gets);
        let cpu = if cpu.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0}%", median(cpu))
        };
        let rss = if rss.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0} MiB", median(rss))
        };
        println!(
            "  {:<24} {:>10.0} {:>10.0} {:>8.2} {:>12} {:>12} {:>6}",
            name,
            set,
            get,
            f64::midpoint(set / base_set, get / base_get),
            cpu,
            rss,
            lost
        );
    }
    Ok(())
}
