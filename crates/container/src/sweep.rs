//! Removal of what earlier runs left behind, found by label and removed by id.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use tracing::info;

use crate::engine::Engine;
use crate::error::ContainerError;
use crate::owner::{owner_is_alive, OWNER_LABEL, RUN_ID_LABEL};

/// Selection of the labelled resources a sweep removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepScope {
    /// Resources whose creating process is gone (or that carry no owner label); resources of
    /// runs still going in other processes stay.
    Stale,
    /// Every resource of one run, regardless of the creating process; used on Ctrl-C and at
    /// run end.
    Run(String),
}

/// Resources a sweep removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Ids of the removed containers.
    pub containers: Vec<String>,
    /// Ids of the removed networks.
    pub networks: Vec<String>,
}

impl Engine {
    /// Removes the containers, then the networks, that carry [`RUN_ID_LABEL`] and fall in
    /// `scope`. Containers go first because a network with endpoints cannot be removed.
    ///
    /// NOTE: the daemon completes a create request even after its client died, so a create
    /// still in flight when the sweep lists can escape it; the next sweep removes it.
    pub async fn sweep(&self, scope: &SweepScope) -> Result<SweepReport, ContainerError> {
        let filter = match scope {
            SweepScope::Stale => RUN_ID_LABEL.to_string(),
            SweepScope::Run(run_id) => format!("{RUN_ID_LABEL}={run_id}"),
        };
        let filters = HashMap::from([("label".to_string(), vec![filter])]);
        let mut report = SweepReport::default();

        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .call(
                "list labelled containers".to_string(),
                self.docker().list_containers(Some(options)),
            )
            .await?;
        for container in containers {
            let Some(id) = container.id else { continue };
            if in_scope(scope, container.labels.as_ref()) {
                self.remove_container(&id).await?;
                report.containers.push(id);
            }
        }

        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let networks = self
            .call(
                "list labelled networks".to_string(),
                self.docker().list_networks(Some(options)),
            )
            .await?;
        for network in networks {
            let Some(id) = network.id else { continue };
            if in_scope(scope, network.labels.as_ref()) {
                self.remove_network(&id).await?;
                report.networks.push(id);
            }
        }

        if !report.containers.is_empty() || !report.networks.is_empty() {
            info!(
                containers = report.containers.len(),
                networks = report.networks.len(),
                ?scope,
                "removed leftovers"
            );
        }
        Ok(report)
    }
}

fn in_scope(scope: &SweepScope, labels: Option<&HashMap<String, String>>) -> bool {
    match scope {
        // The label filter already selected the run.
        SweepScope::Run(_) => true,
        SweepScope::Stale => {
            let owner = labels.and_then(|labels| labels.get(OWNER_LABEL));
            !owner.is_some_and(|owner| owner_is_alive(owner))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::current_owner;

    #[test]
    fn stale_scope_keeps_live_owner() {
        let labels = HashMap::from([(OWNER_LABEL.to_string(), current_owner().unwrap())]);
        assert!(!in_scope(&SweepScope::Stale, Some(&labels)));
    }

    #[test]
    fn stale_scope_takes_missing_owner() {
        assert!(in_scope(&SweepScope::Stale, Some(&HashMap::new())));
    }

    #[test]
    fn run_scope_takes_live_owner() {
        let labels = HashMap::from([(OWNER_LABEL.to_string(), current_owner().unwrap())]);
        assert!(in_scope(&SweepScope::Run("r".to_string()), Some(&labels)));
    }
}
