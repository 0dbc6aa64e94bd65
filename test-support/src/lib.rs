//! What the integration tests share. They run against a real Kafka-compatible broker and a
//! real Postgres, named by `TEST_KAFKA_BROKERS` and `TEST_DATABASE_URL` (`make test` starts the
//! local stack and sets both); without them, on a machine with a Docker engine, Redpanda and
//! Postgres are started in containers ([`containers`]). Each test then works on topics,
//! groups, tenants and databases of its own, so tests can run at once against one stack.

use std::collections::BTreeSet;

pub mod containers;

/// The broker the tests use.
pub fn kafka_brokers() -> String {
    configured("TEST_KAFKA_BROKERS", containers::redpanda)
}

/// The Postgres the tests use.
pub fn database_url() -> String {
    configured("TEST_DATABASE_URL", containers::postgres)
}

/// The variable `name`; else, with a Docker engine, what `start` started; else a failure
/// that says how to get the stack.
fn configured(name: &str, start: fn() -> Result<String, String>) -> String {
    if std::env::var_os(name).is_some() || !containers::docker_reachable() {
        return env_or_explain(name);
    }
    start().unwrap_or_else(|e| {
        panic!("{name} is not set and its container did not start ({e}); {HOW_TO_START}")
    })
}

const HOW_TO_START: &str = "run `make test`, or start the stack with `scripts/stack.sh up` and \
     export TEST_KAFKA_BROKERS=127.0.0.1:9092 TEST_DATABASE_URL=postgres://streamlens:streamlens@127.0.0.1:5432/streamlens \
     (what `scripts/stack.sh env` prints)";

/// The variable `name`, or a failure that says how to get the stack the tests need: they
/// never pass by skipping.
pub fn env_or_explain(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set and no Docker engine answers for testcontainers. These tests \
             need a real Kafka-compatible broker and Postgres: {HOW_TO_START}"
        )
    })
}

/// `prefix` and 12 random hex digits: a name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface hands out a port")
}

/// Every operation of an OpenAPI document, as `METHOD /path`.
pub fn operations(document: &serde_json::Value) -> BTreeSet<String> {
    let paths = document["paths"]
        .as_object()
        .expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item is an object");
            methods
                .keys()
                .map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect()
}

/// Every endpoint the README names (`` `GET /path` ``, query strings cut) in the section under
/// `heading` (a `## ` line), as `METHOD /path`.
pub fn readme_endpoints(heading: &str) -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README is readable");
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section {heading:?} in the README"));
    let section = &readme[start + 1..];
    let section = &section[..section[1..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 1)];
    let mut found = BTreeSet::new();
    for code in section.split('`').skip(1).step_by(2) {
        let mut words = code.split_whitespace();
        if let (Some(method @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE")), Some(path)) =
            (words.next(), words.next())
        {
            if path.starts_with('/') {
                let path = path.split('?').next().unwrap_or(path);
                found.insert(format!("{method} {path}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_keep_their_prefix() {
        let (a, b) = (unique("t-"), unique("t-"));
        assert_ne!(a, b);
        assert!(a.starts_with("t-") && a.len() == 14, "{a}");
    }

    fn panic_message(f: impl FnOnce() -> String + std::panic::UnwindSafe) -> String {
        let failure = std::panic::catch_unwind(f).expect_err("no silent default");
        failure
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn a_missing_variable_fails_with_how_to_start_the_stack() {
        let message = panic_message(|| env_or_explain("STREAMLENS_SURELY_UNSET"));
        assert!(message.contains("scripts/stack.sh up"), "{message}");
        // Without a Docker engine `start` is never called; with one, it fails here on purpose.
        let message = panic_message(|| {
            configured("STREAMLENS_SURELY_UNSET", || {
                Err("refused on purpose".into())
            })
        });
        assert!(message.contains("scripts/stack.sh up"), "{message}");
        assert!(
            message.contains("Docker") || message.contains("container"),
            "{message}"
        );
    }

    #[test]
    fn a_document_lists_its_operations_and_the_readme_its_endpoints() {
        let doc = serde_json::json!({"paths": {"/a": {"get": {}, "post": {}}, "/b": {"get": {}}}});
        let want: BTreeSet<String> = ["GET /a", "POST /a", "GET /b"].map(String::from).into();
        assert_eq!(operations(&doc), want);
        let ingestion = readme_endpoints("Ingestion API");
        assert!(ingestion.contains("POST /v1/llm/batch"), "{ingestion:?}");
        assert!(!ingestion.iter().any(|e| e.contains('?')), "{ingestion:?}");
    }
}
