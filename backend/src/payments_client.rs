//! The reservations service's client for the payments service, with every guard SPEC §5 asks for:
//!
//! 1. **Bulkhead** (`--payments-max-concurrent`, default 10): a call holds one slot for its whole
//!    retry sequence; a call that finds no slot waits at most `--payments-slot-wait-ms` (and never
//!    past its deadline), then fails with [`ChargeError::Unavailable`] without sending anything.
//! 2. **Circuit breaker** per attempt: connection errors, timeouts and 5xx count as failures; any
//!    other answer (including a 402 decline) is a success. While open, calls fail at once.
//! 3. **Retries**: at most `--payments-max-attempts`, with exponential backoff and jitter
//!    (`backon`), for connection errors, timeouts and 5xx. A 402 or any other 4xx is never retried.
//!    Retrying a charge is safe because payments is idempotent on the reservation id.
//! 4. **Deadlines**: each attempt is capped by `--payments-attempt-timeout-ms` *and* by the time
//!    left to the caller's deadline; a backoff sleep that would reach the deadline is not taken.
//!
//! Outcome classes ([`ChargeError`]): `Unavailable` means payments certainly did not act on the
//! request (nothing reached it, or it answered 503 "not processed"); `Unknown` means a request may
//! have reached it (timeout, 500/502/504, connection broken mid-request) and the caller must ask
//! [`PaymentsClient::status`] and refund before releasing anything.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::StatusCode;
use resilience::{BreakerConfig, BreakerState, Bulkhead, BulkheadConfig, CircuitBreaker};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Defaults of [`PaymentsClientConfig`], written once for clap and `Default`.
pub mod defaults {
    /// `--payments-url`.
    pub const URL: &str = "http://127.0.0.1:3002";
    /// `--payments-attempt-timeout-ms`.
    pub const ATTEMPT_TIMEOUT_MS: u64 = 5_000;
    /// `--payments-max-attempts`.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// `--payments-backoff-ms`.
    pub const BACKOFF_MS: u64 = 200;
    /// `--payments-breaker-failure-rate`.
    pub const BREAKER_FAILURE_RATE: f64 = 0.5;
    /// `--payments-breaker-min-calls`.
    pub const BREAKER_MIN_CALLS: u32 = 5;
    /// `--payments-breaker-window-ms`.
    pub const BREAKER_WINDOW_MS: u64 = 30_000;
    /// `--payments-breaker-open-ms`.
    pub const BREAKER_OPEN_MS: u64 = 15_000;
    /// `--payments-max-concurrent` (SPEC §5: 10).
    pub const MAX_CONCURRENT: usize = 10;
    /// `--payments-slot-wait-ms` (SPEC §5: 1 s).
    pub const SLOT_WAIT_MS: u64 = 1_000;
}

/// Flags of the payments client (each has an environment twin).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct PaymentsClientConfig {
    /// Base URL of the payments service.
    #[arg(long, env = "PAYMENTS_URL", default_value = defaults::URL)]
    pub payments_url: String,
    /// Time limit of one HTTP attempt, in milliseconds.
    #[arg(long, env = "PAYMENTS_ATTEMPT_TIMEOUT_MS", default_value_t = defaults::ATTEMPT_TIMEOUT_MS)]
    pub payments_attempt_timeout_ms: u64,
    /// Attempts per call, first one included.
    #[arg(long, env = "PAYMENTS_MAX_ATTEMPTS", default_value_t = defaults::MAX_ATTEMPTS)]
    pub payments_max_attempts: u32,
    /// First backoff between attempts, in milliseconds (doubles each time, with jitter).
    #[arg(long, env = "PAYMENTS_BACKOFF_MS", default_value_t = defaults::BACKOFF_MS)]
    pub payments_backoff_ms: u64,
    /// Failure ratio over the window that opens the payments breaker.
    #[arg(long, env = "PAYMENTS_BREAKER_FAILURE_RATE", default_value_t = defaults::BREAKER_FAILURE_RATE)]
    pub payments_breaker_failure_rate: f64,
    /// Minimum attempts in the window before the breaker judges the ratio.
    #[arg(long, env = "PAYMENTS_BREAKER_MIN_CALLS", default_value_t = defaults::BREAKER_MIN_CALLS)]
    pub payments_breaker_min_calls: u32,
    /// Breaker sliding window, in milliseconds.
    #[arg(long, env = "PAYMENTS_BREAKER_WINDOW_MS", default_value_t = defaults::BREAKER_WINDOW_MS)]
    pub payments_breaker_window_ms: u64,
    /// How long the breaker stays open before one probe, in milliseconds.
    #[arg(long, env = "PAYMENTS_BREAKER_OPEN_MS", default_value_t = defaults::BREAKER_OPEN_MS)]
    pub payments_breaker_open_ms: u64,
    /// Concurrent calls to payments allowed from this process (bulkhead).
    #[arg(long, env = "PAYMENTS_MAX_CONCURRENT", default_value_t = defaults::MAX_CONCURRENT)]
    pub payments_max_concurrent: usize,
    /// Longest wait for a bulkhead slot, in milliseconds.
    #[arg(long, env = "PAYMENTS_SLOT_WAIT_MS", default_value_t = defaults::SLOT_WAIT_MS)]
    pub payments_slot_wait_ms: u64,
}

impl Default for PaymentsClientConfig {
    fn default() -> Self {
        Self {
            payments_url: defaults::URL.into(),
            payments_attempt_timeout_ms: defaults::ATTEMPT_TIMEOUT_MS,
            payments_max_attempts: defaults::MAX_ATTEMPTS,
            payments_backoff_ms: defaults::BACKOFF_MS,
            payments_breaker_failure_rate: defaults::BREAKER_FAILURE_RATE,
            payments_breaker_min_calls: defaults::BREAKER_MIN_CALLS,
            payments_breaker_window_ms: defaults::BREAKER_WINDOW_MS,
            payments_breaker_open_ms: defaults::BREAKER_OPEN_MS,
            payments_max_concurrent: defaults::MAX_CONCURRENT,
            payments_slot_wait_ms: defaults::SLOT_WAIT_MS,
        }
    }
}

/// A successful charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    /// The provider's payment id.
    pub payment_id: String,
}

/// What payments knows about a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentStatus {
    /// Never charged (and, if a refund was recorded first, never will be).
    NotFound,
    /// Charged and not refunded.
    Charged {
        /// The provider's payment id.
        payment_id: String,
        /// Amount charged.
        amount: f64,
    },
    /// Charged, then refunded: no net charge.
    Refunded,
    /// Declined: nothing charged.
    Declined,
}

/// Why a payments call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChargeError {
    /// Payments refused the charge (402, or another definite refusal such as a charge for an
    /// already refunded reservation). Nothing is charged. Never retried.
    #[error("payment declined: {message}")]
    Declined {
        /// Payments' explanation.
        message: String,
    },
    /// Payments certainly did not act: breaker open, bulkhead full after the slot wait, no
    /// connection on any attempt, or 503 on every attempt. Nothing is charged.
    #[error("payments unavailable, retry after {retry_after_secs} s")]
    Unavailable {
        /// Suggested `Retry-After`, whole seconds, at least 1.
        retry_after_secs: u64,
    },
    /// A request may have reached payments but no answer settled it (timeouts, 500/502/504,
    /// connection broken mid-request, deadline reached). The outcome is unknown: query
    /// [`PaymentsClient::status`], then refund.
    #[error("payments outcome unknown")]
    Unknown,
}

/// Client construction failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsClientError {
    /// `--payments-url` is not an http(s) URL.
    #[error("invalid payments url {0:?}")]
    InvalidUrl(String),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
}

/// How one attempt ended.
enum Attempt {
    /// A definitive answer: stop retrying.
    Done(Result<Value, ChargeError>, StatusCode),
    /// Retryable; `maybe_processed` says whether payments may have acted on it.
    Retry { maybe_processed: bool },
}

struct Inner {
    http: reqwest::Client,
    base: String,
    cfg: PaymentsClientConfig,
    breaker: Arc<CircuitBreaker>,
    bulkhead: Arc<Bulkhead>,
}

/// Client for the payments service. Cheap to clone; clones share the connection pool, the
/// breaker and the bulkhead.
#[derive(Clone)]
pub struct PaymentsClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PaymentsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsClient")
            .field("base", &self.inner.base)
            .field("breaker", &self.breaker_state())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// Which payments operation a request is.
#[derive(Debug, Clone, Copy)]
enum Op {
    Charge,
    Status,
    Refund,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Charge => "charge",
            Op::Status => "status",
            Op::Refund => "refund",
        }
    }
}

impl PaymentsClient {
    /// Builds the client (no network traffic yet).
    pub fn new(cfg: PaymentsClientConfig) -> Result<Self, PaymentsClientError> {
        let base = cfg.payments_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(PaymentsClientError::InvalidUrl(cfg.payments_url.clone()));
        }
        let attempt = Duration::from_millis(cfg.payments_attempt_timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .connect_timeout(attempt.min(Duration::from_secs(1)))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(cfg.payments_max_concurrent.max(1) * 2)
            .tcp_nodelay(true)
            .build()?;
        let breaker = CircuitBreaker::new(BreakerConfig {
            failure_rate: cfg.payments_breaker_failure_rate.clamp(0.01, 1.0),
            min_requests: cfg.payments_breaker_min_calls.max(1),
            window: Duration::from_millis(cfg.payments_breaker_window_ms.max(10)),
            open_for: Duration::from_millis(cfg.payments_breaker_open_ms.max(1)),
            // The issue's breaker: 50 % over at least 5 calls, ratio only.
            consecutive_failures: 0,
        });
        let bulkhead = Bulkhead::new(BulkheadConfig {
            max_concurrent: cfg.payments_max_concurrent.max(1),
            max_queue: None,
            queue_timeout: Duration::from_millis(cfg.payments_slot_wait_ms),
        });
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                cfg,
                breaker,
                bulkhead,
            }),
        })
    }

    /// The payments breaker's state (for metrics: `as_gauge()`).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Calls currently holding a bulkhead slot.
    pub fn in_flight(&self) -> usize {
        self.inner.bulkhead.in_flight()
    }

    /// Calls currently waiting for a bulkhead slot.
    pub fn waiting(&self) -> usize {
        self.inner.bulkhead.waiting()
    }

    /// The configuration in force.
    pub fn config(&self) -> &PaymentsClientConfig {
        &self.inner.cfg
    }

    /// Charges `amount` for `reservation_id` (idempotent on the reservation id).
    pub async fn charge(
        &self,
        reservation_id: &str,
        amount: f64,
        user_email: &str,
        deadline: Instant,
    ) -> Result<Charged, ChargeError> {
        let body = json!({
            "reservationId": reservation_id,
            "amount": amount,
            "userEmail": user_email,
        });
        let url = format!("{}/payments", self.inner.base);
        let value = self
            .call(Op::Charge, reqwest::Method::POST, url, Some(body), deadline)
            .await?;
        match value.get("paymentId").and_then(Value::as_str) {
            Some(id) => Ok(Charged {
                payment_id: id.to_owned(),
            }),
            None => {
                tracing::warn!(%reservation_id, "payments answered 2xx without paymentId");
                Err(ChargeError::Unknown)
            }
        }
    }

    /// Asks payments what happened to `reservation_id`'s payment.
    pub async fn status(
        &self,
        reservation_id: &str,
        deadline: Instant,
    ) -> Result<PaymentStatus, ChargeError> {
        let url = format!(
            "{}/payments/{}",
            self.inner.base,
            path_segment(reservation_id)
        );
        let value = self
            .call(Op::Status, reqwest::Method::GET, url, None, deadline)
            .await?;
        if value.is_null() {
            return Ok(PaymentStatus::NotFound);
        }
        match value.get("status").and_then(Value::as_str) {
            Some("charged") => Ok(PaymentStatus::Charged {
                payment_id: value
                    .get("paymentId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                amount: value.get("amount").and_then(Value::as_f64).unwrap_or(0.0),
            }),
            Some("refunded") => Ok(PaymentStatus::Refunded),
            Some("declined") => Ok(PaymentStatus::Declined),
            other => {
                tracing::warn!(%reservation_id, status = ?other, "unexpected payment status");
                Err(ChargeError::Unknown)
            }
        }
    }

    /// Makes sure `reservation_id` ends with no net charge: refunds a charge, and otherwise
    /// records a refund so a late charge is refused. `Ok` also when nothing was ever charged or
    /// the payment was declined.
    pub async fn refund(&self, reservation_id: &str, deadline: Instant) -> Result<(), ChargeError> {
        let url = format!(
            "{}/payments/{}/refund",
            self.inner.base,
            path_segment(reservation_id)
        );
        self.call(Op::Refund, reqwest::Method::POST, url, None, deadline)
            .await
            .map(|_| ())
    }

    /// Bulkhead → (breaker → attempt → classify → backoff)*. Returns the JSON body of a
    /// definitive success (`Value::Null` for "not found" answers that count as success).
    async fn call(
        &self,
        op: Op,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, ChargeError> {
        let inner = &self.inner;
        let _slot = match tokio::time::timeout_at(deadline, inner.bulkhead.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(full)) => {
                tracing::warn!(op = op.as_str(), ?full, "payments bulkhead full");
                return Err(ChargeError::Unavailable {
                    retry_after_secs: 1,
                });
            }
            Err(_) => {
                return Err(ChargeError::Unavailable {
                    retry_after_secs: 1,
                })
            }
        };
        let attempts = inner.cfg.payments_max_attempts.max(1);
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(inner.cfg.payments_backoff_ms))
            .with_factor(2.0)
            .with_max_delay(Duration::from_millis(
                inner.cfg.payments_backoff_ms.max(1) * 16,
            ))
            .with_jitter()
            .with_max_times(attempts as usize - 1)
            .build();
        let attempt_timeout = Duration::from_millis(inner.cfg.payments_attempt_timeout_ms.max(1));
        let mut maybe_processed = false;
        for attempt in 1..=attempts {
            let permit = match inner.breaker.try_acquire() {
                Ok(p) => p,
                Err(open) => {
                    tracing::debug!(op = op.as_str(), "payments breaker open");
                    return Err(if maybe_processed {
                        ChargeError::Unknown
                    } else {
                        ChargeError::Unavailable {
                            retry_after_secs: open.retry_after.as_secs_f64().ceil().max(1.0) as u64,
                        }
                    });
                }
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let attempt_deadline = (now + attempt_timeout).min(deadline);
            let outcome = self
                .attempt(op, method.clone(), &url, body.as_ref(), attempt_deadline)
                .await;
            match outcome {
                Attempt::Done(result, status) => {
                    permit.success();
                    tracing::debug!(op = op.as_str(), attempt, %status, "payments answered");
                    return result;
                }
                Attempt::Retry { maybe_processed: m } => {
                    permit.failure();
                    maybe_processed |= m;
                    tracing::warn!(
                        op = op.as_str(),
                        attempt,
                        maybe_processed = m,
                        "payments attempt failed"
                    );
                }
            }
            if attempt == attempts {
                break;
            }
            let Some(delay) = backoff.next() else { break };
            if Instant::now() + delay >= deadline {
                break;
            }
            tokio::time::sleep(delay).await;
        }
        Err(if maybe_processed {
            ChargeError::Unknown
        } else {
            ChargeError::Unavailable {
                retry_after_secs: 1,
            }
        })
    }

    /// One HTTP exchange, bounded by `until`, classified.
    async fn attempt(
        &self,
        op: Op,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        until: Instant,
    ) -> Attempt {
        let mut req = self.inner.http.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let exchange = async {
            let resp = req.send().await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        };
        match tokio::time::timeout_at(until, exchange).await {
            Err(_) => Attempt::Retry {
                maybe_processed: true,
            },
            Ok(Err(e)) => Attempt::Retry {
                // A refused or failed connect never reached payments; anything later may have.
                maybe_processed: !e.is_connect(),
            },
            Ok(Ok((status, bytes))) => classify(op, status, &bytes),
        }
    }
}

/// Maps an HTTP answer to an attempt outcome.
fn classify(op: Op, status: StatusCode, bytes: &[u8]) -> Attempt {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let code = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if status.is_success() {
        return Attempt::Done(Ok(body), status);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // 503: payments did not process the request (down or shedding).
        return Attempt::Retry {
            maybe_processed: false,
        };
    }
    if status.is_server_error() {
        return Attempt::Retry {
            maybe_processed: true,
        };
    }
    let result = match (op, status.as_u16(), code.as_str()) {
        (Op::Charge, 402, _) => Err(ChargeError::Declined { message }),
        // Someone already compensated this reservation: it is not, and will not be, charged.
        (Op::Charge, 409, "already_refunded") => Err(ChargeError::Declined {
            message: format!("already_refunded: {message}"),
        }),
        // A payment with another amount exists: the caller must look at it.
        (Op::Charge, 409, _) => Err(ChargeError::Unknown),
        (Op::Charge, _, _) => Err(ChargeError::Declined {
            message: format!("{} {code}: {message}", status.as_u16()),
        }),
        (Op::Status, 404, _) => Ok(Value::Null),
        // Nothing charged, or nothing to give back: the goal "no net charge" holds.
        (Op::Refund, 404, _) | (Op::Refund, 409, "not_refundable") => Ok(Value::Null),
        (Op::Status | Op::Refund, _, _) => {
            tracing::warn!(op = op.as_str(), %status, %code, "unexpected payments answer");
            Err(ChargeError::Unknown)
        }
    };
    Attempt::Done(result, status)
}

/// Percent-encodes a path segment (reservation ids are plain, but never trust that).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let declined = classify(
            Op::Charge,
            StatusCode::PAYMENT_REQUIRED,
            br#"{"error":"payment_declined","message":"too much"}"#,
        );
        assert!(matches!(
            declined,
            Attempt::Done(Err(ChargeError::Declined { .. }), _)
        ));
        assert!(matches!(
            classify(Op::Charge, StatusCode::INTERNAL_SERVER_ERROR, b""),
            Attempt::Retry {
                maybe_processed: true
            }
        ));
        assert!(matches!(
            classify(Op::Charge, StatusCode::SERVICE_UNAVAILABLE, b""),
            Attempt::Retry {
                maybe_processed: false
            }
        ));
        assert!(matches!(
            classify(Op::Status, StatusCode::NOT_FOUND, b"{}"),
            Attempt::Done(Ok(Value::Null), _)
        ));
        assert!(matches!(
            classify(
                Op::Refund,
                StatusCode::CONFLICT,
                br#"{"error":"not_refundable"}"#
            ),
            Attempt::Done(Ok(Value::Null), _)
        ));
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("R-1_a.b~"), "R-1_a.b~");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn rejects_non_http_url() {
        let cfg = PaymentsClientConfig {
            payments_url: "localhost:3002".into(),
            ..PaymentsClientConfig::default()
        };
        assert!(matches!(
            PaymentsClient::new(cfg),
            Err(PaymentsClientError::InvalidUrl(_))
        ));
    }
}
