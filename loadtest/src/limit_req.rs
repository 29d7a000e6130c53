//! What NGINX's `limit_req` lets through (SPEC §7), so a flood's accepted count can be checked.
//!
//! The arithmetic is ngx_http_limit_req_module's: per key an `excess` in milli-requests; on each
//! request `excess = max(0, excess − rate·elapsed_ms/1000 + 1000)` with the rate in
//! milli-requests per second (`100r/m` → 1666, integer division as in NGINX); reject when
//! `excess > burst·1000`; a rejected request changes nothing. Several limits on one route are all
//! checked and only committed when all pass.

use serde_json::Value;

/// A rate that could not be parsed, or a route that could not be found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// Not `Nr/s` or `Nr/m`.
    #[error("invalid rate {0:?}: expected Nr/s or Nr/m")]
    Rate(String),
    /// A route names a zone that has no rate.
    #[error("route uses zone {0:?}, which is not defined")]
    UnknownZone(String),
}

/// Parses `2r/s` / `100r/m` into milli-requests per second, as NGINX stores it.
pub fn parse_rate(s: &str) -> Result<u64, LimitError> {
    let t = s.trim();
    let bad = || LimitError::Rate(s.to_owned());
    let (n, per_minute) = if let Some(n) = t.strip_suffix("r/s") {
        (n, false)
    } else if let Some(n) = t.strip_suffix("r/m") {
        (n, true)
    } else {
        return Err(bad());
    };
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(if per_minute { n * 1000 / 60 } else { n * 1000 })
}

/// One `limit_req` of a route, joined with its zone's rate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneLimit {
    /// Zone name (appears in rejection bodies as `zone`).
    pub zone: String,
    /// Zone key (`client_ip`, `global`, `header:<Name>`).
    pub key: String,
    /// Rate in milli-requests per second.
    pub rate_milli: u64,
    /// Allowed burst (requests).
    pub burst: u64,
    /// `dry_run: true` never rejects.
    pub dry_run: bool,
}

impl ZoneLimit {
    /// Rate in requests per second.
    pub fn rate_per_sec(&self) -> f64 {
        self.rate_milli as f64 / 1000.0
    }

    /// Whether this limit can reject our traffic: not a dry run and the key is not a header we
    /// never send (an empty key is not limited).
    pub fn applies(&self) -> bool {
        !self.dry_run && !self.key.starts_with("header:")
    }
}

/// `burst + 1 + floor(rate·T)`: what one fresh key gets through a single limit in a burst lasting
/// `t_secs` (requests evenly or front-loaded; exact when the first request opens the burst).
pub fn burst_formula(rate_milli: u64, burst: u64, t_secs: f64) -> u64 {
    let refill = (rate_milli as f64 * t_secs.max(0.0) / 1000.0).floor() as u64;
    burst + 1 + refill
}

#[derive(Debug, Clone)]
struct KeyState {
    excess: i64,
    last_ms: Option<i64>,
}

/// Replays requests of one key through a route's limits.
#[derive(Debug, Clone)]
pub struct Simulator {
    limits: Vec<ZoneLimit>,
    state: Vec<KeyState>,
}

impl Simulator {
    /// A fresh key (excess 0) facing `limits` (those that do not [`ZoneLimit::applies`] are ignored).
    pub fn new(limits: &[ZoneLimit]) -> Self {
        let limits: Vec<ZoneLimit> = limits.iter().filter(|l| l.applies()).cloned().collect();
        let state = limits
            .iter()
            .map(|_| KeyState {
                excess: 0,
                last_ms: None,
            })
            .collect();
        Self { limits, state }
    }

    /// Offers a request at `t_ms`; returns `Ok(())` if it passes, or the name of the first zone
    /// that rejects it.
    pub fn offer(&mut self, t_ms: i64) -> Result<(), String> {
        let mut tentative = Vec::with_capacity(self.limits.len());
        for (limit, st) in self.limits.iter().zip(&self.state) {
            let excess = match st.last_ms {
                None => 0,
                Some(last) => {
                    let ms = (t_ms - last).abs();
                    (st.excess - (limit.rate_milli as i64) * ms / 1000 + 1000).max(0)
                }
            };
            if excess > (limit.burst as i64) * 1000 {
                return Err(limit.zone.clone());
            }
            tentative.push(excess);
        }
        for (st, excess) in self.state.iter_mut().zip(tentative) {
            st.excess = excess;
            st.last_ms = Some(t_ms);
        }
        Ok(())
    }
}

/// How many of the requests sent at `times_ms` (one key) pass `limits`.
pub fn expected_passes(limits: &[ZoneLimit], times_ms: &[i64]) -> u64 {
    let mut sim = Simulator::new(limits);
    times_ms.iter().filter(|t| sim.offer(**t).is_ok()).count() as u64
}

/// Parses a `--limit` flag: `zone=RATE:BURST`, e.g. `reservations=2r/s:5` (key `client_ip`).
pub fn parse_limit_flag(s: &str) -> Result<ZoneLimit, LimitError> {
    let bad = || LimitError::Rate(s.to_owned());
    let (zone, rest) = s.split_once('=').ok_or_else(bad)?;
    let (rate, burst) = rest.split_once(':').unwrap_or((rest, "0"));
    Ok(ZoneLimit {
        zone: zone.trim().to_owned(),
        key: "client_ip".into(),
        rate_milli: parse_rate(rate)?,
        burst: burst.trim().parse().map_err(|_| bad())?,
        dry_run: false,
    })
}

/// The shipped configuration's limits for `/api/reservations` (SPEC §7).
pub fn shipped_reservation_limits() -> Vec<ZoneLimit> {
    vec![
        ZoneLimit {
            zone: "per_ip".into(),
            key: "client_ip".into(),
            rate_milli: 1666,
            burst: 20,
            dry_run: false,
        },
        ZoneLimit {
            zone: "reservations".into(),
            key: "client_ip".into(),
            rate_milli: 2000,
            burst: 5,
            dry_run: false,
        },
    ]
}

/// The limits of the route that serves `path` in a gateway configuration (YAML of SPEC §7, as a
/// JSON value): longest `path_prefix` wins. `Ok(None)` when no route matches.
pub fn route_limits(config: &Value, path: &str) -> Result<Option<Vec<ZoneLimit>>, LimitError> {
    let routes = config.get("routes").and_then(Value::as_array);
    let Some(route) = routes.and_then(|rs| {
        rs.iter()
            .filter(|r| {
                r.get("path_prefix")
                    .and_then(Value::as_str)
                    .is_some_and(|p| path.starts_with(p))
            })
            .max_by_key(|r| {
                r.get("path_prefix")
                    .and_then(Value::as_str)
                    .map(str::len)
                    .unwrap_or(0)
            })
    }) else {
        return Ok(None);
    };
    let zones = config.get("limit_req_zones");
    let mut out = Vec::new();
    for lr in route
        .get("limit_req")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(zone) = lr.get("zone").and_then(Value::as_str) else {
            continue;
        };
        let zdef = zones
            .and_then(|z| z.get(zone))
            .ok_or_else(|| LimitError::UnknownZone(zone.to_owned()))?;
        let rate = zdef
            .get("rate")
            .and_then(Value::as_str)
            .ok_or_else(|| LimitError::UnknownZone(zone.to_owned()))?;
        out.push(ZoneLimit {
            zone: zone.to_owned(),
            key: zdef
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or("client_ip")
                .to_owned(),
            rate_milli: parse_rate(rate)?,
            burst: lr.get("burst").and_then(Value::as_u64).unwrap_or(0),
            dry_run: lr.get("dry_run").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    Ok(Some(out))
}

/// Overrides the rates with what the gateway's `/status` reports in `limitReqZones` (the live
/// values win over a file that may have been edited since).
pub fn apply_status_rates(limits: &mut [ZoneLimit], status: &Value) {
    let Some(zones) = status.get("limitReqZones") else {
        return;
    };
    for l in limits.iter_mut() {
        if let Some(rate) = zones
            .get(&l.zone)
            .and_then(|z| z.get("rate"))
            .and_then(Value::as_str)
            .and_then(|r| parse_rate(r).ok())
        {
            l.rate_milli = rate;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(rate: &str, burst: u64) -> ZoneLimit {
        ZoneLimit {
            zone: "z".into(),
            key: "client_ip".into(),
            rate_milli: parse_rate(rate).expect("rate"),
            burst,
            dry_run: false,
        }
    }

    #[test]
    fn rates_as_nginx_stores_them() {
        assert_eq!(parse_rate("2r/s"), Ok(2000));
        assert_eq!(parse_rate("100r/m"), Ok(1666));
        assert!(parse_rate("2/s").is_err());
        assert!(parse_rate("0r/s").is_err());
    }

    #[test]
    fn spec_example_fifteen_simultaneous() {
        // SPEC §7: rate 2r/s, burst 5, nodelay: 15 simultaneous → 6 pass; 0.5 s later one more.
        let l = [zone("2r/s", 5)];
        let mut sim = Simulator::new(&l);
        let passed = (0..15).filter(|_| sim.offer(0).is_ok()).count();
        assert_eq!(passed, 6);
        assert!(sim.offer(500).is_ok());
        assert!(sim.offer(500).is_err());
    }

    #[test]
    fn formula_matches_simulation_for_front_loaded_floods() {
        // 200 requests evenly spread over T seconds, far above the rate.
        for (rate, burst) in [("2r/s", 5), ("100r/m", 20), ("10r/s", 0)] {
            let l = [zone(rate, burst)];
            for t_ms in [0i64, 400, 1000, 2500, 5000] {
                let times: Vec<i64> = (0..200).map(|i| i * t_ms / 199).collect();
                let sim = expected_passes(&l, &times) as i64;
                let f = burst_formula(l[0].rate_milli, burst, t_ms as f64 / 1000.0) as i64;
                assert!(
                    (sim - f).abs() <= 1,
                    "{rate} b{burst} T{t_ms}: sim {sim} formula {f}"
                );
            }
        }
    }

    #[test]
    fn several_limits_commit_only_when_all_pass() {
        let mut a = zone("2r/s", 5);
        a.zone = "reservations".into();
        let mut b = zone("100r/m", 20);
        b.zone = "per_ip".into();
        let l = [b.clone(), a.clone()];
        let mut sim = Simulator::new(&l);
        let rejected_by: Vec<_> = (0..30).filter_map(|_| sim.offer(0).err()).collect();
        assert_eq!(rejected_by.len(), 24);
        assert!(rejected_by.iter().all(|z| z == "reservations"));
        // per_ip was charged only for the 6 that passed: 15 more at once pass per_ip after 3 s
        // of reservations refill (6 more), i.e. per_ip is not what limits.
        let passed = (0..15).filter(|_| sim.offer(3000).is_ok()).count();
        assert_eq!(passed, 6);
    }

    #[test]
    fn limit_flags() {
        let l = parse_limit_flag("reservations=2r/s:5").expect("flag");
        assert_eq!(l, shipped_reservation_limits()[1]);
        assert_eq!(parse_limit_flag("z=10r/m").expect("flag").burst, 0);
        assert!(parse_limit_flag("z").is_err());
        assert!(parse_limit_flag("z=2r/s:x").is_err());
    }

    #[test]
    fn dry_run_and_header_keys_do_not_limit() {
        let mut d = zone("1r/s", 0);
        d.dry_run = true;
        let mut h = zone("1r/s", 0);
        h.key = "header:X-Api-Key".into();
        assert_eq!(expected_passes(&[d, h], &[0; 10]), 10);
    }

    #[test]
    fn route_limits_from_config() {
        let yaml = r#"
limit_req_zones:
  per_ip: { key: client_ip, rate: 100r/m }
  reservations: { key: client_ip, rate: 2r/s }
routes:
  - path_prefix: /api/reservations
    upstream: reservations
    limit_req:
      - { zone: per_ip, burst: 20, nodelay: true }
      - { zone: reservations, burst: 5, nodelay: true }
  - path_prefix: /api/
    upstream: reservations
    limit_req:
      - { zone: per_ip, burst: 20, nodelay: true }
"#;
        let v: Value = serde_norway::from_str(yaml).expect("yaml");
        let l = route_limits(&v, "/api/reservations")
            .expect("ok")
            .expect("route");
        assert_eq!(l, shipped_reservation_limits());
        let l = route_limits(&v, "/api/events").expect("ok").expect("route");
        assert_eq!(l.len(), 1);
        assert_eq!(route_limits(&v, "/other").expect("ok"), None);
        let status = serde_json::json!({"limitReqZones": {"reservations": {"rate": "5r/s"}}});
        let mut l = route_limits(&v, "/api/reservations")
            .expect("ok")
            .expect("route");
        apply_status_rates(&mut l, &status);
        assert_eq!(l[1].rate_milli, 5000);
    }
}
