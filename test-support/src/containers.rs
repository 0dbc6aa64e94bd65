//! Redpanda and Postgres in containers (testcontainers), for a machine with a Docker engine
//! and neither `TEST_KAFKA_BROKERS` nor `TEST_DATABASE_URL` set.
//!
//! The containers are named and kept for reuse (`streamlens-test-redpanda`,
//! `streamlens-test-postgres`, on host ports 19092 and 15432): every test binary and every
//! later run takes the same two instead of starting more. `docker rm -f` them when done.

use std::sync::OnceLock;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{GenericImage, ImageExt, ReuseDirective};

const REDPANDA_IMAGE: (&str, &str) = ("docker.redpanda.com/redpandadata/redpanda", "v24.2.7");
const POSTGRES_IMAGE: (&str, &str) = ("postgres", "16-alpine");
const KAFKA_PORT: u16 = 19092;
const POSTGRES_PORT: u16 = 15432;

/// Whether a Docker engine answers: `DOCKER_HOST` is set, or the default socket accepts.
pub fn docker_reachable() -> bool {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return true;
    }
    #[cfg(unix)]
    {
        std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// A single-node Redpanda that advertises the host port it is mapped to.
pub fn redpanda() -> Result<String, String> {
    static BROKERS: OnceLock<Result<String, String>> = OnceLock::new();
    let started = BROKERS.get_or_init(|| {
        let advertised = format!("127.0.0.1:{KAFKA_PORT}");
        let image = GenericImage::new(REDPANDA_IMAGE.0, REDPANDA_IMAGE.1)
            .with_wait_for(WaitFor::message_on_either_std(
                "Successfully started Redpanda!",
            ))
            .with_mapped_port(KAFKA_PORT, 9092.tcp())
            .with_cmd([
                "redpanda",
                "start",
                "--mode",
                "dev-container",
                "--smp",
                "1",
                "--kafka-addr",
                "0.0.0.0:9092",
                "--advertise-kafka-addr",
                advertised.as_str(),
            ])
            .with_container_name("streamlens-test-redpanda")
            .with_reuse(ReuseDirective::Always);
        off_runtime(move || image.start().map(|_kept| advertised))
    });
    started.clone()
}

/// A Postgres whose superuser the tests use to create a database each.
pub fn postgres() -> Result<String, String> {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    let started = URL.get_or_init(|| {
        // The image's first server (initdb's) says it is ready too; the second is the real one.
        let ready = "database system is ready to accept connections";
        let image = GenericImage::new(POSTGRES_IMAGE.0, POSTGRES_IMAGE.1)
            .with_wait_for(WaitFor::message_on_stderr(ready))
            .with_wait_for(WaitFor::message_on_stderr(ready))
            .with_mapped_port(POSTGRES_PORT, 5432.tcp())
            .with_env_var("POSTGRES_PASSWORD", "streamlens")
            .with_env_var("POSTGRES_USER", "streamlens")
            .with_env_var("POSTGRES_DB", "streamlens")
            .with_container_name("streamlens-test-postgres")
            .with_reuse(ReuseDirective::Always);
        let url = format!("postgres://streamlens:streamlens@127.0.0.1:{POSTGRES_PORT}/streamlens");
        off_runtime(move || image.start().map(|_kept| url))
    });
    started.clone()
}

/// Runs a blocking start on a thread of its own: the tests call in from inside a tokio
/// runtime, where the blocking client's own runtime may not be started.
fn off_runtime(
    start: impl FnOnce() -> testcontainers::core::error::Result<String> + Send + 'static,
) -> Result<String, String> {
    std::thread::spawn(move || start().map_err(|e| e.to_string()))
        .join()
        .unwrap_or_else(|_| Err("starting the container panicked".to_owned()))
}
