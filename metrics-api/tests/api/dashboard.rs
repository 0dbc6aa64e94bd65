//! `make run` in a browser: scripts/run.sh starts the three services and the demo traffic, and
//! the dashboard URL it prints, opened in headless Chromium, draws that traffic.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeDelta, Utc};

use crate::helpers::{free_port, unique, Api, World};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Every binary run.sh starts, built if they are not yet.
fn build_binaries() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--bins"])
        .args([
            "-p",
            "ingestion-api",
            "-p",
            "metrics-processor",
            "-p",
            "metrics-api",
        ])
        .args(["-p", "admin", "-p", "loadgen"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cannot build the services");
    target_dir().join("debug")
}

fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: `make test` installs Debian's chromium (scripts/chromium.sh), or set CHROMIUM"
    );
    path
}

/// Headless Chromium on `url` with the flags a closed network needs; `what` is `--dump-dom`
/// or `--screenshot=...`. Virtual time lets the page's fetches finish before it is read.
fn browse(url: &str, what: &str) -> String {
    let profile = std::env::temp_dir().join(unique("chromium-"));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1250",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(what)
        .arg(url)
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `name="..."` in a tag's text.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    tag[start..].split('"').next()
}

/// Chart id -> (series name, points drawn) of every line in it, read from the page's DOM.
fn charts(dom: &str) -> Vec<(String, Vec<(String, u64)>)> {
    let mut out = Vec::new();
    for svg in dom.split("<svg").skip(1) {
        let svg = svg.split("</svg>").next().unwrap_or_default();
        let head = svg.split('>').next().unwrap_or_default();
        let Some(id) = attribute(head, "data-chart") else {
            continue;
        };
        let lines = svg
            .split("<path")
            .skip(1)
            .filter_map(|p| {
                let tag = p.split('>').next()?;
                Some((
                    attribute(tag, "data-series")?.to_owned(),
                    attribute(tag, "data-points")?.parse().ok()?,
                ))
            })
            .collect();
        out.push((id.to_owned(), lines));
    }
    out
}

/// scripts/run.sh with its own database, topics, group and ports; killed if the test fails.
struct Run {
    child: Child,
}

/// The processes of process group `group` (`pid pgid elapsed command`).
fn group_processes(group: u32) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid=,pgid=,etime=,args="])
        .output()
        .expect("ps runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(group.to_string().as_str()))
        .map(|l| l.trim().to_owned())
        .collect()
}

impl Drop for Run {
    /// The whole process group: killing the script alone would leave its services running.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn make_run_serves_a_dashboard_that_draws_the_demo_traffic_and_stops_on_ctrl_c() {
    let world = World::new().await;
    world.ensure_topics().await;
    // A database of its own: the demo tenants' keys and windows stay out of everyone else's.
    let database = unique("dash_");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&world.pool)
        .await
        .unwrap();
    let base_dsn = test_support::database_url();
    let dsn = format!("{}/{database}", &base_dsn[..base_dsn.rfind('/').unwrap()]);
    let bin = build_binaries();
    let (ingestion, processor, query) = (free_port(), free_port(), free_port());
    let topics = world.topics();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/run.sh");
    // With SIGINT at its default, as a terminal starts it: a shell that finds SIGINT ignored
    // when it starts (it is, when this test binary runs tests beside this one) cannot trap it.
    let child = Command::new("env")
        .args(["--default-signal=INT", "bash"])
        .arg(script)
        .envs([
            ("BIN_DIR", bin.display().to_string()),
            ("INGESTION_PORT", ingestion.to_string()),
            ("PROCESSOR_PORT", processor.to_string()),
            ("QUERY_PORT", query.to_string()),
            ("OTLP_GRPC_PORT", free_port().to_string()),
            ("KAFKA_BROKERS", world.brokers().to_owned()),
            ("POSTGRES_DSN", dsn.clone()),
            ("TOPIC_REQUESTS", topics[0].clone()),
            ("TOPIC_RESPONSES", topics[1].clone()),
            ("TOPIC_METRICS", topics[2].clone()),
            ("TOPIC_DLQ", topics[3].clone()),
            ("TOPIC_PARTITIONS", "3".into()),
            ("CONSUMER_GROUP", unique("dashboard-")),
            ("DEMO_RATE", "40".into()),
            ("DEMO_BACKFILL_MINUTES", "15".into()),
            ("RUST_LOG", "warn".into()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("run.sh starts");
    let mut run = Run { child };
    // Read all along: the services write to the same pipe, and a pipe nobody reads fills up
    // and blocks whoever writes next (the script itself, or a service's log line).
    let stdout = BufReader::new(run.child.stdout.take().unwrap()).lines();
    let (tx, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // What run.sh prints is what a newcomer clicks: the dashboard URL with a ready key.
    let url = loop {
        let line = output
            .recv_timeout(Duration::from_secs(300))
            .expect("run.sh printed no dashboard URL");
        if let Some(url) = line.trim().strip_prefix("dashboard") {
            break url.trim().to_owned();
        }
    };
    let key = url.split("#key=").nth(1).expect("the URL carries a key");
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{query}/")),
        "{url}"
    );

    // The demo's history reaches the API: windows of several models over several minutes.
    let api = Api {
        base: format!("http://127.0.0.1:{query}"),
        client: reqwest::Client::new(),
    };
    let from = (Utc::now() - TimeDelta::minutes(55)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let by_model = format!("/v1/metrics?group_by=model&granularity=1h&from={from}");
    let by_minute = format!("/v1/metrics?group_by=tenant&from={from}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let models: Vec<String> = loop {
        let (status, body) = api.get(&by_model, Some(key)).await;
        assert_eq!(status, 200, "{body}");
        let models: Vec<String> = body["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["model"].as_str().map(String::from))
            .collect();
        let (_, minutes) = api.get(&by_minute, Some(key)).await;
        if models.len() >= 3 && minutes["count"].as_u64() >= Some(6) {
            break models;
        }
        assert!(
            Instant::now() < deadline,
            "no windows of the demo traffic: {body} {minutes}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (_, summary) = api.get("/v1/summary", Some(key)).await;
    assert_eq!(summary["tenant_id"], "acme");
    // The demo's rule fires on the demo's 3% of failures; its two objectives are there.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, rules) = api.get("/v1/alerts/rules", Some(key)).await;
        if rules["rules"][0]["state"] == "firing" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo rule never fired: {rules}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, slos) = api.get("/v1/slos", Some(key)).await;
    assert_eq!(slos["slos"].as_array().map(Vec::len), Some(2), "{slos}");

    let dom = browse(&url, "--dump-dom");
    assert!(
        dom.contains("Tenant acme"),
        "the status line names the tenant: {dom}"
    );
    assert!(!dom.contains("Could not load"), "{dom}");
    // Above the tiles, the firing rule and each objective's budget.
    assert!(
        dom.contains("Firing: errors over 2%"),
        "the firing rule is shown: {dom}"
    );
    assert_eq!(dom.matches("data-slo=").count(), 2, "{dom}");
    assert!(dom.contains("of the 30-day budget left"), "{dom}");
    // Below the tiles, what the totals are made of: the demo names its providers.
    let detail = |id: &str| {
        let at = dom
            .find(&format!("data-detail=\"{id}\""))
            .map(|i| &dom[i..]);
        at.map(|rest| rest[..rest.find("</p>").unwrap_or(rest.len())].to_owned())
    };
    let providers = detail("providers").unwrap_or_else(|| panic!("no providers line: {dom}"));
    assert!(providers.contains("openai"), "{providers}");
    assert!(
        detail("tokens").is_some_and(|t| t.contains("reasoning")),
        "{dom}"
    );
    let drawn = charts(&dom);
    let ids: Vec<&str> = drawn.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "requests",
            "error-rate",
            "timeout-rate",
            "latency",
            "latency-p95",
            "tokens",
            "cost"
        ]
    );
    let mut expected = models.clone();
    expected.sort();
    expected.dedup();
    for (id, lines) in &drawn {
        let mut names: Vec<String> = lines.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        if id == "latency" {
            assert_eq!(names, ["p50", "p95", "p99"], "{lines:?}");
        } else {
            assert_eq!(names, expected, "chart {id} draws one line per model");
        }
        assert!(
            lines.iter().all(|(_, points)| *points >= 5),
            "chart {id} draws lines over the minutes: {lines:?}"
        );
    }

    let shot = target_dir().join("artifacts/dashboard.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    browse(&url, &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).expect("chromium saved the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    println!("dashboard screenshot: {}", shot.display());

    // The 30-day range: daily buckets from the roll-ups, the same charts, the same models.
    let month = browse(&format!("{url}&range=43200"), "--dump-dom");
    assert!(!month.contains("Could not load"), "{month}");
    assert!(
        month.contains("step 1d"),
        "30 days are drawn in daily steps: {month}"
    );
    let drawn = charts(&month);
    assert_eq!(drawn.len(), 7, "{month}");
    let lines = &drawn
        .iter()
        .find(|(id, _)| id == "requests")
        .expect("requests")
        .1;
    let mut names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, expected, "one line per model over 30 days");

    // Ctrl-C, as a terminal sends it (SIGINT to the whole foreground process group), stops
    // everything run.sh started: the script waits for each of its services, so once it has
    // exited and said so, none is left in its group.
    let pid = run.child.id();
    assert!(Command::new("kill")
        .args(["-INT", "--", &format!("-{pid}")])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "run.sh did not exit within 30 s of Ctrl-C; its process group:\n{}",
            group_processes(pid).join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its last words (a service's last output may come before them).
    let stopped = std::iter::from_fn(|| output.recv_timeout(Duration::from_secs(5)).ok())
        .any(|l| l == "StreamLens stopped.");
    assert!(stopped, "run.sh did not say it had stopped everything");
    let left = group_processes(pid);
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    for port in [ingestion, processor, query] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers after Ctrl-C"
        );
    }
    drop(run);
    let _ = sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&world.pool)
        .await;
}
