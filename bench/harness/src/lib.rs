//! What the benchmark programs share.

/// A boxed error with its chain of sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The argon2id parameters dt-users is configured with: `DT_USERS_ARGON2_MEMORY_KIB`,
/// `DT_USERS_ARGON2_ITERATIONS`, `DT_USERS_ARGON2_PARALLELISM`, or dt-users' defaults.
pub fn argon2_params() -> Result<argon2::Params, BoxError> {
    fn param(name: &str, default: u32) -> Result<u32, BoxError> {
        match std::env::var(name) {
            Ok(value) => Ok(value.parse().map_err(|e| format!("{name}: {e}"))?),
            Err(_) => Ok(default),
        }
    }
    Ok(argon2::Params::new(
        param("DT_USERS_ARGON2_MEMORY_KIB", 19_456)?,
        param("DT_USERS_ARGON2_ITERATIONS", 2)?,
        param("DT_USERS_ARGON2_PARALLELISM", 1)?,
        None,
    )
    .map_err(|e| format!("argon2 parameters: {e}"))?)
}
