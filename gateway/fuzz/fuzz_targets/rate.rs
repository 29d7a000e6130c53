//! `gateway::config::parse_rate` (`Nr/s`, `Nr/m`) on arbitrary text: never panics, and every
//! accepted rate is exactly N per second or N per minute in milli-requests per second, never 0.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(rate) = gateway::config::parse_rate(text) else {
        return;
    };
    assert!(rate.milli_per_sec > 0, "{text:?} gave a zero rate");
    let (n, per_minute) = if let Some(n) = text.strip_suffix("r/s") {
        (n, false)
    } else if let Some(n) = text.strip_suffix("r/m") {
        (n, true)
    } else {
        panic!("{text:?} accepted without an r/s or r/m suffix");
    };
    let n: u128 = n
        .parse()
        .unwrap_or_else(|e| panic!("{text:?}: count {n:?} accepted: {e}"));
    let expected = if per_minute { n * 1000 / 60 } else { n * 1000 };
    assert_eq!(u128::from(rate.milli_per_sec), expected, "{text:?}");
});
