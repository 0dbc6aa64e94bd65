//! The Docker Compose stack and its Grafana provisioning. Docker cannot run here, so this test
//! reads the files as Compose and Grafana would and holds them to the code: services and mounts
//! that exist, settings the services read, one datasource uid, and dashboard SQL that runs on the
//! schema the migrations build.

use deploy::{read, root, workspace_sources};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use serde_yaml::{Mapping, Value as Yaml};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Column, PgPool, Row, TypeInfo};

const SERVICES: &str =
    "redpanda postgres setup ingestion-api metrics-processor metrics-api grafana loadgen";
const COMPOSE: &str = "docker-compose.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/streamlens.json";
const DATASOURCES: &str = "deploy/grafana/provisioning/datasources/streamlens.yml";
const PROVIDERS: &str = "deploy/grafana/provisioning/dashboards/streamlens.yml";
/// Variables read by a library rather than by name in our code (tracing-subscriber's EnvFilter).
const READ_BY_LIBRARIES: [&str; 1] = ["RUST_LOG"];
/// A quote in the name, so a query that pastes the tenant in unescaped fails.
const TENANT: &str = "o'brien";

fn yaml(path: &str) -> Yaml {
    let doc = serde_yaml::from_str::<Yaml>(&read(path));
    let mut doc = doc.unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
    // Compose applies `<<: *anchor` merge keys; serde_yaml only resolves the anchors.
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn services(compose: &Yaml) -> &Mapping {
    compose["services"].as_mapping().expect("services")
}

fn text(v: &Yaml) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// `depends_on` is a list of names or a map from name to condition.
fn dependencies(service: &Yaml) -> Vec<&str> {
    match &service["depends_on"] {
        Yaml::Sequence(names) => names.iter().map(text).collect(),
        Yaml::Mapping(map) => map.keys().map(text).collect(),
        _ => Vec::new(),
    }
}

/// Short-form volumes, `source:target[:mode]`, as (source, target).
fn mounts(service: &Yaml) -> Vec<(&str, &str)> {
    let volumes = service["volumes"].as_sequence().into_iter().flatten();
    let parts = volumes.map(|v| text(v).split(':'));
    parts
        .map(|mut p| (p.next().unwrap(), p.next().unwrap_or_default()))
        .collect()
}

fn strings<'a>(v: &'a Yaml, out: &mut Vec<&'a str>) {
    match v {
        Yaml::String(s) => out.push(s),
        Yaml::Sequence(list) => list.iter().for_each(|v| strings(v, out)),
        Yaml::Mapping(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn list(v: &Json) -> &Vec<Json> {
    v.as_array().unwrap_or_else(|| panic!("not a list: {v}"))
}

fn sql(target: &Json) -> &str {
    let sql = target["rawSql"].as_str();
    sql.unwrap_or_else(|| panic!("no rawSql: {target}"))
}

/// The panel whose title mentions `word`.
fn panel<'a>(dashboard: &'a Json, word: &str) -> &'a Json {
    let title = |p: &&Json| p["title"].as_str().unwrap_or_default().to_lowercase();
    let found = list(&dashboard["panels"])
        .iter()
        .find(|p| title(p).contains(word));
    found.unwrap_or_else(|| panic!("no {word} panel"))
}

#[test]
fn compose_has_every_service_and_the_demo_profile() {
    let compose = yaml(COMPOSE);
    let services = services(&compose);
    for name in SERVICES.split_whitespace() {
        assert!(services.contains_key(name), "no service {name}");
    }
    let profiles = services["loadgen"]["profiles"].as_sequence();
    assert!(profiles.is_some_and(|p| p.contains(&"demo".into())));
    // Compose substitutes `$NAME` from the host's environment; the container's shell must
    // see `$$NAME`, or the demo keys would be empty strings.
    let mut all = Vec::new();
    strings(&compose["services"], &mut all);
    for s in all {
        assert!(!s.replace("$$", "").contains('$'), "a lone $ in {s:?}");
    }
}

#[test]
fn compose_services_depend_on_mount_and_set_only_what_exists() {
    let compose = yaml(COMPOSE);
    let services = services(&compose);
    let sources = workspace_sources();
    for (name, service) in services {
        let name = text(name);
        for dependency in dependencies(service) {
            let known = services.contains_key(dependency);
            assert!(known, "{name} depends on unknown {dependency}");
        }
        for (source, _) in mounts(service) {
            let missing = source.starts_with("./") && !root().join(source).exists();
            assert!(!missing, "{name} mounts missing {source}");
        }
        // A misspelt setting is silently ignored by the service, so it has to fail here.
        if service["image"] == "streamlens:local" {
            let variables = service["environment"].as_mapping().expect("a map");
            for variable in variables.keys().map(text) {
                let read = sources.contains(&format!("\"{variable}\""));
                let read = read || READ_BY_LIBRARIES.contains(&variable);
                assert!(read, "{name} sets {variable}, which no crate reads");
            }
        }
    }
}

#[test]
fn grafana_provisioning_matches_the_mounts_the_database_and_the_dashboard() {
    let compose = yaml(COMPOSE);
    let services = services(&compose);
    let grafana = mounts(&services["grafana"]);
    let provisioning = ("./deploy/grafana/provisioning", "/etc/grafana/provisioning");
    assert!(grafana.contains(&provisioning));
    let dashboards = grafana
        .iter()
        .find(|m| m.0 == "./deploy/grafana/dashboards");
    let providers = yaml(PROVIDERS);
    let path = text(&providers["providers"][0]["options"]["path"]);
    assert_eq!(
        Some(path),
        dashboards.map(|m| m.1),
        "provider path vs mount"
    );

    // The datasource logs in as docker-compose.yml's postgres service lets it.
    let source = &yaml(DATASOURCES)["datasources"][0];
    let postgres = &services["postgres"]["environment"];
    let host = text(&source["url"]).split(':').next().unwrap();
    assert!(services.contains_key(host), "datasource host {host}");
    assert_eq!(source["user"], postgres["POSTGRES_USER"]);
    let password = &source["secureJsonData"]["password"];
    assert_eq!(*password, postgres["POSTGRES_PASSWORD"]);
    assert_eq!(source["jsonData"]["database"], postgres["POSTGRES_DB"]);

    // Panels find their datasource by uid; a mismatch shows "datasource not found".
    let (uid, kind) = (text(&source["uid"]), text(&source["type"]));
    let d = dashboard();
    let panels = list(&d["panels"]).iter();
    let targets = panels.clone().flat_map(|p| list(&p["targets"]));
    let variables = list(&d["templating"]["list"]).iter();
    for user in panels.chain(targets).chain(variables) {
        assert_eq!(user["datasource"]["uid"], uid, "in {user}");
        assert_eq!(user["datasource"]["type"], kind, "in {user}");
    }
}

#[test]
fn dashboard_has_unique_panels_for_requests_errors_p95_and_cost() {
    let d = dashboard();
    assert_eq!(d["uid"], "streamlens");
    let panels = list(&d["panels"]);
    let mut ids: Vec<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids repeat");
    for word in ["requests", "errors", "p95", "cost"] {
        panel(&d, word);
    }
    for target in panels.iter().flat_map(|p| list(&p["targets"])) {
        assert!(!sql(target).trim().is_empty(), "empty rawSql: {target}");
    }
}

/// What Grafana does to a query before sending it, for the last hour and one tenant.
fn expand(sql: &str, tenant: &str) -> String {
    let quoted = format!("'{}'", tenant.replace('\'', "''"));
    let mut out = sql
        .replace("${tenant:sqlstring}", &quoted)
        .replace("${tenant}", tenant)
        .replace("$tenant", tenant)
        .replace("$__timeFrom()", "(now() - interval '1 hour')")
        .replace("$__timeTo()", "now()");
    while let Some(start) = out.find("$__timeFilter(") {
        let open = start + "$__timeFilter(".len();
        let close = open + out[open..].find(')').expect("$__timeFilter( is closed");
        let column = out[open..close].trim().to_owned();
        let filter = format!("{column} BETWEEN now() - interval '1 hour' AND now()");
        out.replace_range(start..=close, &filter);
    }
    assert!(!out.contains('$'), "left unexpanded:\n{out}");
    out
}

fn numeric_columns(row: &PgRow) -> Vec<&str> {
    let numeric = ["INT2", "INT4", "INT8", "FLOAT4", "FLOAT8", "NUMERIC"];
    let columns = row.columns().iter();
    let columns = columns.filter(|c| numeric.contains(&c.type_info().name()));
    columns.map(|c| c.name()).collect()
}

async fn run(pool: &PgPool, sql: &str) -> Vec<PgRow> {
    let rows = sqlx::query(sql).fetch_all(pool).await;
    rows.unwrap_or_else(|e| panic!("{e}\nin:\n{sql}"))
}

/// Five one-minute windows ending a minute ago, for two routes and two models; returns the
/// requests written.
async fn insert_windows(pool: &PgPool, tenant: &str) -> i64 {
    sqlx::query(
        "INSERT INTO llm_metrics (tenant_id, route, model, window_start, window_end, requests,
             errors, timeouts, completed, p95_latency_ms, estimated_cost_usd, prompt_tokens,
             completion_tokens)
         SELECT $1, route, model, date_trunc('minute', now()) - make_interval(mins => m),
             date_trunc('minute', now()) - make_interval(mins => m - 1), 10 * m, 1, 1,
             10 * m - 2, 100.0 * m, 0.01 * m, 500 * m, 100 * m
         FROM generate_series(1, 5) AS m, unnest(ARRAY['/chat', '/embed']) AS route,
             unnest(ARRAY['gpt-4o', 'gpt-4o-mini']) AS model",
    )
    .bind(tenant)
    .execute(pool)
    .await
    .expect("windows insert");
    4 * (1..=5).map(|m| 10 * m).sum::<i64>()
}

async fn check_dashboard_queries(pool: PgPool) {
    let migrated = infra::db::migrate(&pool).await;
    migrated.expect("migrations apply to an empty database");
    let inserted = insert_windows(&pool, TENANT).await;
    // Rows the tenant filter must leave out of every sum.
    insert_windows(&pool, "someone-else").await;
    let d = dashboard();

    let variable = &list(&d["templating"]["list"])[0];
    assert_eq!(variable["name"], "tenant");
    let query = variable["query"].as_str().expect("the variable's query");
    let tenants = run(&pool, &expand(query, TENANT)).await;
    assert!(tenants.iter().any(|r| r.get::<String, _>(0) == TENANT));

    for panel in list(&d["panels"]) {
        let title = &panel["title"];
        for target in list(&panel["targets"]) {
            let rows = run(&pool, &expand(sql(target), TENANT)).await;
            assert!(!rows.is_empty(), "{title}: no rows for the last minutes");
            assert!(!numeric_columns(&rows[0]).is_empty(), "{title}: no value");
            // Table panels (totals) have no time axis; time series need `time` and `metric`,
            // in time order.
            if target["format"] == "time_series" {
                let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.get("time")).collect();
                assert!(times.windows(2).all(|w| w[0] <= w[1]), "{title}: unordered");
                let metric = rows[0].try_get::<String, _>("metric");
                assert!(metric.is_ok(), "{title}: no metric column");
            }
        }
    }

    let requests = expand(sql(&panel(&d, "requests")["targets"][0]), TENANT);
    let rows = run(&pool, &requests).await;
    let column = numeric_columns(&rows[0])[0];
    let sum = format!("SELECT sum(\"{column}\")::int8 FROM ({requests}) AS panel");
    let total: i64 = sqlx::query_scalar(&sum).fetch_one(&pool).await.unwrap();
    assert_eq!(total, inserted, "the requests panel's sum");
}

#[tokio::test]
async fn every_dashboard_query_runs_on_a_freshly_migrated_database() {
    // This test runs the dashboard's SQL on a real Postgres.
    let url = test_support::database_url();
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await;
    let admin = admin.expect("Postgres answers at TEST_DATABASE_URL");
    // A database of its own: the tenant variable lists every tenant in the table, and other
    // tests write to the shared one while this runs.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let db = format!("streamlens_deploy_{}", now.as_nanos());
    let created = sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await;
    created.expect("a test database");
    let options = PgConnectOptions::from_str(&url).expect("a valid URL");
    let pool = PgPoolOptions::new().max_connections(2);
    let pool = pool.connect_with(options.database(&db)).await;
    let pool = pool.expect("the test database answers");

    // Spawned so that a failed assertion still lets the database be dropped.
    let outcome = tokio::spawn(check_dashboard_queries(pool.clone())).await;
    pool.close().await;
    let drop = format!("DROP DATABASE {db} WITH (FORCE)");
    let dropped = sqlx::raw_sql(&drop).execute(&admin).await;
    dropped.expect("the test database drops");
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
}
