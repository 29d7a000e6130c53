//! Ticket-reservation backend: the `reservations`, `payments` and `notifications` axum services.

pub mod error;
