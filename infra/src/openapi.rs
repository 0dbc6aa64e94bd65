//! What both APIs' OpenAPI documents share: the API-key security schemes and the error
//! answers. Each service generates its document from its handlers (utoipa) and serves it at
//! `GET /openapi.json`.

use std::collections::BTreeMap;

use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// Adds the two ways to present an API key, and requires one of them on every operation
/// that does not say otherwise (`security(())` on health, metrics and the document itself).
#[derive(Debug)]
pub struct ApiKeys;

impl utoipa::Modify for ApiKeys {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `streamlens-admin keys create`, bound to one tenant",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        doc.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("apiKey", Vec::<String>::new()),
        ]);
    }
}

/// Error answers, each with the shared [`metrics_core::error::ErrorBody`] (`Error` in the
/// document), for an `IntoResponses` implementation to return.
pub fn error_responses(list: &[(u16, &str)]) -> BTreeMap<String, RefOr<Response>> {
    list.iter()
        .map(|&(status, what)| {
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build();
            let response = ResponseBuilder::new()
                .description(what)
                .content("application/json", body)
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// A document as served: pretty JSON.
pub fn to_json(doc: OpenApi) -> String {
    doc.to_pretty_json()
        .expect("an OpenAPI document always serializes")
}
