# Guest script: proves the VM itself (device-mapper, thin provisioning, the
# filesystem tools) before any omnidisk code runs in it.
#   tests/vm/run --script tests/vm/smoke.sh
# /init has already created VG `omnidisk` on /dev/vda with thin pool `pool0`.
. /usr/lib/omnidisk-vm/lib.sh

vg=omnidisk
mkdir -p /mnt/thick /mnt/thin /mnt/snap /mnt/xfs

step device-mapper
dmsetup version
targets=$(dmsetup targets)
expect_contains "$targets" thin-pool "device-mapper targets"
expect_contains "$targets" snapshot "device-mapper targets"
pass "$(dmsetup version | tr '\n' ' ')"

step lvcreate-thick
lvcreate -q -y -L 64m -n thick --addtag omnidisk.smoke "$vg"
[ -b /dev/$vg/thick ] || fail "/dev/$vg/thick is not a block device"
tags=$(lvs --noheadings -o lv_tags "$vg/thick" | tr -d ' ')
expect_eq "$tags" omnidisk.smoke "tags of $vg/thick"
pass "$(lvs --noheadings --units b --nosuffix -o lv_size "$vg/thick" | tr -d ' ') bytes"

step lvcreate-thin
lvcreate -q -y -V 256m -T "$vg/pool0" -n thin
[ -b /dev/$vg/thin ] || fail "/dev/$vg/thin is not a block device"
pass

step report-json
json=$(lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,lv_attr,pool_lv "$vg")
expect_contains "$json" '"lv_name":"thin"' "lvs json"
expect_contains "$json" '"lv_size":"268435456"' "lvs json (byte units)"
pass

step mkfs-mount-write
mkfs.ext4 -q -F /dev/$vg/thick
mkfs.ext4 -q -F /dev/$vg/thin
mount /dev/$vg/thick /mnt/thick
mount /dev/$vg/thin /mnt/thin
echo "thick data" >/mnt/thick/file
echo "thin data" >/mnt/thin/file
dd if=/dev/urandom of=/mnt/thin/blob bs=1M count=8 2>/dev/null
sync
thin_sum=$(sha256sum /mnt/thin/blob | cut -d' ' -f1)
pass "blob sha256 $thin_sum"

step thin-snapshot
lvcreate -q -y -s "$vg/thin" -n thin_snap
# Thin snapshots are created with the activation-skip flag; -K overrides it.
lvchange -q -ay -K "$vg/thin_snap"
[ -b /dev/$vg/thin_snap ] || fail "snapshot not activated"
# Changed after the snapshot: the snapshot must keep the old contents.
echo "changed" >/mnt/thin/file
sync
mount -o ro,noload /dev/$vg/thin_snap /mnt/snap
expect_eq "$(cat /mnt/snap/file)" "thin data" "file in the snapshot"
expect_eq "$(sha256sum /mnt/snap/blob | cut -d' ' -f1)" "$thin_sum" "blob in the snapshot"
expect_eq "$(cat /mnt/thin/file)" "changed" "file in the origin"
umount /mnt/snap
pass

step lvextend-resize2fs-online
before=$(size_of_fs_kib /mnt/thick)
lvextend -q -L 128m "$vg/thick"
resize2fs /dev/$vg/thick
after=$(size_of_fs_kib /mnt/thick)
expect_gt "$after" "$before" "ext4 size after online grow (KiB)"
expect_eq "$(cat /mnt/thick/file)" "thick data" "data after grow"
pass "$before KiB -> $after KiB"

step thin-origin-grow-with-snapshot
before=$(size_of_fs_kib /mnt/thin)
lvextend -q -L 384m "$vg/thin"
resize2fs /dev/$vg/thin
after=$(size_of_fs_kib /mnt/thin)
expect_gt "$after" "$before" "ext4 size of the thin origin after grow (KiB)"
pass "$before KiB -> $after KiB"

step xfs
lvcreate -q -y -V 320m -T "$vg/pool0" -n xfsvol
mkfs.xfs -q /dev/$vg/xfsvol
mount /dev/$vg/xfsvol /mnt/xfs
before=$(size_of_fs_kib /mnt/xfs)
lvextend -q -L 512m "$vg/xfsvol"
xfs_growfs /mnt/xfs >/dev/null
after=$(size_of_fs_kib /mnt/xfs)
expect_gt "$after" "$before" "xfs size after xfs_growfs (KiB)"
pass "$before KiB -> $after KiB"

step blkid
expect_eq "$(blkid -o value -s TYPE /dev/$vg/thick)" ext4 "blkid type of thick"
expect_eq "$(blkid -o value -s TYPE /dev/$vg/xfsvol)" xfs "blkid type of xfsvol"
pass

step bind-mount
mkdir -p /var/lib/kubelet/pods/smoke/volumes/target
mount --bind /mnt/thick /var/lib/kubelet/pods/smoke/volumes/target
expect_eq "$(cat /var/lib/kubelet/pods/smoke/volumes/target/file)" "thick data" "file via bind mount"
umount /var/lib/kubelet/pods/smoke/volumes/target
pass

step lvremove
umount /mnt/thick /mnt/thin /mnt/xfs
lvremove -q -y "$vg/thin_snap" "$vg/thin" "$vg/thick" "$vg/xfsvol"
left=$(lvs --noheadings -o lv_name "$vg" | tr -d ' ' | tr '\n' ' ')
expect_eq "$left" "pool0 " "LVs left after lvremove"
pass

all_passed
