//! The errors the page's commands answer with: a code the glue turns into an error class
//! (`refused`, `auth`, `not_connected`, `protocol`, ...) and a message a person can act on.

use serde_json::{Value as Json, json};

/// A command's failure, as the glue sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebError {
    pub code: &'static str,
    pub message: String,
}

impl WebError {
    pub fn new(code: &'static str, message: impl Into<String>) -> WebError {
        WebError {
            code,
            message: message.into(),
        }
    }

    /// The glue sent a command this library does not take (a bug in the glue or its caller).
    pub fn bad_request(message: impl Into<String>) -> WebError {
        WebError::new("bad_request", message)
    }

    pub fn disposed(message: impl Into<String>) -> WebError {
        WebError::new("disposed", message)
    }

    pub fn schema(message: impl Into<String>) -> WebError {
        WebError::new("schema", message)
    }

    pub fn unknown_state(message: impl Into<String>) -> WebError {
        WebError::new("unknown_state", message)
    }

    pub fn to_json(&self) -> Json {
        json!({ "code": self.code, "message": self.message })
    }
}

impl std::fmt::Display for WebError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for WebError {}
