//! Verdicts: checks (expected vs measured), the table printed at the end, and the JSON report.

use serde::Serialize;
use serde_json::{Map, Value};

/// One comparison of an expectation with a measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What is checked, e.g. `201 responses`.
    pub check: String,
    /// What SPEC says, e.g. `exactly 1`.
    pub expected: String,
    /// What was seen.
    pub measured: String,
    /// Verdict.
    pub pass: bool,
}

/// What one scenario found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioReport {
    /// Scenario name (`race`, `flood`, ...).
    pub name: String,
    /// Checks in the order they were made.
    pub checks: Vec<Check>,
    /// Every figure measured, for `--json`.
    pub figures: Map<String, Value>,
    /// Set when the scenario could not run to the end (setup failed, stack unreachable).
    pub error: Option<String>,
    /// Wall time of the scenario, including restore.
    pub duration_ms: u64,
    /// Files written (charts).
    pub artifacts: Vec<String>,
}

impl ScenarioReport {
    /// An empty report for `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    /// Adds a check.
    pub fn check(
        &mut self,
        check: &str,
        expected: impl Into<String>,
        measured: impl Into<String>,
        pass: bool,
    ) {
        self.checks.push(Check {
            check: check.to_owned(),
            expected: expected.into(),
            measured: measured.into(),
            pass,
        });
    }

    /// Records a figure for the JSON report.
    pub fn figure(&mut self, key: &str, value: impl Serialize) {
        self.figures.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// Passed: ran to the end, made at least one check, and every check passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && !self.checks.is_empty() && self.checks.iter().all(|c| c.pass)
    }
}

fn cell(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        flat
    }
}

/// The verdict table: one row per check, plus a row per scenario that could not finish, and a
/// final summary line.
pub fn render_table(reports: &[ScenarioReport]) -> String {
    const HEAD: [&str; 5] = ["scenario", "check", "expected", "measured", "verdict"];
    const MAX: [usize; 5] = [20, 48, 64, 64, 7];
    let mut rows: Vec<[String; 5]> = Vec::new();
    for r in reports {
        for c in &r.checks {
            rows.push([
                r.name.clone(),
                c.check.clone(),
                c.expected.clone(),
                c.measured.clone(),
                if c.pass { "PASS" } else { "FAIL" }.into(),
            ]);
        }
        if let Some(e) = &r.error {
            rows.push([
                r.name.clone(),
                "scenario completed".into(),
                "no error".into(),
                e.clone(),
                "FAIL".into(),
            ]);
        } else if r.checks.is_empty() {
            rows.push([
                r.name.clone(),
                "checks made".into(),
                "at least one".into(),
                "none".into(),
                "FAIL".into(),
            ]);
        }
    }
    let rows: Vec<[String; 5]> = rows
        .into_iter()
        .map(|r| {
            let mut out: [String; 5] = Default::default();
            for i in 0..5 {
                out[i] = cell(&r[i], MAX[i]);
            }
            out
        })
        .collect();
    let mut width = HEAD.map(|h| h.chars().count());
    for r in &rows {
        for i in 0..5 {
            width[i] = width[i].max(r[i].chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for i in 0..5 {
            let pad = width[i] - cells[i].chars().count();
            s.push_str(cells[i]);
            if i < 4 {
                s.push_str(&" ".repeat(pad));
                s.push_str("  ");
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(HEAD);
    let sep: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line([&sep[0], &sep[1], &sep[2], &sep[3], &sep[4]]));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    // Full text of whatever a cell had to cut: the scenario errors and failed measurements.
    for r in reports {
        if let Some(e) = &r.error {
            out.push_str(&format!("\n{}: {e}", r.name));
        }
        for c in r.checks.iter().filter(|c| !c.pass) {
            if c.measured.chars().count() > MAX[3] {
                out.push_str(&format!("\n{} / {}: {}", r.name, c.check, c.measured));
            }
        }
    }
    if out.ends_with(|c: char| c != '\n') {
        out.push('\n');
    }
    let passed = reports.iter().filter(|r| r.passed()).count();
    out.push_str(&format!(
        "\n{passed}/{} scenario(s) passed{}\n",
        reports.len(),
        if passed == reports.len() && !reports.is_empty() {
            ""
        } else {
            " — FAIL"
        }
    ));
    out
}

/// The `--json` document: `{tool, startedAt, targets, passed, scenarios:[...]}`.
pub fn json_report(
    reports: &[ScenarioReport],
    targets: &impl Serialize,
    started_at: &str,
) -> Value {
    serde_json::json!({
        "tool": "loadtest",
        "startedAt": started_at,
        "targets": targets,
        "passed": !reports.is_empty() && reports.iter().all(ScenarioReport::passed),
        "scenarios": reports.iter().map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("passed".into(), Value::Bool(r.passed()));
            }
            v
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<ScenarioReport> {
        let mut a = ScenarioReport::new("race");
        a.check("201 responses", "exactly 1", "1", true);
        a.check("audit", "ok", "ok", true);
        a.figure("buyers", 500);
        let mut b = ScenarioReport::new("flood");
        b.check("accepted", "26 ± 1", "31", false);
        let mut c = ScenarioReport::new("slow-payments");
        c.error = Some("PUT http://127.0.0.1:3002/admin/chaos: connection refused".into());
        vec![a, b, c]
    }

    #[test]
    fn table_rows_verdicts_and_summary() {
        let t = render_table(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("scenario"));
        assert!(lines[0].trim_end().ends_with("verdict"));
        assert!(lines[1].starts_with("--------"));
        assert!(lines[2].contains("201 responses") && lines[2].ends_with("PASS"));
        assert!(lines[4].contains("31") && lines[4].ends_with("FAIL"));
        assert!(lines[5].contains("connection refused") && lines[5].ends_with("FAIL"));
        assert!(t.contains("1/3 scenario(s) passed — FAIL"));
        assert!(t.contains(
            "\nslow-payments: PUT http://127.0.0.1:3002/admin/chaos: connection refused\n"
        ));
        // Columns line up: "check" starts at the same offset on every row.
        let off = lines[0].find("check").expect("header");
        assert_eq!(&lines[2][off..off + 3], "201");
    }

    #[test]
    fn all_pass_summary() {
        let t = render_table(&sample()[..1]);
        assert!(t.contains("1/1 scenario(s) passed\n"));
    }

    #[test]
    fn no_checks_is_a_failure() {
        let r = ScenarioReport::new("x");
        assert!(!r.passed());
        assert!(render_table(&[r]).contains("checks made"));
    }

    #[test]
    fn json_shape() {
        let v = json_report(
            &sample(),
            &serde_json::json!({"gateway": "g"}),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(v["tool"], "loadtest");
        assert_eq!(v["passed"], false);
        assert_eq!(v["targets"]["gateway"], "g");
        let s = v["scenarios"].as_array().expect("array");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0]["name"], "race");
        assert_eq!(s[0]["passed"], true);
        assert_eq!(s[0]["figures"]["buyers"], 500);
        assert_eq!(s[0]["checks"][0]["expected"], "exactly 1");
        assert_eq!(s[0]["checks"][0]["pass"], true);
        assert!(s[0]["durationMs"].is_u64());
        assert_eq!(s[2]["passed"], false);
        assert!(s[2]["error"].as_str().expect("error").contains("refused"));
    }
}
