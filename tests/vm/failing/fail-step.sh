# Must end with exit status 1 and "OMNIDISK-STEP breaks FAIL ...".
. /usr/lib/omnidisk-vm/lib.sh
run_step works true
step breaks
lvcreate -q -y -L 64m -n no_such_vg_lv no_such_vg
pass "not reached"
all_passed
