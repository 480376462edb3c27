//! The bridge network a run creates and owns: its own subnet, checked free, no published ports.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::{InspectNetworkOptions, ListNetworksOptions};
use tracing::{debug, info};

use crate::engine::Engine;
use crate::error::ContainerError;
use crate::owner::{self, RUN_ID_LABEL};
use crate::subnet::{self, Ipv4Subnet};

/// Pool the per-run subnets come from: `10.213.0.0/16`, taken one `/24` at a time. It lies
/// in the private 10/8 range away from Docker's default pools (172.17.0.0/16 to
/// 172.31.0.0/16 and 192.168.0.0/16), and each candidate is still checked against the host.
pub const SUBNET_POOL: Ipv4Subnet = match Ipv4Subnet::const_new(Ipv4Addr::new(10, 213, 0, 0), 16) {
    Some(pool) => pool,
    None => panic!("invalid subnet pool"),
};

/// Prefix length of each run's subnet: 253 container addresses besides the gateway.
pub const SUBNET_PREFIX_LEN: u8 = 24;

/// Name prefix of every network and container isobench creates.
pub const NAME_PREFIX: &str = "isobench-";

/// A bridge network owned by one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Docker's network id.
    pub id: String,
    /// Network name, `isobench-<run id>`.
    pub name: String,
    /// The network's subnet.
    pub subnet: Ipv4Subnet,
    /// Address of the host's end of the bridge.
    pub gateway: Ipv4Addr,
}

impl Engine {
    /// Creates the bridge network of run `run_id` on a `/24` from [`SUBNET_POOL`] that no host
    /// route, host interface or Docker network uses. The network is internal (no route out of
    /// it) and labelled with the run id; the host reaches containers at their own addresses.
    ///
    /// When a network of the same name and run id exists already, that one is returned, so a
    /// retried call does not fail.
    pub async fn create_network(&self, run_id: &str) -> Result<Network, ContainerError> {
        validate_run_id(run_id)?;
        let name = format!("{NAME_PREFIX}{run_id}");
        if let Some(existing) = self.inspect_owned_network(&name, run_id).await? {
            return Ok(existing);
        }

        let mut used = self.used_subnets().await?;
        let candidate_count = 1u32 << (SUBNET_PREFIX_LEN - SUBNET_POOL.prefix_len());
        // Runs that start together begin their search at different places in the pool.
        let first = run_id.bytes().fold(0u32, |hash, byte| {
            hash.wrapping_mul(31).wrapping_add(u32::from(byte))
        }) % candidate_count;

        for step in 0..candidate_count {
            let index = (first + step) % candidate_count;
            let base = u32::from(SUBNET_POOL.network()) + (index << (32 - SUBNET_PREFIX_LEN));
            let Some(candidate) = Ipv4Subnet::new(Ipv4Addr::from(base), SUBNET_PREFIX_LEN) else {
                continue;
            };
            if used.iter().any(|subnet| subnet.overlaps(&candidate)) {
                continue;
            }
            match self.try_create_network(&name, run_id, candidate).await {
                Ok(network) => {
                    info!(network = %network.name, subnet = %network.subnet, "created network");
                    return Ok(network);
                }
                // Another process took the subnet between our check and our request.
                Err(error) if is_pool_overlap(&error) => {
                    debug!(subnet = %candidate, "subnet taken meanwhile, trying the next one");
                    used.push(candidate);
                }
                Err(error) if error.status_code() == Some(409) => {
                    return match self.inspect_owned_network(&name, run_id).await? {
                        Some(existing) => Ok(existing),
                        None => Err(ContainerError::NameClash {
                            kind: "network",
                            name,
                        }),
                    };
                }
                Err(error) => return Err(error),
            }
        }
        Err(ContainerError::NoFreeSubnet {
            pool: SUBNET_POOL,
            prefix_len: SUBNET_PREFIX_LEN,
        })
    }

    /// Removes a network by id or name; a network that is already gone is not an error.
    pub async fn remove_network(&self, network: &str) -> Result<(), ContainerError> {
        let removed = self
            .call(
                format!("remove network {network}"),
                self.docker().remove_network(network),
            )
            .await;
        match removed {
            Ok(()) => {
                debug!(network, "removed network");
                Ok(())
            }
            Err(error) if error.status_code() == Some(404) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn try_create_network(
        &self,
        name: &str,
        run_id: &str,
        subnet: Ipv4Subnet,
    ) -> Result<Network, ContainerError> {
        let gateway = subnet.host(1).ok_or(ContainerError::NoFreeSubnet {
            pool: SUBNET_POOL,
            prefix_len: SUBNET_PREFIX_LEN,
        })?;
        let mut options = HashMap::new();
        // Nothing leaves the network, so it needs no source NAT.
        options.insert(
            "com.docker.network.bridge.enable_ip_masquerade".to_string(),
            "false".to_string(),
        );
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            internal: Some(true),
            attachable: Some(false),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    gateway: Some(gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(options),
            labels: Some(owner::labels(run_id)),
            ..Default::default()
        };
        let created = self
            .call(
                format!("create network {name} on {subnet}"),
                self.docker().create_network(request),
            )
            .await?;
        Ok(Network {
            id: created.id,
            name: name.to_string(),
            subnet,
            gateway,
        })
    }

    /// Returns the network `name` if it exists and carries run id `run_id`, `None` if it does
    /// not exist, and a name clash error if it belongs to something else.
    async fn inspect_owned_network(
        &self,
        name: &str,
        run_id: &str,
    ) -> Result<Option<Network>, ContainerError> {
        let inspected = self
            .call(
                format!("inspect network {name}"),
                self.docker()
                    .inspect_network(name, None::<InspectNetworkOptions>),
            )
            .await;
        let inspected = match inspected {
            Ok(inspected) => inspected,
            Err(error) if error.status_code() == Some(404) => return Ok(None),
            Err(error) => return Err(error),
        };
        let labels = inspected.labels.unwrap_or_default();
        let ipam = inspected
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default();
        let config = ipam.first();
        let subnet = config.and_then(|config| config.subnet.as_deref()?.parse().ok());
        let gateway = config.and_then(|config| config.gateway.as_deref()?.parse().ok());
        match (labels.get(RUN_ID_LABEL), subnet, gateway) {
            (Some(owner_run), Some(subnet), Some(gateway)) if owner_run == run_id => {
                Ok(Some(Network {
                    id: inspected.id.unwrap_or_default(),
                    name: name.to_string(),
                    subnet,
                    gateway,
                }))
            }
            _ => Err(ContainerError::NameClash {
                kind: "network",
                name: name.to_string(),
            }),
        }
    }

    /// Collects the subnets in use: host routes, host interface addresses and every Docker
    /// network's IPAM configuration.
    async fn used_subnets(&self) -> Result<Vec<Ipv4Subnet>, ContainerError> {
        let host_error = |source| ContainerError::HostNetwork { source };
        let mut used = subnet::host_routes().map_err(host_error)?;
        used.extend(subnet::interface_subnets().map_err(host_error)?);

        let networks = self
            .call(
                "list networks".to_string(),
                self.docker().list_networks(None::<ListNetworksOptions>),
            )
            .await?;
        for network in networks {
            let configs = network
                .ipam
                .and_then(|ipam| ipam.config)
                .unwrap_or_default();
            // IPv6 subnets fail to parse as IPv4 and cannot overlap ours.
            used.extend(
                configs
                    .iter()
                    .filter_map(|config| config.subnet.as_deref()?.parse::<Ipv4Subnet>().ok()),
            );
        }
        Ok(used)
    }
}

/// Returns whether the daemon rejected a network because its subnet overlaps another one.
fn is_pool_overlap(error: &ContainerError) -> bool {
    match error {
        ContainerError::Api {
            source: bollard::errors::Error::DockerResponseServerError { message, .. },
            ..
        } => message.contains("overlaps"),
        _ => false,
    }
}

/// Checks that a run id can be part of a Docker object name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub(crate) fn validate_run_id(run_id: &str) -> Result<(), ContainerError> {
    let mut bytes = run_id.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|byte| byte.is_ascii_alphanumeric());
    let rest_ok =
        bytes.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && run_id.len() <= 64 {
        Ok(())
    } else {
        Err(ContainerError::InvalidRunId {
            run_id: run_id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_accepts_docker_name_characters() {
        assert!(validate_run_id("20261204T1433-ab.c_d").is_ok());
    }

    #[test]
    fn run_id_rejects_bad_names() {
        for run_id in [
            "",
            "-leading",
            "with space",
            "slash/inside",
            &"x".repeat(65),
        ] {
            assert!(validate_run_id(run_id).is_err(), "{run_id:?}");
        }
    }

    #[test]
    fn subnet_pool_is_private() {
        let private: Ipv4Subnet = "10.0.0.0/8".parse().unwrap();
        assert!(private.contains(SUBNET_POOL.network()));
        assert!(SUBNET_POOL.prefix_len() >= private.prefix_len());
    }
}
