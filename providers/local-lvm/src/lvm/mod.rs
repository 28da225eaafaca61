//! lvm2 through its command line: a runner, typed verbs, report parsing,
//! validated names and typed failures.

pub mod client;
pub mod command;
pub mod error;
#[cfg(test)]
pub mod fake;
pub mod name;
pub mod report;

pub use client::{Allocation, Lvm};
pub use command::{CommandRunner, LvmRunner};
pub use error::LvmError;
pub use name::{LvName, NameError, Tag, VgName};
pub use report::{LogicalVolume, VolumeGroup};
