//! [`Workload`] implemented with the real Jupyter client of `isobench-workload`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use isobench_workload::{ConnectionInfo, KernelClient, MeminfoTotals, Metric, Suite};

use crate::backend::GuestMeminfo;
use crate::results::{CellMetric, CellRecord};
use crate::workload::{
    CellProgress, KernelSession, KernelTarget, ReadyTimes, Workload, WorkloadError,
};

/// Code that prints `MemTotal` and `MemAvailable` in KiB, as
/// [`MeminfoTotals::parse_cell_answer`] reads them. The harness runs its own code instead of the
/// suite's `proc_meminfo` cell, whose output is worded for people (`MemTotal 24105 MiB, ...`)
/// and may be changed by any suite file.
const MEMINFO_CODE: &str = "m = dict(l.split(':', 1) for l in open('/proc/meminfo'))\n\
print(m['MemTotal'].split()[0], m['MemAvailable'].split()[0])";

/// Time allowed for the `/proc/meminfo` cell.
const MEMINFO_TIMEOUT: Duration = Duration::from_secs(20);

/// The Jupyter client running one suite.
pub struct JupyterWorkload {
    suite: Suite,
    listen_probe_interval: Duration,
}

impl JupyterWorkload {
    /// Creates a workload that runs `suite` in every trial.
    pub fn new(suite: Suite) -> JupyterWorkload {
        JupyterWorkload {
            suite,
            listen_probe_interval: isobench_workload::LISTEN_PROBE_INTERVAL,
        }
    }

    /// Probes the Jupyter kernel's ports every `interval` until it listens, instead of every
    /// [`isobench_workload::LISTEN_PROBE_INTERVAL`].
    pub fn with_listen_probe_interval(mut self, interval: Duration) -> JupyterWorkload {
        self.listen_probe_interval = interval;
        self
    }

    /// The suite.
    pub fn suite(&self) -> &Suite {
        &self.suite
    }
}

#[async_trait]
impl Workload for JupyterWorkload {
    fn suite_name(&self) -> String {
        self.suite.name.clone()
    }

    async fn connect(
        &self,
        target: &KernelTarget,
        deadline: Instant,
    ) -> Result<Box<dyn KernelSession>, WorkloadError> {
        let info = ConnectionInfo {
            ip: target.address,
            ports: target.ports,
            key: target.key.clone(),
        };
        let not_ready =
            |error: isobench_workload::ClientError| WorkloadError::NotReady(error.to_string());
        let mut client = KernelClient::connect_probing(&info, deadline, self.listen_probe_interval)
            .await
            .map_err(not_ready)?;
        let report = client.wait_ready(deadline).await.map_err(not_ready)?;
        let ready = ReadyTimes {
            reply_at: report.reply_at,
            first_status_at: report.first_status_at,
            ready_at: report.ready_at,
            attempts: report.attempts,
        };
        Ok(Box::new(JupyterSession {
            client: Some(client),
            suite: self.suite.clone(),
            ready,
        }))
    }
}

struct JupyterSession {
    /// `None` after shutdown, which consumes the client.
    client: Option<KernelClient>,
    suite: Suite,
    ready: ReadyTimes,
}

impl JupyterSession {
    fn client(&mut self) -> Result<&mut KernelClient, WorkloadError> {
        self.client
            .as_mut()
            .ok_or_else(|| WorkloadError::Protocol("the Jupyter kernel was shut down".into()))
    }
}

#[async_trait]
impl KernelSession for JupyterSession {
    fn ready(&self) -> ReadyTimes {
        self.ready
    }

    async fn guest_meminfo(&mut self) -> Result<GuestMeminfo, WorkloadError> {
        let outcome = self
            .client()?
            .execute(MEMINFO_CODE, MEMINFO_TIMEOUT)
            .await
            .map_err(|error| WorkloadError::Protocol(error.to_string()))?;
        let totals = MeminfoTotals::parse_cell_answer(outcome.answer()).ok_or_else(|| {
            WorkloadError::Protocol(format!(
                "unexpected /proc/meminfo answer {:?}: expected two numbers in KiB",
                outcome.answer()
            ))
        })?;
        Ok(GuestMeminfo {
            mem_total_bytes: totals.mem_total_bytes,
            mem_available_bytes: totals.mem_available_bytes,
        })
    }

    async fn run_suite(
        &mut self,
        progress: CellProgress<'_>,
    ) -> Result<Vec<CellRecord>, WorkloadError> {
        let cells = self.suite.cells.clone();
        let total = cells.len() as u32;
        let mut records = Vec::with_capacity(cells.len());
        for (index, cell) in cells.iter().enumerate() {
            progress(&cell.name, index as u32, total);
            let outcome =
                self.client()?
                    .run_cell(cell)
                    .await
                    .map_err(|error| WorkloadError::Cell {
                        cell: cell.name.clone(),
                        message: error.to_string(),
                    })?;
            let metric = match outcome.metric {
                Metric::Latency => CellMetric::Latency,
                Metric::Throughput => CellMetric::Throughput,
                Metric::Observation => CellMetric::Observation,
            };
            records.push(CellRecord {
                name: outcome.name,
                metric,
                latencies_s: outcome
                    .runs
                    .iter()
                    .map(|run| run.wall_ns as f64 / 1e9)
                    .collect(),
                bytes_per_repetition: outcome.bytes_per_run,
                answer: (metric == CellMetric::Observation).then_some(outcome.answer),
            });
        }
        progress("", total, total);
        Ok(records)
    }

    async fn shutdown(&mut self) -> Result<(), WorkloadError> {
        match self.client.take() {
            Some(client) => client
                .shutdown()
                .await
                .map_err(|error| WorkloadError::Protocol(error.to_string())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn meminfo_code_output_parses() {
        // The host's python3 runs the same code the harness sends to the Jupyter kernel.
        let output = match Command::new("python3").args(["-c", MEMINFO_CODE]).output() {
            Ok(output) => output,
            Err(error) => {
                eprintln!("skipped: python3 not found: {error}");
                return;
            }
        };
        assert!(output.status.success(), "{output:?}");
        let answer = String::from_utf8_lossy(&output.stdout);
        let totals = MeminfoTotals::parse_cell_answer(answer.trim()).unwrap();
        assert!(totals.mem_total_bytes > 0);
        assert!(totals.mem_available_bytes <= totals.mem_total_bytes);
    }
}
