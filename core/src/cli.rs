//! The driver's command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::Mode;

/// omnidisk: one CSI driver for AWS EBS, Alibaba Cloud disks and local LVM.
#[derive(Debug, Clone, Parser)]
#[command(name = "omnidisk", version, about)]
pub struct Args {
    /// CSI endpoint: a unix socket, `unix:///path/to/csi.sock`.
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/omnidisk/csi.sock"
    )]
    pub endpoint: String,

    /// Which services to serve.
    #[arg(long, value_enum, default_value = "all")]
    pub mode: Mode,

    /// This node's name (default: the host name). Use the Kubernetes node name.
    #[arg(long, env = "NODE_NAME")]
    pub node_id: Option<String>,

    /// TOML configuration file. Without it each compiled-in provider kind is
    /// available under its own name with its defaults.
    #[arg(long, env = "OMNIDISK_CONFIG")]
    pub config: Option<PathBuf>,

    /// The kubelet's root directory; node paths outside it are refused
    /// (overrides `[node] kubelet_dir`, default /var/lib/kubelet).
    #[arg(long, env = "OMNIDISK_KUBELET_DIR")]
    pub kubelet_dir: Option<PathBuf>,

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level of the driver's own crates (`info`, `debug`, ...; other
    /// crates log warnings only), or a full tracing filter when it holds
    /// `=` or `,` (e.g. `debug,aws_smithy_runtime=trace`: that is taken as
    /// written and may expose what those crates print).
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Address for the HTTP health endpoint (`/healthz` reflects Probe).
    #[arg(long)]
    pub health_address: Option<SocketAddr>,

    /// Address for the Prometheus endpoint (`/metrics`; health too).
    #[arg(long)]
    pub metrics_address: Option<SocketAddr>,

    /// Instead of serving, run a one-off command.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Load the configuration, start every provider instance, check
    /// credentials and reachability, print a table; exit 1 if anything failed.
    Doctor,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Errors in the endpoint flag.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Only unix sockets are supported.
    #[error("endpoint {0:?} is not a unix socket URL (expected unix:///path/to/csi.sock)")]
    NotUnix(String),
}

/// The socket path of a `unix://` endpoint (`unix:///a/b` and `unix:/a/b` are accepted).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let rest = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| EndpointError::NotUnix(endpoint.to_owned()))?;
    if !rest.starts_with('/') || rest.len() < 2 {
        return Err(EndpointError::NotUnix(endpoint.to_owned()));
    }
    Ok(PathBuf::from(rest))
}

/// The host name, used when `--node-id` is not given.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_endpoints_parse() {
        assert_eq!(
            socket_path("unix:///run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        for bad in [
            "tcp://1.2.3.4:5",
            "/run/csi.sock",
            "unix://",
            "unix://relative",
        ] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from([
            "omnidisk",
            "--endpoint",
            "unix:///tmp/x.sock",
            "--mode",
            "node",
            "--node-id",
            "n1",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(args.mode, Mode::Node);
        assert_eq!(args.node_id.as_deref(), Some("n1"));
        assert_eq!(args.log_format, LogFormat::Json);
        assert!(Args::try_parse_from(["omnidisk", "--mode", "bogus"]).is_err());
        let doctor = Args::try_parse_from(["omnidisk", "--config", "/c.toml", "doctor"]).unwrap();
        assert!(matches!(doctor.command, Some(Command::Doctor)));
    }
}
