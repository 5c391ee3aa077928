//! Error responses: `Status` bodies with the real server's codes, reasons and messages, so
//! kube-rs and kubectl classify them as they would on a cluster.

use axum::body::Body;
use axum::response::Response;
use serde_json::{Value, json};

use super::resources::ResourceType;

/// A failed request, rendered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, resource: &ResourceType, name: &str) -> ApiError {
        let mut details = json!({"name": name, "kind": resource.plural});
        if !resource.group.is_empty() {
            details["group"] = json!(resource.group);
        }
        self.details = Some(details);
        self
    }

    pub fn not_found(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified_plural()),
        )
        .with_details(resource, name)
    }

    pub fn already_exists(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified_plural()),
        )
        .with_details(resource, name)
    }

    /// 409 Conflict: `why` completes "Operation cannot be fulfilled on pods "x": ".
    pub fn conflict(resource: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                resource.qualified_plural()
            ),
        )
        .with_details(resource, name)
    }

    pub fn stale(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 Invalid with one cause per `(field, cause reason, message)`.
    pub fn invalid(
        resource: &ResourceType,
        name: &str,
        causes: &[(String, &'static str, String)],
    ) -> ApiError {
        let summary: Vec<String> = causes
            .iter()
            .map(|(field, _, message)| format!("{field}: {message}"))
            .collect();
        let message = match summary.len() {
            1 => format!("{} \"{name}\" is invalid: {}", resource.kind, summary[0]),
            _ => format!(
                "{} \"{name}\" is invalid: [{}]",
                resource.kind,
                summary.join(", ")
            ),
        };
        let mut details = json!({
            "name": name,
            "kind": resource.kind,
            "causes": causes.iter().map(|(field, reason, message)| json!({
                "reason": reason, "message": message, "field": field,
            })).collect::<Vec<_>>(),
        });
        if !resource.group.is_empty() {
            details["group"] = json!(resource.group);
        }
        ApiError {
            code: 422,
            reason: "Invalid",
            message,
            details: Some(details),
        }
    }

    /// 422 without field causes (a patch that cannot be applied).
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(422, "Invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn path_not_found(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn method_not_allowed(method: &str, what: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource ({method} {what})"
            ),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
        )
    }

    /// The `Status` object (also the `object` of a watch `ERROR` event).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    pub fn into_response(self) -> Response {
        json_response(self.code, &self.to_status())
    }
}

/// A JSON response with `code`.
pub fn json_response(code: u16, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::api::resources::{PODS, find};

    #[test]
    fn not_found_names_the_resource_as_the_real_server_does() {
        let status = ApiError::not_found(PODS, "p").to_status();
        assert_eq!(status["message"], "pods \"p\" not found");
        assert_eq!(status["details"], json!({"name": "p", "kind": "pods"}));
        let deployments = find("apps", "v1", "deployments").unwrap();
        let status = ApiError::not_found(deployments, "d").to_status();
        assert_eq!(status["message"], "deployments.apps \"d\" not found");
        assert_eq!(status["details"]["group"], "apps");
    }
}
