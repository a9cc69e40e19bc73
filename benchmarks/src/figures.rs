//! What the harness reports: figures, each with the baseline measured in the same run
//! beside it, their ratio, and the goal from the issue.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// A goal a figure is held to.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// value / baseline must be at most this.
    RatioAtMost(f64),
    /// value / baseline must be at least this.
    RatioAtLeast(f64),
    /// The value itself must be at least this.
    AtLeast(f64),
    /// The value itself must be at most this.
    AtMost(f64),
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::RatioAtMost(x) => format!("ratio <= {x}"),
            Goal::RatioAtLeast(x) => format!("ratio >= {x}"),
            Goal::AtLeast(x) => format!(">= {}", short(x)),
            Goal::AtMost(x) => format!("<= {}", short(x)),
        }
    }

    fn met(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Goal::RatioAtMost(x) => ratio.map(|r| r <= x),
            Goal::RatioAtLeast(x) => ratio.map(|r| r >= x),
            Goal::AtLeast(x) => Some(value >= x),
            Goal::AtMost(x) => Some(value <= x),
        }
    }
}

/// One measured figure: the median over the runs, and its baseline from the same runs.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The scenario number and name, e.g. "1 overhead".
    pub scenario: String,
    /// What was measured.
    pub name: String,
    /// Median over the runs.
    pub value: f64,
    /// The unit of `value` (and of the baseline's value).
    pub unit: &'static str,
    /// The baseline's name and median value.
    pub baseline: Option<(String, f64)>,
    /// Median over the runs of value / baseline, each pair measured in the same run.
    pub ratio: Option<f64>,
    /// The goal, if the issue sets one.
    pub goal: Option<Goal>,
    /// How many runs the median is over.
    pub runs: usize,
}

impl Figure {
    /// A figure without a baseline.
    pub fn plain(
        scenario: &str,
        name: impl Into<String>,
        unit: &'static str,
        values: &[f64],
    ) -> Self {
        Figure {
            scenario: scenario.to_string(),
            name: name.into(),
            value: median(values),
            unit,
            baseline: None,
            ratio: None,
            goal: None,
            runs: values.len(),
        }
    }

    /// A figure with its baseline; `values[i]` and `baseline[i]` come from the same run.
    pub fn against(
        scenario: &str,
        name: impl Into<String>,
        unit: &'static str,
        values: &[f64],
        baseline_name: impl Into<String>,
        baseline: &[f64],
    ) -> Self {
        let ratios: Vec<f64> = values.iter().zip(baseline).map(|(v, b)| v / b).collect();
        Figure {
            baseline: Some((baseline_name.into(), median(baseline))),
            ratio: Some(median(&ratios)),
            ..Figure::plain(scenario, name, unit, values)
        }
    }

    /// Sets the goal.
    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    /// Whether the goal is met (`None` without a goal).
    pub fn met(&self) -> Option<bool> {
        self.goal.and_then(|g| g.met(self.value, self.ratio))
    }

    /// The figure as JSON.
    pub fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "name": self.name,
            "value": finite(self.value),
            "unit": self.unit,
            "baseline": self.baseline.as_ref().map(|(n, v)| json!({"name": n, "value": finite(*v)})),
            "ratio": self.ratio.and_then(finite),
            "goal": self.goal.map(|g| g.describe()),
            "met": self.met(),
            "runs": self.runs,
        })
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The median (mean of the middle two for an even count); NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The `p`-th percentile (0..=100) of `values`, nearest rank.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// A number with about three significant digits.
pub fn short(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.3}M", x / 1e6)
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The figures as a plain-text table, grouped by scenario.
pub fn table(figures: &[Figure]) -> String {
    let mut rows = vec![[
        "figure".to_string(),
        "value".to_string(),
        "baseline".to_string(),
        "ratio".to_string(),
        "goal".to_string(),
    ]];
    let mut scenario_of_row = vec![String::new()];
    for f in figures {
        let met = match f.met() {
            Some(true) => " met",
            Some(false) => " MISSED",
            None => "",
        };
        rows.push([
            f.name.clone(),
            format!("{} {}", short(f.value), f.unit),
            f.baseline
                .as_ref()
                .map(|(n, v)| format!("{n}: {} {}", short(*v), f.unit))
                .unwrap_or_default(),
            f.ratio.map(|r| format!("{r:.3}x")).unwrap_or_default(),
            f.goal
                .map(|g| format!("{}{met}", g.describe()))
                .unwrap_or_default(),
        ]);
        scenario_of_row.push(f.scenario.clone());
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let mut current = String::new();
    for (row, scenario) in rows.iter().zip(&scenario_of_row) {
        if !scenario.is_empty() && *scenario != current {
            current = scenario.clone();
            let _ = writeln!(out, "\n[{scenario}]");
        }
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:<w2$}  {:>w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
    }

    #[test]
    fn ratios_are_per_run_then_median() {
        let f = Figure::against("s", "x", "us", &[2.0, 3.0, 10.0], "b", &[1.0, 1.0, 10.0]);
        assert_eq!(f.ratio, Some(2.0));
        assert_eq!(f.goal(Goal::RatioAtMost(1.5)).met(), Some(false));
    }
}
