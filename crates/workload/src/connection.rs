//! Jupyter connection parameters: address, ports, signing key, and the connection file that
//! ipykernel reads.
//!
//! isobench always uses TCP and HMAC-SHA256. The address is a literal IPv4 address, never a
//! host name, because every backend reaches its kernel at an address the harness itself chose.

use std::net::{IpAddr, Ipv4Addr, TcpListener};

use serde::{Deserialize, Serialize};

/// The only transport isobench uses.
pub const TRANSPORT_TCP: &str = "tcp";

/// The only signature scheme isobench uses.
pub const SIGNATURE_SCHEME_HMAC_SHA256: &str = "hmac-sha256";

/// Length of a generated signing key, in random bytes (hex-encoded to twice as many characters).
pub const KEY_BYTES: usize = 32;

/// Failure to build, parse or serve connection parameters.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The address is IPv6, which isobench does not support yet.
    #[error("IPv6 address {0} is not supported yet: use a literal IPv4 address")]
    Ipv6Unsupported(String),
    /// The address is not a literal IP address.
    #[error("invalid kernel address {0:?}: use a literal IPv4 address such as 127.0.0.1, not a host name")]
    InvalidAddress(String),
    /// The connection file names a transport other than TCP.
    #[error("unsupported transport {0:?}: only \"tcp\" is supported")]
    UnsupportedTransport(String),
    /// The connection file names a signature scheme other than HMAC-SHA256.
    #[error("unsupported signature scheme {0:?}: only \"hmac-sha256\" is supported")]
    UnsupportedSignatureScheme(String),
    /// Two channels share one port, or a port is zero.
    #[error("invalid ports {0:?}: every channel needs its own non-zero port")]
    InvalidPorts(ChannelPorts),
    /// The connection file is not valid JSON of the expected shape.
    #[error("invalid connection file")]
    InvalidJson(#[source] serde_json::Error),
    /// The operating system's random number source failed.
    #[error("failed to read random bytes for the signing key: {0}")]
    Random(String),
    /// Binding a loopback port to find free ports failed.
    #[error("failed to find free loopback ports")]
    PortSearch(#[source] std::io::Error),
}

/// Ports of the five Jupyter channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelPorts {
    /// Shell channel (kernel side ROUTER).
    pub shell: u16,
    /// IOPub channel (kernel side PUB).
    pub iopub: u16,
    /// Stdin channel (kernel side ROUTER).
    pub stdin: u16,
    /// Control channel (kernel side ROUTER).
    pub control: u16,
    /// Heartbeat channel (kernel side REP).
    pub heartbeat: u16,
}

impl ChannelPorts {
    /// Fixed ports used inside a guest or container, each of which has its own network
    /// namespace. The guest entrypoint uses the same defaults.
    pub const GUEST_DEFAULT: ChannelPorts = ChannelPorts {
        shell: 50001,
        iopub: 50002,
        stdin: 50003,
        control: 50004,
        heartbeat: 50005,
    };

    /// Returns the ports in the order of the guest entrypoint's `ISOBENCH_PORTS`:
    /// shell, iopub, stdin, control, heartbeat.
    pub fn as_array(&self) -> [u16; 5] {
        [
            self.shell,
            self.iopub,
            self.stdin,
            self.control,
            self.heartbeat,
        ]
    }

    /// Formats the ports as `ISOBENCH_PORTS` and `isobench.ports=` expect: `S,I,N,C,H`.
    pub fn to_list(&self) -> String {
        self.as_array().map(|port| port.to_string()).join(",")
    }

    /// Checks that every port is non-zero and no two channels share one.
    pub fn validate(&self) -> Result<(), ConnectionError> {
        let ports = self.as_array();
        for (index, port) in ports.iter().enumerate() {
            if *port == 0 || ports[index + 1..].contains(port) {
                return Err(ConnectionError::InvalidPorts(*self));
            }
        }
        Ok(())
    }

    /// Finds five free TCP ports on `127.0.0.1` for the `process` baseline.
    ///
    /// The ports are free when this returns, but another program can take one before the
    /// Jupyter kernel binds it; the caller retries with new ports when the kernel reports
    /// "Address already in use" (see [`is_address_in_use`]).
    pub fn pick_free_loopback() -> Result<ChannelPorts, ConnectionError> {
        // All five listeners stay open until every port is known, so the five differ.
        let listeners = (0..5)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConnectionError::PortSearch)?;
        let mut ports = [0u16; 5];
        for (port, listener) in ports.iter_mut().zip(&listeners) {
            *port = listener
                .local_addr()
                .map_err(ConnectionError::PortSearch)?
                .port();
        }
        Ok(ChannelPorts {
            shell: ports[0],
            iopub: ports[1],
            stdin: ports[2],
            control: ports[3],
            heartbeat: ports[4],
        })
    }
}

/// Returns whether a Jupyter kernel's output reports that a port it tried to bind was taken.
///
/// ipykernel raises `zmq.error.ZMQError: Address already in use` and exits when a fixed port
/// from its connection file is taken.
pub fn is_address_in_use(kernel_output: &str) -> bool {
    kernel_output.contains("Address already in use") || kernel_output.contains("EADDRINUSE")
}

/// Everything a client and a Jupyter kernel need to talk: address, ports and signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Address the Jupyter kernel binds and the client connects to.
    pub ip: Ipv4Addr,
    /// Ports of the five channels.
    pub ports: ChannelPorts,
    /// HMAC-SHA256 key as the hex string ipykernel expects. Its ASCII bytes are the HMAC key,
    /// as in `jupyter_client`; an empty key disables signing.
    pub key: String,
}

/// The connection file's JSON form, as `jupyter_client` writes it.
#[derive(Debug, Serialize, Deserialize)]
struct ConnectionFile {
    ip: String,
    transport: String,
    shell_port: u16,
    iopub_port: u16,
    stdin_port: u16,
    control_port: u16,
    hb_port: u16,
    key: String,
    signature_scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kernel_name: Option<String>,
}

impl ConnectionInfo {
    /// Creates connection parameters for `ip` and `ports` with a new random key.
    pub fn generate(ip: Ipv4Addr, ports: ChannelPorts) -> Result<ConnectionInfo, ConnectionError> {
        ports.validate()?;
        Ok(ConnectionInfo {
            ip,
            ports,
            key: generate_key()?,
        })
    }

    /// Creates connection parameters from an address given as text, rejecting IPv6 and host
    /// names with distinct errors.
    pub fn with_address(
        address: &str,
        ports: ChannelPorts,
        key: String,
    ) -> Result<ConnectionInfo, ConnectionError> {
        ports.validate()?;
        Ok(ConnectionInfo {
            ip: parse_ipv4(address)?,
            ports,
            key,
        })
    }

    /// Parses a connection file as `jupyter_client` and ipykernel write it.
    pub fn from_json(text: &str) -> Result<ConnectionInfo, ConnectionError> {
        let file: ConnectionFile =
            serde_json::from_str(text).map_err(ConnectionError::InvalidJson)?;
        if file.transport != TRANSPORT_TCP {
            return Err(ConnectionError::UnsupportedTransport(file.transport));
        }
        if file.signature_scheme != SIGNATURE_SCHEME_HMAC_SHA256 {
            return Err(ConnectionError::UnsupportedSignatureScheme(
                file.signature_scheme,
            ));
        }
        let ports = ChannelPorts {
            shell: file.shell_port,
            iopub: file.iopub_port,
            stdin: file.stdin_port,
            control: file.control_port,
            heartbeat: file.hb_port,
        };
        ConnectionInfo::with_address(&file.ip, ports, file.key)
    }

    /// Serializes the connection file that `ipykernel_launcher -f` reads.
    pub fn to_json(&self) -> String {
        let file = ConnectionFile {
            ip: self.ip.to_string(),
            transport: TRANSPORT_TCP.to_owned(),
            shell_port: self.ports.shell,
            iopub_port: self.ports.iopub,
            stdin_port: self.ports.stdin,
            control_port: self.ports.control,
            hb_port: self.ports.heartbeat,
            key: self.key.clone(),
            signature_scheme: SIGNATURE_SCHEME_HMAC_SHA256.to_owned(),
            kernel_name: None,
        };
        // A struct of strings and integers always serializes.
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// Converts to the protocol crate's form, which builds the endpoint URLs.
    pub fn to_protocol(&self) -> jupyter_protocol::ConnectionInfo {
        jupyter_protocol::ConnectionInfo {
            ip: self.ip.to_string(),
            transport: jupyter_protocol::connection_info::Transport::TCP,
            shell_port: self.ports.shell,
            iopub_port: self.ports.iopub,
            stdin_port: self.ports.stdin,
            control_port: self.ports.control,
            hb_port: self.ports.heartbeat,
            key: self.key.clone(),
            signature_scheme: SIGNATURE_SCHEME_HMAC_SHA256.to_owned(),
            kernel_name: None,
        }
    }
}

/// Generates a signing key: [`KEY_BYTES`] random bytes from the operating system, hex-encoded.
pub fn generate_key() -> Result<String, ConnectionError> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| ConnectionError::Random(error.to_string()))?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Parses a literal IPv4 address; IPv6 and host names are rejected with distinct errors.
pub fn parse_ipv4(address: &str) -> Result<Ipv4Addr, ConnectionError> {
    let trimmed = address.trim_start_matches('[').trim_end_matches(']');
    match trimmed.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(ConnectionError::Ipv6Unsupported(address.to_owned())),
        Err(_) => Err(ConnectionError::InvalidAddress(address.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ipv4_rejects_ipv6() {
        let error = parse_ipv4("::1").unwrap_err();
        assert!(matches!(error, ConnectionError::Ipv6Unsupported(_)));
        assert!(error.to_string().contains("IPv4"));
        assert!(matches!(
            parse_ipv4("[fe80::1]"),
            Err(ConnectionError::Ipv6Unsupported(_))
        ));
    }

    #[test]
    fn parse_ipv4_rejects_host_name() {
        assert!(matches!(
            parse_ipv4("localhost"),
            Err(ConnectionError::InvalidAddress(_))
        ));
    }

    #[test]
    fn generated_key_is_lower_hex() {
        let key = generate_key().unwrap();
        assert_eq!(key.len(), 2 * KEY_BYTES);
        assert!(key
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(key, generate_key().unwrap(), "two keys should differ");
    }

    #[test]
    fn connection_file_round_trips() {
        let info =
            ConnectionInfo::generate(Ipv4Addr::LOCALHOST, ChannelPorts::GUEST_DEFAULT).unwrap();
        let parsed = ConnectionInfo::from_json(&info.to_json()).unwrap();
        assert_eq!(parsed, info);
    }

    #[test]
    fn connection_file_names_jupyter_fields() {
        let info =
            ConnectionInfo::with_address("10.0.0.2", ChannelPorts::GUEST_DEFAULT, "abc".to_owned())
                .unwrap();
        let value: serde_json::Value = serde_json::from_str(&info.to_json()).unwrap();
        assert_eq!(value["ip"], "10.0.0.2");
        assert_eq!(value["transport"], "tcp");
        assert_eq!(value["signature_scheme"], "hmac-sha256");
        assert_eq!(value["hb_port"], 50005);
        assert_eq!(value["key"], "abc");
    }

    #[test]
    fn connection_file_rejects_ipv6() {
        let text = r#"{"ip": "::1", "transport": "tcp", "shell_port": 1, "iopub_port": 2,
            "stdin_port": 3, "control_port": 4, "hb_port": 5, "key": "",
            "signature_scheme": "hmac-sha256"}"#;
        assert!(matches!(
            ConnectionInfo::from_json(text),
            Err(ConnectionError::Ipv6Unsupported(_))
        ));
    }

    #[test]
    fn connection_file_rejects_ipc_transport() {
        let text = r#"{"ip": "/tmp/k", "transport": "ipc", "shell_port": 1, "iopub_port": 2,
            "stdin_port": 3, "control_port": 4, "hb_port": 5, "key": "",
            "signature_scheme": "hmac-sha256"}"#;
        assert!(matches!(
            ConnectionInfo::from_json(text),
            Err(ConnectionError::UnsupportedTransport(_))
        ));
    }

    #[test]
    fn ports_reject_duplicates_and_zero() {
        let duplicate = ChannelPorts {
            iopub: 50001,
            ..ChannelPorts::GUEST_DEFAULT
        };
        assert!(duplicate.validate().is_err());
        let zero = ChannelPorts {
            heartbeat: 0,
            ..ChannelPorts::GUEST_DEFAULT
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn free_loopback_ports_differ() {
        let ports = ChannelPorts::pick_free_loopback().unwrap();
        assert!(ports.validate().is_ok());
    }

    #[test]
    fn ports_list_follows_entrypoint_order() {
        assert_eq!(
            ChannelPorts::GUEST_DEFAULT.to_list(),
            "50001,50002,50003,50004,50005"
        );
    }
}
