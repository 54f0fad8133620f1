//! `trex-host ui`: a read-only local web server that shows runs live while searches write them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use super::report::load_runs;
use crate::html;

/// Watch runs in the browser: the tree, each node's detail, the budget and best-so-far curves,
/// updated as the journals grow (no reload).
///
/// It serves only the pages it renders from the given run folders, never a file by its path,
/// and it writes nothing. Press Ctrl-C to stop it.
///
/// Examples:
///
///   trex-host ui runs/unit-conversion-mcts-s0-1764640000
///
///   trex-host ui runs/a runs/b --bind 127.0.0.1:9000     # two runs side by side
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct UiCommand {
    /// Run folders (each holds a journal.jsonl; a search may still be writing it).
    #[arg(required = true)]
    run_dirs: Vec<PathBuf>,
    /// Address to listen on (port 0 picks a free one). Anything but loopback exposes the runs'
    /// prompts, answers and recipes to the network.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: String,
}

/// The policy of the live page: its one script comes from this server, and so does what it
/// fetches; nothing inline runs.
pub const LIVE_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

/// How often the journals are looked at.
const POLL: Duration = Duration::from_millis(400);
/// A comment line on an idle event stream, so proxies and browsers keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The live page's script: on each change event, fetch the page's content again and swap it in
/// (it is server-rendered and escaped), keeping the open node's detail open.
const LIVE_JS: &str = r#"// trex ui: follow the runs' journals.
(function () {
  const page = document.getElementById('page');
  function reopen() {
    const id = decodeURIComponent(location.hash.slice(1));
    document.querySelectorAll('.node-detail.open').forEach(function (e) { e.classList.remove('open'); });
    const el = id && document.getElementById(id);
    if (el) el.classList.add('open');
  }
  window.addEventListener('hashchange', reopen);
  const events = new EventSource('/events');
  events.onmessage = function () {
    fetch('/body', { cache: 'no-store' }).then(function (r) {
      if (!r.ok) return;
      return r.text().then(function (html) {
        page.innerHTML = html;
        page.dataset.updated = String(Date.now());
        reopen();
      });
    });
  };
  reopen();
})();
"#;

impl UiCommand {
    /// Run it (until interrupted).
    pub fn execute(self) -> Result<ExitCode> {
        // Refuse what is not a run before listening.
        load_runs(&self.run_dirs)?;
        let listener = TcpListener::bind(&self.bind)
            .with_context(|| format!("cannot listen on {} (choose another with --bind HOST:PORT)", self.bind))?;
        let addr = listener.local_addr()?;
        println!("trex ui: http://{addr}/ (showing {} run(s); Ctrl-C to stop)", self.run_dirs.len());
        std::io::stdout().flush()?;
        let dirs = std::sync::Arc::new(self.run_dirs);
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let dirs = dirs.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &dirs);
            });
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Answer one connection (one request; the event stream holds it open).
fn serve(mut stream: TcpStream, dirs: &[PathBuf]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.by_ref().take(8192).read_line(&mut request_line)?;
    // The headers are read and ignored (up to 32 KiB).
    let mut seen = 0usize;
    loop {
        let mut line = String::new();
        let n = reader.by_ref().take(8192).read_line(&mut line)?;
        seen += n;
        if n == 0 || line == "\r\n" || line == "\n" || seen > 32 << 10 {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain; charset=utf-8", b"read-only: GET only\n");
    }
    match path {
        "/" => match load_runs(dirs) {
            Ok(runs) => {
                let page = html::render_with(&runs, LIVE_POLICY, "<script src=\"/live.js\" defer></script>");
                respond(&mut stream, "200 OK", "text/html; charset=utf-8", page.as_bytes())
            }
            Err(e) => failed(&mut stream, &e),
        },
        "/body" => match load_runs(dirs) {
            Ok(runs) => respond(&mut stream, "200 OK", "text/html; charset=utf-8", html::body(&runs).as_bytes()),
            Err(e) => failed(&mut stream, &e),
        },
        "/live.js" => respond(&mut stream, "200 OK", "text/javascript; charset=utf-8", LIVE_JS.as_bytes()),
        "/events" => events(stream, dirs),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain; charset=utf-8",
            b"not found: this server shows only its runs' pages\n",
        ),
    }
}

fn failed(stream: &mut TcpStream, e: &anyhow::Error) -> std::io::Result<()> {
    let text = trex_plugin_host::text::for_terminal(&format!("{e:#}"), 4000);
    respond(stream, "500 Internal Server Error", "text/plain; charset=utf-8", format!("{text}\n").as_bytes())
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nContent-Security-Policy: {LIVE_POLICY}\r\n\
         X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// What changes when a journal grows: its length and modification time, per run.
fn signature(dirs: &[PathBuf]) -> Vec<(u64, Option<SystemTime>)> {
    dirs.iter()
        .map(|d| match std::fs::metadata(trex_lab::journal::Journal::path_in(d)) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (0, None),
        })
        .collect()
}

/// Server-sent events: one `data: changed` whenever a journal changes, until the page goes.
fn events(mut stream: TcpStream, dirs: &[PathBuf]) -> std::io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: keep-alive\r\n\r\nretry: 1000\n\n",
    )?;
    stream.flush()?;
    let mut last = signature(dirs);
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(POLL);
        let now = signature(dirs);
        if now != last {
            last = now;
            stream.write_all(b"data: changed\n\n")?;
            stream.flush()?;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= KEEPALIVE {
            stream.write_all(b": keepalive\n\n")?;
            stream.flush()?;
            quiet_since = Instant::now();
        }
    }
}
