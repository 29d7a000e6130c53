//! Ticket-reservation backend: the `reservations`, `payments` and `notifications` axum services.

pub mod chaos;
pub mod error;
pub mod notifications;
pub mod outbox;
pub mod payments;
pub mod payments_client;
pub mod reservations;
pub mod slots;
pub mod store;
pub mod telemetry;
