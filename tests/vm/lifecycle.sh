# Guest script: the whole CSI life cycle of the omnidisk driver on real LVM.
#
#   tests/vm/run --bin target/debug/omnidisk --bin target/debug/csictl \
#       --script tests/vm/lifecycle.sh
#
# (scripts/vm-lifecycle builds the binaries and does exactly that.)
# /init has created VG `omnidisk` on /dev/vda with thin pool `pool0`. The
# client interface is csictl's (see its --help); the paths mimic kubelet's.
. /usr/lib/omnidisk-vm/lib.sh

endpoint=unix:///run/csi.sock
socket=/run/csi.sock
config=/etc/omnidisk.toml
driver_log=/tmp/omnidisk.log
vg=omnidisk
plugin_dir=/var/lib/kubelet/plugins/kubernetes.io/csi/omnidisk.csi.dev
pods_dir=/var/lib/kubelet/pods

csi() { csictl --endpoint "$endpoint" "$@"; }

# Printing only: what the console shows between the markers. Lines that are
# not csictl's own output are indented and say what they are.
say() { echo "    $*"; }
# A refusal the driver must give goes to $refusal (expect_fails ... 2>"$refusal")
# and is then shown as the expected outcome it is, not as an error.
refusal=/tmp/expected-refusal
show_refusal() { say "refused, as expected ($1): $(tr '\n' ' ' <"$refusal")"; }
staging_of() { echo "$plugin_dir/$1/globalmount"; }
target_of() { echo "$pods_dir/pod-$1/volumes/kubernetes.io~csi/$1/mount"; }

show_driver_log() {
	echo "--- driver log (last 80 lines of $driver_log)"
	tail -n 80 "$driver_log" 2>/dev/null
	echo "--- logical volumes"
	lvs -a -o lv_name,lv_attr,lv_size,pool_lv,origin,lv_tags "$vg" 2>&1
	echo "--- mounts under /var/lib/kubelet"
	grep ' /var/lib/kubelet' /proc/self/mounts
}
# shellcheck disable=SC2034 # read by lib.sh's EXIT trap
OMNIDISK_ON_FAILURE=show_driver_log

# stage_and_publish ID NAME FS [publish flags...]: what kubelet does before a
# pod starts: make the staging directory, stage, publish.
stage_and_publish() {
	id=$1 name=$2 fs=$3
	shift 3
	mkdir -p "$(staging_of "$name")" "$(dirname "$(target_of "$name")")"
	csi stage "$id" --staging-path "$(staging_of "$name")" --fs-type "$fs"
	csi publish "$id" --target "$(target_of "$name")" --staging-path "$(staging_of "$name")" --fs-type "$fs" "$@"
	mountpoint -q "$(staging_of "$name")" || fail "$name: staging path is not a mount point"
	mountpoint -q "$(target_of "$name")" || fail "$name: target is not a mount point"
}

unpublish_and_unstage() {
	id=$1 name=$2
	csi unpublish "$id" --target "$(target_of "$name")"
	csi unstage "$id" --staging-path "$(staging_of "$name")"
	if mountpoint -q "$(staging_of "$name")" 2>/dev/null; then fail "$name: still mounted at the staging path"; fi
	if [ -e "$(target_of "$name")" ] && mountpoint -q "$(target_of "$name")"; then fail "$name: still mounted at the target"; fi
}

# ---------------------------------------------------------------------------
step config
if [ ! -f "$config" ]; then
	# Two instances of one kind on one volume group: thick LVs and thin
	# volumes in pool0. A payload may bring its own /etc/omnidisk.toml.
	cat >"$config" <<'EOF'
[providers.lvm-thick]
kind = "local-lvm"
volume_group = "omnidisk"
spare_gib = 0

[providers.lvm-thin]
kind = "local-lvm"
volume_group = "omnidisk"
spare_gib = 0
thin_pool = { name = "pool0" }
EOF
fi
command -v omnidisk >/dev/null || fail "omnidisk is not in the payload"
command -v csictl >/dev/null || fail "csictl is not in the payload"
pass "$(omnidisk --version 2>&1 | head -n1)"

step start-driver
omnidisk --endpoint "$endpoint" --mode all --node-id vm --config "$config" >"$driver_log" 2>&1 &
driver_pid=$!
wait_for 60 "the driver's socket $socket" test -S "$socket"
kill -0 "$driver_pid" || fail "the driver exited: $(tail -n 5 "$driver_log")"
pass "pid $driver_pid"

step probe
expect_eq "$(csi probe)" ready "probe"
info=$(csi info)
expect_contains "$info" omnidisk.csi.dev "plugin info"
pass "$info"

step capabilities
caps=$(csi caps)
say "capabilities:"
echo "$caps"
expect_contains "$caps" CREATE_DELETE_SNAPSHOT "controller capabilities"
expect_contains "$caps" EXPAND_VOLUME "capabilities"
expect_contains "$caps" STAGE_UNSTAGE_VOLUME "node capabilities"
node_info=$(csi node-info)
expect_contains "$node_info" vm "node info"
expect_contains "$node_info" topology.omnidisk.csi.dev/node "node topology"
pass "$node_info"

# mkfs.xfs 6.1 refuses filesystems smaller than 300 MB, hence the size.
step create-thick
thick=$(csi create pvc-thick --size 320M --type lvm-thick --node vm --fs-type xfs)
expect_match "$thick" 'v1.lvm-thick.*' "thick volume id"
pass "$thick"

step create-thin
thin=$(csi create pvc-thin --size 128M --type lvm-thin --node vm --fs-type ext4)
expect_match "$thin" 'v1.lvm-thin.*' "thin volume id"
# A retried CreateVolume (same name and size) returns the same volume.
again=$(csi create pvc-thin --size 128M --type lvm-thin --node vm --fs-type ext4)
expect_eq "$again" "$thin" "id of a repeated create"
say "CreateVolume repeated with the same name and size: same id $again"
expect_fails "create with the same name and another size" csi create pvc-thin --size 192M --type lvm-thin --node vm --fs-type ext4 2>"$refusal"
show_refusal "same name, another size"
say "logical volumes (name, attributes, pool):"
lvs --noheadings -o lv_name,lv_attr,pool_lv "$vg"
pass "$thin (a repeat returned the same id; another size was refused)"

step stage-publish
stage_and_publish "$thick" pvc-thick xfs
stage_and_publish "$thin" pvc-thin ext4
# Kubelet retries: a second identical stage and publish must succeed.
say "kubelet retries: stage and publish $thin again (must succeed and change nothing):"
csi stage "$thin" --staging-path "$(staging_of pvc-thin)" --fs-type ext4
csi publish "$thin" --target "$(target_of pvc-thin)" --staging-path "$(staging_of pvc-thin)" --fs-type ext4
expect_eq "$(blkid -o value -s TYPE "$(findmnt -n -o SOURCE "$(staging_of pvc-thick)")")" xfs "filesystem of the thick volume"
expect_eq "$(blkid -o value -s TYPE "$(findmnt -n -o SOURCE "$(staging_of pvc-thin)")")" ext4 "filesystem of the thin volume"
pass "xfs and ext4 volumes staged and published; the retry succeeded"

step write-data
echo "written before the snapshot" >"$(target_of pvc-thin)/file"
dd if=/dev/urandom of="$(target_of pvc-thin)/blob" bs=1M count=4 2>/dev/null
blob_sum=$(sha256sum "$(target_of pvc-thin)/blob" | cut -d' ' -f1)
echo "thick data" >"$(target_of pvc-thick)/file"
# CSI snapshots are crash-consistent: flush so the snapshot holds the data.
sync
pass "blob sha256 $blob_sum"

step snapshot
snap=$(csi snapshot create snap-thin --volume "$thin")
expect_match "$snap" 'v1.lvm-thin.*' "snapshot id"
snaps=$(csi snapshot list --volume "$thin")
say "snapshots of $thin (id, source, size in bytes, readiness):"
echo "$snaps"
expect_contains "$snaps" "$snap" "snapshot list"
expect_contains "$snaps" "ready=true" "snapshot readiness"
# Changed after the snapshot: the restore below must not see this.
echo "written after the snapshot" >"$(target_of pvc-thin)/file"
sync
pass "$snap"

step restore-snapshot
restored=$(csi create pvc-restored --size 128M --type lvm-thin --node vm --fs-type ext4 --from-snapshot "$snap")
expect_match "$restored" 'v1.lvm-thin.*' "restored volume id"
stage_and_publish "$restored" pvc-restored ext4
expect_eq "$(cat "$(target_of pvc-restored)/file")" "written before the snapshot" "file in the restored volume"
expect_eq "$(sha256sum "$(target_of pvc-restored)/blob" | cut -d' ' -f1)" "$blob_sum" "blob in the restored volume"
pass "$restored"

step clone
clone=$(csi create pvc-clone --size 128M --type lvm-thin --node vm --fs-type ext4 --from-volume "$thin")
expect_match "$clone" 'v1.lvm-thin.*' "clone id"
stage_and_publish "$clone" pvc-clone ext4 --readonly
expect_eq "$(cat "$(target_of pvc-clone)/file")" "written after the snapshot" "file in the clone"
expect_eq "$(sha256sum "$(target_of pvc-clone)/blob" | cut -d' ' -f1)" "$blob_sum" "blob in the clone"
expect_fails "writing through a read-only publish" sh -c "echo x >'$(target_of pvc-clone)/new'" 2>"$refusal"
show_refusal "writing through a read-only publish"
pass "$clone (published read-only: a write was refused)"

step expand-thin-online
before=$(size_of_fs_kib "$(target_of pvc-thin)")
capacity=$(csi expand "$thin" --size 256M)
expect_eq "$capacity" 268435456 "capacity after controller expand"
node_capacity=$(csi node-expand "$thin" --path "$(target_of pvc-thin)" --staging-path "$(staging_of pvc-thin)" --size 256M)
after=$(size_of_fs_kib "$(target_of pvc-thin)")
expect_gt "$after" "$before" "ext4 size in KiB after expansion"
# ext4 keeps some blocks for its own metadata; 256 MiB is 262144 KiB.
expect_gt "$after" 230000 "ext4 size in KiB after expansion"
expect_eq "$(cat "$(target_of pvc-thin)/file")" "written after the snapshot" "data after expansion"
pass "df $before KiB -> $after KiB, node-expand reported $node_capacity"

step expand-thick-online
before=$(size_of_fs_kib "$(target_of pvc-thick)")
capacity=$(csi expand "$thick" --size 400M)
expect_eq "$capacity" 419430400 "capacity after controller expand"
node_capacity=$(csi node-expand "$thick" --path "$(target_of pvc-thick)" --staging-path "$(staging_of pvc-thick)" --size 400M)
say "node-expand reported $node_capacity bytes"
after=$(size_of_fs_kib "$(target_of pvc-thick)")
expect_gt "$after" "$before" "xfs size in KiB after expansion"
expect_eq "$(cat "$(target_of pvc-thick)/file")" "thick data" "data after expansion"
pass "df $before KiB -> $after KiB"

step thick-snapshot-restore-clone
# Thick volumes: a classic copy-on-write snapshot; restore and clone copy blocks.
t2=$(csi create pvc-thick2 --size 64M --type lvm-thick --node vm --fs-type ext4)
stage_and_publish "$t2" pvc-thick2 ext4
echo "thick before the snapshot" >"$(target_of pvc-thick2)/file"
sync
tsnap=$(csi snapshot create snap-thick --volume "$t2")
expect_match "$tsnap" 'v1.lvm-thick.*' "thick snapshot id"
echo "thick after the snapshot" >"$(target_of pvc-thick2)/file"
sync
# A thick origin with a snapshot cannot grow (lvm refuses while it is active).
expect_fails "expanding a thick volume that has a snapshot" csi expand "$t2" --size 128M 2>"$refusal"
show_refusal "expanding a thick volume that has a snapshot"
trestored=$(csi create pvc-thick-restored --size 64M --type lvm-thick --node vm --fs-type ext4 --from-snapshot "$tsnap")
stage_and_publish "$trestored" pvc-thick-restored ext4
expect_eq "$(cat "$(target_of pvc-thick-restored)/file")" "thick before the snapshot" "file in the restored thick volume"
tclone=$(csi create pvc-thick-clone --size 64M --type lvm-thick --node vm --fs-type ext4 --from-volume "$t2")
stage_and_publish "$tclone" pvc-thick-clone ext4
expect_eq "$(cat "$(target_of pvc-thick-clone)/file")" "thick after the snapshot" "file in the thick clone"
for pair in "$tclone pvc-thick-clone" "$trestored pvc-thick-restored" "$t2 pvc-thick2"; do
	# shellcheck disable=SC2086 # split "id name" on purpose
	set -- $pair
	unpublish_and_unstage "$1" "$2"
done
csi delete "$tclone"
csi delete "$trestored"
csi snapshot delete "$tsnap"
csi delete "$t2"
pass "$tsnap -> $trestored, clone $tclone (expanding the origin was refused while it had the snapshot)"

step stats
stats=$(csi stats "$thin" --path "$(target_of pvc-thin)")
say "usage of $thin:"
echo "$stats"
expect_contains "$stats" "BYTES total=" "byte usage"
expect_contains "$stats" "INODES total=" "inode usage"
expect_contains "$stats" "abnormal=false" "volume condition"
total=$(echo "$stats" | sed -n 's/^BYTES total=\([0-9]*\).*/\1/p')
expect_gt "$total" 200000000 "total bytes reported for the expanded volume"
pass "$(echo "$stats" | head -n1)"

step list-and-capacity
list=$(csi list)
say "volumes listed (id, capacity in bytes):"
echo "$list"
for id in "$thick" "$thin" "$restored" "$clone"; do
	expect_contains "$list" "$id" "volume list"
done
# Each volume once, under its own instance (two instances share the VG).
expect_eq "$(printf '%s\n' "$list" | grep -c .)" 4 "number of volumes listed"
free_thin=$(csi capacity --type lvm-thin)
free_thick=$(csi capacity --type lvm-thick)
say "available capacity: lvm-thin $free_thin bytes, lvm-thick $free_thick bytes"
pass "$(echo "$list" | wc -l) volumes"

step block-volume
block=$(csi create pvc-block --size 32M --type lvm-thick --node vm --block)
mkdir -p "$(staging_of pvc-block)" "$(dirname "$(target_of pvc-block)")"
csi stage "$block" --staging-path "$(staging_of pvc-block)" --block
csi publish "$block" --target "$(target_of pvc-block)" --staging-path "$(staging_of pvc-block)" --block
[ -b "$(target_of pvc-block)" ] || fail "the block target is not a block device"
printf 'raw block data' | dd of="$(target_of pvc-block)" bs=512 conv=sync 2>/dev/null
sync
expect_eq "$(dd if="$(target_of pvc-block)" bs=14 count=1 2>/dev/null)" "raw block data" "data read back from the block volume"
csi unpublish "$block" --target "$(target_of pvc-block)"
csi unstage "$block" --staging-path "$(staging_of pvc-block)"
[ ! -b "$(target_of pvc-block)" ] || fail "the block target is still there after unpublish"
csi delete "$block"
pass "$block"

step unpublish-unstage
for pair in "$clone pvc-clone" "$restored pvc-restored" "$thin pvc-thin" "$thick pvc-thick"; do
	# shellcheck disable=SC2086 # split "id name" on purpose
	set -- $pair
	unpublish_and_unstage "$1" "$2"
done
# Retried calls after success are no-ops.
say "kubelet retries: unpublish and unstage $thin again (must succeed as no-ops):"
csi unpublish "$thin" --target "$(target_of pvc-thin)"
csi unstage "$thin" --staging-path "$(staging_of pvc-thin)"
left=$(grep -c ' /var/lib/kubelet' /proc/self/mounts || true)
expect_eq "$left" 0 "mounts left under /var/lib/kubelet"
pass "no mounts left; the retry succeeded"

step delete
csi delete "$clone"
csi delete "$restored"
csi snapshot delete "$snap"
csi delete "$thin"
csi delete "$thick"
# Deleting what is gone succeeds (CSI requires it).
say "deleting again what is already gone (must succeed):"
csi delete "$thin"
csi snapshot delete "$snap"
left=$(lvs --noheadings -o lv_name "$vg" | tr -d ' ' | grep -v '^pool0$' || true)
expect_eq "$left" "" "logical volumes left besides pool0"
expect_eq "$(csi list)" "" "volume list after deleting everything"
pass "no volumes or snapshots left; deleting them again succeeded"

step driver-stop
kill -0 "$driver_pid" || fail "the driver died during the test: $(tail -n 5 "$driver_log")"
if grep -q 'panicked' "$driver_log"; then fail "the driver log has a panic: $(grep -m1 panicked "$driver_log")"; fi
kill -TERM "$driver_pid"
# A watchdog, since `wait` alone would hang on a driver that ignores SIGTERM.
(sleep 20 && kill -KILL "$driver_pid") 2>/dev/null &
watchdog=$!
status=0
wait "$driver_pid" || status=$?
kill "$watchdog" 2>/dev/null || true
[ "$status" -ne 137 ] || fail "the driver did not exit within 20 s of SIGTERM"
[ ! -S "$socket" ] || fail "the driver left its socket $socket behind"
pass "exit status $status"

all_passed
