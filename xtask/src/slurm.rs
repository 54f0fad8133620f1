//! A single-node Slurm cluster on this machine, for the tests of `--executor slurm` and for
//! trying it: Debian's `slurm-wlm` and `munge`, the project's `xtask/slurm/slurm.conf.in` filled
//! in under `target/slurm`, and munged, slurmctld and slurmd started (and stopped) here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{apt_install, is_root, on_path, root, run};

/// Whether the daemons and the client commands are installed.
pub fn installed() -> bool {
    ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel"].iter().all(|p| on_path(p))
}

/// Whether a test cluster can be started here (installed, and running as root).
pub fn can_start() -> bool {
    installed() && is_root()
}

/// Install `slurm-wlm` and `munge` with apt-get when they are missing (as root).
pub fn ensure_installed() -> Result<()> {
    if installed() {
        return Ok(());
    }
    apt_install(&["slurm-wlm", "munge"], "the Slurm tests")
}

/// The cluster's folder.
pub fn dir() -> PathBuf {
    root().join("target/slurm")
}

/// Its configuration file (what `SLURM_CONF` points the client commands to).
pub fn conf() -> PathBuf {
    dir().join("slurm.conf")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn pid_alive(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn munge_answers() -> bool {
    Command::new("sh").args(["-c", "munge -n | unmunge"]).output().is_ok_and(|o| o.status.success())
}

/// A running single-node cluster; stopped when dropped.
#[derive(Debug)]
pub struct Cluster {
    started_munge: bool,
}

/// Start the cluster (munged too, if it is not running): waits until its node is idle.
pub fn up() -> Result<Cluster> {
    if !installed() {
        bail!("Slurm is not installed: `apt-get install slurm-wlm munge` (or `cargo xtask ci`, which installs it)");
    }
    if !is_root() {
        bail!("the single-node test cluster runs its daemons as root: run this as root");
    }
    let dir = dir();
    // Anything an earlier cluster left behind goes first.
    down_daemons(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["state", "spool"] {
        std::fs::create_dir_all(dir.join(d)).with_context(|| format!("{}", dir.join(d).display()))?;
    }
    let host = String::from_utf8(Command::new("hostname").arg("-s").output().context("hostname -s")?.stdout)?
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string())))
        .and_then(|v| v.split_whitespace().next().and_then(|k| k.parse::<u64>().ok()))
        .map_or(1024, |kib| (kib / 1024).saturating_sub(1024).max(512));
    let template = std::fs::read_to_string(root().join("xtask/slurm/slurm.conf.in"))?;
    let text = template
        .replace("@HOST@", &host)
        .replace("@CPUS@", &cpus.to_string())
        .replace("@MEM@", &mem_mib.to_string())
        .replace("@DIR@", &dir.display().to_string())
        .replace("@CTLD_PORT@", &free_port()?.to_string())
        .replace("@SLURMD_PORT@", &free_port()?.to_string());
    std::fs::write(conf(), text)?;
    let started_munge = if munge_answers() {
        false
    } else {
        std::fs::create_dir_all("/run/munge")?;
        run(Command::new("chown").args(["munge:munge", "/run/munge"]))?;
        run(Command::new("runuser").args(["-u", "munge", "--", "munged"]))?;
        true
    };
    let cluster = Cluster { started_munge };
    let conf = conf();
    run(Command::new("slurmctld").arg("-f").arg(&conf))?;
    run(Command::new("slurmd").arg("-f").arg(&conf))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("sinfo").env("SLURM_CONF", &conf).args(["-h", "-o", "%t"]).output();
        let state = out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
        if state == "idle" {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the Slurm test cluster did not come up in 60 s (node state `{state}`); see {} and {}",
                dir.join("slurmctld.log").display(),
                dir.join("slurmd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("xtask: Slurm test cluster up (SLURM_CONF={})", conf.display());
    Ok(cluster)
}

fn down_daemons(dir: &Path) {
    for name in ["slurmd", "slurmctld"] {
        if let Some(pid) = pid_alive(&dir.join(format!("{name}.pid"))) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        down_daemons(&dir());
        if self.started_munge {
            let _ = Command::new("runuser").args(["-u", "munge", "--", "munged", "--stop"]).status();
        }
        eprintln!("xtask: Slurm test cluster stopped");
    }
}

/// `cargo xtask slurm up|down`: start the cluster and leave it running, or stop it.
pub fn command(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") => {
            let cluster = up()?;
            std::mem::forget(cluster);
            println!("export SLURM_CONF={}", conf().display());
            Ok(())
        }
        Some("down") => {
            down_daemons(&dir());
            Ok(())
        }
        _ => bail!("usage: cargo xtask slurm up|down"),
    }
}
