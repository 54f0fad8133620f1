//! Project chores: `cargo xtask build-plugins | demo | test | ci | bench-plugins | nvrtc-check |
//! device-check | interop | screenshot | slurm | crash-drill | fuzz | load`.
//!
//! Rust instead of shell so the steps read the same everywhere and fail with clear messages.

use std::path::{Path, PathBuf};
use std::process::Command;

mod interop;
mod slurm;
mod tasks;

use anyhow::{Context, Result, bail};
use trex_sdk::rng::SplitMix64;

const HELP: &str = "\
cargo xtask <command>

commands:
  build-plugins   add the wasm32-wasip2 target if missing, build every plugin in plugins/ and
                  copy each component next to its plugin.toml
  demo            build the host and the plugins, then run the main job: a search on the default
                  task with SmolLM2-135M (extra arguments go to `trex-host search`)
  test            build the plugins and run the whole test suite (what CI runs); the browser
                  test skips, loudly, where Chromium and ChromeDriver are not installed, and
                  the Slurm tests where Slurm is not (with Slurm there, as root, a single-node
                  test cluster is started for them and stopped afterwards)
  ci              install Chromium, ChromeDriver, Slurm and munge if missing (apt-get, as
                  root), check formatting, clippy, docs, then `test` with the browser and the
                  Slurm tests required
  fuzz [--minutes N]
                  fuzz every host parser of untrusted bytes (GGUF, safetensors, tokenizer.json,
                  config.json, PEFT adapter config, plugin.toml, task.toml, journal, JSONL
                  records, and through their plugins or client: CSV records, LLM replies,
                  SMILES, BFCL calls, the `llm` Researcher's reply parser) for N minutes in all
                  (default 10) with the seeded mutational fuzzer
                  in tests/it/fuzz.rs (stable toolchain); prints inputs tried per target and
                  keeps any crashing input in target/fuzz (300 inputs per target run in `test`)
  load [--records N]
                  N records (default 1 000 000, 1% malformed, under `skip`) through a
                  three-step pipeline; checks that every step's counts add up and prints
                  records/s and peak resident memory (20 000 records run in `test`)
  soak [--minutes N]
                  hostile and normal plugin calls on one host for N minutes (default 5): each
                  attack 4 at once with the host's peak memory next to its limit, then 8 mixed
                  workers checking every normal call's output and that memory stays flat
                  (4 seconds run in `test`)
  crash-drill [--kills N]
                  the crash drill: a search on a small model SIGKILLed N times (default 20)
                  at moments spread over its nodes' lives and resumed each time; checks that
                  no finished node is lost or repeated, that the tree equals an uninterrupted
                  run's and that nothing half-written is left (5 kills run in `test`)
  slurm up|down   start (or stop) the single-node Slurm cluster the tests use, from
                  xtask/slurm/slurm.conf.in; `up` prints the SLURM_CONF to export
  bench-plugins   build in release mode and run the plugin-host benchmark
  nvrtc-check     fetch NVRTC from the `nvidia-cuda-nvrtc-cu12` wheel and compile every CUDA
                  kernel for sm_80 and sm_90 (no GPU needed; part of `ci`)
  device-check    on a machine with an NVIDIA GPU: build the CUDA backend, check every op
                  against the CPU reference on fresh random inputs, check a full training step
                  and short runs against the CPU engine, then time LoRA training (tokens/s, MFU)
                  for trex and for PyTorch + PEFT (eager, compiled) on the same GPU
  interop [--server trex|llama-cpp-python]
                  the LLM client, the `llm` Researcher and the `llm-data` plugin against real
                  servers of SmolLM2 on loopback: `trex-host serve`, and llama-cpp-python
                  (installed once into a cached virtual environment, about 15 minutes)
  screenshot RUN  render RUN's report (`trex-host report`) in headless Chromium into
                  docs/ui.png, the README's picture (needs `chromium`)
  gen-unit-data   regenerate the synthetic unit-conversion example data (seeded, deterministic)
  gen-task-data   regenerate the data of the synthetic benchmark tasks (finance-ratios,
                  clinical-vitals, deposit-statute, review-sentiment; seeded, deterministic)
";

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build-plugins") => build_plugins(),
        Some("demo") => demo(&args[1..]),
        Some("test") => test(false),
        Some("ci") => ci(),
        Some("bench-plugins") => bench_plugins(),
        Some("gen-unit-data") => gen_unit_data(),
        Some("gen-task-data") => tasks::generate_all(&root()),
        Some("nvrtc-check") => nvrtc_check(),
        Some("device-check") => device_check(),
        Some("screenshot") => screenshot(args.get(1).map(String::as_str)),
        Some("interop") => interop::command(&args[1..]),
        Some("slurm") => slurm::command(&args[1..]),
        Some("crash-drill") => crash_drill(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("load") => load(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{HELP}"),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The triple of the machine this runs on (`rustc -vV`'s `host:`).
fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host triple")
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo() -> Command {
    Command::new(cargo_bin())
}

fn ensure_wasm_target() -> Result<()> {
    let out = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") => Ok(()),
        Ok(_) => run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"])),
        Err(e) => bail!("rustup is needed to add the wasm32-wasip2 target: {e}"),
    }
}

/// The Chromium builds the screenshot and the browser test look for, by program name.
const BROWSERS: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// Whether `name` is a program on PATH (or in /usr/sbin, where Debian puts daemons).
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin")]).any(|d| d.join(name).is_file()))
}

/// Whether this runs as root.
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Install Debian's `packages` with apt-get, for `what`, when running as root; otherwise a
/// message saying what to install.
fn apt_install(packages: &[&str], what: &str) -> Result<()> {
    let list = packages.join(" ");
    if !(is_root() && on_path("apt-get")) {
        bail!("{what} needs {list}: install them (apt-get install {list}) and run this again");
    }
    eprintln!("xtask: installing {list} for {what}");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-qq"]).args(packages))
}

/// Debian's Chromium and ChromeDriver, for the browser test of `trex-host ui`, installed when
/// missing.
fn ensure_browser() -> Result<()> {
    if on_path("chromedriver") && (BROWSERS.iter().any(|b| on_path(b)) || std::env::var_os("TREX_CHROMIUM").is_some()) {
        return Ok(());
    }
    apt_install(&["chromium", "chromium-driver"], "the browser test")
}

/// Build the plugins workspace and place each component next to its manifest.
fn build_plugins() -> Result<()> {
    ensure_wasm_target()?;
    let plugins = root().join("plugins");
    run(cargo().current_dir(&plugins).args(["build", "--release", "--target", "wasm32-wasip2"]))?;
    let built = plugins.join("target/wasm32-wasip2/release");
    let mut placed = 0;
    let mut folders = Vec::new();
    for parent in [plugins.clone(), plugins.join("testing")] {
        for entry in std::fs::read_dir(&parent)? {
            folders.push(entry?.path());
        }
    }
    for dir in folders {
        let manifest = dir.join("plugin.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)?;
        let wasm = text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("wasm")
                    .map(|r| r.trim_start().trim_start_matches('=').trim().trim_matches('"').to_string())
            })
            .with_context(|| format!("{}: no `wasm` field", manifest.display()))?;
        let from = built.join(&wasm);
        std::fs::copy(&from, dir.join(&wasm)).with_context(|| {
            format!("copy {} (does the crate's [lib] name match `wasm` in {}?)", from.display(), manifest.display())
        })?;
        placed += 1;
    }
    eprintln!("placed {placed} plugin components under {}", plugins.display());
    Ok(())
}

fn demo(extra: &[String]) -> Result<()> {
    eprintln!("xtask demo: building the plugins, then trex-host (release), then searching.");
    eprintln!("  On a fresh 2-core machine the first build takes about 15 minutes; cargo shows its progress.");
    build_plugins()?;
    run(cargo().current_dir(root()).args(["build", "--release", "-p", "trex-cli", "--bin", "trex-host"]))?;
    let mut cmd = cargo();
    cmd.current_dir(root()).args(["run", "--release", "--quiet", "-p", "trex-cli", "--bin", "trex-host", "--"]);
    cmd.args(["--plugins", "plugins", "search", "examples/tasks/unit-conversion"]);
    cmd.args(extra);
    run(&mut cmd)
}

/// The README's picture of a run: its report, rendered by headless Chromium.
fn screenshot(dir: Option<&str>) -> Result<()> {
    let dir = dir.context("usage: cargo xtask screenshot RUN_DIR")?;
    let dir = std::fs::canonicalize(dir).with_context(|| format!("no run folder {dir}"))?;
    let page = root().join("target/ui-screenshot.html");
    run(cargo()
        .current_dir(root())
        .args(["run", "--quiet", "-p", "trex-cli", "--bin", "trex-host", "--", "report"])
        .arg(&dir)
        .arg("--out")
        .arg(&page))?;
    let out = root().join("docs/ui.png");
    let browser = BROWSERS
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .context("no Chromium found: install it (apt-get install chromium)")?;
    run(Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1100"])
        .arg(format!("--screenshot={}", out.display()))
        .arg(format!("file://{}", page.display())))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `required`: the browser and Slurm tests fail instead of skipping where ChromeDriver or Slurm
/// is missing.
fn test(required: bool) -> Result<()> {
    build_plugins()?;
    // The plugins' own unit tests run natively (their workspace builds for wasm32-wasip2).
    run(cargo().current_dir(root().join("plugins")).args([
        "test",
        "--workspace",
        "--lib",
        "--target",
        &host_triple()?,
    ]))?;
    let mut tests = cargo();
    tests.current_dir(root()).args(["test", "--workspace", "--all-targets"]);
    if required {
        tests.env("TREX_REQUIRE_BROWSER", "1").env("TREX_REQUIRE_SLURM", "1");
        // The disk-full test mounts a tmpfs, which CI (run as root) can always do.
        if is_root() {
            tests.env("TREX_REQUIRE_TMPFS", "1");
        }
    }
    // The Slurm tests' cluster, up while the tests run (stopped when this returns, also on failure).
    let _cluster = if required || slurm::can_start() {
        let cluster = slurm::up()?;
        tests.env("SLURM_CONF", slurm::conf());
        Some(cluster)
    } else {
        None
    };
    run(&mut tests)?;
    run(cargo().current_dir(root()).args(["test", "--workspace", "--doc"]))
}

/// The value of the one flag `flag` in `args` (`default` when `args` is empty).
fn one_flag<T: std::str::FromStr>(args: &[String], flag: &str, default: T, usage: &str) -> Result<T> {
    match args {
        [] => Ok(default),
        [f, n] if f == flag => n.parse().map_err(|_| anyhow::anyhow!("{flag} {n}: not a number")),
        _ => bail!("usage: {usage}"),
    }
}

/// The value of `--minutes` in `args` (`default` when `args` is empty), a positive number.
fn minutes_flag(args: &[String], default: f64, usage: &str) -> Result<f64> {
    let minutes: f64 = one_flag(args, "--minutes", default, usage)?;
    if minutes.is_nan() || minutes <= 0.0 {
        bail!("--minutes {minutes}: give a positive number of minutes");
    }
    Ok(minutes)
}

/// Run the integration tests matching `filter` with `var` set, their output shown.
fn it_tests(filter: &str, var: &str, value: String) -> Result<()> {
    let args = ["test", "--workspace", "--test", "it", "--", filter, "--nocapture"];
    run(cargo().current_dir(root()).env(var, value).args(args))
}

/// `fuzz [--minutes N]`: the fuzz test for N minutes in all (shared among its targets), its
/// table printed.
fn fuzz(args: &[String]) -> Result<()> {
    let minutes = minutes_flag(args, 10.0, "cargo xtask fuzz [--minutes N]")?;
    it_tests("fuzz::the_parsers", "TREX_FUZZ_MINUTES", minutes.to_string())
}

/// `load [--records N]`: the load test on N records (default 1 000 000), its table printed.
fn load(args: &[String]) -> Result<()> {
    let records: u64 = one_flag(args, "--records", 1_000_000, "cargo xtask load [--records N]")?;
    if records < 400 {
        bail!("--records {records}: give at least 400 records (every kind of planted record appears once in 400)");
    }
    build_plugins()?;
    it_tests("load::", "TREX_LOAD_RECORDS", records.to_string())
}

/// `soak [--minutes N]`: the soak test for N minutes, its tables printed.
fn soak(args: &[String]) -> Result<()> {
    let minutes = minutes_flag(args, 5.0, "cargo xtask soak [--minutes N]")?;
    build_plugins()?;
    it_tests("soak::", "TREX_SOAK_SECONDS", (minutes * 60.0).to_string())
}

/// `crash-drill [--kills N]`: the drill test with N kills, its table printed.
fn crash_drill(args: &[String]) -> Result<()> {
    let kills: u32 = one_flag(args, "--kills", 20, "cargo xtask crash-drill [--kills N]")?;
    if kills == 0 {
        bail!("--kills 0: the drill needs at least one kill");
    }
    build_plugins()?;
    it_tests("drill::", "TREX_DRILL_KILLS", kills.to_string())
}

fn ci() -> Result<()> {
    let started = std::time::Instant::now();
    ensure_wasm_target()?;
    ensure_browser()?;
    slurm::ensure_installed()?;
    run(cargo().current_dir(root()).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root().join("plugins")).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(root()).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo().current_dir(root().join("plugins")).args([
        "clippy",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().current_dir(root()).args([
        "clippy",
        "-p",
        "trex-kernels",
        "--features",
        "cuda",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().current_dir(root()).env("RUSTDOCFLAGS", "-D warnings").args(["doc", "--workspace", "--no-deps"]))?;
    test(true)?;
    nvrtc_check()?;
    // Against llama-cpp-python when its cached install is there, or when there is time to build
    // it (about 15 minutes) within CI's budget. (`cargo xtask interop --server trex` runs the same
    // tests against `trex-host serve`: its Researcher test takes longer than CI affords.)
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    if interop::installed().is_some() || minutes < 20.0 {
        interop::interop(&[interop::Against::LlamaCpp])
    } else {
        eprintln!(
            "\n*** SKIPPED: the interop tests against llama-cpp-python ({minutes:.0} minutes in, no cached install: run `cargo xtask interop`) ***\n"
        );
        Ok(())
    }
}

/// `python3` or `python`, whichever runs.
fn python() -> Result<String> {
    for p in ["python3", "python"] {
        if Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(p.to_string());
        }
    }
    bail!("python3 with pip is needed to fetch NVRTC (install python3 and pip)")
}

/// The folder holding `libnvrtc.so.12`, from the `nvidia-cuda-nvrtc-cu12` wheel (downloaded
/// once into `target/nvrtc`).
fn nvrtc_lib_dir() -> Result<PathBuf> {
    let base = root().join("target/nvrtc");
    let lib = base.join("unpacked/nvidia/cuda_nvrtc/lib");
    if lib.join("libnvrtc.so.12").is_file() {
        return Ok(lib);
    }
    let py = python()?;
    let wheels = base.join("wheel");
    run(Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:", "-d"])
        .arg(&wheels)
        .arg("nvidia-cuda-nvrtc-cu12>=12.4,<13"))?;
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip reported success but left no wheel")?;
    run(Command::new(&py).args(["-m", "zipfile", "-e"]).arg(&wheel).arg(base.join("unpacked")))?;
    anyhow::ensure!(lib.join("libnvrtc.so.12").is_file(), "the wheel has no {}", lib.join("libnvrtc.so.12").display());
    Ok(lib)
}

fn with_library_path(cmd: &mut Command, dirs: &[PathBuf]) {
    let mut paths: Vec<PathBuf> = dirs.to_vec();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    cmd.env("LD_LIBRARY_PATH", std::env::join_paths(paths).expect("library paths join"));
}

/// Compile every CUDA kernel with NVRTC for sm_80 and sm_90; no GPU needed.
fn nvrtc_check() -> Result<()> {
    let lib = nvrtc_lib_dir()?;
    let mut cmd = cargo();
    cmd.current_dir(root()).args([
        "test",
        "-p",
        "trex-kernels",
        "--features",
        "cuda",
        "--test",
        "it",
        "--",
        "nvrtc",
        "--include-ignored",
    ]);
    with_library_path(&mut cmd, &[lib]);
    run(&mut cmd)
}

/// On a GPU machine: every CUDA op against the CPU reference. Uses the CUDA libraries the
/// local PyTorch installation ships (NVRTC, cuBLAS) when the toolkit is not on the path.
fn device_check() -> Result<()> {
    let mut dirs = Vec::new();
    if let Ok(py) = python() {
        // PyTorch's CUDA libraries: `nvidia/<lib>/lib` (CUDA 12 wheels) or `nvidia/cu13/lib`.
        let out = Command::new(&py)
            .args([
                "-c",
                "import glob,os,site\nfor s in site.getsitepackages():\n for d in sorted(set(os.path.dirname(p) for p in glob.glob(os.path.join(s,'nvidia','*','lib','lib*.so*')))): print(d)",
            ])
            .output();
        if let Ok(o) = out {
            dirs.extend(String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from).filter(|p| p.is_dir()));
        }
    }
    dirs.extend(["/usr/local/cuda/lib64"].map(PathBuf::from).into_iter().filter(|p| p.is_dir()));
    eprintln!("CUDA library folders: {dirs:?}");
    // cudarc's bindings must match the installed major version: CUDA 13 libraries lack symbols
    // the CUDA 12 bindings load.
    let cuda13 = dirs.iter().any(|d| d.join("libnvrtc.so.13").exists());
    let version = if cuda13 { "13000" } else { "12080" };
    eprintln!("building against the CUDA {} API", if cuda13 { "13.0" } else { "12.8" });
    // `filter` picks the test modules of the crate's integration-test binary `it`.
    let test = |package: &str, filter: &str, features: &[&str]| -> Result<()> {
        let mut cmd = cargo();
        cmd.current_dir(root()).env("CUDARC_CUDA_VERSION", version).args(["test", "--release", "-p", package]);
        for f in features {
            cmd.args(["--features", f]);
        }
        cmd.args(["--test", "it", "--", filter, "--include-ignored", "--nocapture", "--test-threads", "1"]);
        with_library_path(&mut cmd, &dirs);
        run(&mut cmd)
    };
    // Every op against the CPU reference, then a full training step and short training runs
    // against the CPU engine.
    test("trex-kernels", "", &["cuda"])?;
    test("trex-model", "cuda_train", &[])?;
    // Throughput on the SmolLM2-135M shape (random weights, rank 16, all linear targets): trex,
    // then PyTorch + PEFT eager and compiled on the same GPU.
    let py = python()?;
    for seq in ["512", "2048"] {
        let mut cmd = cargo();
        cmd.current_dir(root()).env("CUDARC_CUDA_VERSION", version).args([
            "run",
            "--release",
            "-p",
            "trex-cli",
            "--bin",
            "trex-host",
            "--",
            "bench",
            "train",
            "--device",
            "cuda",
            "--seq",
            seq,
            "--batch",
            "4",
            "--steps",
            "10",
        ]);
        with_library_path(&mut cmd, &dirs);
        run(&mut cmd)?;
    }
    for compile in [false, true] {
        for seq in ["512", "2048"] {
            let mut cmd = Command::new(&py);
            cmd.current_dir(root()).arg("core/reference/bench_lora_train.py").args([
                "--device", "cuda", "--dtype", "bf16", "--seq", seq, "--batch", "4", "--steps", "10", "--warmup", "3",
            ]);
            if compile {
                cmd.arg("--compile");
            }
            if let Err(e) = run(&mut cmd) {
                eprintln!("baseline failed (seq {seq}, compile {compile}): {e:#}");
            }
        }
    }
    Ok(())
}

fn bench_plugins() -> Result<()> {
    build_plugins()?;
    run(cargo().current_dir(root()).args([
        "run",
        "--release",
        "-p",
        "trex-cli",
        "--bin",
        "trex-host",
        "--",
        "--plugins",
        "plugins",
        "bench",
        "plugins",
    ]))
}

/// Write the synthetic unit-conversion data set used by the demo pipeline. The data is
/// generated, not collected: see examples/pipelines/unit-conversion/README.md.
fn gen_unit_data() -> Result<()> {
    // (from, to, factor)
    const UNITS: &[(&str, &str, f64)] = &[
        ("km", "m", 1000.0),
        ("m", "cm", 100.0),
        ("cm", "mm", 10.0),
        ("kg", "g", 1000.0),
        ("g", "mg", 1000.0),
        ("l", "ml", 1000.0),
        ("h", "min", 60.0),
        ("min", "s", 60.0),
        ("day", "h", 24.0),
        ("week", "day", 7.0),
    ];
    const PHRASES: &[&str] =
        &["Convert {v} {a} to {b}.", "How many {b} are in {v} {a}?", "Express {v} {a} in {b}.", "{v} {a} = ? {b}"];
    let mut rng = SplitMix64(20261126);
    let example = |rng: &mut SplitMix64, id: String| {
        let (a, b, f) = UNITS[rng.below(UNITS.len() as u64) as usize];
        let v = 1 + rng.below(99);
        let phrase = PHRASES[rng.below(PHRASES.len() as u64) as usize];
        let prompt = phrase.replace("{v}", &v.to_string()).replace("{a}", a).replace("{b}", b);
        let answer = format!("{} {b}", v as f64 * f);
        format!("{{\"id\":\"{id}\",\"prompt\":\"{prompt}\",\"response\":\"{answer}\",\"tags\":[\"{a}-to-{b}\"]}}")
    };
    let dir = root().join("examples/pipelines/unit-conversion/data");
    std::fs::create_dir_all(&dir)?;
    let mut train = Vec::new();
    for i in 0..600 {
        let line = example(&mut rng, format!("train-{i}"));
        train.push(line.clone());
        // Realistic noise for the recipe to clean: repeats, spacing and case variants, and
        // records a scraper might produce.
        match rng.below(20) {
            0 | 1 => train.push(line.replace(&format!("train-{i}"), &format!("train-{i}-dup"))),
            2 => train.push(
                line.replace(&format!("train-{i}"), &format!("train-{i}-var"))
                    .replace("Convert", "convert ")
                    .replace("?", " ?"),
            ),
            3 => train.push(format!("{{\"id\":\"train-{i}-bad\",\"prompt\":\"Convert it.\"}}")),
            4 => train.push(format!(
                "{{\"id\":\"train-{i}-long\",\"prompt\":\"{}\",\"response\":\"?\"}}",
                "Please help me with this conversion. ".repeat(40)
            )),
            _ => {}
        }
    }
    // Validation and test share no prompt (compared normalized, so the spacing and case
    // variants above count) with the training split or with each other.
    let prompt_of = |line: &str| {
        line.split("\"prompt\":\"").nth(1).and_then(|r| r.split('"').next()).map(tasks::normalized).unwrap_or_default()
    };
    let mut seen: std::collections::BTreeSet<String> = train.iter().map(|l| prompt_of(l)).collect();
    let mut fresh = |n: usize, prefix: &str, rng: &mut SplitMix64| {
        let mut out = Vec::new();
        while out.len() < n {
            let line = example(rng, format!("{prefix}-{}", out.len()));
            if seen.insert(prompt_of(&line)) {
                out.push(line);
            }
        }
        out
    };
    let validation = fresh(150, "val", &mut rng);
    let test = fresh(100, "test", &mut rng);
    std::fs::write(dir.join("train.jsonl"), train.join("\n") + "\n")?;
    std::fs::write(dir.join("validation.jsonl"), validation.join("\n") + "\n")?;
    std::fs::write(dir.join("test.jsonl"), test.join("\n") + "\n")?;
    eprintln!(
        "wrote {} train, {} validation and {} test records to {}",
        train.len(),
        validation.len(),
        test.len(),
        dir.display()
    );
    Ok(())
}
