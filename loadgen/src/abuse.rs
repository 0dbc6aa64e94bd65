//! The abuse run: both HTTP APIs fuzzed from their OpenAPI documents (schemathesis), malformed
//! bodies and a slow client ([`malformed`]), and malformed records produced straight onto the
//! input topics ([`crate::poison`]). Expected: no 5xx, no crash, no stalled processor, every
//! rejection a 4xx with a JSON body that says why. Runs on topics and a database of its own.

mod malformed;
mod raw;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use crate::harness::{Run, Service, Services, Stack};

fn say(line: &str) {
    crate::harness::say("abuse", line);
}

#[derive(Debug, Args)]
pub struct AbuseArgs {
    /// Schemathesis examples per operation
    #[arg(long, env = "ABUSE_EXAMPLES", default_value_t = 200)]
    pub examples: u64,
    /// The schemathesis command (scripts/abuse.sh installs it into a venv of its own)
    #[arg(long, env = "SCHEMATHESIS", default_value = "schemathesis")]
    pub schemathesis: PathBuf,
    /// The folder of abuse_hooks.py, StreamLens's own schemathesis check
    #[arg(long, default_value = "scripts")]
    pub hooks: PathBuf,
    /// Where logs and reports go
    #[arg(long, env = "ABUSE_OUT", default_value = "target/abuse")]
    pub out: PathBuf,
    #[command(flatten)]
    pub stack: Stack,
}

pub async fn run(args: &AbuseArgs) -> anyhow::Result<Value> {
    let stack = &args.stack;
    let mut run = Run::new("abuse", "abuse", &stack.bin()?, &args.out, &stack.dsn).await?;
    let tag = format!("abuse-{}", chrono::Utc::now().timestamp());
    for (variable, value) in [
        ("KAFKA_DELIVERY_TIMEOUT_MS", "2000"),
        ("HTTP_REQUEST_TIMEOUT_MS", "5000"),
        ("API_KEY_CACHE_SECS", "0"),
        ("RATE_LIMIT_EVENTS_PER_SEC", "0"),
    ] {
        run.set(variable, value);
    }
    run.own_topics(&stack.brokers, &tag, 3).await?;
    let Services {
        key,
        mut ingestion,
        mut processor,
        mut query,
    } = run.all_services("acme").await?;

    let mut report = json!({"mode": "abuse"});
    let mut ok = true;
    for (name, service) in [("ingestion", &ingestion), ("metrics", &query)] {
        let passed = fuzz(args, &run, name, service, &key).await?;
        report["schemathesis"][name] = json!(passed);
        ok &= passed;
    }

    say("malformed bodies and a slow client");
    let malformed = malformed::run(ingestion.port, query.port, &key).await?;
    eprintln!("{malformed}");
    ok &= malformed["not_clear_4xx"]
        .as_array()
        .is_some_and(Vec::is_empty);
    report["malformed"] = malformed;

    say("malformed records straight onto the input topics");
    let poison = crate::poison::run(&crate::PoisonArgs {
        brokers: crate::Brokers {
            brokers: stack.brokers.clone(),
        },
        topic: tag,
    })
    .await?;
    let produced = poison["records"].as_f64().unwrap_or(0.0);
    let dead_letters = || processor.metric("streamlens_processor_dead_letters_total", "");
    for _ in 0..120 {
        if dead_letters().await.unwrap_or(0.0) >= produced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let counted = pair_after_poison(&run, &ingestion, &key).await?;
    let dead = dead_letters().await?;
    let alive = [&mut ingestion, &mut processor, &mut query]
        .into_iter()
        .all(|s| s.alive());
    say(&format!(
        "poison records: {produced} produced, {dead} dead letters; the pair after them counted: \
         {counted}; all services alive: {alive}"
    ));
    ok &= dead >= produced && counted == 1 && alive;
    report["poison"] = json!({"produced": produced, "dead_letters": dead,
        "pair_after_counted": counted, "services_alive": alive});

    // No 5xx anywhere, by the services' own counters.
    for (name, service) in [("ingestion", &ingestion), ("metrics", &query)] {
        let errors = service.metric("_http_requests_total", "status=\"5").await?;
        say(&format!("5xx answers counted by the {name} API: {errors}"));
        report["server_errors"][name] = json!(errors);
        ok &= errors == 0.0;
    }
    report["ok"] = json!(ok);
    Ok(report)
}

/// Schemathesis on one API's served document, with the checks that no answer is a 5xx and that
/// every rejection says why; whether it found nothing.
async fn fuzz(
    args: &AbuseArgs,
    run: &Run,
    name: &str,
    service: &Service,
    key: &str,
) -> anyhow::Result<bool> {
    say(&format!(
        "schemathesis on the {name} API, {} examples per operation",
        args.examples
    ));
    let log = run.file(&format!("schemathesis-{name}.txt"));
    let hooks = std::fs::canonicalize(&args.hooks)?;
    let output = tokio::process::Command::new(&args.schemathesis)
        .args(["run", &service.url("/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["--checks", "not_a_server_error,rejection_is_clear"])
        .args(["--max-examples", &args.examples.to_string()])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "20", "--workers", "1", "--no-color"])
        .env("PYTHONPATH", hooks)
        .env("SCHEMATHESIS_HOOKS", "abuse_hooks")
        .current_dir(log.parent().expect("in the output folder"))
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {}: {e}", args.schemathesis.display()))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    std::fs::write(&log, &text)?;
    let totals = text.lines().filter(|l| {
        ["test cases", "passed", "failed"]
            .iter()
            .any(|w| l.contains(w))
    });
    for line in totals.collect::<Vec<_>>().iter().rev().take(3).rev() {
        eprintln!("{line}");
    }
    if !output.status.success() {
        say(&format!(
            "schemathesis found problems in the {name} API: {}",
            log.display()
        ));
    }
    Ok(output.status.success())
}

/// The processor goes on after the poison: a pair posted after it is counted. How many
/// requests its window holds once it is written (within a minute).
async fn pair_after_poison(run: &Run, ingestion: &Service, key: &str) -> anyhow::Result<i64> {
    let at = (chrono::Utc::now() - chrono::TimeDelta::seconds(70))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let pair = json!([
        {"type": "request", "request_id": "after-poison", "tenant_id": "acme",
         "route": "/after-poison", "model": "m", "timestamp": at, "prompt_tokens": 1},
        {"type": "response", "request_id": "after-poison", "timestamp": at, "latency_ms": 5,
         "completion_tokens": 1, "finish_reason": "stop"},
    ]);
    let answer = reqwest::Client::new()
        .post(ingestion.url("/v1/llm/batch"))
        .bearer_auth(key)
        .json(&pair)
        .send()
        .await?;
    anyhow::ensure!(
        answer.status().is_success(),
        "the pair after the poison was refused: {}",
        answer.status()
    );
    let pool = infra::db::connect(&run.dsn, 1).await?;
    let mut counted = 0;
    for _ in 0..120 {
        counted = sqlx::query_scalar::<_, i64>(
            "SELECT COALESCE(SUM(requests), 0)::bigint FROM llm_metrics WHERE route = '/after-poison'",
        )
        .fetch_one(&pool)
        .await?;
        if counted == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(counted)
}
