//! Pairs each request with its response by `request_id`, whichever arrives first.
//!
//! A half waits until the watermark passes its timestamp plus the TTL: a request then counts
//! as a timeout, a response as an orphan. Once a request id is finished it is remembered, so a
//! second delivery of either half is known as a duplicate and counted nowhere: a pair for a
//! TTL after its later half, a timeout or an orphan for two TTLs after its latest half (a TTL
//! after it was given up on). Deadlines are event times, never the clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use metrics_core::events::{RequestEvent, ResponseEvent};

use super::offsets::{Needed, Source};

/// A waiting request, without its id (the map key).
#[derive(Debug, Clone)]
struct Waiting {
    source: Source,
    names: Arc<Names>,
    timestamp: DateTime<Utc>,
    prompt_tokens: u64,
}

impl Waiting {
    fn into_request(self, request_id: Arc<str>) -> Sourced<Request> {
        Sourced {
            source: self.source,
            value: Request {
                request_id,
                names: self.names,
                timestamp: self.timestamp,
                prompt_tokens: self.prompt_tokens,
            },
        }
    }
}

/// Tenant, route, model and provider, shared by every request that names the same four.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Names {
    pub tenant: Arc<str>,
    pub route: Arc<str>,
    pub model: Arc<str>,
    pub provider: Option<Arc<str>>,
}

/// What a request keeps while it waits: what its window and cost need, nothing more. The id
/// is one allocation shared with the join's indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub request_id: Arc<str>,
    pub names: Arc<Names>,
    pub timestamp: DateTime<Utc>,
    pub prompt_tokens: u64,
}

/// A value with the record it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub source: Source,
    pub value: T,
}

/// What a half or the passing of time produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Paired {
        request: Sourced<Request>,
        response: Sourced<ResponseEvent>,
    },
    TimedOut(Sourced<Request>),
    Orphaned {
        /// The join's key for the call (see [`Joiner::on_request`]).
        id: Arc<str>,
        response: Sourced<ResponseEvent>,
        reason: OrphanReason,
    },
    /// A second delivery of a half already seen; counted nowhere.
    Duplicate(Source),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanReason {
    /// No request with this id arrived within the TTL.
    NoRequest,
    /// The request had already been counted as a timeout.
    AfterTimeout,
}

impl OrphanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanReason::NoRequest => "no request with this request_id arrived within the TTL",
            OrphanReason::AfterTimeout => "arrived after its request was counted as a timeout",
        }
    }
}

/// How a finished request id ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ended {
    Paired,
    TimedOut,
    Orphaned,
}

#[derive(Debug, Clone)]
struct Finished {
    ended: Ended,
    forget_at: DateTime<Utc>,
    /// The records it holds: one or two nearly always, so no allocation for those.
    first: [Option<Source>; 2],
    more: Vec<Source>,
    /// A replayed response taken for settled by its own deadline alone (see
    /// [`Joiner::restore_settled_response`]), kept until its request is replayed.
    kept: Option<Box<Sourced<ResponseEvent>>>,
}

impl Finished {
    fn new(ended: Ended, forget_at: DateTime<Utc>, sources: &[Source]) -> Self {
        let mut f = Self {
            ended,
            forget_at,
            first: [None, None],
            more: Vec::new(),
            kept: None,
        };
        for s in sources {
            f.push(*s);
        }
        f
    }

    fn push(&mut self, source: Source) {
        match self.first.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(source),
            None => self.more.push(source),
        }
    }

    fn sources(&self) -> impl Iterator<Item = Source> + '_ {
        self.first
            .iter()
            .flatten()
            .copied()
            .chain(self.more.iter().copied())
    }
}

/// When which half (or finished id) of a request id is due.
type Deadline = (DateTime<Utc>, Half, Arc<str>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Half {
    Request,
    Response,
    Finished,
}

#[derive(Debug, Clone)]
pub struct Joiner {
    ttl: TimeDelta,
    // The id is the key only: a million waiting requests should not hold it twice.
    requests: HashMap<Arc<str>, Waiting>,
    responses: HashMap<Arc<str>, Sourced<ResponseEvent>>,
    finished: HashMap<Arc<str>, Finished>,
    names: HashMap<OwnedNames, Arc<Names>>,
    deadlines: BinaryHeap<Reverse<Deadline>>,
    needed: Needed,
}

impl Joiner {
    pub fn new(ttl: TimeDelta) -> Self {
        Self {
            ttl,
            requests: HashMap::new(),
            responses: HashMap::new(),
            finished: HashMap::new(),
            names: HashMap::new(),
            deadlines: BinaryHeap::new(),
            needed: Needed::default(),
        }
    }

    /// Input offsets still referenced by pending halves or remembered ids.
    pub fn needed(&self) -> &Needed {
        &self.needed
    }

    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    pub fn pending_responses(&self) -> usize {
        self.responses.len()
    }

    /// How a request id ended, if it did and is still remembered.
    pub fn ended(&self, request_id: &str) -> Option<Ended> {
        self.finished.get(request_id).map(|f| f.ended)
    }

    fn names(&mut self, event: &RequestEvent) -> Arc<Names> {
        let provider = event.provider.as_ref().map_or("", |p| p.as_str());
        let key = (
            event.tenant_id.as_str(),
            event.route.as_str(),
            event.model.as_str(),
            provider,
        );
        if let Some(names) = self.names.get(&key as &dyn NamesKey) {
            return Arc::clone(names);
        }
        let names = Arc::new(Names {
            tenant: event.tenant_id.as_str().into(),
            route: event.route.as_str().into(),
            model: event.model.as_str().into(),
            provider: event.provider.as_ref().map(|p| p.as_str().into()),
        });
        let owned = (key.0.into(), key.1.into(), key.2.into(), key.3.into());
        self.names.insert(owned, Arc::clone(&names));
        names
    }

    fn id(&self, request_id: &str) -> Arc<str> {
        // The allocation already held for this id, if any.
        self.requests
            .get_key_value(request_id)
            .map(|(k, _)| k)
            .or_else(|| self.responses.get_key_value(request_id).map(|(k, _)| k))
            .or_else(|| self.finished.get_key_value(request_id).map(|(k, _)| k))
            .map_or_else(|| request_id.into(), Arc::clone)
    }

    /// The request as the joiner keeps it, under the id's shared allocation.
    fn request(&mut self, id: &Arc<str>, event: &Sourced<RequestEvent>) -> Sourced<Request> {
        Sourced {
            source: event.source,
            value: Request {
                request_id: Arc::clone(id),
                names: self.names(&event.value),
                timestamp: event.value.timestamp,
                prompt_tokens: event.value.prompt_tokens,
            },
        }
    }

    /// A request, known to the join by `key`: its `request_id`, or whatever the caller
    /// scopes it with (the engine's `tenant|request_id`); both halves of a call must come with
    /// the same key.
    pub fn on_request(&mut self, key: &str, event: Sourced<RequestEvent>) -> Option<Outcome> {
        let id = self.id(key);
        let request = self.request(&id, &event);
        if self.finished.contains_key(&id) {
            self.remember(&id, request.source, request.value.timestamp);
            let finished = self.finished.get_mut(&id)?;
            if let Some(response) = finished.kept.take() {
                // Paired before the restart; whether that pair was written is the window's
                // question (the request's timestamp decides it), not this one's.
                return Some(Outcome::Paired {
                    request,
                    response: *response,
                });
            }
            return match finished.ended {
                // The response was given up on; this request got no answer in time.
                Ended::Orphaned => {
                    finished.ended = Ended::TimedOut;
                    Some(Outcome::TimedOut(request))
                }
                Ended::Paired | Ended::TimedOut => Some(Outcome::Duplicate(request.source)),
            };
        }
        if self.requests.contains_key(&id) {
            return Some(Outcome::Duplicate(request.source));
        }
        if let Some(response) = self.responses.remove(&id) {
            self.needed.release(response.source);
            let outcome = Outcome::Paired { request, response };
            self.finish(id, &outcome);
            return Some(outcome);
        }
        self.needed.hold(request.source);
        self.deadlines.push(Reverse((
            request.value.timestamp + self.ttl,
            Half::Request,
            Arc::clone(&id),
        )));
        let waiting = Waiting {
            source: request.source,
            names: request.value.names,
            timestamp: request.value.timestamp,
            prompt_tokens: request.value.prompt_tokens,
        };
        self.requests.insert(id, waiting);
        None
    }

    pub fn on_response(&mut self, key: &str, response: Sourced<ResponseEvent>) -> Option<Outcome> {
        let id = self.id(key);
        if self.finished.contains_key(&id) {
            self.remember(&id, response.source, response.value.timestamp);
            return match self.finished.get(&id)?.ended {
                Ended::TimedOut => Some(Outcome::Orphaned {
                    id: Arc::clone(&id),
                    response,
                    reason: OrphanReason::AfterTimeout,
                }),
                Ended::Paired | Ended::Orphaned => Some(Outcome::Duplicate(response.source)),
            };
        }
        if self.responses.contains_key(&id) {
            return Some(Outcome::Duplicate(response.source));
        }
        if self.requests.contains_key(&id) {
            return Some(self.pair_with_waiting_request(&id, response));
        }
        self.needed.hold(response.source);
        self.deadlines.push(Reverse((
            response.value.timestamp + self.ttl,
            Half::Response,
            id.clone(),
        )));
        self.responses.insert(id, response);
        None
    }

    /// A request read when reading has already got more than a TTL past its timestamp: too
    /// late to be joined. It is a timeout at once, and a response of it waiting here is an
    /// orphan, so that the call ends the same whichever half was read first (see
    /// [`Joiner::too_late_response`]). A second delivery of a remembered id is what
    /// [`Joiner::on_request`] says.
    pub fn too_late_request(&mut self, key: &str, event: Sourced<RequestEvent>) -> Vec<Outcome> {
        let id = self.id(key);
        if self.finished.contains_key(&id) || self.requests.contains_key(&id) {
            return self.on_request(key, event).into_iter().collect();
        }
        let request = self.request(&id, &event);
        let response = self.responses.remove(&id);
        if let Some(waiting) = &response {
            self.needed.release(waiting.source);
        }
        self.give_up(id, request, response)
    }

    /// A response read when reading has already got more than a TTL past its timestamp: an
    /// orphan at once; a request of it waiting here (stamped later: hosts' clocks differ) is
    /// a timeout, as it would be had it been read after this response.
    pub fn too_late_response(
        &mut self,
        key: &str,
        response: Sourced<ResponseEvent>,
    ) -> Vec<Outcome> {
        let id = self.id(key);
        if self.finished.contains_key(&id) || self.responses.contains_key(&id) {
            return self.on_response(key, response).into_iter().collect();
        }
        match self.requests.remove_entry(&id) {
            Some((key, waiting)) => {
                let request = waiting.into_request(key);
                self.needed.release(request.source);
                self.give_up(id, request, Some(response))
            }
            None => {
                let outcome = Outcome::Orphaned {
                    id: Arc::clone(&id),
                    response,
                    reason: OrphanReason::NoRequest,
                };
                self.finish(id, &outcome);
                vec![outcome]
            }
        }
    }

    /// Ends a call as a timeout, with its response (if any) an orphan after it; neither
    /// half is held as waiting any more.
    fn give_up(
        &mut self,
        id: Arc<str>,
        request: Sourced<Request>,
        response: Option<Sourced<ResponseEvent>>,
    ) -> Vec<Outcome> {
        let timed_out = Outcome::TimedOut(request);
        self.finish(Arc::clone(&id), &timed_out);
        let mut outcomes = vec![timed_out];
        if let Some(response) = response {
            self.remember(&id, response.source, response.value.timestamp);
            outcomes.push(Outcome::Orphaned {
                id: Arc::clone(&id),
                response,
                reason: OrphanReason::AfterTimeout,
            });
        }
        outcomes
    }

    /// Halves still waiting whose deadline is before `before`, with their request ids: read
    /// behind the watermark (an old backlog after an idle spell), not yet given up on.
    pub fn waiting_before(&self, before: DateTime<Utc>) -> Vec<(String, Source)> {
        // The heap's earliest deadline is no later than any waiting half's.
        if self
            .deadlines
            .peek()
            .is_none_or(|Reverse((deadline, _, _))| *deadline >= before)
        {
            return Vec::new();
        }
        let requests = self
            .requests
            .iter()
            .filter(|(_, w)| w.timestamp + self.ttl < before)
            .map(|(id, w)| (id.to_string(), w.source));
        let responses = self
            .responses
            .iter()
            .filter(|(_, r)| r.value.timestamp + self.ttl < before)
            .map(|(id, r)| (id.to_string(), r.source));
        requests.chain(responses).collect()
    }

    /// Another half of a finished id: it is remembered, with its record, as long after this
    /// half as after the first (see [`Joiner::memory`]). (After a restart this is how a
    /// replayed partner keeps the id and both records as long as the first run kept them.)
    fn remember(&mut self, id: &Arc<str>, source: Source, at: DateTime<Utc>) {
        let Some(finished) = self.finished.get(id) else {
            return;
        };
        let forget_at = at + self.memory(finished.ended);
        let finished = self.finished.get_mut(id).expect("looked up above");
        finished.push(source);
        self.needed.hold(source);
        if forget_at > finished.forget_at {
            finished.forget_at = forget_at;
            self.deadlines
                .push(Reverse((forget_at, Half::Finished, Arc::clone(id))));
        }
    }

    /// How long after its latest half a finished id is remembered: a TTL for a pair; two for
    /// a timeout or an orphan, which are settled only a TTL after their half. The rule depends
    /// on the halves' event times alone, never on the order in which they were read, so that a
    /// replay in another order after a restart remembers an id exactly as long as the first
    /// run did, and a retry of a timed-out request is a duplicate in both.
    fn memory(&self, ended: Ended) -> TimeDelta {
        match ended {
            Ended::Paired => self.ttl,
            Ended::TimedOut | Ended::Orphaned => self.ttl + self.ttl,
        }
    }

    /// Marks a request id as finished, as an earlier run settled it (after a restart, from
    /// the stored positions and decisions). A half of it already waiting here is part of that
    /// settled id, not something to pair or time out again.
    pub fn restore(&mut self, request_id: &str, ended: Ended, source: Source, at: DateTime<Utc>) {
        let id = self.id(request_id);
        let mut sources = vec![source];
        // Remembered until a TTL after its latest half, as the first run remembered it: both
        // records stay needed together, so a later restart replays both or neither.
        let mut last = at;
        if let Some(request) = self.requests.remove(&id) {
            self.needed.release(request.source);
            sources.push(request.source);
            last = last.max(request.timestamp);
        }
        if let Some(response) = self.responses.remove(&id) {
            self.needed.release(response.source);
            sources.push(response.source);
            last = last.max(response.value.timestamp);
        }
        for s in &sources {
            self.needed.hold(*s);
        }
        let ended = self.finished.get(&id).map_or(ended, |f| f.ended);
        let forget_at = last + self.memory(ended);
        match self.finished.get_mut(&id) {
            Some(f) => {
                for s in sources {
                    f.push(s);
                }
                if forget_at > f.forget_at {
                    f.forget_at = forget_at;
                    self.deadlines
                        .push(Reverse((forget_at, Half::Finished, id)));
                }
            }
            None => {
                self.deadlines
                    .push(Reverse((forget_at, Half::Finished, Arc::clone(&id))));
                self.finished
                    .insert(id, Finished::new(ended, forget_at, &sources));
            }
        }
    }

    /// [`Joiner::restore`] for a replayed response whose own deadline the last commit's
    /// watermark had passed. It was paired before the restart (an orphan is a stored
    /// decision), but its request may be stamped later than it (hosts' clocks differ) and lie
    /// in a window that commit had not written yet: the response is kept, so that the
    /// replayed request forms the pair again and its window decides whether it is counted.
    /// A request of it already replayed and waiting is paired with it now, for the same
    /// reason.
    pub fn restore_settled_response(
        &mut self,
        key: &str,
        response: Sourced<ResponseEvent>,
    ) -> Option<Outcome> {
        let id = self.id(key);
        if !self.finished.contains_key(&id) && self.requests.contains_key(&id) {
            return Some(self.pair_with_waiting_request(&id, response));
        }
        self.restore(
            &id,
            Ended::Paired,
            response.source,
            response.value.timestamp,
        );
        if let Some(finished) = self.finished.get_mut(&id) {
            // Kept only while no request of the id has been seen.
            let alone = finished.sources().all(|s| s.input == response.source.input);
            if finished.ended == Ended::Paired && alone {
                finished.kept = Some(Box::new(response));
            }
        }
        None
    }

    /// Pairs `response` with the request waiting under `id` (the caller checked there is one).
    fn pair_with_waiting_request(
        &mut self,
        id: &Arc<str>,
        response: Sourced<ResponseEvent>,
    ) -> Outcome {
        let (key, waiting) = self
            .requests
            .remove_entry(id)
            .expect("called for a waiting request");
        let request = waiting.into_request(key);
        self.needed.release(request.source);
        let outcome = Outcome::Paired { request, response };
        self.finish(Arc::clone(id), &outcome);
        outcome
    }

    fn finish(&mut self, id: Arc<str>, outcome: &Outcome) {
        let (ended, sources, last) = match outcome {
            Outcome::Paired { request, response } => (
                Ended::Paired,
                [Some(request.source), Some(response.source)],
                request.value.timestamp.max(response.value.timestamp),
            ),
            Outcome::TimedOut(request) => (
                Ended::TimedOut,
                [Some(request.source), None],
                request.value.timestamp,
            ),
            Outcome::Orphaned { response, .. } => (
                Ended::Orphaned,
                [Some(response.source), None],
                response.value.timestamp,
            ),
            Outcome::Duplicate(_) => return,
        };
        for source in sources.iter().flatten() {
            self.needed.hold(*source);
        }
        let forget_at = last + self.memory(ended);
        self.deadlines
            .push(Reverse((forget_at, Half::Finished, Arc::clone(&id))));
        let finished = Finished {
            ended,
            forget_at,
            first: sources,
            more: Vec::new(),
            kept: None,
        };
        self.finished.insert(id, finished);
    }

    /// Gives up on halves whose deadline the watermark has passed, and forgets finished ids
    /// past theirs. Nothing expires while `replaying`: a replay may still bring the partner
    /// that the first run paired a half with.
    pub fn advance(&mut self, watermark: DateTime<Utc>, replaying: bool) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        if replaying {
            return outcomes;
        }
        while let Some(Reverse((deadline, _, _))) = self.deadlines.peek() {
            if *deadline >= watermark {
                break;
            }
            let Some(Reverse((deadline, half, id))) = self.deadlines.pop() else {
                break;
            };
            match half {
                Half::Request => {
                    if let Some((key, waiting)) = self.requests.remove_entry(&id) {
                        let request = waiting.into_request(key);
                        self.needed.release(request.source);
                        let outcome = Outcome::TimedOut(request);
                        self.finish(id, &outcome);
                        outcomes.push(outcome);
                    }
                }
                Half::Response => {
                    if let Some(response) = self.responses.remove(&id) {
                        self.needed.release(response.source);
                        let outcome = Outcome::Orphaned {
                            id: Arc::clone(&id),
                            response,
                            reason: OrphanReason::NoRequest,
                        };
                        self.finish(id, &outcome);
                        outcomes.push(outcome);
                    }
                }
                Half::Finished => {
                    // Only the entry whose own deadline this is; a later finish re-armed it.
                    if self
                        .finished
                        .get(&id)
                        .is_some_and(|f| f.forget_at == deadline)
                    {
                        if let Some(finished) = self.finished.remove(&id) {
                            for source in finished.sources() {
                                self.needed.release(source);
                            }
                        }
                    }
                }
            }
        }
        outcomes
    }
}

/// Tenant, route, model and provider (empty for none: no provider is named so) as the key of
/// the names already seen.
type OwnedNames = (Box<str>, Box<str>, Box<str>, Box<str>);

/// Looks up interned names by borrowed strings, without allocating a key.
trait NamesKey {
    fn key(&self) -> (&str, &str, &str, &str);
}

impl NamesKey for OwnedNames {
    fn key(&self) -> (&str, &str, &str, &str) {
        (&self.0, &self.1, &self.2, &self.3)
    }
}

impl NamesKey for (&str, &str, &str, &str) {
    fn key(&self) -> (&str, &str, &str, &str) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn NamesKey + 'a> for OwnedNames {
    fn borrow(&self) -> &(dyn NamesKey + 'a) {
        self
    }
}

impl PartialEq for dyn NamesKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn NamesKey + '_ {}

impl std::hash::Hash for dyn NamesKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

#[cfg(test)]
mod tests;
