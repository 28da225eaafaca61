# Helpers for omnidisk VM guest scripts (busybox sh). /init sources this file
# before the guest script and runs both with `set -e`.
#
# Markers, each alone on a line of the serial console, are what the host
# (`tests/vm/run`) reads:
#   OMNIDISK-STEP <name> PASS|FAIL <detail>
#   OMNIDISK-ALL-PASSED <number of steps>
# A step is opened with `step NAME` and closed with `pass [DETAIL]`; any
# command failing in between ends the script (set -e) and the EXIT trap below
# turns that into a FAIL marker for the open step. Because `set -e` is off
# inside `if`, `&&`, `||` and `!`, call steps and checks at the top level.
#
#   step create-volume
#   id=$(csictl ... create ...)
#   expect_match "$id" 'v1.*' "volume id"
#   pass "id=$id"
#   ...
#   all_passed

[ -n "${OMNIDISK_LIB_LOADED:-}" ] && return 0
OMNIDISK_LIB_LOADED=1

OMNIDISK_STEP=""
OMNIDISK_PASSED=0
OMNIDISK_FAILED=0

# The detail of a marker is one line without control characters, so a
# multi-line error message cannot forge or split a marker.
_omnidisk_one_line() {
	printf '%s' "$*" | tr '\n\r\t' '   ' | tr -d '\000-\037\177' | cut -c1-400
}

_omnidisk_marker() {
	printf 'OMNIDISK-STEP %s %s %s\n' "$1" "$2" "$(_omnidisk_one_line "$3")"
}

# OMNIDISK_ON_FAILURE: name of a function the script defines to print
# diagnostics (e.g. a daemon's log) when it fails.
OMNIDISK_ON_FAILURE=""

_omnidisk_on_exit() {
	rc=$?
	if [ -n "$OMNIDISK_STEP" ]; then
		if [ "$rc" -ne 0 ]; then
			_omnidisk_marker "$OMNIDISK_STEP" FAIL "command failed with exit status $rc"
		else
			_omnidisk_marker "$OMNIDISK_STEP" FAIL "script ended inside the step"
			rc=1
		fi
		OMNIDISK_STEP=""
	fi
	if [ "$rc" -ne 0 ] && [ -n "$OMNIDISK_ON_FAILURE" ]; then
		# Diagnostics must not change the verdict or stop the exit.
		"$OMNIDISK_ON_FAILURE" || true
	fi
	exit "$rc"
}
trap _omnidisk_on_exit EXIT

# step NAME: open a step (the previous one must have passed).
step() {
	case "$1" in
	"" | *[!A-Za-z0-9_.-]*)
		echo "lib.sh: bad step name '$1'" >&2
		exit 2
		;;
	esac
	if [ -n "$OMNIDISK_STEP" ]; then
		_omnidisk_marker "$OMNIDISK_STEP" FAIL "step $1 began before this one passed"
		OMNIDISK_STEP=""
		exit 1
	fi
	OMNIDISK_STEP=$1
	OMNIDISK_STEP_START=$(cut -d" " -f1 /proc/uptime)
	echo "--- step $1 (at ${OMNIDISK_STEP_START}s)"
}

# pass [DETAIL]: the open step passed.
pass() {
	if [ -z "$OMNIDISK_STEP" ]; then
		echo "lib.sh: pass without an open step" >&2
		exit 2
	fi
	echo "--- step $OMNIDISK_STEP took $(awk -v s="$OMNIDISK_STEP_START" '{ printf "%.1f", $1 - s }' /proc/uptime)s"
	_omnidisk_marker "$OMNIDISK_STEP" PASS "$*"
	OMNIDISK_STEP=""
	OMNIDISK_PASSED=$((OMNIDISK_PASSED + 1))
}

# fail DETAIL: the open step (or, outside a step, the script) failed.
fail() {
	_omnidisk_marker "${OMNIDISK_STEP:-script}" FAIL "$*"
	OMNIDISK_STEP=""
	OMNIDISK_FAILED=$((OMNIDISK_FAILED + 1))
	exit 1
}

# run_step NAME COMMAND...: a step made of one command.
run_step() {
	step "$1"
	shift
	"$@"
	pass
}

# all_passed: the last line of every guest script. Without it the host
# reports failure even when every step passed.
all_passed() {
	if [ -n "$OMNIDISK_STEP" ]; then
		fail "all_passed called inside a step"
	fi
	if [ "$OMNIDISK_PASSED" -eq 0 ]; then
		fail "all_passed called before any step passed"
	fi
	printf 'OMNIDISK-ALL-PASSED %s\n' "$OMNIDISK_PASSED"
}

# expect_eq ACTUAL EXPECTED WHAT
expect_eq() {
	[ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"
}

# expect_match VALUE GLOB WHAT (shell pattern, e.g. 'v1.*')
expect_match() {
	# shellcheck disable=SC2254 # $2 is a pattern on purpose
	case "$1" in
	$2) ;;
	*) fail "$3: '$1' does not match '$2'" ;;
	esac
}

# expect_contains HAYSTACK NEEDLE WHAT
expect_contains() {
	case "$1" in
	*"$2"*) ;;
	*) fail "$3: '$2' not found in '$(_omnidisk_one_line "$1")'" ;;
	esac
}

# expect_gt A B WHAT: integer A > B
expect_gt() {
	for n in "$1" "$2"; do
		case "$n" in
		"" | *[!0-9]*) fail "$3: not a whole number: '$n'" ;;
		esac
	done
	[ "$1" -gt "$2" ] || fail "$3: expected more than $2, got $1"
}

# expect_fails WHAT COMMAND...: the command must fail.
expect_fails() {
	what=$1
	shift
	if "$@"; then
		fail "$what: command succeeded but should have failed: $*"
	fi
}

# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 0.2 s until it
# succeeds or SECONDS have passed.
wait_for() {
	limit=$1
	what=$2
	shift 2
	tries=$((limit * 5))
	while ! "$@" >/dev/null 2>&1; do
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || fail "timed out after ${limit}s waiting for $what"
		sleep 0.2
	done
}

# size_of_fs_kib MOUNTPOINT: the filesystem's total size in KiB, from df.
size_of_fs_kib() {
	# -P: one line per filesystem even when the device name is long.
	df -P -k "$1" | awk 'NR == 2 { print $2 }'
}
