//! The real system, started for a fault, abuse or OpenTelemetry run: the service binaries built
//! beside this one, on topics, a consumer group and a database of the run's own on the local
//! stack. Every process a run starts is killed when its handle is dropped, whichever way the run
//! ends.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use tokio::process::{Child, Command};

/// The local stack a run works on, and where the binaries are.
#[derive(Debug, Args)]
pub struct Stack {
    /// The stack's broker
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: String,
    /// The stack's Postgres; each run makes a database of its own on that server
    #[arg(long, env = "POSTGRES_DSN")]
    pub dsn: String,
    /// The Tansu binary, for the scenarios that run a broker of their own
    #[arg(long, env = "TANSU_BIN", default_value = "tansu")]
    pub tansu: PathBuf,
    /// The stack script, which stops and starts Postgres
    #[arg(long, env = "STACK_SCRIPT", default_value = "scripts/stack.sh")]
    pub stack_script: PathBuf,
    /// Where the service binaries are (default: beside this one)
    #[arg(long, env = "BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
}

impl Stack {
    pub fn bin(&self) -> anyhow::Result<PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(std::env::current_exe()?
                .parent()
                .expect("a binary lives in a directory")
                .to_owned()),
        }
    }
}

/// One run: where its binaries and logs are, and the environment every service of it gets.
#[derive(Debug)]
pub struct Run {
    pub name: String,
    bin: PathBuf,
    out: PathBuf,
    /// The run's own database on the stack's Postgres.
    pub dsn: String,
    env: Vec<(String, String)>,
}

impl Run {
    /// Creates (afresh) the run's database `streamlens_<db>` on the server of `base_dsn`; the
    /// database is kept after the run, to look into what a check found.
    pub async fn new(
        name: &str,
        db: &str,
        bin: &Path,
        out: &Path,
        base_dsn: &str,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        // Absolute, since the broker takes its storage as a URL.
        let out = std::fs::canonicalize(out)?;
        let server = infra::db::connect(base_dsn, 1).await?;
        let db = format!("streamlens_{db}");
        for statement in [
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            format!("CREATE DATABASE {db}"),
        ] {
            sqlx::query(&statement).execute(&server).await?;
        }
        let dsn = match base_dsn.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{db}"),
            None => anyhow::bail!("POSTGRES_DSN has no database name: {base_dsn}"),
        };
        Ok(Self {
            name: name.to_owned(),
            bin: bin.to_owned(),
            out,
            env: vec![
                ("POSTGRES_DSN".into(), dsn.clone()),
                ("HTTP_HOST".into(), "127.0.0.1".into()),
                // Set to a port of its own where a run calls OTLP/gRPC.
                ("OTLP_GRPC_PORT".into(), "0".into()),
                ("RUST_LOG".into(), "warn".into()),
            ],
            dsn,
        })
    }

    /// Adds to (or replaces in) the environment of every service started from now on.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_owned(), value.into()));
    }

    pub fn get(&self, name: &str) -> &str {
        let found = self.env.iter().find(|(n, _)| n == name);
        found.map_or("", |(_, v)| v)
    }

    /// Topics `<tag>.requests`, `.responses`, `.metrics` and `.dlq` of `partitions` each and
    /// the consumer group `<tag>` on `brokers`, for every service started from now on;
    /// created, and the run's database migrated.
    pub async fn own_topics(
        &mut self,
        brokers: &str,
        tag: &str,
        partitions: u32,
    ) -> anyhow::Result<()> {
        for (variable, value) in [
            ("KAFKA_BROKERS", brokers.to_owned()),
            ("TOPIC_REQUESTS", format!("{tag}.requests")),
            ("TOPIC_RESPONSES", format!("{tag}.responses")),
            ("TOPIC_METRICS", format!("{tag}.metrics")),
            ("TOPIC_DLQ", format!("{tag}.dlq")),
            ("TOPIC_PARTITIONS", partitions.to_string()),
            ("CONSUMER_GROUP", tag.to_owned()),
        ] {
            self.set(variable, value);
        }
        self.admin(&["migrate"]).await?;
        self.admin(&["topics"]).await?;
        Ok(())
    }

    /// The three services, ready, and an API key for `tenant`.
    pub async fn all_services(&self, tenant: &str) -> anyhow::Result<Services> {
        let key = self
            .admin(&["keys", "create", "--tenant", tenant, "--name", &self.name])
            .await?;
        let services = Services {
            key,
            ingestion: self.service("ingestion-api", "ingestion", &[])?,
            processor: self.service("metrics-processor", "processor", &[])?,
            query: self.service("metrics-api", "query", &[])?,
        };
        for service in [&services.ingestion, &services.processor, &services.query] {
            service.wait_for("/ready").await?;
        }
        Ok(services)
    }

    /// A file of the run's, `<out>/<run>.<what>`.
    pub fn file(&self, what: &str) -> PathBuf {
        self.out.join(format!("{}.{what}", self.name))
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command.envs(self.env.iter().map(|(n, v)| (n, v)));
        command.stdin(Stdio::null()).kill_on_drop(true);
        command
    }

    /// `streamlens-admin ARGS` with the run's environment; its standard output.
    pub async fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self
            .command(self.bin.join("streamlens-admin"))
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .await
            .context("running streamlens-admin")?;
        anyhow::ensure!(output.status.success(), "streamlens-admin {args:?} failed");
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Starts one of the service binaries on a free port, with `env` on top of the run's, its
    /// output appended to the run's `<log>.log`.
    pub fn service(
        &self,
        binary: &str,
        log: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Service> {
        let port = free_port();
        let mut command = self.command(self.bin.join(binary));
        command
            .env("HTTP_PORT", port.to_string())
            .envs(env.iter().copied());
        let child = spawn_logged(command, &self.file(&format!("{log}.log")))
            .with_context(|| format!("starting {binary} from {}", self.bin.display()))?;
        Ok(Service { child, port })
    }

    /// Starts any program with the run's environment, in a process group of its own (so that
    /// signals meant for the harness do not reach it), its output appended to `<log>.log`.
    pub fn program(&self, program: &Path, args: &[&str], log: &str) -> anyhow::Result<Child> {
        let mut command = self.command(program);
        command.args(args).process_group(0);
        spawn_logged(command, &self.file(&format!("{log}.log")))
            .with_context(|| format!("starting {}", program.display()))
    }
}

fn spawn_logged(mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let file = OpenOptions::new().create(true).append(true).open(log)?;
    command.stdout(file.try_clone()?).stderr(file);
    Ok(command.spawn()?)
}

/// The whole system of a run, and the key it is called with.
#[derive(Debug)]
pub struct Services {
    pub key: String,
    pub ingestion: Service,
    pub processor: Service,
    pub query: Service,
}

/// A service process of the run and the loopback port it answers on.
#[derive(Debug)]
pub struct Service {
    child: Child,
    pub port: u16,
}

impl Service {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits up to a minute for `path` to answer 2xx.
    pub async fn wait_for(&self, path: &str) -> anyhow::Result<()> {
        let url = self.url(path);
        let client = reqwest::Client::new();
        for _ in 0..300 {
            let answer = client.get(&url).timeout(Duration::from_secs(2)).send();
            if answer.await.is_ok_and(|a| a.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("{url} did not answer within 60 s")
    }

    /// Whether it accepts connections yet.
    pub async fn listening(&self) -> bool {
        port_open(self.port).await
    }

    /// kill -9, and the exit reaped: no flush, no goodbye to the group.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The sum of every series on its `/metrics` whose metric name ends with `name` and whose
    /// labels contain `with` (empty: all).
    pub async fn metric(&self, name: &str, with: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(self.url("/metrics")).await?.text().await?;
        Ok(metric_sum(&text, name, with))
    }
}

/// The sum over the lines `metric{labels} value` or `metric value` of Prometheus' text format
/// whose metric name ends with `name` and whose labels contain `with`.
pub fn metric_sum(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_at(series.find('{').unwrap_or(series.len()));
            (metric.ends_with(name) && labels.contains(with)).then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |sum, value| sum + value)
}

/// A line of a run's progress on stderr: `[what HH:MM:SS] line`.
pub fn say(what: &str, line: &str) {
    eprintln!("[{what} {}] {line}", chrono::Local::now().format("%T"));
}

pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// A loopback port nothing listens on, below the kernel's ephemeral range so that no outgoing
/// connection takes it before the service binds it.
pub fn free_port() -> u16 {
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn a_metric_is_summed_over_the_series_that_match() {
        let text = "# HELP x_total counted\n\
                    x_total{status=\"500\"} 2\n\
                    x_total{status=\"200\"} 7\n\
                    x_total_other 100\n\
                    x_total 1\n";
        assert_eq!(metric_sum(text, "x_total", ""), 10.0);
        assert_eq!(metric_sum(text, "_total", "status=\"5"), 2.0);
        assert_eq!(metric_sum(text, "_other", ""), 100.0);
        assert_eq!(metric_sum(text, "missing", "").to_string(), "0");
    }
}
