//! Cells, their expected answers, and suites of cells.
//!
//! A suite is a TOML file; the default one is embedded at compile time from
//! `suites/default.toml`, which documents the fields.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// The embedded default suite's TOML text.
pub const DEFAULT_SUITE_TOML: &str = include_str!("../suites/default.toml");

/// Name of the default suite's cell that prints `MemTotal` and `MemAvailable` in KiB.
pub const MEMINFO_CELL: &str = "proc_meminfo";

const DEFAULT_TIMEOUT_S: f64 = 60.0;

/// Maximum cell timeout in seconds, the same bound as the command line's durations. Larger
/// values overflow when added to the current time.
const MAX_TIMEOUT_S: f64 = 1e9;

/// Failure to load or validate a suite.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// The suite file could not be read.
    #[error(
        "cannot read suite file {path} ({error}): pass --suite a readable TOML suite, or leave \
         --suite out for the default suite"
    )]
    Read {
        /// The file.
        path: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The suite is not valid TOML of the suite's shape.
    #[error("invalid suite {origin}: {message}")]
    Parse {
        /// The file, or `embedded default`.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A cell's fields are inconsistent.
    #[error("invalid cell {cell:?} in suite {origin}: {reason}")]
    InvalidCell {
        /// The file, or `embedded default`.
        origin: String,
        /// The cell's name.
        cell: String,
        /// The problem and the fix.
        reason: String,
    },
}

/// Expected answer of a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// The answer equals this text exactly.
    Equals(String),
    /// The answer matches this regular expression (`regex` crate syntax); used where the value
    /// differs by backend, such as `uname -r`.
    Matches(String),
    /// The cell's standard output is exactly this many bytes long.
    StdoutBytes(u64),
}

/// Metric of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Wall time per run; p50, p95 and p99 over the repetitions.
    Latency,
    /// Bytes moved per run divided by the wall time, in MB/s (10^6 bytes per second).
    Throughput,
    /// A value recorded for the report, such as the kernel release seen from inside.
    Observation,
}

/// One cell: code sent as `execute_request`, and the answer it must produce.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    /// Unique name within its suite.
    pub name: String,
    /// Code sent as `execute_request`.
    pub code: String,
    /// The answer the cell must produce.
    pub expect: Expected,
    /// Metric of the cell.
    pub metric: Metric,
    /// Bytes one run moves, for [`Metric::Throughput`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_run: Option<u64>,
    /// Timed runs.
    #[serde(default = "default_repetitions")]
    pub repetitions: u32,
    /// Untimed runs before the timed ones; their answers are checked too.
    #[serde(default)]
    pub warmup: u32,
    /// Time allowed for one run, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

fn default_repetitions() -> u32 {
    1
}

fn default_timeout_s() -> f64 {
    DEFAULT_TIMEOUT_S
}

impl Cell {
    /// Time allowed for one run.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_s)
    }

    /// Checks one run's answer. `answer` is the result text, or the trimmed standard output
    /// when the cell has no result; `stdout_bytes` is the length of the whole standard output.
    /// The error names the expected and the received value.
    pub fn check(&self, answer: &str, stdout_bytes: u64) -> Result<(), String> {
        match &self.expect {
            Expected::Equals(expected) if answer == expected => Ok(()),
            Expected::Equals(expected) => {
                Err(format!("expected {expected:?}, got {:?}", shorten(answer)))
            }
            Expected::Matches(pattern) => {
                // Loading a suite validates its patterns, so this fails only for a cell built
                // in code with an invalid pattern.
                let regex = Regex::new(pattern).map_err(|error| error.to_string())?;
                if regex.is_match(answer) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected a match of /{pattern}/, got {:?}",
                        shorten(answer)
                    ))
                }
            }
            Expected::StdoutBytes(expected) if stdout_bytes == *expected => Ok(()),
            Expected::StdoutBytes(expected) => Err(format!(
                "expected {expected} bytes of standard output, got {stdout_bytes}"
            )),
        }
    }

    fn validate(&self, origin: &str) -> Result<(), SuiteError> {
        let invalid = |reason: String| SuiteError::InvalidCell {
            origin: origin.to_owned(),
            cell: self.name.clone(),
            reason,
        };
        if self.name.trim().is_empty() {
            return Err(invalid("the name is empty: give every cell a name".into()));
        }
        if self.code.trim().is_empty() {
            return Err(invalid("the code is empty".into()));
        }
        if self.repetitions == 0 {
            return Err(invalid("repetitions is 0: use 1 or more".into()));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= MAX_TIMEOUT_S)
        {
            return Err(invalid(format!(
                "timeout_s is {:?}: use a positive number of seconds, at most {MAX_TIMEOUT_S}",
                self.timeout_s
            )));
        }
        if let Expected::Matches(pattern) = &self.expect {
            Regex::new(pattern)
                .map_err(|error| invalid(format!("invalid regular expression: {error}")))?;
        }
        match (self.metric, self.bytes_per_run) {
            (Metric::Throughput, None | Some(0)) => Err(invalid(
                "a throughput cell needs bytes_per_run, the bytes one run moves".into(),
            )),
            (Metric::Latency | Metric::Observation, Some(_)) => Err(invalid(
                "bytes_per_run is only meaningful with metric = \"throughput\"".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// A named list of cells.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Suite name, shown in results.
    pub name: String,
    /// The cells, run in this order.
    #[serde(rename = "cell")]
    pub cells: Vec<Cell>,
}

impl Suite {
    /// Returns the embedded default suite.
    pub fn default_suite() -> Suite {
        // The embedded file is checked by this crate's tests, so a failure is a build defect.
        Suite::from_toml(DEFAULT_SUITE_TOML, "embedded default")
            .expect("the embedded default suite is valid")
    }

    /// Reads and validates a suite file.
    pub fn from_file(path: &Path) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|error| SuiteError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Suite::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates a suite; `origin` names the source in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Suite, SuiteError> {
        let suite: Suite = toml::from_str(text).map_err(|error| SuiteError::Parse {
            origin: origin.to_owned(),
            message: error.to_string(),
        })?;
        if suite.cells.is_empty() {
            return Err(SuiteError::Parse {
                origin: origin.to_owned(),
                message: "the suite has no cells: add at least one [[cell]] table".into(),
            });
        }
        let mut names = HashSet::new();
        for cell in &suite.cells {
            cell.validate(origin)?;
            if !names.insert(cell.name.as_str()) {
                return Err(SuiteError::InvalidCell {
                    origin: origin.to_owned(),
                    cell: cell.name.clone(),
                    reason: "the name is used twice: give every cell its own name".into(),
                });
            }
        }
        Ok(suite)
    }

    /// Returns the cell named `name`.
    pub fn cell(&self, name: &str) -> Option<&Cell> {
        self.cells.iter().find(|cell| cell.name == name)
    }
}

/// `MemTotal` and `MemAvailable` in bytes, as the default suite's [`MEMINFO_CELL`] prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeminfoTotals {
    /// `MemTotal`, in bytes.
    pub mem_total_bytes: u64,
    /// `MemAvailable`, in bytes.
    pub mem_available_bytes: u64,
}

impl MeminfoTotals {
    /// Parses the answer of [`MEMINFO_CELL`]: two numbers in KiB separated by a space.
    pub fn parse_cell_answer(answer: &str) -> Option<MeminfoTotals> {
        let mut fields = answer.split_whitespace();
        let total_kib: u64 = fields.next()?.parse().ok()?;
        let available_kib: u64 = fields.next()?.parse().ok()?;
        if fields.next().is_some() {
            return None;
        }
        Some(MeminfoTotals {
            mem_total_bytes: total_kib * 1024,
            mem_available_bytes: available_kib * 1024,
        })
    }
}

/// Shortens a long answer for an error message.
pub(crate) fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    if text.chars().count() <= MAX_CHARS {
        return text.to_owned();
    }
    let head: String = text.chars().take(MAX_CHARS).collect();
    format!("{head}... ({} bytes)", text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_suite_is_valid() {
        let suite = Suite::default_suite();
        assert_eq!(suite.name, "default");
        for name in [
            "trivial",
            "python_arithmetic",
            "numpy_matmul",
            "stream_output",
            "allocate_touch",
            "file_fsync",
            "syscall_loop",
            "uname_release",
            "cpu_count",
            MEMINFO_CELL,
            "pid",
        ] {
            assert!(suite.cell(name).is_some(), "default suite lacks {name}");
        }
    }

    #[test]
    fn trivial_cell_repeats_many_times() {
        let suite = Suite::default_suite();
        assert!(suite.cell("trivial").unwrap().repetitions >= 100);
    }

    fn cell(expect: Expected) -> Cell {
        Cell {
            name: "c".into(),
            code: "1".into(),
            expect,
            metric: Metric::Latency,
            bytes_per_run: None,
            repetitions: 1,
            warmup: 0,
            timeout_s: 1.0,
        }
    }

    #[test]
    fn check_equals() {
        let cell = cell(Expected::Equals("2".into()));
        assert!(cell.check("2", 0).is_ok());
        let error = cell.check("3", 0).unwrap_err();
        assert!(error.contains("\"2\""), "{error}");
        assert!(error.contains("\"3\""), "{error}");
    }

    #[test]
    fn check_matches() {
        let cell = cell(Expected::Matches("^[0-9]+$".into()));
        assert!(cell.check("123", 0).is_ok());
        assert!(cell.check("12a", 0).is_err());
    }

    #[test]
    fn check_stdout_bytes() {
        let cell = cell(Expected::StdoutBytes(10));
        assert!(cell.check("", 10).is_ok());
        assert!(cell.check("", 9).is_err());
    }

    #[test]
    fn suite_rejects_duplicate_names() {
        let text = r#"
            name = "s"
            [[cell]]
            name = "a"
            code = "1"
            expect = { equals = "1" }
            metric = "latency"
            [[cell]]
            name = "a"
            code = "2"
            expect = { equals = "2" }
            metric = "latency"
        "#;
        let error = Suite::from_toml(text, "test").unwrap_err();
        assert!(error.to_string().contains("used twice"), "{error}");
    }

    #[test]
    fn suite_rejects_throughput_without_bytes() {
        let text = r#"
            name = "s"
            [[cell]]
            name = "a"
            code = "1"
            expect = { equals = "1" }
            metric = "throughput"
        "#;
        let error = Suite::from_toml(text, "test").unwrap_err();
        assert!(error.to_string().contains("bytes_per_run"), "{error}");
    }

    #[test]
    fn suite_rejects_bad_regex() {
        let text = r#"
            name = "s"
            [[cell]]
            name = "a"
            code = "1"
            expect = { matches = "(" }
            metric = "observation"
        "#;
        assert!(Suite::from_toml(text, "test").is_err());
    }

    #[test]
    fn suite_timeout_bounds() {
        let suite_with = |timeout: &str| {
            format!(
                "name = \"s\"\n[[cell]]\nname = \"a\"\ncode = \"1\"\n\
                 expect = {{ equals = \"1\" }}\nmetric = \"observation\"\ntimeout_s = {timeout}\n"
            )
        };
        assert!(Suite::from_toml(&suite_with("1e9"), "test").is_ok());
        let error = Suite::from_toml(&suite_with("1.000001e9"), "test").unwrap_err();
        assert!(error.to_string().contains("at most 1000000000"), "{error}");
        assert!(Suite::from_toml(&suite_with("1e300"), "test").is_err());
        assert!(Suite::from_toml(&suite_with("0"), "test").is_err());
    }

    #[test]
    fn suite_rejects_unknown_field() {
        let text = r#"
            name = "s"
            [[cell]]
            name = "a"
            code = "1"
            expect = { equals = "1" }
            metric = "latency"
            repetitons = 3
        "#;
        let error = Suite::from_toml(text, "test").unwrap_err();
        assert!(error.to_string().contains("repetitons"), "{error}");
    }

    #[test]
    fn suite_rejects_empty() {
        assert!(Suite::from_toml("name = \"s\"\ncell = []\n", "test").is_err());
    }

    #[test]
    fn meminfo_answer_parses_kib() {
        let totals = MeminfoTotals::parse_cell_answer("1000 500").unwrap();
        assert_eq!(totals.mem_total_bytes, 1_024_000);
        assert_eq!(totals.mem_available_bytes, 512_000);
        assert!(MeminfoTotals::parse_cell_answer("1000").is_none());
        assert!(MeminfoTotals::parse_cell_answer("1000 500 1").is_none());
    }
}
