//! The disk fills in the middle of a search (a small tmpfs holding the run folder and the
//! experiment cache, filled to the last byte while a node runs): the search stops with an error
//! that names the file it could not write and the cause, the run folder still reads as a run
//! with no node finished twice, and once space is freed `resume` grows the tree an
//! uninterrupted run grows. Mounting needs root; as another user the test says it was skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trex_lab::journal::Event;

use crate::runs::{adapters, assert_finished_at_most_once, assert_same_tree, count};
use crate::search::{events, fixture, output, slow_config, trex_host};

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system holding `path` to the last byte, then give `leave` bytes back.
fn fill(path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    // The last partial chunk.
    for _ in 0..(64 << 10) {
        if f.write_all(&[0]).is_err() {
            break;
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    let _ = f.sync_all();
}

#[test]
fn a_disk_that_fills_mid_search_stops_it_with_the_file_named_and_resume_loses_nothing() {
    trex_tests::build_plugins();
    let config = slow_config();
    let recipe = "lora_rank = 4\ntargets = [\"q_proj\", \"v_proj\"]\nlearning_rate = 1e-2\nepochs = 20.0\nbatch_size = 1\nmax_seq_len = 64";
    let f = fixture(40, recipe, "", config.clone());
    let Some(disk) = Tmpfs::mount(&f.dir.path().join("disk"), 48) else {
        assert!(
            std::env::var_os("TREX_REQUIRE_TMPFS").is_none(),
            "TREX_REQUIRE_TMPFS is set but a tmpfs cannot be mounted (run as root)"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root; the disk-full test did not run");
        return;
    };
    let search = |run_dir: &Path, cache: Option<&Path>| {
        let mut c = trex_host(&f);
        c.args(["search", "--strategy", "greedy", "--nodes", "5", "--run-dir"]).arg(run_dir).arg(&f.task);
        match cache {
            Some(cache) => c.env("TREX_CACHE_DIR", cache),
            None => c.arg("--no-experiment-cache"),
        };
        c
    };
    let reference = f.dir.path().join("reference");
    let (ok, _, err) = output(&mut search(&reference, None));
    assert!(ok, "{err}");

    // Three fills: while a node trains (its adapter is the next write), the same with room
    // left for a journal line but not for an adapter (the node's own write fails first), and
    // just after an adapter is written (its evaluation, the cache entry and the journal line
    // follow).
    let run_dir = disk.0.join("run");
    let cache = disk.0.join("cache");
    let filler = disk.0.join("filler");
    let mut errors = Vec::new();
    let mut child = search(&run_dir, Some(&cache)).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    for (moment, leave) in [("training", 0), ("training, 8 KiB free", 8 << 10), ("adapter written", 0)] {
        let started = || count(&run_dir, |e| matches!(e, Event::Started { node } if *node > 0));
        let before = started();
        let adapters_before = adapters(&run_dir);
        let waited = Instant::now();
        loop {
            assert!(child.try_wait().unwrap().is_none(), "the search ended before the disk filled ({moment})");
            let hit = match moment {
                "training" | "training, 8 KiB free" => started() > before,
                _ => adapters(&run_dir) > adapters_before,
            };
            if hit {
                break;
            }
            assert!(waited.elapsed() < Duration::from_secs(600), "no node reached `{moment}`");
            std::thread::sleep(Duration::from_millis(5));
        }
        fill(&filler, leave);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "a full disk must stop the search ({moment}): {stderr}");
        assert!(
            stderr.contains("No space left on device") && stderr.contains(disk.0.to_str().unwrap()),
            "the error names the file and the cause ({moment}): {stderr}"
        );
        errors.push((moment, stderr.lines().rev().find(|l| l.contains("No space")).unwrap_or_default().to_string()));
        // The run folder reads as a run, with no node finished twice.
        assert_finished_at_most_once(&run_dir, &format!("after the disk filled ({moment})"));
        assert!(
            !events(&run_dir).iter().any(|e| matches!(e, Event::Failed { .. })),
            "a full disk stops the search; it does not fail the node that hit it ({moment})"
        );
        std::fs::remove_file(&filler).unwrap();
        child = trex_host(&f)
            .env("TREX_CACHE_DIR", &cache)
            .arg("resume")
            .arg(&run_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "resume after space was freed: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("disk full: where the search stopped, and the error it gave");
    for (moment, line) in &errors {
        eprintln!("  {moment:<22} {line}");
    }
    assert_same_tree(&reference, &run_dir, &config);
}
