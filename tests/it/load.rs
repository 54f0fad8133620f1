//! Load: many records through a real pipeline (chat-format, filter-length, dedup-exact), with
//! 1% malformed records under the default `on_bad_record = "skip"`, planted long prompts and
//! planted repeats. Every count must add up: what each step dropped, by reason, is exactly what
//! was planted, and records in = records out + dropped at every step.
//!
//! CI runs `TREX_LOAD_RECORDS` records (default 20 000); `cargo xtask load --records N` runs
//! more and prints the table (records, seconds, peak resident memory).

use std::io::Write;
use std::time::Instant;

use trex_plugin_host::PluginHost;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_dataset_with_malformed_records_under_skip_adds_up() {
    let n: u64 = std::env::var("TREX_LOAD_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (mut malformed, mut long, mut repeats) = (0u64, 0u64, 0u64);
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(data.join("train.jsonl")).unwrap());
        for i in 0..n {
            let line = match (i % 100, i % 200) {
                // 1% malformed: a quarter without a response, the rest with a number where text belongs.
                (7, _) if i % 400 == 7 => {
                    malformed += 1;
                    serde_json::json!({"id": format!("r{i}"), "prompt": format!("convert {i} m to cm")})
                }
                (7, _) => {
                    malformed += 1;
                    serde_json::json!({"id": format!("r{i}"), "prompt": format!("convert {i} m to cm"), "response": i})
                }
                (_, 13) => {
                    long += 1;
                    serde_json::json!({"id": format!("r{i}"), "prompt": format!("convert {i} m to cm {}", "please ".repeat(80)),
                        "response": format!("{} cm", i * 100)})
                }
                // A repeat of the record before it (which is well formed), under another id.
                (_, 101) => {
                    repeats += 1;
                    serde_json::json!({"id": format!("r{i}"), "prompt": format!("convert {} m to cm", i - 1),
                        "response": format!("{} cm", (i - 1) * 100)})
                }
                _ => serde_json::json!({"id": format!("r{i}"), "prompt": format!("convert {i} m to cm"),
                    "response": format!("{} cm", i * 100)}),
            };
            writeln!(f, "{line}").unwrap();
        }
    }
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "name = \"load\"\ndataset_dir = \"data\"\ninput = \"train.jsonl\"\n\
         [[steps]]\nplugin = \"chat-format\"\nconfig = { template = \"chatml\" }\n\
         [[steps]]\nplugin = \"filter-length\"\nconfig = { max = 400, unit = \"chars\", fields = [\"prompt_text\"] }\n\
         [[steps]]\nplugin = \"dedup-exact\"\nconfig = { fields = [\"messages\", \"completion\"], normalize = true }\n",
    )
    .unwrap();
    let plugins = trex_tests::standard_plugins(dir.path());
    let host = PluginHost::discover(&plugins, crate::test_config(dir.path().join("s"))).await.unwrap();
    let started = Instant::now();
    let report = trex_lab::pipeline::Pipeline::load(&pipeline)
        .unwrap()
        .run(&host, &dir.path().join("out"), |_, _, _| {})
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(report.input_records, n);
    let mut records_in = n;
    for (step, planted) in report.steps.iter().zip([malformed, long, repeats]) {
        let run = &step.run;
        let dropped: u64 = run.dropped.values().sum();
        assert_eq!(run.records_in, records_in, "{}: it was given what the step before wrote", step.plugin);
        assert_eq!(run.records_in, run.records_out + dropped, "{}: in = out + dropped {:?}", step.plugin, run.dropped);
        assert_eq!(dropped, planted, "{}: it dropped exactly what was planted for it {:?}", step.plugin, run.dropped);
        records_in = run.records_out;
    }
    let written = std::fs::read_to_string(&report.output).unwrap().lines().filter(|l| !l.is_empty()).count() as u64;
    assert_eq!(written, n - malformed - long - repeats, "the prepared file holds every record that survived");
    eprintln!("load: records, malformed, long, repeats, kept, seconds, records/s, peak RSS MiB");
    eprintln!(
        "  {n} {malformed} {long} {repeats} {written} {seconds:.1} {:.0} {:.0}",
        n as f64 / seconds,
        peak_rss_mib()
    );
}
