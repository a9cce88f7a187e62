//! wardd's footprint, printed as figures: binary size, time from exec to `READY=1` (median of
//! 20 runs) and idle RSS, each next to a baseline measured in the same run (`/bin/true`'s exec
//! time and RSS of `sleep`). Run it on release builds: `just bench-startup`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use ward_tests::{Wardd, bin};

const RUNS: usize = 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn main() {
    let wardd = bin("wardd");
    let size = std::fs::metadata(&wardd).unwrap().len();

    let mut ready = Vec::with_capacity(RUNS);
    let mut idle_rss = 0;
    for i in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[log]\nlevel = \"warn\"\n[audit]\npath = {:?}\n[images]\n[attestation]\ngpus = \"off\"\neventlog = \"\"\n[[listener]]\naddress = \"unix://{}\"\nservices = [\"all\"]\n",
            dir.path().join("audit.jsonl").display().to_string(),
            dir.path().join("ward.sock").display()
        );
        let mut w = Wardd::start_with(dir, &config, "", &[]);
        ready.push(w.ready_after);
        if i == RUNS - 1 {
            std::thread::sleep(Duration::from_secs(1));
            idle_rss = rss_kib(w.child.id());
        }
        w.signal(Signal::SIGTERM);
        w.wait(Duration::from_secs(10));
    }

    let mut exec_true = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        Command::new("/bin/true").status().unwrap();
        exec_true.push(t.elapsed());
    }
    let mut sleep = Command::new("sleep")
        .arg("5")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sleep_rss = rss_kib(sleep.id());
    let _ = sleep.kill();
    let _ = sleep.wait();

    let ready_m = median(ready);
    let true_m = median(exec_true);
    println!(
        "wardd binary ({}): {:.2} MiB",
        wardd.display(),
        size as f64 / 1048576.0
    );
    println!(
        "exec -> READY=1, median of {RUNS}: {:.2} ms (baseline: exec of /bin/true to exit {:.2} ms; ratio {:.1}x)",
        ready_m.as_secs_f64() * 1e3,
        true_m.as_secs_f64() * 1e3,
        ready_m.as_secs_f64() / true_m.as_secs_f64()
    );
    println!(
        "idle RSS after 1 s: {:.2} MiB (baseline: `sleep` {:.2} MiB; ratio {:.1}x)",
        idle_rss as f64 / 1024.0,
        sleep_rss as f64 / 1024.0,
        idle_rss as f64 / sleep_rss as f64
    );
}
