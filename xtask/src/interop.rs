//! `cargo xtask interop`: the LLM client and the `llm` plugins against real OpenAI-compatible
//! servers serving the SmolLM2-135M-Instruct GGUF on loopback: `trex-host serve`, and
//! llama-cpp-python's server.
//!
//! llama-cpp-python is installed once into a cached virtual environment
//! (`$TREX_CACHE_DIR/venvs/llama-cpp-python-<version>-avx2`, built from source: about 15 minutes on
//! two cores), started on a free port, and stopped when the tests end, whatever happens.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, python, root, run};

/// The server trex is tested against.
pub const LLAMA_CPP_PYTHON: &str = "0.3.36";

/// The virtual environment's python, when the server is installed there.
pub fn installed() -> Option<PathBuf> {
    let py = venv().join("bin/python");
    let ok = Command::new(&py).args(["-c", "import llama_cpp, llama_cpp.server"]).output();
    ok.is_ok_and(|o| o.status.success()).then_some(py)
}

/// How llama.cpp is built: for AVX2, not for the build machine. A native build turns on AMX
/// where the CPU reports it, and on virtual machines that report AMX without granting it every
/// batched decode crashes the server.
const CMAKE_ARGS: &str = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF";

fn venv() -> PathBuf {
    trex_assets::cache_dir().join("venvs").join(format!("llama-cpp-python-{LLAMA_CPP_PYTHON}-avx2"))
}

/// Install the server into the cached environment unless it is there; its python.
fn install() -> Result<PathBuf> {
    if let Some(py) = installed() {
        return Ok(py);
    }
    let dir = venv();
    eprintln!(
        "installing llama-cpp-python {LLAMA_CPP_PYTHON} into {} (builds llama.cpp: about 15 minutes on 2 cores)",
        dir.display()
    );
    std::fs::create_dir_all(dir.parent().expect("the venv has a parent"))?;
    run(Command::new(python()?).args(["-m", "venv"]).arg(&dir))?;
    let pip = dir.join("bin/pip");
    // `--no-cache-dir`: a wheel pip built earlier with other CMAKE_ARGS must not be reused.
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get()).to_string();
    run(Command::new(&pip).env("CMAKE_BUILD_PARALLEL_LEVEL", &jobs).env("CMAKE_ARGS", CMAKE_ARGS).args([
        "install",
        "--quiet",
        "--no-cache-dir",
        &format!("llama-cpp-python[server]=={LLAMA_CPP_PYTHON}"),
    ]))?;
    installed().context("llama-cpp-python installed, but `import llama_cpp.server` fails")
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `port` answers HTTP at `/v1/models`.
fn answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = "GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
    let mut reply = String::new();
    s.write_all(req.as_bytes()).is_ok() && s.read_to_string(&mut reply).is_ok() && reply.starts_with("HTTP/1.1 200")
}

/// The servers the interop tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Against {
    /// `trex-host serve` (built from this tree; nothing to install).
    Trex,
    /// llama-cpp-python's server (installed once into a cached virtual environment).
    LlamaCpp,
}

impl Against {
    /// From `--server NAME`.
    pub fn from_name(name: &str) -> Result<Against> {
        match name {
            "trex" => Ok(Against::Trex),
            "llama-cpp-python" => Ok(Against::LlamaCpp),
            other => bail!("--server `{other}`: choose trex or llama-cpp-python"),
        }
    }
}

/// `cargo xtask interop [--server trex|llama-cpp-python]`: both servers unless one is named.
pub fn command(args: &[String]) -> Result<()> {
    match args {
        [] => interop(&[Against::Trex, Against::LlamaCpp]),
        [flag, name] if flag == "--server" => interop(&[Against::from_name(name)?]),
        _ => bail!("usage: cargo xtask interop [--server trex|llama-cpp-python]"),
    }
}

/// The SmolLM2 GGUF, fetched into the cache by trex itself.
fn smollm2() -> Result<String> {
    let out = Command::new(crate::cargo_bin())
        .current_dir(root())
        .args(["run", "--quiet", "-p", "trex-cli", "--bin", "trex-host", "--", "fetch", "smollm2"])
        .output()
        .context("cannot run trex-host fetch")?;
    if !out.status.success() {
        bail!("trex-host fetch smollm2 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Start each server in turn on the SmolLM2 GGUF (served as `smollm2`), run the interop tests
/// against it, and stop it.
pub fn interop(servers: &[Against]) -> Result<()> {
    crate::build_plugins()?;
    let model = smollm2()?;
    for &against in servers {
        let port = free_port()?;
        let log_path = root().join(format!("target/interop-server-{port}.log"));
        let log = std::fs::File::create(&log_path)?;
        let (mut command, name) = match against {
            Against::LlamaCpp => {
                let mut c = Command::new(install()?);
                c.args(["-m", "llama_cpp.server", "--model", &model, "--host", "127.0.0.1"]).args([
                    "--port",
                    &port.to_string(),
                    "--model_alias",
                    "smollm2",
                    "--n_ctx",
                    "4096",
                ]);
                (c, format!("llama-cpp-python {LLAMA_CPP_PYTHON}"))
            }
            Against::Trex => {
                // Release: the Researcher asks for long constrained replies, and a debug build
                // decodes SmolLM2 several times slower.
                run(cargo().current_dir(root()).args([
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    "trex-cli",
                    "--bin",
                    "trex-host",
                ]))?;
                let mut c = Command::new(root().join("target/release/trex-host"));
                c.args(["serve", "--model", &model, "--name", "smollm2", "--bind", &format!("127.0.0.1:{port}")]);
                (c, "trex-host serve".to_string())
            }
        };
        let server = Server(
            command.stdout(log.try_clone()?).stderr(log).spawn().with_context(|| format!("cannot start {name}"))?,
        );
        let started = Instant::now();
        while !answers(port) {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("{name} did not answer within 120 s (see {})", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("{name} serving {model} on port {port}");
        let result = run(cargo()
            .current_dir(root())
            .env("TREX_INTEROP_BASE_URL", format!("http://127.0.0.1:{port}/v1"))
            .env("TREX_INTEROP_MODEL", "smollm2")
            .env("TREX_INTEROP_SERVER", &name)
            .args([
                "test",
                "-p",
                "trex-cli",
                "--test",
                "it",
                "--",
                "interop",
                "--include-ignored",
                "--test-threads",
                "1",
            ]));
        drop(server);
        result.with_context(|| format!("the interop tests against {name} (its log: {})", log_path.display()))?;
    }
    Ok(())
}
