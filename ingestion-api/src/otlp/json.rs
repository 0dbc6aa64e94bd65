//! OTLP/JSON, read into the protobuf messages so that one mapping serves both encodings.
//!
//! OTLP/JSON is not proto3's canonical JSON: trace and span ids are hex, not base64; enums are
//! integers; 64-bit integers come as strings or as numbers. Field names are lowerCamelCase, and
//! the proto names are accepted too. Unknown fields are ignored, as the specification asks.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as common;
use opentelemetry_proto::tonic::resource::v1::Resource as PbResource;
use opentelemetry_proto::tonic::trace::v1 as trace;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Decodes an OTLP/JSON export request.
pub fn decode(bytes: &[u8]) -> Result<ExportTraceServiceRequest, serde_json::Error> {
    let export: Export = serde_json::from_slice(bytes)?;
    Ok(ExportTraceServiceRequest {
        resource_spans: export.resource_spans.into_iter().map(Into::into).collect(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Export {
    #[serde(default, alias = "resource_spans", deserialize_with = "list")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans {
    #[serde(default)]
    resource: Option<Resource>,
    #[serde(default, alias = "scope_spans", deserialize_with = "list")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(default, deserialize_with = "list")]
    attributes: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct ScopeSpans {
    #[serde(default, deserialize_with = "list")]
    spans: Vec<Span>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Span {
    #[serde(default, alias = "trace_id", deserialize_with = "hex_id")]
    trace_id: Vec<u8>,
    #[serde(default, alias = "span_id", deserialize_with = "hex_id")]
    span_id: Vec<u8>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, alias = "start_time_unix_nano", deserialize_with = "u64_any")]
    start_time_unix_nano: u64,
    #[serde(default, alias = "end_time_unix_nano", deserialize_with = "u64_any")]
    end_time_unix_nano: u64,
    #[serde(default, deserialize_with = "list")]
    attributes: Vec<KeyValue>,
    #[serde(default)]
    status: Option<Status>,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, deserialize_with = "i64_any")]
    code: i64,
}

#[derive(Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: Option<AnyValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyValue {
    #[serde(default, alias = "string_value")]
    string_value: Option<String>,
    #[serde(default, alias = "bool_value")]
    bool_value: Option<bool>,
    #[serde(default, alias = "int_value", deserialize_with = "some_i64_any")]
    int_value: Option<i64>,
    #[serde(default, alias = "double_value", deserialize_with = "some_f64_any")]
    double_value: Option<f64>,
    #[serde(default, alias = "array_value")]
    array_value: Option<Values<AnyValue>>,
    #[serde(default, alias = "kvlist_value")]
    kvlist_value: Option<Values<KeyValue>>,
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Values<T> {
    #[serde(default = "Vec::new", deserialize_with = "list")]
    values: Vec<T>,
}

/// `null` reads as an empty list.
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A trace or span id: hex, as OTLP/JSON writes it.
fn hex_id<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = Option::<String>::deserialize(d)?.unwrap_or_default();
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(D::Error::custom(format!(
            "an id must be hex digits, got {text:?}"
        )));
    }
    let digit = |b: u8| (b as char).to_digit(16).expect("checked above") as u8;
    Ok(text
        .as_bytes()
        .chunks(2)
        .map(|pair| digit(pair[0]) << 4 | digit(pair[1]))
        .collect())
}

/// A 64-bit integer as a JSON number or a decimal string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Int {
    Number(serde_json::Number),
    Text(String),
}

impl Int {
    fn text(&self) -> String {
        match self {
            Int::Number(n) => n.to_string(),
            Int::Text(t) => t.trim().to_owned(),
        }
    }
}

/// A number in any of the forms above, parsed as `T`; `what` names `T` in the error.
fn number<'de, D: Deserializer<'de>, T: std::str::FromStr>(
    d: D,
    what: &str,
) -> Result<Option<T>, D::Error> {
    let Some(int) = Option::<Int>::deserialize(d)? else {
        return Ok(None);
    };
    let text = int.text();
    text.parse()
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{text} is not {what}")))
}

fn u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(number(d, "a non-negative 64-bit integer")?.unwrap_or(0))
}

fn i64_any<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(some_i64_any(d)?.unwrap_or(0))
}

fn some_i64_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    number(d, "a 64-bit integer")
}

/// A double as a number, or as the strings proto3 JSON allows ("NaN", "Infinity", digits).
fn some_f64_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number(d, "a number")
}

impl From<ResourceSpans> for trace::ResourceSpans {
    fn from(r: ResourceSpans) -> Self {
        trace::ResourceSpans {
            resource: r.resource.map(|r| PbResource {
                attributes: r.attributes.into_iter().map(Into::into).collect(),
                ..Default::default()
            }),
            scope_spans: r
                .scope_spans
                .into_iter()
                .map(|s| trace::ScopeSpans {
                    spans: s.spans.into_iter().map(Into::into).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

impl From<Span> for trace::Span {
    fn from(s: Span) -> Self {
        trace::Span {
            trace_id: s.trace_id,
            span_id: s.span_id,
            name: s.name.unwrap_or_default(),
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            attributes: s.attributes.into_iter().map(Into::into).collect(),
            status: s.status.map(|status| trace::Status {
                message: status.message.unwrap_or_default(),
                code: i32::try_from(status.code).unwrap_or(-1),
            }),
            ..Default::default()
        }
    }
}

impl From<KeyValue> for common::KeyValue {
    fn from(kv: KeyValue) -> Self {
        common::KeyValue {
            key: kv.key,
            value: kv.value.map(Into::into),
            ..Default::default()
        }
    }
}

impl From<AnyValue> for common::AnyValue {
    fn from(v: AnyValue) -> Self {
        use common::any_value::Value;
        let value = if let Some(s) = v.string_value {
            Some(Value::StringValue(s))
        } else if let Some(b) = v.bool_value {
            Some(Value::BoolValue(b))
        } else if let Some(i) = v.int_value {
            Some(Value::IntValue(i))
        } else if let Some(d) = v.double_value {
            Some(Value::DoubleValue(d))
        } else if let Some(a) = v.array_value {
            Some(Value::ArrayValue(common::ArrayValue {
                values: a.values.into_iter().map(Into::into).collect(),
            }))
        } else {
            v.kvlist_value.map(|l| {
                Value::KvlistValue(common::KeyValueList {
                    values: l.values.into_iter().map(Into::into).collect(),
                })
            })
        };
        common::AnyValue { value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    /// What the OpenTelemetry Python SDK's OTLP/JSON shape looks like for one GenAI span
    /// (ids in hex, times as strings, an int as a string, status code as an integer).
    const GENAI_SPAN: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"support-bot"}}]},
      "scopeSpans":[{"scope":{"name":"opentelemetry.instrumentation.openai"},"spans":[{
        "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
        "name":"chat gpt-4o","kind":3,
        "startTimeUnixNano":"1764000000000000000","endTimeUnixNano":1764000001250000000,
        "attributes":[
          {"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},
          {"key":"gen_ai.request.model","value":{"stringValue":"gpt-4o"}},
          {"key":"gen_ai.usage.input_tokens","value":{"intValue":"812"}},
          {"key":"gen_ai.usage.output_tokens","value":{"intValue":95}},
          {"key":"gen_ai.response.finish_reasons","value":{"arrayValue":{"values":[{"stringValue":"stop"}]}}},
          {"key":"gen_ai.server.time_to_first_token","value":{"doubleValue":0.25}}],
        "status":{"code":1},
        "unknownField":{"anything":[1,2]}}]}]}]}"#;

    #[test]
    fn an_sdk_shaped_export_reads_into_the_protobuf_messages() {
        let export = decode(GENAI_SPAN.as_bytes()).unwrap();
        let span = &export.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.trace_id[0], 0x5b);
        assert_eq!(
            span.span_id,
            [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
        );
        assert_eq!(span.start_time_unix_nano, 1_764_000_000_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_764_000_001_250_000_000);
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(1));
        let tokens = |key: &str| {
            let kv = span.attributes.iter().find(|kv| kv.key == key).unwrap();
            kv.value.as_ref().unwrap().value.clone()
        };
        assert_eq!(
            tokens("gen_ai.usage.input_tokens"),
            Some(Value::IntValue(812))
        );
        assert_eq!(
            tokens("gen_ai.usage.output_tokens"),
            Some(Value::IntValue(95))
        );
        let resource = export.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0].key, "service.name");
    }

    #[test]
    fn proto_field_names_and_nulls_are_read_too() {
        let export = decode(
            br#"{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"0102","span_id":null,
                "start_time_unix_nano":5,"attributes":null}]}]}]}"#,
        )
        .unwrap();
        let span = &export.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, [1, 2]);
        assert!(span.span_id.is_empty());
        assert_eq!(span.start_time_unix_nano, 5);
        assert_eq!(decode(b"{}").unwrap().resource_spans.len(), 0);
    }

    #[test]
    fn what_is_not_otlp_json_is_refused_with_why() {
        for (body, why) in [
            (&br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz"}]}]}]}"#[..], "hex"),
            (br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"-1"}]}]}]}"#, "non-negative"),
            (br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"a","value":{"intValue":"1e3"}}]}]}]}]}"#, "64-bit"),
            (br#"{"resourceSpans":7}"#, "sequence"),
            (br#"not json"#, "expected"),
        ] {
            let error = decode(body).unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
        }
    }
}
