//! `trex-host report` and `trex-host ui` on a real search of the tiny model whose Researcher
//! wrote markup into its rationale.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::search::{Fixture, QUICK, fixture, llm_section, llm_server_for_search, output, proposal, trex_host};
use trex_tests::llm_server::completion;

pub(crate) const XSS: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

/// A finished one-experiment search whose proposal's rationale is [`XSS`].
pub(crate) fn hostile_run() -> (Fixture, PathBuf, trex_tests::llm_server::Server) {
    trex_tests::build_plugins();
    let server = llm_server_for_search(vec![completion(&proposal(1e-2, "").replace("scripted", XSS), 100, 20)]);
    let f = fixture(40, QUICK, &llm_section(&server.base_url), trex_model::LlamaConfig::tiny());
    let run_dir = f.dir.path().join("run");
    let (ok, stdout, err) = output(
        trex_host(&f)
            .env("TREX_TEST_LLM_KEY", "k")
            .args(["search", "--nodes", "1", "--run-dir"])
            .arg(&run_dir)
            .arg(&f.task),
    );
    assert!(ok, "{stdout}{err}");
    (f, run_dir, server)
}

fn assert_markup_is_text(page: &str) {
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"),
        "the rationale is shown, as text"
    );
    assert!(
        !page.contains("<img") && !page.contains("alert(1)</script>"),
        "no markup of the Researcher's gets through"
    );
}

#[test]
fn report_writes_one_offline_page_with_the_tree_and_every_node_escaped() {
    let (f, run_dir, _server) = hostile_run();
    let out = f.dir.path().join("report.html");
    let (ok, stdout, err) = output(trex_host(&f).arg("report").arg(&run_dir).arg("--out").arg(&out));
    assert!(ok && stdout.contains("wrote"), "{stdout}{err}");
    let page = std::fs::read_to_string(&out).unwrap();
    assert_markup_is_text(&page);
    assert!(!page.contains("<script"), "a report runs no script");
    assert!(page.contains("Content-Security-Policy") && page.contains("default-src &#39;none&#39;"), "strict policy");
    assert!(!page.contains("http://") && !page.contains("https://"), "nothing loads from the network");
    // The tree links to both nodes' details; the chosen one is open by default.
    for id in [0, 1] {
        assert!(page.contains(&format!("href=\"#r0n{id}\"")) && page.contains(&format!("id=\"r0n{id}\"")), "node {id}");
    }
    assert!(page.contains("<svg class=\"tree\""));
    assert!(page.contains("training loss by step"), "the loss curve of the trained node");
    assert!(page.contains("First validation answers"), "its answers with their verdicts");
    // Several runs: a comparison first.
    let (ok, _, err) = output(trex_host(&f).arg("report").arg(&run_dir).arg(&run_dir).arg("--out").arg(&out));
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&out).unwrap().contains("Runs side by side"));
    // A folder that is not a run says so.
    let (ok, _, err) = output(trex_host(&f).arg("report").arg(f.dir.path().join("nope")));
    assert!(!ok && err.contains("a trex run folder"), "{err}");
}

/// `trex-host ui` on `run_dir`, and the address it printed.
pub(crate) fn start_ui(f: &Fixture, run_dir: &Path) -> (Child, String) {
    let mut child = trex_host(f)
        .args(["ui", "--bind", "127.0.0.1:0"])
        .arg(run_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_else(|| panic!("{line}"));
    (child, addr.to_string())
}

/// One request; the status line, the headers and the body.
fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The journal's `created` line for node 1, renumbered as node `id`: a node that appears.
pub(crate) fn created_line(run_dir: &Path, id: u64) -> String {
    let journal = std::fs::read_to_string(run_dir.join("journal.jsonl")).unwrap();
    let line = journal.lines().find(|l| l.contains("\"event\":\"created\"") && l.contains("\"node\":1")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["node"] = id.into();
    format!("{v}\n")
}

/// Append `bytes` to `run_dir`'s journal, as a search writing it would.
pub(crate) fn append_to_journal(run_dir: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new().append(true).open(run_dir.join("journal.jsonl")).unwrap().write_all(bytes).unwrap();
}

#[test]
fn ui_serves_the_page_and_follows_the_journal_as_it_grows() {
    let (f, run_dir, _server) = hostile_run();
    let (mut child, addr) = start_ui(&f, &run_dir);
    let (status, headers, page) = get(&addr, "/");
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("Content-Security-Policy: default-src 'none'; script-src 'self'"), "{headers}");
    assert!(page.contains("<script src=\"/live.js\" defer></script>"), "the one script, from the server");
    assert_markup_is_text(&page);
    assert!(get(&addr, "/live.js").2.contains("EventSource('/events')"));
    // Only its pages: no file by its path, no traversal, no writes.
    for path in ["/../../../../etc/passwd", "/journal.jsonl", "/nodes/1/evaluation.jsonl", "/%2e%2e/%2e%2e/etc/passwd"]
    {
        let (status, _, body) = get(&addr, path);
        assert!(status.contains("404") && !body.contains("root:"), "{path}: {status}");
    }
    let mut post = TcpStream::connect(&addr).unwrap();
    write!(post, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut reply = String::new();
    post.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    // The event stream says when the journal grows, and the page's content then has the node.
    let mut events = TcpStream::connect(&addr).unwrap();
    write!(events, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    events.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut events = BufReader::new(events);
    let mut line = String::new();
    while line != "\r\n" {
        line.clear();
        events.read_line(&mut line).unwrap();
    }
    assert!(!get(&addr, "/body").2.contains("id=\"r0n2\""));
    append_to_journal(&run_dir, created_line(&run_dir, 2).as_bytes());
    let started = Instant::now();
    loop {
        line.clear();
        events.read_line(&mut line).expect("an event within 10 s");
        if line.starts_with("data: changed") {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let body = get(&addr, "/body").2;
    assert!(body.contains("id=\"r0n2\"") && body.contains(">pending<"), "the new node appears, pending");
    // A torn last line (a search killed mid-write) is left out; the page shows what is whole.
    append_to_journal(&run_dir, b"{\"t\":9,\"event\":\"crea");
    let (status, _, body) = get(&addr, "/body");
    assert!(status.contains("200") && body.contains("id=\"r0n2\""), "{status}");
    child.kill().unwrap();
    child.wait().unwrap();
    // A folder that is not a run is refused before the server starts.
    let (ok, _, err) = output(trex_host(&f).args(["ui", "--bind", "127.0.0.1:0"]).arg(f.dir.path().join("nope")));
    assert!(!ok && err.contains("a trex run folder"), "{err}");
}
