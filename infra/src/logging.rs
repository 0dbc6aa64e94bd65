//! Structured logs through `tracing`.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json`
/// switches to one JSON object per line for log shippers.
pub fn init(json: bool) {
    let builder = fmt().with_env_filter(filter()).with_target(true);
    // A second init (tests starting several apps) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Logs of a command-line tool go to stderr: its stdout is its answer (a new key, say), which
/// scripts capture.
pub fn init_cli() {
    let _ = fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .try_init();
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // "relation already exists, skipping" from every start-up's migration check is noise.
        .add_directive(
            "sqlx::postgres::notice=warn"
                .parse()
                .expect("a valid directive"),
        )
}
