//! `GET /openapi.json`: the hand-written OpenAPI 3 document of every route
//! this router serves (`openapi.json` beside this file). `tests/api.rs`
//! checks it against the router both ways: every documented operation is
//! routed, every other method on a documented path answers 405.
use axum::http::header;
use axum::response::IntoResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// `GET /openapi.json`.
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_json_with_a_response_per_operation() {
        let doc: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("openapi.json should be valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let paths = doc["paths"].as_object().expect("paths");
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("operations") {
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} should document its responses"
                );
            }
        }
    }
}
