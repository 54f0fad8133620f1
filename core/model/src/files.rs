//! Writing files and folders so that a kill in the middle of a write never leaves half of one:
//! everything is written under a temporary name in the destination's folder and renamed into
//! place, so a reader sees the whole file (or folder) or the one before it.
//!
//! Temporary names start with `.tmp-<host>-<pid>-`, so a later session can tell a writer that
//! died (killed mid-write) from one still writing, in this process or another (a Slurm job, a
//! second run), and [`sweep_stale_temporaries`] removes what the dead ones left.
//!
//! For crash tests, `TREX_TEST_HOLD_WRITES_MS=N` holds every folder written by
//! [`write_folder_atomically`] (an adapter, a training checkpoint) for N milliseconds, complete
//! but still under its temporary name, before it is renamed into place: a window wide enough
//! for a test to kill the writer in the middle of the write.

use std::io;
use std::path::Path;

/// Write `bytes` to `path` under a temporary name in the same folder, then rename it into
/// place, so a reader sees the whole file or the one before it, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_via_temporary(path, bytes, false)
}

/// [`write_atomically`], with the file's contents flushed to the disk before it is renamed into
/// place, for a file another process (or the same one after a crash) must find whole.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_via_temporary(path, bytes, true)
}

fn write_via_temporary(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(&temporary_prefix()).tempfile_in(dir)?;
    io::Write::write_all(&mut tmp, bytes)?;
    if sync {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

/// Fill the folder `dest` by `fill`, which is handed an empty temporary folder next to it; once
/// `fill` succeeds, the temporary folder replaces `dest` (a folder already there is removed). A
/// failure, or a kill, before that leaves `dest` as it was. `io_error` turns an error of the
/// folder itself (creating it, renaming it) into `E`, with the path it concerns.
pub fn write_folder_atomically<E>(
    dest: &Path,
    io_error: impl Fn(&Path, io::Error) -> E,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    let work =
        tempfile::Builder::new().prefix(&temporary_prefix()).tempdir_in(parent).map_err(|e| io_error(parent, e))?;
    fill(work.path())?;
    if let Some(ms) = hold_writes_ms() {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    // A folder cannot be renamed over a folder that has files in it: move the old one aside
    // under a temporary name first (a kill between the two renames leaves it to the sweep).
    let old = dest.exists().then(|| parent.join(format!("{}old", temporary_prefix())));
    if let Some(old) = &old {
        std::fs::rename(dest, old).map_err(|e| io_error(dest, e))?;
    }
    std::fs::rename(work.path(), dest).map_err(|e| io_error(dest, e))?;
    // The folder now lives at `dest`; keep `work` from removing it.
    let _ = work.keep();
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

fn hold_writes_ms() -> Option<u64> {
    static HOLD: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *HOLD.get_or_init(|| std::env::var("TREX_TEST_HOLD_WRITES_MS").ok().and_then(|v| v.parse().ok()))
}

/// Copy the folder `from` (recursively) to `to`.
pub fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// The name every temporary file or folder of this process starts with: `.tmp-<host>-<pid>-`.
pub fn temporary_prefix() -> String {
    format!(".tmp-{}-{}-", host_name().unwrap_or_default(), std::process::id())
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    // `-` separates the parts of a temporary's name.
    Some(name.trim().replace('-', "_")).filter(|n| !n.is_empty())
}

/// Remove, under `dir` (recursively), the temporary files and folders whose writer was a
/// process of this machine that no longer runs: what a kill in the middle of a write leaves.
/// A temporary of a live process, or of another machine, is left alone. Returns how many were
/// removed. Errors are ignored: a temporary that stays is harmless, only untidy.
pub fn sweep_stale_temporaries(dir: &Path) -> usize {
    let Some(host) = host_name() else { return 0 };
    let mut removed = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let writer = name
            .strip_prefix(".tmp-")
            .and_then(|rest| rest.split_once('-'))
            .filter(|(h, _)| *h == host)
            .and_then(|(_, rest)| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        match writer {
            Some(pid) if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() => {
                let gone = if is_dir { std::fs::remove_dir_all(e.path()) } else { std::fs::remove_file(e.path()) };
                removed += usize::from(gone.is_ok());
            }
            Some(_) => {}
            None if is_dir => removed += sweep_stale_temporaries(&e.path()),
            None => {}
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_sweep_removes_only_temporaries_of_dead_writers_on_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ab").join("entry");
        std::fs::create_dir_all(&sub).unwrap();
        let host = host_name().expect("a Linux host has a name");
        // No process has this id (above the kernel's pid_max).
        let dead = format!(".tmp-{host}-4294967295-x");
        let mine = format!("{}x", temporary_prefix());
        let elsewhere = ".tmp-another_host-4294967295-x".to_string();
        for name in [&dead, &mine, &elsewhere] {
            std::fs::write(dir.path().join(name), "half").unwrap();
            std::fs::write(sub.join(name), "half").unwrap();
        }
        std::fs::create_dir(dir.path().join(format!(".tmp-{host}-4294967295-dir"))).unwrap();
        std::fs::write(dir.path().join(format!(".tmp-{host}-4294967295-dir/entry.json")), "{}").unwrap();
        std::fs::write(sub.join("result.json"), "{}").unwrap();

        assert_eq!(sweep_stale_temporaries(dir.path()), 3);
        let mut left = names(dir.path());
        left.extend(names(&sub));
        left.sort();
        let mut want = vec![mine.clone(), mine, elsewhere.clone(), elsewhere, "ab".into(), "result.json".into()];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn a_write_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_durably(&path, b"{}").unwrap();
        write_atomically(&path, b"[]").unwrap();
        assert_eq!(names(dir.path()), ["x.json"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"[]");
    }

    #[test]
    fn a_folder_is_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("nested/adapter");
        let io = |p: &Path, e: io::Error| format!("{}: {e}", p.display());
        let write = |files: &[(&str, &str)]| {
            let files: Vec<(String, String)> = files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
            move |tmp: &Path| -> Result<(), String> {
                for (name, text) in &files {
                    std::fs::write(tmp.join(name), text).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        };
        // A new folder, with the folders above it made.
        write_folder_atomically(&dest, io, write(&[("a", "1"), ("b", "1")])).unwrap();
        assert_eq!(names(&dest), ["a", "b"]);
        // Replaced whole: a file the new folder lacks is gone.
        write_folder_atomically(&dest, io, write(&[("a", "2")])).unwrap();
        assert_eq!(names(&dest), ["a"]);
        assert_eq!(std::fs::read_to_string(dest.join("a")).unwrap(), "2");
        // A fill that fails halfway leaves the folder as it was, and no temporary.
        let failed = write_folder_atomically(&dest, io, |tmp| {
            std::fs::write(tmp.join("a"), "3").unwrap();
            Err("the disk filled".to_string())
        });
        assert_eq!(failed.unwrap_err(), "the disk filled");
        assert_eq!(std::fs::read_to_string(dest.join("a")).unwrap(), "2");
        assert_eq!(names(&dir.path().join("nested")), ["adapter"]);
    }
}
