//! lvm verbs with typed arguments, turned into argument vectors for an
//! [`LvmRunner`]. Only validated names, tags and byte counts reach here.

use std::sync::Arc;

use super::command::LvmRunner;
use super::error::LvmError;
use super::name::{LvName, Tag, VgName};
use super::report::{self, LV_FIELDS, LogicalVolume, VG_FIELDS, VolumeGroup};

/// The report options every `lvs`/`vgs` call uses: JSON, plain bytes.
pub const REPORT_ARGS: [&str; 5] = ["--reportformat", "json", "--units", "b", "--nosuffix"];

/// How a new LV gets its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// Linear LV of `bytes` (a multiple of the extent size) from free extents.
    Thick {
        /// Size in bytes.
        bytes: u64,
    },
    /// Thin LV of virtual size `bytes` in `pool`.
    Thin {
        /// The thin pool.
        pool: LvName,
        /// Virtual size in bytes.
        bytes: u64,
    },
    /// Thin snapshot of `origin` (no size: it shares the origin's blocks).
    ThinSnapshot {
        /// The LV (thin volume or thin snapshot) to snapshot.
        origin: LvName,
        /// Keep lvm's default of skipping activation (snapshots kept as
        /// backups); `false` for volumes made from snapshots.
        skip_activation: bool,
    },
    /// Classic copy-on-write snapshot of `origin` with `bytes` of COW space.
    ClassicSnapshot {
        /// The thick LV to snapshot.
        origin: LvName,
        /// COW area size in bytes.
        bytes: u64,
    },
}

/// lvm commands on one volume group.
#[derive(Debug, Clone)]
pub struct Lvm {
    runner: Arc<dyn LvmRunner>,
    vg: VgName,
}

fn s(value: impl Into<String>) -> String {
    value.into()
}

fn bytes_arg(bytes: u64) -> String {
    format!("{bytes}b")
}

impl Lvm {
    /// Commands on `vg` through `runner`.
    pub fn new(runner: Arc<dyn LvmRunner>, vg: VgName) -> Self {
        Self { runner, vg }
    }

    /// The volume group.
    pub fn vg(&self) -> &VgName {
        &self.vg
    }

    fn report_args(fields: &str, target: String) -> Vec<String> {
        let mut args: Vec<String> = REPORT_ARGS.iter().map(|a| s(*a)).collect();
        args.push(s("--options"));
        args.push(s(fields));
        args.push(target);
        args
    }

    /// Every LV of the volume group (hidden sub-LVs excluded).
    pub async fn list(&self) -> Result<Vec<LogicalVolume>, LvmError> {
        let out = self
            .runner
            .run("lvs", &Self::report_args(LV_FIELDS, s(self.vg.as_str())))
            .await?;
        report::parse_lvs(&out).map_err(|source| LvmError::Report {
            subcommand: s("lvs"),
            source: Box::new(source),
        })
    }

    /// The volume group's sizes.
    pub async fn group(&self) -> Result<VolumeGroup, LvmError> {
        let out = self
            .runner
            .run("vgs", &Self::report_args(VG_FIELDS, s(self.vg.as_str())))
            .await?;
        let groups = report::parse_vgs(&out).map_err(|source| LvmError::Report {
            subcommand: s("vgs"),
            source: Box::new(source),
        })?;
        groups
            .into_iter()
            .find(|g| g.name == self.vg.as_str())
            .ok_or_else(|| LvmError::VolumeGroupNotFound {
                subcommand: s("vgs"),
                stderr: format!("the report does not list volume group {}", self.vg),
            })
    }

    /// Creates `name` with `tags`.
    pub async fn create(
        &self,
        name: &LvName,
        allocation: &Allocation,
        tags: &[Tag],
    ) -> Result<(), LvmError> {
        let mut args = vec![s("--name"), s(name.as_str())];
        let target = match allocation {
            Allocation::Thick { bytes } => {
                // A new volume must not show an old filesystem signature:
                // the node formats only blank devices and would mount stale
                // data otherwise. --yes answers the wipe prompt.
                args.extend([
                    s("--size"),
                    bytes_arg(*bytes),
                    s("--wipesignatures"),
                    s("y"),
                    s("--zero"),
                    s("y"),
                    s("--yes"),
                ]);
                s(self.vg.as_str())
            }
            Allocation::Thin { pool, bytes } => {
                // Unprovisioned thin blocks read as zeros: nothing to wipe.
                args.extend([
                    s("--type"),
                    s("thin"),
                    s("--virtualsize"),
                    bytes_arg(*bytes),
                    s("--thinpool"),
                    s(pool.as_str()),
                ]);
                s(self.vg.as_str())
            }
            Allocation::ThinSnapshot {
                origin,
                skip_activation,
            } => {
                args.push(s("--snapshot"));
                args.push(s("--setactivationskip"));
                args.push(s(if *skip_activation { "y" } else { "n" }));
                origin.qualified(&self.vg)
            }
            Allocation::ClassicSnapshot { origin, bytes } => {
                args.extend([s("--snapshot"), s("--size"), bytes_arg(*bytes)]);
                origin.qualified(&self.vg)
            }
        };
        for tag in tags {
            args.push(s("--addtag"));
            args.push(s(tag.as_str()));
        }
        args.push(target);
        self.runner.run("lvcreate", &args).await.map(drop)
    }

    /// Grows `name` to `bytes` (a multiple of the extent size).
    pub async fn extend(&self, name: &LvName, bytes: u64) -> Result<(), LvmError> {
        let args = [s("--size"), bytes_arg(bytes), name.qualified(&self.vg)];
        self.runner.run("lvextend", &args).await.map(drop)
    }

    /// Removes `name`. The caller has checked it is not the origin of
    /// classic snapshots: `--yes` would remove those with it.
    pub async fn remove(&self, name: &LvName) -> Result<(), LvmError> {
        let args = [s("--yes"), name.qualified(&self.vg)];
        self.runner.run("lvremove", &args).await.map(drop)
    }

    /// Activates `name`, also when it is flagged to skip activation (thin
    /// snapshots are, by default).
    pub async fn activate(&self, name: &LvName) -> Result<(), LvmError> {
        // --yes: activating a classic snapshot activates its origin too.
        let args = [
            s("--yes"),
            s("--activate"),
            s("y"),
            s("--ignoreactivationskip"),
            name.qualified(&self.vg),
        ];
        self.runner.run("lvchange", &args).await.map(drop)
    }

    /// Adds and removes tags of `name`.
    pub async fn retag(&self, name: &LvName, add: &[Tag], remove: &[Tag]) -> Result<(), LvmError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut args = Vec::new();
        for tag in add {
            args.push(s("--addtag"));
            args.push(s(tag.as_str()));
        }
        for tag in remove {
            args.push(s("--deltag"));
            args.push(s(tag.as_str()));
        }
        args.push(name.qualified(&self.vg));
        self.runner.run("lvchange", &args).await.map(drop)
    }
}
