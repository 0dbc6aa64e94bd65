//! Fault runs: the oracle's stream posted through the ingestion API into the processor while
//! faults are injected, then every stored window and the last `llm.metrics` record of every
//! window compared with the oracle ([`crate::check`]). Each scenario runs on topics, a consumer
//! group and a database of its own on the local stack; scenarios with broker faults also run a
//! broker of their own that keeps its log in a SQLite file, so what it acknowledged survives
//! its restart. What each fault does is in [`inject`].

mod inject;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::harness::{free_port, port_open, Run, Service, Stack};

#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Scenarios to run, in order (default: each fault alone, then all of them in one run)
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,
    /// How long the stream is posted for, per scenario
    #[arg(long, env = "CHAOS_SECONDS", default_value_t = 180)]
    pub seconds: u64,
    /// Calls per second
    #[arg(long, env = "CHAOS_RATE", default_value_t = 100)]
    pub rate: u64,
    /// How long Postgres stays down
    #[arg(long, env = "CHAOS_PG_DOWN_SECS", default_value_t = 60)]
    pub pg_down_secs: u64,
    /// How long the broker stays away under load
    #[arg(long, env = "CHAOS_BROKER_DOWN_SECS", default_value_t = 30)]
    pub broker_down_secs: u64,
    /// A killed processor is restarted 0 to this many seconds later
    #[arg(long, env = "CHAOS_RESTART_MAX_SECS", default_value_t = 20)]
    pub restart_max_secs: u64,
    /// Seed of the fault timings, to run a failing timing again (default: from the clock)
    #[arg(long, env = "CHAOS_SEED")]
    pub seed: Option<u64>,
    /// Where logs, oracles and verdicts go
    #[arg(long, env = "CHAOS_OUT", default_value = "target/chaos")]
    pub out: PathBuf,
    #[command(flatten)]
    pub stack: Stack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// kill -9 at random points, each restarted 0 to --restart-max-secs later
    Kill,
    /// What a supervisor does to a crash loop: two kills within seconds, quick restarts
    Crashloop,
    /// kill -9 restarted at once, then kill -9 restarted after 15 s
    Twokills,
    /// 1 -> 2 -> 1 instances
    Scale,
    /// One of two instances frozen past its session, then resumed
    Stale,
    /// Postgres stopped under load
    Postgres,
    /// The broker killed and restarted, then away under load
    Broker,
    /// Every fault in one run
    All,
    /// The short run of `make test`: one instance, a crash loop, a kill, Postgres, the broker
    Ci,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value()
            .expect("no scenario is skipped")
            .get_name()
            .to_owned()
    }

    fn has_broker_faults(self) -> bool {
        matches!(self, Scenario::Broker | Scenario::All | Scenario::Ci)
    }
}

/// The session timeout the processors run with, short so a dead member is noticed soon.
const SESSION_MS: u64 = 6_000;
const JOIN_TTL_SECS: u64 = 90;

pub async fn run(args: &FaultArgs) -> anyhow::Result<Value> {
    let scenarios = if args.scenarios.is_empty() {
        Scenario::value_variants()
            .iter()
            .copied()
            .filter(|s| *s != Scenario::Ci)
            .collect()
    } else {
        args.scenarios.clone()
    };
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    say(&format!("fault timings from seed {seed} (CHAOS_SEED)"));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut verdicts = BTreeMap::new();
    for scenario in scenarios {
        let verdict = match run_scenario(args, scenario, &mut rng).await {
            Ok(check) => check,
            Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
        };
        // A scenario that failed half-way must not leave Postgres stopped.
        if let Err(e) = inject::ensure_postgres(&args.stack).await {
            say(&format!("Postgres could not be started again: {e:#}"));
        }
        verdicts.insert(scenario.name(), verdict);
    }
    let ok = verdicts.values().all(|v| v["ok"] == json!(true));
    Ok(json!({"mode": "chaos", "seed": seed, "ok": ok, "scenarios": verdicts}))
}

fn say(line: &str) {
    crate::harness::say("chaos", line);
}

/// The system a scenario runs: an ingestion API, processors by name, maybe a broker.
#[derive(Debug)]
pub struct System {
    pub run: Run,
    pub scenario: Scenario,
    pub processors: BTreeMap<&'static str, Service>,
    pub broker: Option<inject::Broker>,
    /// One line per fault injected, and how long the group took to recover from it.
    pub faults: Vec<String>,
    pub restart_max_secs: u64,
}

impl System {
    /// One more processor instance in the scenario's group (or a new one under a dead one's
    /// name).
    pub fn start_processor(&mut self, name: &'static str) -> anyhow::Result<()> {
        let service = self
            .run
            .service("metrics-processor", name, &[("RUST_LOG", "info")])?;
        self.processors.insert(name, service);
        Ok(())
    }

    pub fn processor(&mut self, name: &str) -> &mut Service {
        self.processors.get_mut(name).expect("a started processor")
    }

    pub fn note(&mut self, fault: impl Into<String>) {
        self.faults.push(fault.into());
    }
}

async fn run_scenario(
    args: &FaultArgs,
    scenario: Scenario,
    rng: &mut StdRng,
) -> anyhow::Result<Value> {
    let name = scenario.name();
    let stack = &args.stack;
    say(&format!(
        "{name}: {} calls/s for {} s",
        args.rate, args.seconds
    ));
    let mut run = Run::new(
        &name,
        &format!("chaos_{name}"),
        &stack.bin()?,
        &args.out,
        &stack.dsn,
    )
    .await?;
    let tag = format!("chaos-{name}-{}", chrono::Utc::now().timestamp());
    let broker = if scenario.has_broker_faults() {
        Some(inject::Broker::start(&run, &stack.tansu, free_port()).await?)
    } else {
        None
    };
    let brokers = broker
        .as_ref()
        .map_or(stack.brokers.clone(), inject::Broker::address);
    for (variable, value) in [
        ("AUTH_MODE", "disabled".to_owned()),
        ("KAFKA_SESSION_TIMEOUT_MS", SESSION_MS.to_string()),
        ("JOIN_TTL_SECS", JOIN_TTL_SECS.to_string()),
        ("UNREAD_PARTITION_SECS", "10".into()),
        ("WATCH_INTERVAL_MS", "1000".into()),
    ] {
        run.set(variable, value);
    }
    run.own_topics(&brokers, &tag, 6).await?;
    let ingestion = run.service("ingestion-api", "ingestion", &[])?;
    ingestion.wait_for("/ready").await?;
    let mut system = System {
        run,
        scenario,
        processors: BTreeMap::new(),
        broker,
        faults: Vec::new(),
        restart_max_secs: args.restart_max_secs,
    };
    system.start_processor("a")?;

    let oracle_out = system.run.file("oracle.json");
    let oracle = crate::OracleArgs {
        ingestion: crate::Ingestion {
            url: ingestion.url(""),
        },
        tenants: crate::Tenants {
            keys: String::new(),
        },
        out: oracle_out.display().to_string(),
        rate: args.rate,
        duration_secs: args.seconds,
        late_from: 66,
        late_to: 80,
        seed: 1,
    };
    // A stream the API never finishes accepting (a broker that does not come back) ends the
    // scenario as a failure instead of hanging.
    let limit = Duration::from_secs(args.seconds + 300);
    let (stream, injected) = tokio::join!(
        tokio::time::timeout(limit, crate::oracle::run(&oracle)),
        inject::inject(&mut system, args, rng),
    );
    injected?;
    let Ok(stream) = stream else {
        anyhow::bail!(
            "{name}: the stream was not all accepted within {} s",
            limit.as_secs()
        );
    };
    let stream_file = system.run.file("stream.json");
    std::fs::write(&stream_file, serde_json::to_vec(&stream?)?)?;
    let faults_file = system.run.file("faults");
    std::fs::write(&faults_file, system.faults.join("\n"))?;
    // The check prints the scenario's summary and fails on any difference, and on refusals
    // other than 503 (while the broker is away the ingestion API must say "try again").
    let check = crate::check::CheckArgs {
        oracle: oracle_out,
        dsn: system.run.dsn.clone(),
        brokers: crate::Brokers { brokers },
        metrics_topic: format!("{tag}.metrics"),
        wait_secs: JOIN_TTL_SECS + 120,
        scenario: Some(name),
        stream: Some(stream_file),
        faults: Some(faults_file),
    };
    let verdict = crate::check::run(&check).await?;
    std::fs::write(system.run.file("check.json"), serde_json::to_vec(&verdict)?)?;
    drop(ingestion);
    Ok(verdict)
}

/// Whether Postgres answers on the stack's port.
pub async fn postgres_up(dsn: &str) -> bool {
    let port = dsn
        .rsplit_once('@')
        .and_then(|(_, host)| host.split(['/', '?']).next())
        .and_then(|host| host.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(5432);
    port_open(port).await
}
