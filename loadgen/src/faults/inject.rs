//! The faults, injected while the stream is posted. Each pattern notes what it did and waits
//! for the group to recover before the next fault, and returns before the load ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use tokio::process::{Child, Command};
use tokio::time::sleep;

use super::{FaultArgs, Scenario, System, SESSION_MS};
use crate::harness::{port_open, Run, Stack};

pub async fn inject(system: &mut System, args: &FaultArgs, rng: &mut StdRng) -> anyhow::Result<()> {
    let load = args.seconds;
    let third = Duration::from_secs(load / 3);
    let stack = &args.stack;
    match system.scenario {
        // At least one fault however short the run: a scenario that injects none proves nothing.
        Scenario::Kill => kill_at_random(system, rng, (load.saturating_sub(20) / 25).max(1)).await,
        Scenario::Crashloop => crash_loop(system, rng, (load.saturating_sub(20) / 45).max(1)).await,
        // What a supervisor and then an operator do: restart at once, then after 15 s.
        Scenario::Twokills => {
            sleep(third).await;
            system.processor("a").kill().await;
            system.start_processor("a")?;
            recovered(system).await;
            sleep(third).await;
            system.processor("a").kill().await;
            sleep(Duration::from_secs(15)).await;
            system.start_processor("a")?;
            system.note("2 kill -9 of the processor, restarted at once and after 15 s");
            recovered(system).await;
            Ok(())
        }
        Scenario::Scale => {
            sleep(third).await;
            scale_up(system).await?;
            sleep(third).await;
            scale_down(system, "a").await;
            Ok(())
        }
        Scenario::Stale => {
            system.start_processor("b")?;
            recovered(system).await;
            sleep(third).await;
            freeze(system, "a").await;
            Ok(())
        }
        Scenario::Postgres => {
            sleep(third).await;
            postgres_down(system, stack, args.pg_down_secs).await
        }
        Scenario::Broker => {
            sleep(Duration::from_secs(load / 4)).await;
            broker_crash(system, 5).await?;
            sleep(Duration::from_secs(load / 6)).await;
            broker_away(system, args.broker_down_secs).await
        }
        // The short run: one instance, so no group churn (see README on Tansu), every other
        // fault.
        Scenario::Ci => {
            crash_loop(system, rng, 1).await?;
            kill_at_random(system, rng, 1).await?;
            postgres_down(system, stack, args.pg_down_secs).await?;
            broker_crash(system, 5).await
        }
        Scenario::All => {
            sleep(Duration::from_secs(5)).await;
            scale_up(system).await?;
            kill_at_random(system, rng, 2).await?;
            freeze(system, "b").await;
            postgres_down(system, stack, args.pg_down_secs).await?;
            broker_crash(system, 5).await?;
            broker_away(system, args.broker_down_secs).await?;
            scale_down(system, "b").await;
            Ok(())
        }
    }
}

/// Seconds drawn uniformly from `lo..hi`, to a tenth.
fn random(rng: &mut StdRng, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64((rng.gen_range(lo..=hi) * 10.0).round() / 10.0)
}

/// kill -9 at random points, each followed by a restart 0 to `restart_max_secs` later.
async fn kill_at_random(system: &mut System, rng: &mut StdRng, times: u64) -> anyhow::Result<()> {
    let restart_max = system.restart_max_secs as f64;
    for _ in 0..times {
        sleep(random(rng, 2.0, 6.0)).await;
        system.processor("a").kill().await;
        sleep(random(rng, 0.0, restart_max)).await;
        system.start_processor("a")?;
        recovered(system).await;
    }
    system.note(format!(
        "{times} kill -9 of the processor at random points, each restarted 0-{restart_max} s later"
    ));
    Ok(())
}

/// What a supervisor does to a crash loop, `times` times: kill -9, restart 0-1.5 s later,
/// kill -9 again 0-5 s after the new instance listens, restart 0-5 s later. The second
/// instance dies inside the first one's session, often before its first assignment.
async fn crash_loop(system: &mut System, rng: &mut StdRng, times: u64) -> anyhow::Result<()> {
    for _ in 0..times {
        sleep(random(rng, 1.0, 4.0)).await;
        system.processor("a").kill().await;
        sleep(random(rng, 0.0, 1.5)).await;
        system.start_processor("a")?;
        let started = Instant::now();
        while !system.processor("a").listening().await {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the restarted processor did not listen within 60 s"
            );
            sleep(Duration::from_millis(200)).await;
        }
        sleep(random(rng, 0.0, 5.0)).await;
        system.processor("a").kill().await;
        sleep(random(rng, 0.0, 5.0)).await;
        system.start_processor("a")?;
        recovered(system).await;
    }
    system.note(format!(
        "{times} crash loops (kill -9, quick restart, kill -9 soon after, quick restart)"
    ));
    Ok(())
}

async fn scale_up(system: &mut System) -> anyhow::Result<()> {
    system.start_processor("b")?;
    system.note("scaled 1 -> 2 instances");
    recovered(system).await;
    Ok(())
}

async fn scale_down(system: &mut System, leaving: &str) {
    system.processor(leaving).signal(Signal::SIGTERM);
    system.note("scaled 2 -> 1 instances");
    recovered(system).await;
}

/// An instance frozen past its session: its partitions move, and it wakes up stale.
async fn freeze(system: &mut System, name: &str) {
    let frozen = Duration::from_millis(SESSION_MS) + Duration::from_secs(8);
    system.processor(name).signal(Signal::SIGSTOP);
    sleep(frozen).await;
    system.processor(name).signal(Signal::SIGCONT);
    system.note(format!(
        "one of two instances frozen for {} s, then resumed",
        frozen.as_secs()
    ));
    recovered(system).await;
}

async fn postgres_down(system: &mut System, stack: &Stack, secs: u64) -> anyhow::Result<()> {
    stack_command(stack, "pg-stop").await?;
    sleep(Duration::from_secs(secs)).await;
    stack_command(stack, "pg-start").await?;
    system.note(format!("Postgres stopped for {secs} s"));
    recovered(system).await;
    Ok(())
}

/// Starts the stack's Postgres if it is not answering.
pub async fn ensure_postgres(stack: &Stack) -> anyhow::Result<()> {
    if super::postgres_up(&stack.dsn).await {
        return Ok(());
    }
    stack_command(stack, "pg-start").await
}

async fn stack_command(stack: &Stack, what: &str) -> anyhow::Result<()> {
    let status = Command::new(&stack.stack_script)
        .arg(what)
        .stderr(std::process::Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(
        status.success(),
        "{} {what} failed",
        stack.stack_script.display()
    );
    Ok(())
}

async fn broker_crash(system: &mut System, back_after_secs: u64) -> anyhow::Result<()> {
    let fault = format!("broker killed (kill -9) and restarted after {back_after_secs} s");
    broker_gone(system, back_after_secs, fault).await
}

/// Away under load: the ingestion API must answer 503, not lose. Killed rather than stopped:
/// after SIGTERM, Tansu 0.6 on SQLite can come back with storage that panics on the
/// producers' next write; after SIGSTOP/SIGCONT the processors' group may never be joined
/// again (see README).
async fn broker_away(system: &mut System, secs: u64) -> anyhow::Result<()> {
    let fault = format!("broker gone under load for {secs} s (kill -9), then restarted");
    broker_gone(system, secs, fault).await
}

/// kill -9 of the scenario's broker, back on the same storage `secs` later; noted as `fault`.
async fn broker_gone(system: &mut System, secs: u64, fault: String) -> anyhow::Result<()> {
    let System { run, broker, .. } = system;
    let broker = broker
        .as_mut()
        .expect("the scenario runs a broker of its own");
    let _ = broker.child.kill().await;
    sleep(Duration::from_secs(secs)).await;
    broker.child = Broker::spawn(run, &broker.tansu, &broker.db, broker.port).await?;
    system.note(fault);
    recovered(system).await;
    Ok(())
}

/// Waits until every input partition is owned and committing again (all 2 x 6 positions
/// written in the last 3 s), and notes how long that took, so the next fault starts from a
/// recovered system. A group that does not recover within 60 s is noted; the check tells what
/// it cost.
async fn recovered(system: &mut System) {
    let started = Instant::now();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&system.run.dsn)
        .expect("the run's DSN parsed when its database was made");
    let group = system.run.get("CONSUMER_GROUP").to_owned();
    let since: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT now() + interval '2 seconds'")
            .fetch_one(&pool)
            .await
            .ok();
    while started.elapsed() < Duration::from_secs(60) {
        let fresh: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM processor_positions WHERE consumer_group = $1 \
             AND updated_at > GREATEST($2, now() - interval '3 seconds')",
        )
        .bind(&group)
        .bind(since)
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        if fresh >= 12 {
            let secs = started.elapsed().as_secs();
            system.note(format!("  every partition committing again after {secs} s"));
            return;
        }
        sleep(Duration::from_millis(500)).await;
    }
    system.note("  NOT recovered within 60 s: some partitions have no owner");
    crate::harness::say(
        "chaos",
        &format!(
            "{}: the group did not recover within 60 s; going on, the check will tell what it cost",
            system.run.name
        ),
    );
}

/// A broker of the scenario's own, on SQLite storage: what it acknowledged survives a
/// restart.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    port: u16,
    tansu: PathBuf,
    db: PathBuf,
}

impl Broker {
    pub async fn start(run: &Run, tansu: &Path, port: u16) -> anyhow::Result<Self> {
        let db = run.file("broker.db");
        let name = db
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        for entry in std::fs::read_dir(db.parent().expect("in the output folder"))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(&name) {
                std::fs::remove_file(entry.path())?;
            }
        }
        let child = Self::spawn(run, tansu, &db, port).await?;
        Ok(Self {
            child,
            port,
            tansu: tansu.to_owned(),
            db,
        })
    }

    async fn spawn(run: &Run, tansu: &Path, db: &Path, port: u16) -> anyhow::Result<Child> {
        let storage = format!("sqlite:///{}", db.display());
        let listener = format!("tcp://127.0.0.1:{port}");
        let child = run.program(
            tansu,
            &[
                "broker",
                "--storage-engine",
                &storage,
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ],
            "broker",
        )?;
        let started = Instant::now();
        while !port_open(port).await {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the scenario's broker did not listen on {port} within 60 s"
            );
            sleep(Duration::from_millis(100)).await;
        }
        Ok(child)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
