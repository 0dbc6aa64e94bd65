//! OpenTelemetry traces in: the OTLP export request in either of its HTTP encodings
//! ([`json`] for OTLP/JSON, prost for protobuf), the GenAI spans in it turned into calls
//! ([`mapping`]), and the answer in the request's encoding.

pub mod json;
pub mod mapping;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

/// The two encodings of OTLP/HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From a media type without parameters.
    pub fn of(content_type: Option<&str>) -> Option<Self> {
        match content_type? {
            "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    pub fn decode(self, body: &[u8]) -> Result<ExportTraceServiceRequest, String> {
        match self {
            Encoding::Protobuf => ExportTraceServiceRequest::decode(body)
                .map_err(|e| format!("not an OTLP protobuf export request: {e}")),
            Encoding::Json => {
                json::decode(body).map_err(|e| format!("not an OTLP/JSON export request: {e}"))
            }
        }
    }

    /// The success answer, encoded: [`response`].
    pub fn answer(self, rejected: &[String]) -> Vec<u8> {
        let response = response(rejected);
        match self {
            Encoding::Protobuf => response.encode_to_vec(),
            Encoding::Json => {
                let body = match response.partial_success {
                    // int64 as a string, as proto3 JSON writes it.
                    Some(p) => serde_json::json!({"partialSuccess": {
                        "rejectedSpans": p.rejected_spans.to_string(),
                        "errorMessage": p.error_message,
                    }}),
                    None => serde_json::json!({}),
                };
                body.to_string().into_bytes()
            }
        }
    }
}

/// The success answer of an export: empty, or with `partial_success` naming what was refused.
pub fn response(rejected: &[String]) -> ExportTraceServiceResponse {
    let partial_success = (!rejected.is_empty()).then(|| ExportTracePartialSuccess {
        rejected_spans: rejected.len() as i64,
        error_message: refusal_message(rejected),
    });
    ExportTraceServiceResponse { partial_success }
}

/// The first few reasons, so that an exporter's log says what to fix without growing with
/// the batch.
fn refusal_message(rejected: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut message = rejected[..rejected.len().min(SHOWN)].join("; ");
    if rejected.len() > SHOWN {
        message += &format!("; and {} more", rejected.len() - SHOWN);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_success_names_the_first_refusals_in_either_encoding() {
        let rejected: Vec<String> = (0..7).map(|i| format!("span {i}: bad")).collect();
        let decoded =
            ExportTraceServiceResponse::decode(&Encoding::Protobuf.answer(&rejected)[..]).unwrap();
        let partial = decoded.partial_success.unwrap();
        assert_eq!(partial.rejected_spans, 7);
        assert!(partial.error_message.ends_with("span 4: bad; and 2 more"));
        let json: serde_json::Value =
            serde_json::from_slice(&Encoding::Json.answer(&rejected)).unwrap();
        assert_eq!(json["partialSuccess"]["rejectedSpans"], "7");
        assert_eq!(Encoding::Json.answer(&[]), b"{}");
        assert!(Encoding::Protobuf.answer(&[]).is_empty());
    }
}
