//! Typed errors. Each says what is wrong and where, so that a `400` reason phrase can
//! name the defect ("Content-Length 300 exceeds body of 120 bytes").

use thiserror::Error;

/// Why a message could not be parsed at all (framing, start line, header rows).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("message head is not terminated by an empty line")]
    Incomplete,
    #[error("message head is not valid UTF-8 at byte {0}")]
    NotUtf8(usize),
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    #[error("unsupported SIP version {0}")]
    Version(String),
    #[error("status code {0} out of range 100-699")]
    StatusCode(u32),
    #[error("malformed header row {row}: {what}")]
    HeaderRow { row: usize, what: &'static str },
    #[error("invalid Content-Length: {0}")]
    ContentLength(String),
    #[error("multiple Content-Length headers")]
    MultipleContentLength,
    #[error("Content-Length {declared} exceeds body of {available} bytes")]
    BodyTooShort { declared: usize, available: usize },
    #[error("message without Content-Length on a stream transport")]
    MissingContentLength,
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
}

/// Why a header (or a URI inside one) could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("multiple {0} headers where one is allowed")]
    Multiple(&'static str),
    #[error("malformed {header}: {what}")]
    Malformed { header: &'static str, what: String },
    #[error("{header} value {value} overflows")]
    Overflow { header: &'static str, value: String },
    #[error("malformed URI: {0}")]
    Uri(String),
}

impl HeaderError {
    pub(crate) fn malformed(header: &'static str, what: impl Into<String>) -> Self {
        HeaderError::Malformed {
            header,
            what: what.into(),
        }
    }
}
