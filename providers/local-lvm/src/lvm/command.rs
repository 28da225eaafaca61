//! Running `lvm <subcommand> ...`.
//!
//! Everything goes through the single `lvm` multi-call binary so one path
//! (and one optional prefix such as `nsenter --mount=/proc/1/ns/mnt --`, for
//! a driver running in a container) is enough. Arguments are always an
//! argument vector; nothing is interpreted by a shell.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;

use super::error::LvmError;

/// Runs lvm subcommands. The real implementation is [`CommandRunner`];
/// tests put a fake behind this trait.
#[async_trait]
pub trait LvmRunner: Send + Sync + fmt::Debug {
    /// Runs `lvm <subcommand> <args...>` and returns its standard output,
    /// or a classified error when it exits non-zero.
    async fn run(&self, subcommand: &str, args: &[String]) -> Result<Vec<u8>, LvmError>;
}

/// Runs lvm as a child process.
#[derive(Debug, Clone)]
pub struct CommandRunner {
    instance: String,
    prefix: Vec<String>,
    lvm_path: String,
    config: Option<String>,
    timeout: Duration,
}

impl CommandRunner {
    /// A runner for `[prefix..., lvm_path, subcommand, --config <config>,
    /// args...]`. `config` must already be validated (the settings module
    /// does this): it is handed to lvm as one argument.
    pub fn new(
        prefix: Vec<String>,
        lvm_path: String,
        config: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            instance: String::new(),
            prefix,
            lvm_path,
            config,
            timeout,
        }
    }

    /// The full argument vector for one call, program first.
    pub fn argv(&self, subcommand: &str, args: &[String]) -> Vec<String> {
        let mut argv = self.prefix.clone();
        argv.push(self.lvm_path.clone());
        argv.push(subcommand.to_owned());
        if let Some(config) = &self.config {
            argv.push("--config".to_owned());
            argv.push(config.clone());
        }
        argv.extend(args.iter().cloned());
        argv
    }
}

#[async_trait]
impl LvmRunner for CommandRunner {
    async fn run(&self, subcommand: &str, args: &[String]) -> Result<Vec<u8>, LvmError> {
        let started = std::time::Instant::now();
        let result = self.run_unobserved(subcommand, args).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        omnidisk_provider_api::observe::api_call(
            &self.instance,
            subcommand,
            outcome,
            started.elapsed(),
        );
        result
    }
}

impl CommandRunner {
    /// Names the instance in the backend call reports (metrics).
    #[must_use]
    pub fn for_instance(mut self, instance: &str) -> Self {
        self.instance = instance.to_owned();
        self
    }

    async fn run_unobserved(&self, subcommand: &str, args: &[String]) -> Result<Vec<u8>, LvmError> {
        let argv = self.argv(subcommand, args);
        let (program, rest) = argv.split_first().ok_or_else(|| LvmError::Spawn {
            program: String::new(),
            source: std::io::Error::other("empty command line"),
        })?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(rest)
            // The error classification reads lvm's English messages.
            .env("LC_ALL", "C")
            // lvm complains about every inherited descriptor otherwise.
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tracing::debug!(command = ?argv, "running lvm");
        let child = command.spawn().map_err(|source| LvmError::Spawn {
            program: program.clone(),
            source,
        })?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(result) => result.map_err(|source| LvmError::Spawn {
                program: program.clone(),
                source,
            })?,
            Err(_) => {
                return Err(LvmError::TimedOut {
                    subcommand: subcommand.to_owned(),
                    seconds: self.timeout.as_secs(),
                });
            }
        };
        if output.status.success() {
            Ok(output.stdout)
        } else {
            let err = LvmError::from_failure(subcommand, output.status, &output.stderr);
            tracing::debug!(command = ?argv, error = %err, "lvm failed");
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_has_prefix_binary_subcommand_config_then_args() {
        let runner = CommandRunner::new(
            vec![
                "nsenter".into(),
                "--mount=/proc/1/ns/mnt".into(),
                "--".into(),
            ],
            "/sbin/lvm".into(),
            Some("global{activation=0}".into()),
            Duration::from_secs(5),
        );
        let argv = runner.argv("lvs", &["vg0".to_owned()]);
        assert_eq!(
            argv,
            [
                "nsenter",
                "--mount=/proc/1/ns/mnt",
                "--",
                "/sbin/lvm",
                "lvs",
                "--config",
                "global{activation=0}",
                "vg0"
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_spawn_error() {
        let runner = CommandRunner::new(
            vec![],
            "/nonexistent/omnidisk-test/lvm".into(),
            None,
            Duration::from_secs(5),
        );
        let err = runner.run("lvs", &[]).await.unwrap_err();
        assert!(matches!(err, LvmError::Spawn { .. }), "{err:?}");
    }

    // `sh` stands in for lvm: `sh lvs -c ...` runs the script with $0=lvs.
    #[tokio::test]
    async fn exit_status_and_stderr_are_kept_and_classified() {
        let runner = CommandRunner::new(vec![], "sh".into(), None, Duration::from_secs(5));
        let script = "echo '  Failed to find logical volume \"vg/x\"' >&2; exit 5".to_owned();
        let err = runner
            .run("-c", &[script, "lvremove".to_owned()])
            .await
            .unwrap_err();
        assert!(matches!(err, LvmError::NotFound { .. }), "{err:?}");
        let err = runner
            .run("-c", &["echo boom >&2; exit 3".to_owned()])
            .await
            .unwrap_err();
        match err {
            LvmError::Failed { status, stderr, .. } => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn stdout_is_returned_and_slow_commands_time_out() {
        let runner = CommandRunner::new(vec![], "sh".into(), None, Duration::from_millis(300));
        let out = runner
            .run("-c", &["printf '{\"report\":[]}'".to_owned()])
            .await
            .unwrap();
        assert_eq!(out, br#"{"report":[]}"#);
        let err = runner.run("-c", &["sleep 5".to_owned()]).await.unwrap_err();
        assert!(matches!(err, LvmError::TimedOut { .. }), "{err:?}");
    }
}
