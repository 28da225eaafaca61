//! The whole volume life cycle on real lvm2 with device-mapper, inside a
//! small QEMU virtual machine (the build hosts' kernels have no
//! device-mapper). The driver and csictl built by this test run inside the
//! guest; the guest reports each step over the serial console and
//! `tests/vm/run` turns that into its exit status.
//!
//! Needs root and QEMU (`scripts/install-test-deps`). Without them the test
//! says so and passes, unless `OMNIDISK_REQUIRE_ALL=1` (CI) makes it fail.

use std::path::Path;
use std::process::Command;

fn prerequisites_missing() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not running as root".into());
    }
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    None
}

#[test]
fn lvm_life_cycle_inside_a_vm() {
    if let Some(reason) = prerequisites_missing() {
        if std::env::var("OMNIDISK_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!("the VM test cannot run: {reason} (OMNIDISK_REQUIRE_ALL=1)");
        }
        eprintln!("SKIPPED VM LVM life cycle: {reason}");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(repo.join("tests/vm/run"))
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_omnidisk"))
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_csictl"))
        .arg("--script")
        .arg(repo.join("tests/vm/lifecycle.sh"))
        .arg("--timeout")
        .arg("1200")
        .status()
        .expect("run tests/vm/run");
    assert!(
        status.success(),
        "the life cycle inside the VM failed: {status}"
    );
}
