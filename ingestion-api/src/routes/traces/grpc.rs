//! OTLP/gRPC: the OpenTelemetry `TraceService`, on a port of its own (`OTLP_GRPC_PORT`, 4317
//! as the OTLP specification has it), taking exports exactly as `POST /v1/traces` does. The
//! API key comes in the `authorization` metadata, as exporters send their headers.

use axum::http::{HeaderMap, HeaderName};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};

use super::take;
use crate::error::ApiError;
use crate::routes::AppState;

/// The service, with the batch limit as its largest message and gzip accepted.
pub fn service(state: AppState) -> TraceServiceServer<Traces> {
    let limit = state.config.max_batch_bytes;
    TraceServiceServer::new(Traces { state })
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip)
}

#[derive(Debug)]
pub struct Traces {
    state: AppState,
}

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let headers = headers(request.metadata());
        let tenant = self.state.caller(&headers).await.map_err(status)?;
        let rejected = take(&self.state, &headers, tenant, request.get_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(crate::otlp::response(&rejected)))
    }
}

/// The metadata the HTTP path reads (the key, the request id), as HTTP headers.
fn headers(metadata: &tonic::metadata::MetadataMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in ["authorization", infra::http::REQUEST_ID_HEADER] {
        if let Some(value) = metadata.get(name) {
            if let Ok(value) = value.to_str() {
                if let Ok(value) = value.parse() {
                    headers.insert(HeaderName::from_static(name), value);
                }
            }
        }
    }
    headers
}

/// The gRPC status an exporter acts on: UNAVAILABLE (and RESOURCE_EXHAUSTED) are retried,
/// the rest are not.
fn status(error: ApiError) -> Status {
    let code = match &error {
        ApiError::Unauthenticated(_) => Code::Unauthenticated,
        ApiError::Forbidden(_) => Code::PermissionDenied,
        ApiError::RateLimited { .. } => Code::ResourceExhausted,
        ApiError::Unavailable(_) | ApiError::KeysUnavailable => Code::Unavailable,
        ApiError::PayloadTooLarge { .. } | ApiError::TooManyItems { .. } => Code::ResourceExhausted,
        _ => Code::InvalidArgument,
    };
    Status::new(code, error.to_string())
}
