//! Typed calls to the running stack: events, audit, chaos, payments, notifications, gateway status
//! and metrics (SPEC §4, §6, §8).

use serde_json::{json, Value};

use crate::http::{Http, HttpError, Reply};
use crate::targets::Targets;

/// An event as `GET /api/events/{id}` shows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct EventView {
    /// Event id.
    pub event_id: String,
    /// Total seats.
    pub capacity: u64,
    /// Free seats.
    pub available: u64,
    /// Seats held by running sagas.
    pub held: u64,
    /// Seats sold.
    pub sold: u64,
    /// `(seatId, status)` for seated events.
    pub seats: Vec<(String, String)>,
}

impl EventView {
    /// Reads the fields of SPEC §4 from a JSON object.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("event JSON lacks numeric {k:?}: {v}"))
        };
        Ok(Self {
            event_id: v
                .get("eventId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            capacity: num("capacity")?,
            available: num("available")?,
            held: num("held")?,
            sold: num("sold")?,
            seats: v
                .get("seats")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| {
                            Some((
                                s.get("seatId")?.as_str()?.to_owned(),
                                s.get("status")?.as_str()?.to_owned(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Status of one seat.
    pub fn seat(&self, id: &str) -> Option<&str> {
        self.seats
            .iter()
            .find(|(s, _)| s == id)
            .map(|(_, st)| st.as_str())
    }

    /// `available + held + sold == capacity`.
    pub fn balanced(&self) -> bool {
        self.available + self.held + self.sold == self.capacity
    }

    /// `avail/held/sold of cap` for tables.
    pub fn render(&self) -> String {
        format!(
            "available {} held {} sold {} of {}",
            self.available, self.held, self.sold, self.capacity
        )
    }
}

/// `GET /admin/audit`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Audit {
    /// Whether every invariant holds.
    pub ok: bool,
    /// Violations as reported.
    pub violations: Vec<Value>,
}

impl Audit {
    /// `ok` or `N violation(s): ...`.
    pub fn render(&self) -> String {
        if self.ok {
            "ok".into()
        } else {
            let first: Vec<String> = self
                .violations
                .iter()
                .take(2)
                .map(Value::to_string)
                .collect();
            format!(
                "NOT ok, {} violation(s): {}",
                self.violations.len(),
                first.join("; ")
            )
        }
    }
}

/// `GET /admin/placement/{eventId}` of a reservations replica in cluster mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The hash tag the event's keys carry, e.g. `g3.17`.
    pub hash_tag: Option<String>,
    /// The Redis Cluster hash slot of those keys.
    pub slot: u16,
}

/// How an event is created.
#[derive(Debug, Clone)]
pub enum EventSpec {
    /// General admission: `{"capacity": n}`.
    General(u64),
    /// Numbered seats: `{"seats": [...]}`.
    Seats(Vec<String>),
}

/// Typed access to every service of the stack.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Shared admin client.
    pub http: Http,
    /// Where everything is.
    pub targets: Targets,
}

/// The unix time in seconds (for unique event ids).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A reservation request body for a general-admission event.
pub fn ga_request(event: &str, email: &str, quantity: u64) -> Value {
    json!({"eventId": event, "quantity": quantity, "userEmail": email, "amount": 50.0})
}

/// A reservation request body for one numbered seat.
pub fn seat_request(event: &str, seat: &str, email: &str) -> Value {
    json!({"eventId": event, "seatId": seat, "userEmail": email, "amount": 50.0})
}

impl Stack {
    /// A stack handle.
    pub fn new(targets: Targets) -> Result<Self, HttpError> {
        Ok(Self {
            http: Http::new()?,
            targets,
        })
    }

    /// `PUT {replica}/admin/events/{id}`.
    pub async fn create_event(
        &self,
        replica: &str,
        id: &str,
        name: &str,
        spec: &EventSpec,
    ) -> Result<Value, HttpError> {
        let body = match spec {
            EventSpec::General(c) => json!({"name": name, "capacity": c}),
            EventSpec::Seats(s) => json!({"name": name, "seats": s}),
        };
        self.http
            .put_json(&format!("{replica}/admin/events/{id}"), &body)
            .await
    }

    /// `GET {base}/api/events/{id}`.
    pub async fn event(&self, base: &str, id: &str) -> Result<EventView, HttpError> {
        let url = format!("{base}/api/events/{id}");
        let v = self.http.get_json(&url).await?;
        EventView::from_json(&v).map_err(|reason| HttpError::Body {
            url,
            reason,
            body: crate::http::excerpt(&v.to_string()),
        })
    }

    /// Polls the event on the primary replica until nothing is held (sagas finished), at most
    /// `limit`; returns the last view.
    pub async fn settled_event(
        &self,
        id: &str,
        limit: std::time::Duration,
    ) -> Result<EventView, HttpError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let e = self.event(self.targets.primary(), id).await?;
            if e.held == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(e);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// `GET {replica}/admin/audit`.
    pub async fn audit(&self, replica: &str) -> Result<Audit, HttpError> {
        let url = format!("{replica}/admin/audit");
        let v = self.http.get_json(&url).await?;
        let ok = v
            .get("ok")
            .and_then(Value::as_bool)
            .ok_or_else(|| HttpError::Body {
                url: url.clone(),
                reason: "no boolean \"ok\"".into(),
                body: crate::http::excerpt(&v.to_string()),
            })?;
        Ok(Audit {
            ok,
            violations: v
                .get("violations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        })
    }

    /// `PUT {service}/admin/chaos` with a partial settings object.
    pub async fn chaos(&self, service: &str, patch: Value) -> Result<Value, HttpError> {
        self.http
            .put_json(&format!("{service}/admin/chaos"), &patch)
            .await
    }

    /// `DELETE {service}/admin/chaos`.
    pub async fn chaos_reset(&self, service: &str) -> Result<(), HttpError> {
        self.http.delete(&format!("{service}/admin/chaos")).await
    }

    /// `GET {payments}/payments/{id}` → `Some(status)` or `None` when 404.
    pub async fn payment_status(&self, reservation_id: &str) -> Result<Option<String>, HttpError> {
        let url = format!("{}/payments/{reservation_id}", self.targets.payments);
        let r = self.http.get(&url).await?;
        if r.status == 404 {
            return Ok(None);
        }
        let v = r.expect_json("GET", &url)?;
        Ok(Some(
            v.get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
        ))
    }

    /// `GET {notifications}/notifications?reservationId=`: the messages recorded for it.
    pub async fn notifications_for(&self, reservation_id: &str) -> Result<Vec<Value>, HttpError> {
        let url = format!(
            "{}/notifications?reservationId={reservation_id}",
            self.targets.notifications
        );
        let v = self.http.get_json(&url).await?;
        Ok(match v {
            Value::Array(a) => a,
            Value::Object(ref o) => o
                .get("notifications")
                .or_else(|| o.get("items"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_else(|| vec![v.clone()]),
            _ => Vec::new(),
        })
    }

    /// `GET {base}/api/reservations/{id}`.
    pub async fn reservation(&self, base: &str, id: &str) -> Result<Value, HttpError> {
        self.http
            .get_json(&format!("{base}/api/reservations/{id}"))
            .await
    }

    /// `GET {base}/api/reservations?userEmail=`.
    pub async fn reservations_by_email(
        &self,
        base: &str,
        email: &str,
    ) -> Result<Vec<Value>, HttpError> {
        let v = self
            .http
            .get_json(&format!("{base}/api/reservations?userEmail={email}"))
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// `GET {admin}/status` of the first gateway.
    pub async fn gateway_status(&self) -> Result<Value, HttpError> {
        self.gateway_status_at(&self.targets.admin).await
    }

    /// `GET {admin}/status` of one gateway's admin listener.
    pub async fn gateway_status_at(&self, admin: &str) -> Result<Value, HttpError> {
        self.http.get_json(&format!("{admin}/status")).await
    }

    /// `GET {admin}/metrics` of the first gateway, as text.
    pub async fn gateway_metrics(&self) -> Result<String, HttpError> {
        self.gateway_metrics_at(&self.targets.admin).await
    }

    /// `GET {admin}/metrics` of one gateway's admin listener, as text.
    pub async fn gateway_metrics_at(&self, admin: &str) -> Result<String, HttpError> {
        let url = format!("{admin}/metrics");
        let r = self.http.get(&url).await?;
        if r.is_success() {
            Ok(r.body)
        } else {
            Err(HttpError::Status {
                method: "GET".into(),
                url,
                expected: "2xx".into(),
                status: r.status,
                body: r.body_excerpt(),
            })
        }
    }

    /// `GET {replica}/admin/placement/{id}`: where the event's keys live in a Redis Cluster.
    pub async fn placement(&self, replica: &str, id: &str) -> Result<Placement, HttpError> {
        let url = format!("{replica}/admin/placement/{id}");
        let v = self.http.get_json(&url).await?;
        let slot = v
            .get("slot")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| *s < crate::topology::SLOTS)
            .ok_or_else(|| HttpError::Body {
                url: url.clone(),
                reason: "no \"slot\" in 0..16384".into(),
                body: crate::http::excerpt(&v.to_string()),
            })?;
        Ok(Placement {
            hash_tag: v.get("hashTag").and_then(Value::as_str).map(str::to_owned),
            slot,
        })
    }

    /// `GET {url}/health`.
    pub async fn health(&self, base: &str) -> Result<Reply, HttpError> {
        self.http.get(&format!("{base}/health")).await
    }
}

/// Splits `{labels} value` after a metric name at the closing brace outside quoted label values
/// (values may contain `}`, e.g. `route="/api/events/{id}"`).
fn split_labels(rest: &str) -> Option<(&str, &str)> {
    let inner = rest.strip_prefix('{')?;
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some((&inner[..i], &inner[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Sum of the samples of metric `name` whose label set contains every `(label, value)` of
/// `labels`; `None` when the metric does not appear at all.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value_part) = if rest.starts_with('{') {
            match split_labels(rest) {
                Some(lv) => lv,
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // a longer metric name sharing the prefix
        };
        let matches = labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
        if !matches {
            continue;
        }
        if let Some(v) = value_part
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = true;
            sum += v;
        }
    }
    found.then_some(sum)
}

/// Sum of `name` over samples whose `label` value starts with `prefix`.
pub fn metric_sum_prefix(text: &str, name: &str, label: &str, prefix: &str) -> f64 {
    let needle = format!("{label}=\"{prefix}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(split_labels)
        .filter(|(labels, _)| labels.contains(&needle))
        .filter_map(|(_, v)| v.split_whitespace().next()?.parse::<f64>().ok())
        .sum()
}

/// The servers of one upstream in the gateway's `/status`.
pub fn status_servers<'a>(status: &'a Value, upstream: &str) -> Vec<&'a Value> {
    status
        .get("upstreams")
        .and_then(|u| u.get(upstream))
        .and_then(|u| u.get("servers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Finds the server in `/status` whose `server` or `address` contains `needle`.
pub fn find_server<'a>(status: &'a Value, upstream: &str, needle: &str) -> Option<&'a Value> {
    status_servers(status, upstream).into_iter().find(|s| {
        ["server", "address"].iter().any(|k| {
            s.get(*k)
                .and_then(Value::as_str)
                .is_some_and(|v| v.contains(needle))
        })
    })
}

/// Whether a `/status` server entry is in service (healthy and not ejected).
pub fn server_in_service(s: &Value) -> bool {
    let healthy = s.get("healthy").and_then(Value::as_bool).unwrap_or(false);
    let ejected = s.get("ejected").and_then(Value::as_bool).unwrap_or(false);
    healthy && !ejected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums() {
        let text = "# HELP x\n\
gateway_ratelimit_rejected_total{zone=\"per_ip\"} 3\n\
gateway_ratelimit_rejected_total{zone=\"reservations\"} 9\n\
gateway_ratelimit_rejected_total_extra 100\n\
http_requests_total{route=\"/api/events\",service=\"reservations\",status=\"200\"} 5\n\
http_requests_total{route=\"/api/events/{id}\",service=\"reservations\",status=\"200\"} 2\n\
http_requests_total{route=\"/health\",service=\"reservations\",status=\"200\"} 50\n";
        assert_eq!(
            metric_sum(text, "gateway_ratelimit_rejected_total", &[]),
            Some(12.0)
        );
        assert_eq!(
            metric_sum(
                text,
                "gateway_ratelimit_rejected_total",
                &[("zone", "per_ip")]
            ),
            Some(3.0)
        );
        assert_eq!(metric_sum(text, "nope", &[]), None);
        assert_eq!(
            metric_sum_prefix(text, "http_requests_total", "route", "/api/"),
            7.0
        );
    }

    #[test]
    fn event_view_and_status_servers() {
        let v = json!({"eventId":"E","capacity":3,"available":1,"held":0,"sold":2,
            "seats":[{"seatId":"A1","status":"sold"},{"seatId":"A2","status":"available"}]});
        let e = EventView::from_json(&v).expect("event");
        assert!(e.balanced());
        assert_eq!(e.seat("A2"), Some("available"));
        assert!(EventView::from_json(&json!({"capacity":"x"})).is_err());

        let st = json!({"upstreams":{"reservations":{"servers":[
            {"server":"127.0.0.1:3001","healthy":true,"ejected":false},
            {"server":"127.0.0.1:3011","healthy":false,"ejected":false}]}}});
        let s = find_server(&st, "reservations", "3011").expect("server");
        assert!(!server_in_service(s));
        assert!(server_in_service(
            find_server(&st, "reservations", ":3001").expect("s")
        ));
    }
}
