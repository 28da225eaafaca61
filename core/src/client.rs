//! A CSI client over a unix socket, shared by `csictl` and the tests.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::generated::csi::controller_client::ControllerClient;
use crate::generated::csi::group_controller_client::GroupControllerClient;
use crate::generated::csi::identity_client::IdentityClient;
use crate::generated::csi::node_client::NodeClient;

/// Clients for the CSI services on one connection.
#[derive(Clone)]
pub struct CsiClient {
    /// Identity service.
    pub identity: IdentityClient<Channel>,
    /// Controller service.
    pub controller: ControllerClient<Channel>,
    /// GroupController service (volume group snapshots).
    pub group: GroupControllerClient<Channel>,
    /// Node service.
    pub node: NodeClient<Channel>,
}

/// Connects to the CSI socket at `path`.
pub async fn connect(path: &Path) -> Result<CsiClient, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    // The URI is required by the API but unused: every connection goes to
    // the socket.
    let channel = Endpoint::from_static("http://omnidisk.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(CsiClient {
        identity: IdentityClient::new(channel.clone()),
        controller: ControllerClient::new(channel.clone()),
        group: GroupControllerClient::new(channel.clone()),
        node: NodeClient::new(channel),
    })
}
