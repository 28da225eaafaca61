//! Prometheus metrics, the same names for every provider.
//!
//! * `omnidisk_csi_operations_total{method,instance,code}` and
//!   `omnidisk_csi_operation_duration_seconds{method,instance,code}`: every
//!   CSI call, by RPC, provider instance (`-` when none applies) and gRPC code.
//!   Attach and detach latency are the `ControllerPublishVolume` and
//!   `ControllerUnpublishVolume` series.
//! * `omnidisk_inflight_operations`: operations holding a volume right now.
//! * `omnidisk_cloud_api_calls_total{instance,action,outcome}` and
//!   `omnidisk_cloud_api_duration_seconds{instance,action}`: calls providers
//!   make to their backend (`outcome` is `ok`, `throttled` or an error kind),
//!   reported through [`omnidisk_provider_api::observe`].
//! * `omnidisk_capacity_available_bytes{instance}` and
//!   `omnidisk_capacity_total_bytes{instance}`: free and total space of
//!   instances that report capacity (LVM volume groups and thin pools,
//!   sampled when scraped, at most once per `server::CAPACITY_SAMPLE_TTL`
//!   (30 s) and by one scrape at a time).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a CSI operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The RPC, e.g. `CreateVolume`.
    pub method: String,
    /// The provider instance, or `-`.
    pub instance: String,
    /// The gRPC code name, e.g. `Ok`, `NotFound`.
    pub code: String,
}

/// Labels of a backend API call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The provider instance.
    pub instance: String,
    /// The backend action, e.g. `CreateVolume`, `lvcreate`.
    pub action: String,
    /// `ok`, `throttled` or an error kind.
    pub outcome: String,
}

/// Labels of an API latency series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLatencyLabels {
    /// The provider instance.
    pub instance: String,
    /// The backend action.
    pub action: String,
}

/// Labels of a capacity gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The provider instance.
    pub instance: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// All metrics of one driver process.
pub struct Metrics {
    registry: Registry,
    operations: Family<OperationLabels, Counter>,
    operation_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    api_calls: Family<ApiLabels, Counter>,
    api_seconds: Family<ApiLatencyLabels, Histogram, fn() -> Histogram>,
    /// Operations in flight.
    pub inflight: Gauge,
    /// Free bytes per instance.
    pub capacity_available: Family<InstanceLabels, Gauge>,
    /// Total bytes per instance.
    pub capacity_total: Family<InstanceLabels, Gauge>,
    /// Instance names allowed as label values: the configured ones. Calls
    /// naming any other instance (a hostile or stale ID) are counted under
    /// `-`, so the number of series stays bounded by the configuration.
    known_instances: std::sync::RwLock<std::collections::BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("omnidisk");
        let operations = Family::<OperationLabels, Counter>::default();
        let operation_seconds: Family<OperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let api_calls = Family::<ApiLabels, Counter>::default();
        let api_seconds: Family<ApiLatencyLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let inflight = Gauge::default();
        let capacity_available = Family::<InstanceLabels, Gauge>::default();
        let capacity_total = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "csi_operations",
            "CSI calls by method, instance and gRPC code",
            operations.clone(),
        );
        registry.register(
            "csi_operation_duration_seconds",
            "Duration of CSI calls",
            operation_seconds.clone(),
        );
        registry.register(
            "cloud_api_calls",
            "Backend API calls by instance, action and outcome",
            api_calls.clone(),
        );
        registry.register(
            "cloud_api_duration_seconds",
            "Duration of backend API calls",
            api_seconds.clone(),
        );
        registry.register(
            "inflight_operations",
            "Operations holding a volume right now",
            inflight.clone(),
        );
        registry.register(
            "capacity_available_bytes",
            "Free space of instances that report capacity",
            capacity_available.clone(),
        );
        registry.register(
            "capacity_total_bytes",
            "Total space of instances that report capacity",
            capacity_total.clone(),
        );
        Self {
            registry,
            operations,
            operation_seconds,
            api_calls,
            api_seconds,
            inflight,
            capacity_available,
            capacity_total,
            known_instances: Default::default(),
        }
    }
}

impl Metrics {
    /// Allows `names` (configured instances) as `instance` label values.
    pub fn allow_instances<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut known = self
            .known_instances
            .write()
            .unwrap_or_else(|e| e.into_inner());
        known.extend(names.into_iter().map(str::to_owned));
    }

    fn instance_label(&self, instance: &str) -> String {
        let known = self
            .known_instances
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if known.contains(instance) {
            instance.to_owned()
        } else {
            "-".into()
        }
    }

    /// Records one CSI call.
    pub fn record_operation(
        &self,
        method: &str,
        instance: &str,
        code: tonic::Code,
        elapsed: Duration,
    ) {
        let labels = OperationLabels {
            method: method.to_owned(),
            instance: self.instance_label(instance),
            code: format!("{code:?}"),
        };
        self.operations.get_or_create(&labels).inc();
        self.operation_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Records one backend API call.
    pub fn record_api_call(&self, instance: &str, action: &str, outcome: &str, elapsed: Duration) {
        self.api_calls
            .get_or_create(&ApiLabels {
                instance: instance.to_owned(),
                action: action.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.api_seconds
            .get_or_create(&ApiLatencyLabels {
                instance: instance.to_owned(),
                action: action.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide metrics (the CSI services and the backend observer
/// share them).
pub fn global() -> &'static Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS.get_or_init(|| Arc::new(Metrics::default()))
}

/// Sends providers' backend call reports into the global metrics.
#[derive(Debug)]
pub struct ApiObserver;

impl omnidisk_provider_api::observe::Observer for ApiObserver {
    fn api_call(&self, instance: &str, action: &str, outcome: &str, elapsed: Duration) {
        global().record_api_call(instance, action, outcome, elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unconfigured_instances_share_one_series() {
        let m = Metrics::default();
        m.allow_instances(["lvm"]);
        for i in 0..3000 {
            m.record_operation(
                "ControllerGetVolume",
                &format!("nosuch-{i}"),
                tonic::Code::NotFound,
                Duration::from_millis(1),
            );
        }
        m.record_operation(
            "ControllerGetVolume",
            "lvm",
            tonic::Code::Ok,
            Duration::from_millis(1),
        );
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("omnidisk_csi_operations_total{"))
            .count();
        assert_eq!(series, 2, "{text}");
        assert!(!text.contains("nosuch-"), "{text}");
    }

    #[test]
    fn operations_and_api_calls_are_exposed() {
        let m = Metrics::default();
        m.allow_instances(["lvm"]);
        m.record_operation(
            "CreateVolume",
            "lvm",
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        m.record_operation(
            "CreateVolume",
            "",
            tonic::Code::InvalidArgument,
            Duration::from_millis(1),
        );
        m.record_api_call(
            "ebs",
            "CreateVolume",
            "throttled",
            Duration::from_millis(20),
        );
        m.inflight.set(2);
        let text = m.encode();
        assert!(
            text.contains(
                r#"omnidisk_csi_operations_total{method="CreateVolume",instance="lvm",code="Ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"instance="-",code="InvalidArgument""#),
            "{text}"
        );
        assert!(
            text.contains(r#"omnidisk_cloud_api_calls_total{instance="ebs",action="CreateVolume",outcome="throttled"} 1"#),
            "{text}"
        );
        assert!(text.contains("omnidisk_inflight_operations 2"), "{text}");
        assert!(
            text.contains("omnidisk_csi_operation_duration_seconds_bucket"),
            "{text}"
        );
    }
}
