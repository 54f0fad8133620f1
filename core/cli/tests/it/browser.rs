//! `trex-host ui` in a real headless Chromium, driven through WebDriver: click a node, watch a
//! node appear as the journal grows (no reload), and see that a hostile rationale is text.
//!
//! It needs Debian's `chromium` and `chromium-driver` (`cargo xtask ci` installs them). Without
//! them it skips loudly, unless `TREX_REQUIRE_BROWSER` is set, as CI sets it, where it fails.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

use crate::ui::{XSS, append_to_journal, created_line, hostile_run, start_ui};

/// The first of `names` found on `PATH` (or the path in `env`, when set).
fn program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|d| names.iter().map(move |n| d.join(n))).find(|p| p.is_file())
}

/// A process that is killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// ChromeDriver on a free loopback port, once it accepts connections.
fn start_chromedriver(driver: &PathBuf) -> (Killed, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
    let child = Killed(child);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{} did not listen on port {port}", driver.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, port)
}

#[test]
fn chromium_shows_the_tree_opens_a_node_and_follows_the_journal_without_a_reload() {
    let Some(driver) = program("TREX_CHROMEDRIVER", &["chromedriver"]) else {
        assert!(
            std::env::var_os("TREX_REQUIRE_BROWSER").is_none(),
            "chromedriver not found: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver), or set TREX_CHROMEDRIVER"
        );
        eprintln!(
            "\n*** SKIPPED: the browser test (no chromedriver on PATH: apt-get install chromium chromium-driver) ***\n"
        );
        return;
    };
    let (f, run_dir, _server) = hostile_run();
    let (ui, addr) = start_ui(&f, &run_dir);
    let _ui = Killed(ui);
    let (_driver, port) = start_chromedriver(&driver);

    let mut options = json!({ "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"] });
    if let Some(chromium) = program("TREX_CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]) {
        options["binary"] = json!(chromium);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session in headless Chromium");
        c.goto(&format!("http://{addr}/")).await.unwrap();

        // The Researcher's markup is shown as text, and none of it ran.
        let rationale = c.find(Locator::Css("#r0n1 q.rationale")).await.unwrap();
        assert_eq!(rationale.prop("textContent").await.unwrap().as_deref().map(|t| t.contains(XSS)), Some(true));
        assert!(c.find_all(Locator::Css("#page img")).await.unwrap().is_empty(), "no <img> of the rationale's");
        let alert = c.get_alert_text().await;
        assert!(alert.as_ref().is_err_and(|e| e.is_no_such_alert()), "a script of the rationale's ran: {alert:?}");
        // The page's own script did run (it marks each update), so the policy let it load.
        assert_eq!(c.execute("return typeof EventSource", vec![]).await.unwrap(), json!("function"));

        // The chosen node's detail shows by default; clicking the other node in the tree opens
        // its own instead.
        let chosen = c.find(Locator::Css(".node-detail.chosen")).await.unwrap();
        let chosen_id = chosen.attr("id").await.unwrap().unwrap();
        let other_id = if chosen_id == "r0n1" { "r0n0" } else { "r0n1" };
        let other = c.find(Locator::Id(other_id)).await.unwrap();
        assert!(chosen.is_displayed().await.unwrap() && !other.is_displayed().await.unwrap(), "{chosen_id} only");
        c.find(Locator::Css(&format!("svg.tree a[href='#{other_id}']"))).await.unwrap().click().await.unwrap();
        assert!(other.is_displayed().await.unwrap(), "the clicked node's detail opens");
        let heading = other.find(Locator::Css("h2")).await.unwrap().text().await.unwrap();
        assert!(heading.starts_with(&format!("#{}", &other_id[3..])), "{heading}");
        assert!(!chosen.is_displayed().await.unwrap(), "one detail at a time");

        // A node appended to the journal appears within seconds, with no reload: a value set on
        // the window survives, and the open detail stays open.
        c.execute("window.trexMarker = 42", vec![]).await.unwrap();
        assert!(c.find_all(Locator::Css("svg.tree a[href='#r0n2']")).await.unwrap().is_empty());
        append_to_journal(&run_dir, created_line(&run_dir, 2).as_bytes());
        let node = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("svg.tree a[href='#r0n2']"))
            .await
            .expect("the new node in the tree within 10 s");
        assert!(node.attr("class").await.unwrap().unwrap_or_default().contains("pending"), "shown as pending");
        assert_eq!(
            c.execute("return window.trexMarker", vec![]).await.unwrap(),
            json!(42),
            "the page was not reloaded"
        );
        assert!(
            c.find(Locator::Id(other_id)).await.unwrap().is_displayed().await.unwrap(),
            "the open detail stays open"
        );
        // The new node's detail opens from the updated tree too.
        node.click().await.unwrap();
        assert!(c.find(Locator::Id("r0n2")).await.unwrap().text().await.unwrap().contains("pending"));
        c.close().await.unwrap();
    });
}
