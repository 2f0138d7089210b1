//! Errors raised by the kernels. Every variant names the argument, what was expected and what came.

use std::fmt;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpmError {
    /// An array has the wrong number of dimensions or a size that does not match the others.
    Shape { arg: &'static str, expected: String, got: String },
    /// A scalar parameter is out of its domain (τ ≤ 0, β ≤ 0, unknown reduction, ...).
    Value { arg: &'static str, expected: String, got: String },
    /// An output buffer is not a contiguous row-major array (outputs are allocated by the caller).
    Layout { arg: &'static str },
}

impl GpmError {
    pub fn shape(arg: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        GpmError::Shape { arg, expected: expected.into(), got: got.into() }
    }

    pub fn value(arg: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        GpmError::Value { arg, expected: expected.into(), got: got.into() }
    }
}

impl fmt::Display for GpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpmError::Shape { arg, expected, got } => {
                write!(f, "{arg}: expected shape {expected}, got {got}")
            }
            GpmError::Value { arg, expected, got } => {
                write!(f, "{arg}: expected {expected}, got {got}")
            }
            GpmError::Layout { arg } => {
                write!(f, "{arg}: expected a contiguous row-major output buffer")
            }
        }
    }
}

impl std::error::Error for GpmError {}

pub type Result<T> = std::result::Result<T, GpmError>;
