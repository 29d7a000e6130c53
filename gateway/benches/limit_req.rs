//! `limit_req` decision cost and memory (SPEC: median ≤ 100 ns per decision with 100k live keys;
//! memory with 1M distinct client keys stays within `max_keys`).
//!
//! Run: `cargo bench -p gateway --bench limit_req -- --warm-up-time 1 --measurement-time 3`
//! (`check_one_limit_100k_random_keys` is the figure for many clients under load: random keys;
//! the `_live_keys` cases walk the keys in insertion order, which the prefetcher helps.)

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::config::model::{LimitKey, LimitReqRule, LimitReqZone, Rate};
use gateway::limit::{check, LimitKeyValue, ReqCheck, ReqDecision, ReqZone};

const LIVE_KEYS: u128 = 100_000;

fn zone(name: &str, max_keys: usize) -> ReqZone {
    ReqZone::new(&LimitReqZone {
        name: name.to_string(),
        key: LimitKey::ClientIp,
        rate: Rate {
            milli_per_sec: 100 * 1000 / 60,
        },
        max_keys,
        scope: Default::default(),
    })
}

fn rule(zone: &str) -> LimitReqRule {
    LimitReqRule {
        zone: zone.to_string(),
        burst: 1_000_000,
        nodelay: true,
        delay: 0,
        dry_run: false,
    }
}

/// IPv4-mapped client addresses 10.x.y.z, visited in a scattered order.
fn client(i: u128) -> LimitKeyValue<'static> {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000u32 + (i as u32));
    LimitKeyValue::from_ip(ip.into())
}

fn scattered(n: u128) -> Vec<LimitKeyValue<'static>> {
    // A fixed permutation: multiplication by an odd constant is a bijection modulo a power of two.
    let size = n.next_power_of_two();
    (0..size)
        .map(|i| i.wrapping_mul(0x9E37_79B1) & (size - 1))
        .filter(|&i| i < n)
        .map(client)
        .collect()
}

fn decision_cost(c: &mut Criterion) {
    let z = zone("per_ip", 200_000);
    let r = rule("per_ip");
    let keys = scattered(LIVE_KEYS);
    let now = Instant::now();
    for k in &keys {
        let _ = check(
            &[ReqCheck {
                zone: &z,
                key: *k,
                rule: &r,
            }],
            now,
        );
    }
    assert_eq!(z.keys(), LIVE_KEYS as usize);

    // The machine may be shared: besides criterion's wall-clock figures, report the time this
    // thread actually spent on a CPU per decision (from /proc/thread-self/schedstat), for the
    // cyclic walk and for random keys.
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut t = now;
    for (pattern, random) in [("cyclic", false), ("random", true)] {
        const N: usize = 2_000_000;
        let (cpu0, wall0) = (on_cpu_ns(), Instant::now());
        for n in 0..N {
            t += Duration::from_micros(3);
            let k = if random {
                client(u128::from(rng.next() % LIVE_KEYS as u64))
            } else {
                keys[n % keys.len()]
            };
            black_box(check(
                &[ReqCheck {
                    zone: &z,
                    key: k,
                    rule: &r,
                }],
                black_box(t),
            ));
        }
        let wall = wall0.elapsed().as_nanos() as f64 / N as f64;
        match (cpu0, on_cpu_ns()) {
            (Some(a), Some(b)) => println!(
                "limit_req one limit, 100k live keys, {pattern}: {wall:.0} ns/decision wall, {:.0} ns/decision on CPU",
                (b - a) as f64 / N as f64
            ),
            _ => println!("limit_req one limit, 100k live keys, {pattern}: {wall:.0} ns/decision wall"),
        }
    }

    let mut group = c.benchmark_group("limit_req");
    let mut i = 0usize;
    group.bench_function("check_one_limit_100k_live_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            t += Duration::from_micros(3);
            let d = check(
                &[ReqCheck {
                    zone: &z,
                    key: keys[i],
                    rule: &r,
                }],
                black_box(t),
            );
            debug_assert!(matches!(d, ReqDecision::Pass { .. }));
            black_box(d)
        })
    });

    // The same decision for keys drawn at random: every lookup lands on a cold part of the table,
    // which is what many clients under load look like. The cyclic walk above visits the keys in
    // the order they were inserted, so the hardware prefetcher hides most of its cache misses.
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    group.bench_function("check_one_limit_100k_random_keys", |b| {
        b.iter(|| {
            let k = client(u128::from(rng.next() % LIVE_KEYS as u64));
            t += Duration::from_micros(3);
            let d = check(
                &[ReqCheck {
                    zone: &z,
                    key: k,
                    rule: &r,
                }],
                black_box(t),
            );
            debug_assert!(matches!(d, ReqDecision::Pass { .. }));
            black_box(d)
        })
    });

    let z2 = zone("second", 200_000);
    let r2 = rule("second");
    group.bench_function("check_two_limits_100k_live_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            t += Duration::from_micros(3);
            let d = check(
                &[
                    ReqCheck {
                        zone: &z,
                        key: keys[i],
                        rule: &r,
                    },
                    ReqCheck {
                        zone: &z2,
                        key: keys[i],
                        rule: &r2,
                    },
                ],
                black_box(t),
            );
            black_box(d)
        })
    });

    // The same decision when the keys fit in the core's own caches: the compute floor, without
    // the cache misses that 100k keys spread over the whole table cost.
    let small = zone("small", 200_000);
    let few = scattered(1_000);
    for k in &few {
        let _ = check(
            &[ReqCheck {
                zone: &small,
                key: *k,
                rule: &r,
            }],
            now,
        );
    }
    group.bench_function("check_one_limit_1k_live_keys", |b| {
        b.iter(|| {
            i = (i + 1) % few.len();
            t += Duration::from_micros(3);
            black_box(check(
                &[ReqCheck {
                    zone: &small,
                    key: few[i],
                    rule: &r,
                }],
                black_box(t),
            ))
        })
    });

    let strict = LimitReqRule {
        burst: 0,
        ..rule("per_ip")
    };
    group.bench_function("reject_one_limit_100k_live_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let d = check(
                &[ReqCheck {
                    zone: &z,
                    key: keys[i],
                    rule: &strict,
                }],
                black_box(t),
            );
            black_box(d)
        })
    });
    group.finish();
}

/// xorshift64: random key indices without touching memory (a table of indices would add its own
/// cache misses to the figure).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Nanoseconds this thread has spent running on a CPU.
fn on_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory_with_1m_keys(c: &mut Criterion) {
    const MAX_KEYS: usize = 100_000;
    const DISTINCT: u32 = 1_000_000;
    let before = resident_bytes();
    let z = zone("flood", MAX_KEYS);
    let r = rule("flood");
    let now = Instant::now();
    let start = Instant::now();
    for i in 0..DISTINCT {
        let key = LimitKeyValue::from_ip(std::net::Ipv4Addr::from(0x0b00_0000u32 + i).into());
        let _ = check(
            &[ReqCheck {
                zone: &z,
                key,
                rule: &r,
            }],
            now,
        );
    }
    let elapsed = start.elapsed();
    let after = resident_bytes();
    let keys = z.keys();
    assert!(
        keys <= MAX_KEYS,
        "{keys} keys tracked > max_keys {MAX_KEYS}"
    );
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "limit_req memory: {DISTINCT} distinct keys into max_keys {MAX_KEYS}: {keys} tracked, \
             resident +{:.1} MiB ({:.0} bytes/tracked key), {:.0} ns per new-key decision",
            a.saturating_sub(b) as f64 / (1024.0 * 1024.0),
            a.saturating_sub(b) as f64 / keys.max(1) as f64,
            elapsed.as_nanos() as f64 / f64::from(DISTINCT),
        ),
        _ => println!("limit_req memory: {keys} tracked (no /proc/self/statm)"),
    }

    // Keep flooding with new keys: every decision evicts the least recently used key.
    let mut next = DISTINCT;
    c.bench_function("limit_req/new_key_with_eviction_at_max_keys", |b| {
        b.iter(|| {
            next = next.wrapping_add(1);
            let key = LimitKeyValue::from_ip(
                std::net::Ipv4Addr::from(0x0c00_0000u32.wrapping_add(next)).into(),
            );
            black_box(check(
                &[ReqCheck {
                    zone: &z,
                    key,
                    rule: &r,
                }],
                now,
            ))
        })
    });
    assert!(z.keys() <= MAX_KEYS);
}

criterion_group!(benches, decision_cost, memory_with_1m_keys);
criterion_main!(benches);
