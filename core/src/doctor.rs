//! `omnidisk doctor`: start every configured provider instance the way the
//! driver would, exercise a read-only call on each, and print what works.

use std::fmt::Write as _;
use std::time::Duration;

use omnidisk_provider_api::types::{CapacityRequest, ListRequest};

use crate::Mode;
use crate::config::Config;
use crate::providers::{build_instance, planned_instances};

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The instance.
    pub instance: String,
    /// What was checked.
    pub check: &'static str,
    /// `None` when it passed, else why not.
    pub problem: Option<String>,
}

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

async fn timed<T>(
    fut: impl std::future::Future<Output = omnidisk_provider_api::Result<T>>,
) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("{}: {}", e.kind(), e.full_message())),
        Err(_) => Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    }
}

/// Runs every check. Controller-side checks (listing volumes: credentials
/// and API reachability for clouds, the volume group for LVM) run for the
/// instances this mode serves; node-side checks (node identity) in node
/// mode.
pub async fn run(config: &Config, node_name: &str, mode: Mode) -> Vec<Check> {
    let mut checks = Vec::new();
    for planned in planned_instances(config) {
        let name = planned.name.clone();
        let provider = match build_instance(config, &planned, node_name, mode).await {
            Ok(p) => {
                checks.push(Check {
                    instance: name.clone(),
                    check: "start",
                    problem: None,
                });
                p
            }
            Err(e) => {
                checks.push(Check {
                    instance: name,
                    check: "start",
                    problem: Some(e.to_string()),
                });
                continue;
            }
        };
        let info = provider.info();
        let controller_here = match mode {
            Mode::All => true,
            Mode::Controller => !info.node_local,
            Mode::Node => info.node_local,
        };
        if controller_here && info.list_volumes {
            let problem = timed(provider.list_volumes(ListRequest {
                max_entries: 1,
                starting_token: String::new(),
            }))
            .await;
            checks.push(Check {
                instance: name.clone(),
                check: "list volumes (credentials, API)",
                problem,
            });
        }
        if controller_here && info.capacity {
            let problem = timed(provider.get_capacity(CapacityRequest::default())).await;
            checks.push(Check {
                instance: name.clone(),
                check: "capacity",
                problem,
            });
        }
        if mode.serves_node() {
            let problem = timed(provider.node_info()).await;
            checks.push(Check {
                instance: name.clone(),
                check: "node identity",
                problem,
            });
        }
    }
    checks
}

/// The report as a table.
pub fn render(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.instance.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = String::new();
    let _ = writeln!(out, "{:<width$}  {:<32}  RESULT", "INSTANCE", "CHECK");
    for c in checks {
        let result = match &c.problem {
            None => "ok".to_owned(),
            Some(p) => format!("FAILED: {p}"),
        };
        let _ = writeln!(out, "{:<width$}  {:<32}  {result}", c.instance, c.check);
    }
    if checks.is_empty() {
        out.push_str("no provider instance is configured or compiled in\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_failures() {
        let checks = vec![
            Check {
                instance: "lvm".into(),
                check: "start",
                problem: None,
            },
            Check {
                instance: "ebs-prod".into(),
                check: "list volumes (credentials, API)",
                problem: Some("unavailable: no route".into()),
            },
        ];
        let text = render(&checks);
        assert!(text.contains("lvm       start"), "{text}");
        assert!(text.contains("FAILED: unavailable: no route"), "{text}");
    }

    #[tokio::test]
    async fn an_unknown_kind_fails_its_start_check() {
        let config = Config::parse("[providers.x]\nkind = \"nope\"\n", None).unwrap();
        let checks = run(&config, "n1", Mode::All).await;
        assert_eq!(checks.len(), 1);
        assert!(
            checks[0]
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("unknown provider kind"))
        );
    }
}
