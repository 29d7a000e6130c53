//! Glue between a pool and the workspace's [`resilience::CircuitBreaker`], plus the [`Outcome`]
//! of one upstream request, which both the breaker and the outlier detector learn from.

use resilience::{BreakerConfig, BreakerPermit};

use crate::config::model::CircuitBreakerSettings;

/// How one request to an upstream server ended, as far as health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The server answered with a status that is not a failure.
    Success,
    /// Connect failure, timeout, or a status in `failure_statuses`.
    Failure,
    /// Says nothing about the server's health: a 5xx that is not a failure status (503, shed on
    /// purpose), a client that went away, a request refused before reaching the server.
    Neutral,
}

impl Outcome {
    /// Settles a breaker permit with this outcome: success, failure, or ignored (neutral).
    pub fn settle(self, permit: BreakerPermit) {
        match self {
            Outcome::Success => permit.success(),
            Outcome::Failure => permit.failure(),
            Outcome::Neutral => permit.ignore(),
        }
    }
}

/// The breaker thresholds of an upstream's `circuit_breaker` settings.
pub(crate) fn breaker_config(settings: &CircuitBreakerSettings) -> BreakerConfig {
    BreakerConfig {
        failure_rate: settings.failure_rate,
        min_requests: settings.min_requests,
        window: settings.window,
        open_for: settings.open,
        // SPEC §7's breaker is ratio-based only.
        consecutive_failures: 0,
    }
}
