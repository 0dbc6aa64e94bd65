//! One contract, two stores: every case runs against the in-memory store the simulations use
//! and against the Postgres store the binary uses, so that what the simulations prove holds
//! for the real one.

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use metrics_core::pricing::PricingTable;
use metrics_processor::domain::engine::{Engine, EngineConfig, Flush, Position, Waiting};
use metrics_processor::domain::join::Ended;
use metrics_processor::domain::offsets::Input;
use metrics_processor::driver::memory::MemoryStore;
use metrics_processor::driver::{Claimed, Epochs, PositionStore};
use metrics_processor::store::{Blocking, Store, StoreError};
use sqlx::{PgPool, Row};

use crate::calls::{request, response, source};
use crate::helpers::unique;

/// A store under contract, and how to read back a tenant's totals from it.
trait Subject: PositionStore {
    /// (requests, completed, timeouts) over the tenant's window rows.
    fn totals(&mut self, tenant: &str) -> (u64, u64, u64);
}

impl Subject for MemoryStore {
    fn totals(&mut self, tenant: &str) -> (u64, u64, u64) {
        self.rows()
            .iter()
            .filter(|(k, _)| &*k.tenant == tenant)
            .fold((0, 0, 0), |t, (_, a)| {
                (t.0 + a.requests, t.1 + a.completed, t.2 + a.timeouts)
            })
    }
}

/// The Postgres store on a group and topics of its own, driven from a plain thread as the
/// pipeline drives it.
struct Pg {
    store: Blocking,
    pool: PgPool,
    // Keeps the runtime the store blocks on alive.
    _runtime: tokio::runtime::Runtime,
}

impl Pg {
    fn new() -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dsn = test_support::database_url();
        let pool = runtime.block_on(async {
            let pool = infra::db::connect(&dsn, 2).await.expect("Postgres answers");
            infra::db::migrate(&pool).await.expect("migrations apply");
            pool
        });
        let store = Store::new(
            pool.clone(),
            &unique("contract-"),
            &unique("req-"),
            &unique("resp-"),
        );
        Self {
            store: Blocking {
                store,
                runtime: runtime.handle().clone(),
            },
            pool,
            _runtime: runtime,
        }
    }
}

impl PositionStore for Pg {
    fn claim(&mut self, partitions: &[i32]) -> Result<Claimed, StoreError> {
        self.store.claim(partitions)
    }

    fn commit(&mut self, flush: &Flush, epochs: &Epochs, id: &str) -> Result<usize, StoreError> {
        self.store.commit(flush, epochs, id)
    }
}

impl Subject for Pg {
    fn totals(&mut self, tenant: &str) -> (u64, u64, u64) {
        let row = self
            .store
            .runtime
            .block_on(
                sqlx::query(
                    "SELECT COALESCE(sum(requests), 0)::bigint AS r, COALESCE(sum(completed), 0)::bigint AS c,
                            COALESCE(sum(timeouts), 0)::bigint AS t
                     FROM llm_metrics WHERE tenant_id = $1",
                )
                .bind(tenant)
                .fetch_one(&self.pool),
            )
            .expect("totals");
        let get = |name: &str| row.get::<i64, _>(name) as u64;
        (get("r"), get("c"), get("t"))
    }
}

fn epochs_of(claimed: &Claimed) -> Epochs {
    claimed
        .claims
        .iter()
        .map(|c| ((c.input, c.partition), c.epoch))
        .collect()
}

/// Ten minutes ago, on the minute: the window of the calls below.
fn at() -> DateTime<Utc> {
    let now = Utc::now() - TimeDelta::minutes(10);
    now - TimeDelta::seconds(now.timestamp() % 60)
}

/// A flush of partition 0 holding one minute of `tenant`: call "a" completed and call "b"
/// timed out, its timeout decided but its id still remembered (so the decision is kept).
fn call_and_timeout(tenant: &str) -> Flush {
    let at = at();
    let mut engine = Engine::new(EngineConfig::default(), PricingTable::default());
    engine.assign(
        0,
        [(Input::Requests, None), (Input::Responses, None)],
        Vec::new(),
        at,
    );
    engine.apply(source(Input::Requests, 0), request(tenant, "a", at), at);
    engine.apply(source(Input::Requests, 1), request(tenant, "b", at), at);
    engine.apply(source(Input::Responses, 0), response(tenant, "a", at), at);
    engine.reached_end(Input::Requests, 0);
    engine.reached_end(Input::Responses, 0);
    // Past b's TTL (5 min), before it is forgotten (10 min).
    let (flush, _) = engine.flush(at + TimeDelta::minutes(6) + TimeDelta::seconds(10));
    assert_eq!(flush.windows().len(), 1);
    assert_eq!(flush.decisions.len(), 1, "b timed out");
    flush
}

/// A flush that only moves partition 0's requests position: to `resume`, holding `waiting`.
fn positions_only(resume: i64, waiting: Vec<Waiting>) -> Flush {
    let mut flush = Flush::default();
    flush.positions = vec![Position {
        input: Input::Requests,
        partition: 0,
        consumed: 2,
        resume,
        watermark: Some(at() + TimeDelta::minutes(6)),
    }];
    flush.waiting = waiting;
    flush
}

fn a_first_claim_finds_nothing_and_every_claim_raises_the_epoch(mut s: impl Subject) {
    let first = s.claim(&[0]).expect("claim");
    assert_eq!(first.claims.len(), 2, "both inputs");
    assert!(first.claims.iter().all(|c| c.stored.is_none()));
    assert!(first.decisions.is_empty() && first.waiting.is_empty());
    let second = s.claim(&[0]).expect("claim");
    for (a, b) in first.claims.iter().zip(&second.claims) {
        assert_eq!((a.input, a.partition), (b.input, b.partition));
        assert_eq!(b.epoch, a.epoch + 1);
    }
}

fn a_commit_is_what_the_next_claim_finds(mut s: impl Subject) {
    let tenant = unique("tenant-");
    let claimed = s.claim(&[0]).expect("claim");
    let flush = call_and_timeout(&tenant);
    assert_eq!(
        s.commit(&flush, &epochs_of(&claimed), "f1")
            .expect("commit"),
        1
    );
    assert_eq!(s.totals(&tenant), (2, 1, 1));
    let again = s.claim(&[0]).expect("claim");
    let stored = |input| {
        again
            .claims
            .iter()
            .find(|c| c.input == input)
            .and_then(|c| c.stored)
            .map(|(committed, resume)| (committed.position, resume, committed.watermark))
    };
    let requests = flush
        .positions
        .iter()
        .find(|p| p.input == Input::Requests)
        .expect("requests position");
    assert_eq!(
        stored(Input::Requests),
        Some((2, 1, requests.watermark)),
        "b is still needed"
    );
    assert_eq!(stored(Input::Responses).map(|s| s.0), Some(1));
    assert_eq!(again.decisions.len(), 1);
    let d = &again.decisions[0];
    assert_eq!(
        (d.ended, d.source),
        (Ended::TimedOut, source(Input::Requests, 1))
    );
    assert_eq!(d.request_id, flush.decisions[0].request_id);
    // Event times are kept to the microsecond, as Postgres keeps them.
    assert_eq!(d.at, flush.decisions[0].at.trunc_subsecs(6));
}

fn a_commit_under_a_superseded_claim_writes_nothing(mut s: impl Subject) {
    let tenant = unique("tenant-");
    let old = s.claim(&[0]).expect("claim");
    s.claim(&[0]).expect("another owner claims");
    let result = s.commit(&call_and_timeout(&tenant), &epochs_of(&old), "f1");
    assert!(
        matches!(result, Err(StoreError::Fenced { partition: 0, .. })),
        "{result:?}"
    );
    assert_eq!(s.totals(&tenant), (0, 0, 0));
    let now = s.claim(&[0]).expect("claim");
    assert!(now.claims.iter().all(|c| c.stored.is_none()));
    assert!(now.decisions.is_empty());
}

fn a_commit_repeated_under_its_id_writes_nothing_more(mut s: impl Subject) {
    let tenant = unique("tenant-");
    let epochs = epochs_of(&s.claim(&[0]).expect("claim"));
    let flush = call_and_timeout(&tenant);
    s.commit(&flush, &epochs, "f1").expect("commit");
    s.commit(&flush, &epochs, "f1")
        .expect("the retry of a commit whose answer was lost");
    assert_eq!(s.totals(&tenant), (2, 1, 1), "the retry found it written");
    s.commit(&flush, &epochs, "f2").expect("another flush");
    assert_eq!(
        s.totals(&tenant),
        (4, 2, 2),
        "a flush of another id adds to the rows"
    );
}

fn decisions_behind_the_resume_offset_are_forgotten(mut s: impl Subject) {
    let tenant = unique("tenant-");
    let epochs = epochs_of(&s.claim(&[0]).expect("claim"));
    s.commit(&call_and_timeout(&tenant), &epochs, "f1")
        .expect("commit");
    s.commit(&positions_only(1, Vec::new()), &epochs, "f2")
        .expect("commit");
    assert_eq!(
        s.claim(&[0]).expect("claim").decisions.len(),
        1,
        "b is replayed still"
    );
    let epochs = epochs_of(&s.claim(&[0]).expect("claim"));
    s.commit(&positions_only(2, Vec::new()), &epochs, "f3")
        .expect("commit");
    assert!(
        s.claim(&[0]).expect("claim").decisions.is_empty(),
        "no replay reaches b any more"
    );
}

fn the_waiting_halves_of_a_commit_replace_those_before(mut s: impl Subject) {
    let epochs = epochs_of(&s.claim(&[0]).expect("claim"));
    let waiting = |offset| Waiting {
        request_id: format!("w{offset}"),
        source: source(Input::Requests, offset),
    };
    s.commit(
        &positions_only(0, vec![waiting(0), waiting(1)]),
        &epochs,
        "f1",
    )
    .expect("commit");
    let mut found = s.claim(&[0]).expect("claim").waiting;
    found.sort_by_key(|w| w.offset);
    assert_eq!(
        found,
        vec![source(Input::Requests, 0), source(Input::Requests, 1)]
    );
    let epochs = epochs_of(&s.claim(&[0]).expect("claim"));
    s.commit(&positions_only(1, vec![waiting(1)]), &epochs, "f2")
        .expect("commit");
    assert_eq!(
        s.claim(&[0]).expect("claim").waiting,
        vec![source(Input::Requests, 1)]
    );
}

/// Each case as a test of each store.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $case() { super::$case(super::MemoryStore::default()) })*
        }
        mod postgres {
            $(#[test] fn $case() { super::$case(super::Pg::new()) })*
        }
    };
}

contract!(
    a_first_claim_finds_nothing_and_every_claim_raises_the_epoch,
    a_commit_is_what_the_next_claim_finds,
    a_commit_under_a_superseded_claim_writes_nothing,
    a_commit_repeated_under_its_id_writes_nothing_more,
    decisions_behind_the_resume_offset_are_forgotten,
    the_waiting_halves_of_a_commit_replace_those_before,
);
