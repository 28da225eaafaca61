//! What the node learns about itself: from settings first, then IMDSv2.
//!
//! IMDS is often unreachable (hop limit 1 with pod networking, non-EC2
//! test machines); upstream's node plugin panics then. Here every value can
//! be set in the settings, IMDS is only asked for what is missing, and a
//! failure is an error returned to the caller (retried on the next call),
//! never a crash. The endpoint is configurable so tests use a local stub.

use std::time::Duration;

use aws_config::imds::client::error::ImdsError as SdkImdsError;

use crate::ids::{IdError, InstanceId};
use crate::limits::{self, SlotUsage};
use crate::settings::NodeSettings;

/// Why the node's identity could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The endpoint URL was refused by the IMDS client.
    #[error("invalid IMDS endpoint {endpoint:?}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A metadata path could not be read.
    #[error(
        "reading {path} from IMDS at {endpoint} failed (set node.instance_id, node.zone and node.instance_type to run without IMDS)"
    )]
    Get {
        /// The endpoint.
        endpoint: String,
        /// The path.
        path: &'static str,
        /// The cause.
        #[source]
        source: Box<SdkImdsError>,
    },
    /// IMDS returned an instance ID that is not one.
    #[error("IMDS returned an invalid instance ID")]
    InstanceId(#[source] IdError),
}

/// Everything `node_info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The instance ID: this provider's node ID.
    pub instance_id: InstanceId,
    /// Availability zone.
    pub zone: String,
    /// Instance type.
    pub instance_type: String,
    /// Volumes this provider may attach.
    pub max_volumes: i64,
}

const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const ZONE: &str = "/latest/meta-data/placement/availability-zone";
const INSTANCE_TYPE: &str = "/latest/meta-data/instance-type";
const MAPPING: &str = "/latest/meta-data/block-device-mapping/";
const MACS: &str = "/latest/meta-data/network/interfaces/macs/";

/// An IMDSv2 client at a configurable endpoint.
#[derive(Debug, Clone)]
pub struct Imds {
    endpoint: String,
    client: aws_config::imds::Client,
}

impl Imds {
    /// A client for `endpoint` with `timeout` per request.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, ImdsError> {
        let client = aws_config::imds::Client::builder()
            .endpoint(endpoint)
            .map_err(|source| ImdsError::Endpoint {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .max_attempts(2)
            .build();
        Ok(Self {
            endpoint: endpoint.to_owned(),
            client,
        })
    }

    /// Reads one path (a session token is fetched and reused by the client).
    pub async fn get(&self, path: &'static str) -> Result<String, ImdsError> {
        self.client
            .get(path)
            .await
            .map(|s| String::from(s).trim().to_owned())
            .map_err(|source| ImdsError::Get {
                endpoint: self.endpoint.clone(),
                path,
                source: Box::new(source),
            })
    }

    /// Reads a directory listing: one entry per line.
    pub async fn list(&self, path: &'static str) -> Result<Vec<String>, ImdsError> {
        Ok(self
            .get(path)
            .await?
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

/// Resolves the node's identity: settings win, IMDS fills the gaps.
pub async fn resolve(settings: &NodeSettings) -> Result<NodeIdentity, ImdsError> {
    let imds = Imds::new(
        &settings.imds_endpoint,
        Duration::from_secs(settings.imds_timeout_seconds),
    )?;
    let instance_id = match &settings.instance_id {
        Some(id) => id.clone(),
        None => imds.get(INSTANCE_ID).await?,
    };
    let instance_id = InstanceId::new(&instance_id).map_err(ImdsError::InstanceId)?;
    let zone = match &settings.zone {
        Some(z) => z.clone(),
        None => imds.get(ZONE).await?,
    };
    let instance_type = match &settings.instance_type {
        Some(t) => t.clone(),
        None => imds.get(INSTANCE_TYPE).await?,
    };
    let max_volumes = match settings.max_volumes_per_node {
        Some(max) => max,
        None => {
            // Without IMDS the floors in `limits` (one ENI, the root volume)
            // still apply; say so rather than fail the node.
            let launch_volumes = match imds.list(MAPPING).await {
                Ok(names) => limits::launch_volumes_from_mapping(names.iter().map(String::as_str)),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot count launch volumes; assuming the root volume only");
                    1
                }
            };
            let network_interfaces = match imds.list(MACS).await {
                Ok(macs) => i64::try_from(macs.len()).unwrap_or(1),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot count network interfaces; assuming one");
                    1
                }
            };
            limits::max_volumes(
                &instance_type,
                SlotUsage {
                    network_interfaces,
                    launch_volumes,
                    reserved: settings.reserved_attachments,
                },
            )
        }
    };
    Ok(NodeIdentity {
        instance_id,
        zone,
        instance_type,
        max_volumes,
    })
}
