//! What the state suites share: the real Redis they run on, and key prefixes of their own.

/// The Redis every test machine runs (`SWITCHYARD_TEST_REDIS` overrides).
pub fn redis_url() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    format!(
        "test-{}-{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Why a suite stops when Redis is not there (it is never skipped).
pub fn required(url: &str, e: impl std::fmt::Display) -> String {
    format!("Redis is required at {url} (set SWITCHYARD_TEST_REDIS): {e}")
}
