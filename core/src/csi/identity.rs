//! The CSI Identity service.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::generated::csi::identity_server::Identity;
use crate::generated::csi::plugin_capability::{
    Service, Type, VolumeExpansion, service, volume_expansion,
};
use crate::generated::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use crate::{DRIVER_NAME, Driver, VERSION};

/// Identity: name, version, capabilities and readiness.
pub struct IdentityService {
    driver: Arc<Driver>,
}

impl IdentityService {
    /// The service over a driver.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver }
    }
}

fn service(kind: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(Type::Service(Service {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        let mut manifest = std::collections::BTreeMap::new();
        for instance in self.driver.registry.iter() {
            manifest.insert(
                format!("instance/{}", instance.name),
                format!("{} {}", instance.info.kind, instance.info.version),
            );
        }
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.to_owned(),
            vendor_version: VERSION.to_owned(),
            manifest,
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = vec![
            service(service::Type::ControllerService),
            service(service::Type::VolumeAccessibilityConstraints),
        ];
        if crate::csi::group_controller::serves_group_snapshots(&self.driver) {
            capabilities.push(service(service::Type::GroupControllerService));
        }
        if self.driver.registry.iter().any(|i| i.info.expand) {
            capabilities.push(PluginCapability {
                r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                })),
            });
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: Some(self.driver.is_ready()),
        }))
    }
}
