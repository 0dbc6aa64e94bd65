//! Turning untrusted JSON into events.
//!
//! Serde alone stops at the first problem and cannot say which field it was, so parsing reads
//! the object field by field, collecting every type error, then runs the `validator` rules
//! declared on the event types, then the checks that depend on configuration and on the
//! current time (passed in, never read here). The caller gets either a valid event or the
//! full list of fields that are wrong and why.
//!
//! The `*_bytes` functions first try serde straight into the event type, which is several
//! times cheaper than building a `serde_json::Value`. That typed parse succeeds only where the
//! field-by-field reading would find no type error and would read the same values, so it
//! changes the cost, never the verdict; any failure falls back to the field-by-field reading
//! for its precise errors.

use std::borrow::Cow;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use validator::{Validate, ValidationError, ValidationErrors};

use crate::events::{Event, EventKind, RequestEvent, ResponseEvent};
use crate::ids::{ErrorType, Invalid, Model, Provider, RequestId, Route, TenantId};

/// Largest `metadata` object accepted, measured as compact JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most tokens of one kind in one call: far above any model's context, far below what could
/// overflow a window's sums.
pub const MAX_TOKENS: u64 = 100_000_000;

/// Bounds that operators configure.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How far in the future an event timestamp may lie (clock skew between hosts).
    pub max_future_skew: TimeDelta,
    /// How old an event may be; older events fall outside retention.
    pub max_age: TimeDelta,
    /// Ceiling for `latency_ms` and `time_to_first_token_ms`.
    pub max_latency_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_future_skew: TimeDelta::minutes(5),
            max_age: TimeDelta::days(7),
            max_latency_ms: 3_600_000,
        }
    }
}

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses a request event from a JSON value.
pub fn parse_request(
    value: &Value,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<RequestEvent, Vec<FieldError>> {
    let mut f = Fields::of(value)?;
    let event = RequestEvent {
        request_id: f.required_name::<RequestId>("request_id"),
        tenant_id: f.required_name::<TenantId>("tenant_id"),
        route: f.required_name::<Route>("route"),
        model: f.required_name::<Model>("model"),
        provider: f.optional_name::<Provider>("provider"),
        timestamp: f.required_timestamp("timestamp"),
        prompt_tokens: f.required_count("prompt_tokens"),
        user_id_hash: f.optional_str("user_id_hash"),
        metadata: f.optional_object("metadata"),
    };
    check_request(f, &event, now, limits).map(|()| event)
}

fn check_request(
    mut f: Fields<'_>,
    event: &RequestEvent,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<(), Vec<FieldError>> {
    f.add_validator(event.validate());
    f.check_timestamp("timestamp", event.timestamp, now, limits);
    f.check_tokens("prompt_tokens", Some(event.prompt_tokens));
    f.finish(())
}

/// Parses a response event from a JSON value.
pub fn parse_response(
    value: &Value,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<ResponseEvent, Vec<FieldError>> {
    let mut f = Fields::of(value)?;
    let event = ResponseEvent {
        request_id: f.required_name::<RequestId>("request_id"),
        timestamp: f.required_timestamp("timestamp"),
        latency_ms: f.required_count("latency_ms"),
        completion_tokens: f.required_count("completion_tokens"),
        finish_reason: f.required_str("finish_reason"),
        error: f.optional_str("error"),
        error_type: f.optional_name::<ErrorType>("error_type"),
        time_to_first_token_ms: f.optional_count("time_to_first_token_ms"),
        cached_prompt_tokens: f.optional_count("cached_prompt_tokens"),
        cache_creation_tokens: f.optional_count("cache_creation_tokens"),
        reasoning_tokens: f.optional_count("reasoning_tokens"),
        response_model: f.optional_name::<Model>("response_model"),
        tenant_id: f.optional_name::<TenantId>("tenant_id"),
    };
    check_response(f, &event, now, limits).map(|()| event)
}

fn check_response(
    mut f: Fields<'_>,
    event: &ResponseEvent,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<(), Vec<FieldError>> {
    f.add_validator(event.validate());
    f.check_timestamp("timestamp", event.timestamp, now, limits);
    f.check_tokens("completion_tokens", Some(event.completion_tokens));
    f.check_tokens("cached_prompt_tokens", event.cached_prompt_tokens);
    f.check_tokens("cache_creation_tokens", event.cache_creation_tokens);
    f.check_tokens("reasoning_tokens", event.reasoning_tokens);
    if event
        .reasoning_tokens
        .is_some_and(|n| n > event.completion_tokens)
    {
        f.fail("reasoning_tokens", "must not exceed completion_tokens");
    }
    let ceiling = limits.max_latency_ms;
    if event.latency_ms > ceiling {
        f.fail("latency_ms", format!("must be at most {ceiling}"));
    }
    if let Some(ttft) = event.time_to_first_token_ms {
        if ttft > event.latency_ms {
            f.fail("time_to_first_token_ms", "must not exceed latency_ms");
        }
    }
    f.finish(())
}

/// Checks an event built from another format than our JSON (an OpenTelemetry span) by the
/// same rules the JSON reading applies once the types are right.
pub fn check_event(
    event: Event,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<Event, Vec<FieldError>> {
    // Checked in place: an event is a few hundred bytes, and it is moved on only once.
    let checked = match &event {
        Event::Request(r) => check_request(Fields::empty(), r, now, limits),
        Event::Response(r) => check_response(Fields::empty(), r, now, limits),
    };
    checked.map(|()| event)
}

/// Parses a batch item: an event of either kind, told apart by its `type` field.
pub fn parse_event(
    value: &Value,
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<Event, Vec<FieldError>> {
    match value.get("type").and_then(Value::as_str) {
        Some("request") => parse_request(value, now, limits).map(Event::Request),
        Some("response") => parse_response(value, now, limits).map(Event::Response),
        _ if !value.is_object() => Err(vec![FieldError::new("", "must be a JSON object")]),
        _ => Err(vec![FieldError::new(
            "type",
            r#"must be "request" or "response""#,
        )]),
    }
}

/// [`parse_request`] from raw JSON bytes, taking the typed fast path when it can.
pub fn parse_request_bytes(
    bytes: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<RequestEvent, Vec<FieldError>> {
    match serde_json::from_slice::<RequestEvent>(bytes) {
        Ok(event) => check_request(Fields::empty(), &event, now, limits).map(|()| event),
        Err(_) => parse_request(&to_value(bytes)?, now, limits),
    }
}

/// [`parse_response`] from raw JSON bytes, taking the typed fast path when it can.
pub fn parse_response_bytes(
    bytes: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<ResponseEvent, Vec<FieldError>> {
    match serde_json::from_slice::<ResponseEvent>(bytes) {
        Ok(event) => check_response(Fields::empty(), &event, now, limits).map(|()| event),
        Err(_) => parse_response(&to_value(bytes)?, now, limits),
    }
}

/// [`parse_event`] from raw JSON bytes, taking the typed fast path when it can.
pub fn parse_event_bytes(
    bytes: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<Event, Vec<FieldError>> {
    let typed = serde_json::from_slice::<AnyEvent>(bytes).ok();
    match typed.and_then(AnyEvent::into_event) {
        Some(event) => check_event(event, now, limits),
        None => parse_event(&to_value(bytes)?, now, limits),
    }
}

/// What reading an event ends with: the event, or every offending field.
pub type Verdict = Result<Event, Vec<FieldError>>;

/// A JSON array of events read in one pass: `each` gets every item's kind and verdict, in
/// order, as it is read, and the answer is how many items there were. `None` when the body is
/// no array or some item is not an event of a known kind with every required field well typed:
/// then each item is read on its own by [`parse_event_bytes`], which names every offending
/// field, and whatever `each` made of the items before that one is to be discarded. Where it
/// answers, it answers as [`parse_event_bytes`] does item by item, without first splitting the
/// array into raw items or holding the items read so far.
pub fn parse_event_array(
    bytes: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
    each: impl FnMut(EventKind, Verdict),
) -> Option<usize> {
    struct Items<'a, F> {
        now: DateTime<Utc>,
        limits: &'a Limits,
        each: F,
    }

    impl<'de, F: FnMut(EventKind, Verdict)> serde::de::Visitor<'de> for Items<'_, F> {
        type Value = usize;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of events")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            mut self,
            mut seq: A,
        ) -> Result<usize, A::Error> {
            let mut count = 0;
            while let Some(item) = seq.next_element::<AnyEvent>()? {
                let event = item
                    .into_event()
                    .ok_or_else(|| serde::de::Error::custom("not a well-typed event"))?;
                (self.each)(event.kind(), check_event(event, self.now, self.limits));
                count += 1;
            }
            Ok(count)
        }
    }

    // Checked as UTF-8 once, in one pass, rather than string by string as it is read.
    let mut reader = serde_json::Deserializer::from_str(std::str::from_utf8(bytes).ok()?);
    let count = (&mut reader)
        .deserialize_seq(Items { now, limits, each })
        .ok()?;
    reader.end().ok()?;
    Some(count)
}

/// Every field of either event kind, read in one pass. A field of the other kind that is
/// present with the wrong type fails this parse though the field-by-field reading ignores it;
/// that only sends the item down the slow path, which then accepts it.
#[derive(Deserialize)]
struct AnyEvent {
    #[serde(rename = "type")]
    kind: Option<DeclaredKind>,
    request_id: Option<RequestId>,
    tenant_id: Option<TenantId>,
    route: Option<Route>,
    model: Option<Model>,
    provider: Option<Provider>,
    #[serde(default, deserialize_with = "rfc3339_some")]
    timestamp: Option<DateTime<Utc>>,
    prompt_tokens: Option<u64>,
    user_id_hash: Option<String>,
    metadata: Option<Map<String, Value>>,
    latency_ms: Option<u64>,
    completion_tokens: Option<u64>,
    finish_reason: Option<String>,
    error: Option<String>,
    error_type: Option<ErrorType>,
    time_to_first_token_ms: Option<u64>,
    cached_prompt_tokens: Option<u64>,
    cache_creation_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    response_model: Option<Model>,
}

/// An item's `type`, read without allocating; an unknown one is not an event.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum DeclaredKind {
    Request,
    Response,
    #[serde(other)]
    Unknown,
}

impl AnyEvent {
    /// The event, if its kind is known and every required field is present.
    fn into_event(self) -> Option<Event> {
        match self.kind? {
            DeclaredKind::Request => Some(Event::Request(RequestEvent {
                request_id: self.request_id?,
                tenant_id: self.tenant_id?,
                route: self.route?,
                model: self.model?,
                provider: self.provider,
                timestamp: self.timestamp?,
                prompt_tokens: self.prompt_tokens?,
                user_id_hash: self.user_id_hash,
                metadata: self.metadata,
            })),
            DeclaredKind::Response => Some(Event::Response(ResponseEvent {
                request_id: self.request_id?,
                timestamp: self.timestamp?,
                latency_ms: self.latency_ms?,
                completion_tokens: self.completion_tokens?,
                finish_reason: self.finish_reason?,
                error: self.error,
                error_type: self.error_type,
                time_to_first_token_ms: self.time_to_first_token_ms,
                cached_prompt_tokens: self.cached_prompt_tokens,
                cache_creation_tokens: self.cache_creation_tokens,
                reasoning_tokens: self.reasoning_tokens,
                response_model: self.response_model,
                tenant_id: self.tenant_id,
            })),
            DeclaredKind::Unknown => None,
        }
    }
}

fn rfc3339_some<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<Cow<'de, str>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(&text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom),
    }
}

fn to_value(bytes: &[u8]) -> Result<Value, Vec<FieldError>> {
    serde_json::from_slice(bytes)
        .map_err(|e| vec![FieldError::new("", format!("not valid JSON: {e}"))])
}

/// Writes a timestamp as RFC 3339 in UTC with `Z`, with 0, 3, 6 or 9 fractional digits as
/// needed (the form chrono's serde gives), without going through `fmt` or the heap: it runs
/// for every event written.
pub fn write_rfc3339<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    /// The text, at most `2024-05-01T11:59:30.123456789Z`.
    struct Text {
        bytes: [u8; 30],
        len: usize,
    }
    impl Text {
        fn push(&mut self, byte: u8) {
            self.bytes[self.len] = byte;
            self.len += 1;
        }
        fn digits(&mut self, value: u32, width: usize) {
            let mut v = value;
            for at in (self.len..self.len + width).rev() {
                self.bytes[at] = b'0' + (v % 10) as u8;
                v /= 10;
            }
            self.len += width;
        }
    }
    // Read once: each of chrono's accessors on a `DateTime` converts it to local time again.
    let (date, time) = (at.date_naive(), at.time());
    let year = date.year();
    if !(0..=9999).contains(&year) {
        return serializer.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    }
    let mut out = Text {
        bytes: [0; 30],
        len: 0,
    };
    out.digits(year as u32, 4);
    out.push(b'-');
    out.digits(date.month(), 2);
    out.push(b'-');
    out.digits(date.day(), 2);
    out.push(b'T');
    out.digits(time.hour(), 2);
    out.push(b':');
    out.digits(time.minute(), 2);
    out.push(b':');
    // A leap second shows as second 60, as chrono writes it.
    let (second, nanos) = match time.nanosecond() {
        n if n >= 1_000_000_000 => (time.second() + 1, n - 1_000_000_000),
        n => (time.second(), n),
    };
    out.digits(second, 2);
    match nanos {
        0 => {}
        n if n % 1_000_000 == 0 => {
            out.push(b'.');
            out.digits(n / 1_000_000, 3);
        }
        n if n % 1_000 == 0 => {
            out.push(b'.');
            out.digits(n / 1_000, 6);
        }
        n => {
            out.push(b'.');
            out.digits(n, 9);
        }
    }
    out.push(b'Z');
    serializer.serialize_str(
        std::str::from_utf8(&out.bytes[..out.len]).map_err(serde::ser::Error::custom)?,
    )
}

/// Deserializes a timestamp exactly as the field-by-field reading does: RFC 3339 only.
pub fn rfc3339<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = Cow::<'de, str>::deserialize(deserializer)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

/// `metadata`: free-form, but small.
pub fn small_object(value: &Map<String, Value>) -> Result<(), ValidationError> {
    let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if size > MAX_METADATA_BYTES {
        return Err(invalid("must be at most 4096 bytes of JSON"));
    }
    Ok(())
}

fn invalid(reason: &'static str) -> ValidationError {
    ValidationError::new("invalid").with_message(Cow::Borrowed(reason))
}

/// The name types, to the field-by-field reading.
trait Name: Sized {
    fn parse_name(text: String) -> Result<Self, Invalid>;
    fn placeholder() -> Self;
}

macro_rules! name {
    ($($t:ty),*) => {$(
        impl Name for $t {
            fn parse_name(text: String) -> Result<Self, Invalid> {
                <$t>::parse(text)
            }
            fn placeholder() -> Self {
                <$t>::placeholder()
            }
        }
    )*};
}
name!(RequestId, TenantId, Route, Model, Provider, ErrorType);

/// Reads typed fields out of a JSON object, remembering every failure.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// For an event that serde already read without a type error.
    fn empty() -> Self {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        Self {
            object: EMPTY.get_or_init(Map::new),
            errors: Vec::new(),
        }
    }

    fn of(value: &'a Value) -> Result<Self, Vec<FieldError>> {
        match value.as_object() {
            Some(object) => Ok(Self {
                object,
                errors: Vec::new(),
            }),
            None => Err(vec![FieldError::new("", "must be a JSON object")]),
        }
    }

    fn fail(&mut self, field: &str, reason: impl Into<String>) {
        // One reason per field: the first is the one worth fixing.
        if !self.errors.iter().any(|e| e.field == field) {
            self.errors.push(FieldError::new(field, reason));
        }
    }

    /// A present, non-null value; `null` counts as absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.object.get(field).filter(|v| !v.is_null())
    }

    fn required_str(&mut self, field: &str) -> String {
        match self.get(field) {
            None => {
                self.fail(field, "is required");
                String::new()
            }
            Some(_) => self.optional_str(field).unwrap_or_default(),
        }
    }

    /// A name of its own type; when it is missing or invalid, a placeholder that is never
    /// handed out (the failure is recorded), so the other fields are still checked.
    fn required_name<T: Name>(&mut self, field: &str) -> T {
        if self.get(field).is_none() {
            self.fail(field, "is required");
            return T::placeholder();
        }
        self.optional_name(field).unwrap_or_else(T::placeholder)
    }

    fn optional_name<T: Name>(&mut self, field: &str) -> Option<T> {
        let text = self.optional_str(field)?;
        match T::parse_name(text) {
            Ok(name) => Some(name),
            Err(Invalid(reason)) => {
                self.fail(field, reason);
                None
            }
        }
    }

    fn optional_str(&mut self, field: &str) -> Option<String> {
        match self.get(field)? {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.fail(field, "must be a string");
                None
            }
        }
    }

    fn check_tokens(&mut self, field: &str, value: Option<u64>) {
        if value.is_some_and(|n| n > MAX_TOKENS) {
            self.fail(field, format!("must be at most {MAX_TOKENS}"));
        }
    }

    fn required_count(&mut self, field: &str) -> u64 {
        match self.get(field) {
            None => {
                self.fail(field, "is required");
                0
            }
            Some(_) => self.optional_count(field).unwrap_or_default(),
        }
    }

    fn optional_count(&mut self, field: &str) -> Option<u64> {
        let value = self.get(field)?;
        if let Some(n) = value.as_u64() {
            return Some(n);
        }
        let reason = match value {
            Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => "must not be negative",
            Value::Number(n) if n.as_f64().is_some_and(|n| n < 0.0) => "must not be negative",
            Value::Number(n) if n.is_f64() => "must be a whole number",
            _ => "must be a non-negative integer",
        };
        self.fail(field, reason);
        None
    }

    fn required_timestamp(&mut self, field: &str) -> DateTime<Utc> {
        let parsed = match self.get(field) {
            None => Err("is required"),
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| "must be an RFC 3339 timestamp, e.g. 2024-05-01T12:00:00Z"),
            Some(_) => Err("must be an RFC 3339 timestamp string"),
        };
        parsed.unwrap_or_else(|reason| {
            self.fail(field, reason);
            DateTime::UNIX_EPOCH
        })
    }

    fn optional_object(&mut self, field: &str) -> Option<Map<String, Value>> {
        match self.get(field)? {
            Value::Object(map) => Some(map.clone()),
            _ => {
                self.fail(field, "must be a JSON object");
                None
            }
        }
    }

    fn check_timestamp(
        &mut self,
        field: &str,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        limits: &Limits,
    ) {
        if at > now + limits.max_future_skew {
            let secs = limits.max_future_skew.num_seconds();
            self.fail(
                field,
                format!("must not be more than {secs}s in the future"),
            );
        } else if at < now - limits.max_age {
            let secs = limits.max_age.num_seconds();
            self.fail(field, format!("must not be more than {secs}s in the past"));
        }
    }

    fn add_validator(&mut self, result: Result<(), ValidationErrors>) {
        let Err(errors) = result else { return };
        let mut fields: Vec<_> = errors.field_errors().into_iter().collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        for (field, list) in fields {
            let reason = list
                .first()
                .and_then(|e| e.message.as_deref())
                .unwrap_or("is invalid")
                .to_owned();
            self.fail(&field, reason);
        }
    }

    fn finish<T>(self, event: T) -> Result<T, Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(event)
        } else {
            Err(self.errors)
        }
    }
}

#[cfg(test)]
mod tests;
