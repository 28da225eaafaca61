# shellcheck shell=bash
# Shared by the scripts in scripts/ (sourced, not run). Bash only.
#
#   od_elevate "$@"      re-run the calling script as root through sudo,
#                        handing over the caller's Rust toolchain
#   od_rust_env          find cargo (also a rustup toolchain that sudo's
#                        secure_path hides) and check its version
#   od_apt_install SPEC  install Debian packages without ever removing or
#                        downgrading one; SPEC is NAME or NAME>=VERSION
#   od_venv_dir          the project's Python virtual environment
#
# Messages go to stderr, prefixed with $OD_NAME (the calling script's name).

OD_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OD_NAME=${OD_NAME:-$(basename "$0")}

od_log() { printf '%s: %s\n' "$OD_NAME" "$*" >&2; }
od_die() {
	printf '%s: error: %s\n' "$OD_NAME" "$*" >&2
	exit 1
}

# The project's Python virtual environment (moto, the Alibaba Cloud SDKs).
od_venv_dir() { printf '%s\n' "${OMNIDISK_VENV:-/var/cache/omnidisk/venv}"; }

# --- Rust ----------------------------------------------------------------------

# The oldest Rust the workspace builds with (Cargo.toml's rust-version).
od_rust_minimum() {
	sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$OD_REPO/Cargo.toml" | head -n1
}

# od_version_ge A B: version A is B or newer (dotted numbers).
od_version_ge() {
	[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

# od_home_of USER: the user's home directory.
od_home_of() { getent passwd "$1" | cut -d: -f6; }

# od_use_toolchain_of HOME: put the rustup installation under HOME on PATH
# (CARGO_HOME and RUSTUP_HOME, when set, win over HOME's defaults).
od_use_toolchain_of() {
	export CARGO_HOME=${CARGO_HOME:-$1/.cargo}
	export RUSTUP_HOME=${RUSTUP_HOME:-$1/.rustup}
	PATH=$CARGO_HOME/bin:$PATH
	export PATH
}

# od_rust_env: make `cargo` runnable and at least the workspace's
# rust-version, or stop saying how to get there. Looks at PATH, then
# ~/.cargo/bin, then (as root under sudo) the invoking user's ~/.cargo/bin,
# since sudo's secure_path drops a rustup toolchain from PATH.
od_rust_env() {
	local user_home
	if ! command -v cargo >/dev/null 2>&1; then
		if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
			od_use_toolchain_of "$HOME"
		elif [ "$(id -u)" = 0 ] && [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] &&
			user_home=$(od_home_of "$SUDO_USER") && [ -x "$user_home/.cargo/bin/cargo" ]; then
			od_log "using $SUDO_USER's Rust toolchain ($user_home/.cargo/bin, sudo's PATH hides it)"
			od_use_toolchain_of "$user_home"
		else
			od_die "cargo not found. Install Rust $(od_rust_minimum) or newer with rustup as the user who runs the scripts (https://rustup.rs), open a new shell (or '. ~/.cargo/env') and run this again. Under sudo, cargo is looked for in \$SUDO_USER's ~/.cargo/bin; elsewhere, pass PATH, CARGO_HOME and RUSTUP_HOME: sudo env PATH=\"\$PATH\" CARGO_HOME=\"\$HOME/.cargo\" RUSTUP_HOME=\"\$HOME/.rustup\" $0"
		fi
	fi
	local want have
	want=$(od_rust_minimum)
	have=$(cd "$OD_REPO" && rustc --version 2>/dev/null | awk '{ print $2 }') ||
		od_die "cargo is on PATH ($(command -v cargo)) but rustc does not run: with rustup, check RUSTUP_HOME (${RUSTUP_HOME:-unset, so ~/.rustup}) and that a default toolchain is set (rustup default stable)"
	[ -n "$have" ] || od_die "cannot tell the Rust version: 'rustc --version' printed nothing (with rustup: rustup default stable)"
	if [ -n "$want" ] && ! od_version_ge "${have%%-*}" "$want"; then
		od_die "Rust $have is too old: the workspace needs $want or newer (rustup update stable)"
	fi
}

# --- root ----------------------------------------------------------------------

# od_elevate "$@": as root, return; otherwise re-run the calling script
# through sudo with the caller's toolchain (PATH, CARGO_HOME, RUSTUP_HOME)
# and the OMNIDISK_*, CARGO_*, RUST*, proxy, CA bundle and PIP_* settings.
od_elevate() {
	[ "$(id -u)" = 0 ] && return 0
	command -v sudo >/dev/null 2>&1 ||
		od_die "needs root (apt-get, loop devices, mounts) and sudo is not installed: run it as root"
	local script vars=() name root_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin cargo
	script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
	# Root gets a system PATH plus the directory of this user's cargo, not
	# the rest of the user's PATH.
	command -v cargo >/dev/null 2>&1 || [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ] || od_use_toolchain_of "$HOME"
	if cargo=$(command -v cargo 2>/dev/null); then
		root_path=$(dirname "$cargo"):$root_path
		export CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
		export RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
	fi
	vars+=("PATH=$root_path")
	while IFS= read -r name; do
		vars+=("$name=${!name}")
	done < <(compgen -e | grep -E '^(OMNIDISK_|CARGO|RUSTUP_|RUST_|RUSTFLAGS$|TMPDIR$|[Hh][Tt][Tt][Pp][Ss]?_[Pp][Rr][Oo][Xx][Yy]$|[Nn][Oo]_[Pp][Rr][Oo][Xx][Yy]$|SSL_CERT_(FILE|DIR)$|CURL_CA_BUNDLE$|REQUESTS_CA_BUNDLE$|PIP_[A-Z_]+$|npm_config_registry$)')
	od_log "needs root: sudo $script $*"
	exec sudo -- env "${vars[@]}" "$script" "$@"
}

# --- Debian packages -----------------------------------------------------------

# What building the driver needs: protoc with Google's well-known types, a C
# compiler and linker (rustc links with cc; some crates compile C), and CA
# certificates for cargo's downloads.
# shellcheck disable=SC2034 # used by the scripts that source this file
OD_BUILD_PACKAGES=("protobuf-compiler>=3.15" libprotobuf-dev gcc libc6-dev ca-certificates)
# What the LVM virtual machine is made of and built with (tests/vm/build-image
# copies these host packages' programs into its initramfs).
# shellcheck disable=SC2034 # used by the scripts that source this file
OD_VM_PACKAGES=(
	"qemu-system-x86>=1:7.2" kmod cpio xz-utils binutils coreutils
	busybox-static "lvm2>=2.03" dmsetup thin-provisioning-tools e2fsprogs xfsprogs util-linux mount bash libc6
)

# od_apt_hint PLAN MISSING...: what to do when installing MISSING would
# remove, downgrade or break a package this machine has: where an installed
# package named in apt's PLAN came from another release (backports), take
# the missing ones from there too.
od_apt_hint() {
	local plan=$1 pkg release releases=() hint="" src m msrc related=() kept=()
	shift
	for pkg in $(printf '%s\n' "$plan" | sed -n -e 's/^Remv \([^ ]*\).*/\1/p' -e 's/^Inst \([^ ]*\) \[.*/\1/p' -e 's/^ *\([^ ]*\) : .*/\1/p' | sort -u); do
		[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || continue
		# The release of the installed version, from its line in apt-cache policy.
		release=$(LC_ALL=C apt-cache "${OD_APT_BPO_OPTS[@]}" policy "$pkg" 2>/dev/null | awk '
			/^ \*\*\* / { mine = 1; next }
			/^     [^ ]/ { mine = 0 }
			mine && $2 ~ /:\/\// { split($3, a, "/"); print a[1]; exit }')
		# Only a backports suite counts as another release (not -updates or
		# -security, where most installed packages come from).
		if [[ $release == *-backports* ]]; then
			releases+=("$release")
			# The missing packages built from the same source (qemu-utils and
			# qemu-system-x86 are both qemu's) must come from that release too.
			src=$(dpkg-query -W -f='${source:Package}' "$pkg")
			for m in "$@"; do
				msrc=$(apt-cache show --no-all-versions "$m" 2>/dev/null | sed -n 's/^Source: \([^ ]*\).*/\1/p' | head -n1)
				[ "${msrc:-$m}" != "$src" ] || related+=("$m")
			done
			hint="$hint $pkg $(dpkg-query -W -f='${Version}' "$pkg") is from $release."
		else
			kept+=("$pkg")
			hint="$hint $pkg $(dpkg-query -W -f='${Version}' "$pkg") is installed."
		fi
	done
	if [ "${#releases[@]}" -gt 0 ]; then
		[ "${#related[@]}" -gt 0 ] || related=("$@")
		hint="$hint Install $(printf '%s\n' "${related[@]}" | sort -u | tr '\n' ' ')from there too (apt-get install -t ${releases[0]} $(printf '%s\n' "${related[@]}" | sort -u | tr '\n' ' ' | sed 's/ $//')) and run this again."
	else
		hint="$hint Decide yourself: remove ${kept[*]:-what conflicts} if this machine can do without it, or install versions of $* that fit it; then run this again."
	fi
	printf '%s' "$hint"
}

OD_APT_UPDATED=0
OD_APT_OPTS=()
OD_APT_BPO_OPTS=()
OD_APT_SUITE=""

# od_apt_backport_sources: "SOURCE SUITE" for each installed package whose
# version is a Debian backport (~bpoNN), SUITE being <codename>-backports.
# Debian only, and only backports of this release (~bpo12 on bookworm):
# Ubuntu's and PPAs' version strings follow other rules.
od_apt_installed_backports() {
	local id codename major
	id=$(. /etc/os-release && echo "${ID:-}")
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	major=$(. /etc/os-release && echo "${VERSION_ID:-}")
	major=${major%%.*}
	[ "$id" = debian ] && [ -n "$codename" ] && [ -n "$major" ] || return 0
	dpkg-query -W -f='${db:Status-Status} ${source:Package} ${Version}\n' 2>/dev/null |
		awk -v suite="$codename-backports" -v bpo="~bpo$major+" \
			'$1 == "installed" && index($3, bpo) { print $2, suite }' | sort -u
}

# od_apt_same_source_as_backport NAME: NAME (not installed) is built from
# the source of an installed backport.
od_apt_same_source_as_backport() {
	local src
	src=$(apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Source: \([^ ]*\).*/\1/p' | head -n1)
	od_apt_installed_backports | awk -v s="${src:-$1}" '$1 == s { found = 1 } END { exit !found }'
}

# od_apt_backports_suite NAME...: the backports suite (one line) when one of
# the NAMEs shares its source with an installed backport, else nothing.
od_apt_backports_suite() {
	local name
	for name in "$@"; do
		if od_apt_same_source_as_backport "$name"; then
			od_apt_installed_backports | awk '{ print $2; exit }'
			return 0
		fi
	done
}

# od_apt_backports_sources SUITE: make SUITE known to apt for this run only.
# When the system's sources lack it (a backport installed by hand or by an
# image builder), apt reads the system's sources plus SUITE from a private
# directory, through OD_APT_BPO_OPTS; /etc/apt is left as it is.
od_apt_backports_sources() {
	local suite=$1 dir mirror
	OD_APT_BPO_OPTS=()
	if LC_ALL=C apt-cache policy 2>/dev/null | grep -q "a=$suite,\|n=$suite,"; then
		return 0
	fi
	dir=${OMNIDISK_APT_DIR:-/var/cache/omnidisk/apt}/sources.list.d
	rm -rf "$dir"
	mkdir -p "$dir"
	[ ! -f /etc/apt/sources.list ] || cp /etc/apt/sources.list "$dir/system.list"
	cp /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources "$dir/" 2>/dev/null || true
	mirror=${OMNIDISK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
	printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
		"$mirror" "$suite" >"$dir/omnidisk-$suite.sources"
	OD_APT_BPO_OPTS=(-o "Dir::Etc::sourceparts=$dir" -o Dir::Etc::sourcelist=/dev/null)
	od_log "apt-get update with $suite from $mirror (for this install only; /etc/apt is unchanged)"
	apt-get "${OD_APT_BPO_OPTS[@]}" update -qq >&2 || od_die "apt-get update with $suite failed"
}
od_apt_update_once() {
	[ "$OD_APT_UPDATED" = 1 ] && return 0
	od_log "apt-get update"
	apt-get update -qq >&2 || od_die "apt-get update failed"
	OD_APT_UPDATED=1
}

# od_apt_install SPEC...: SPEC is NAME or NAME>=VERSION (Debian version
# syntax, with the epoch where the package has one). An installed package
# that is new enough is used as it is; one that is too old stops the script.
# Missing packages are installed only if apt would neither remove nor
# downgrade anything to do so; otherwise nothing is changed and the script
# stops naming the packages concerned and what to do.
od_apt_install() {
	local spec name min status version missing=() mins=() too_old=()
	command -v dpkg-query >/dev/null 2>&1 || od_die "not a Debian-based system (no dpkg): install $* by hand"
	for spec in "$@"; do
		name=${spec%%>=*}
		min=""
		[ "$name" = "$spec" ] || min=${spec#*>=}
		status=$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$name" 2>/dev/null || true)
		case "$status" in
		"installed "*)
			version=${status#installed }
			if [ -n "$min" ] && ! dpkg --compare-versions "$version" ge "$min"; then
				too_old+=("$name $version is installed, $min or newer is needed")
			fi
			;;
		*)
			missing+=("$name")
			mins+=("$min")
			;;
		esac
	done
	if [ "${#too_old[@]}" -gt 0 ]; then
		od_die "$(printf '%s; ' "${too_old[@]}")upgrade them (apt-get install --only-upgrade PACKAGE, or from a newer release of your distribution) and run this again. Nothing was changed."
	fi
	[ "${#missing[@]}" -eq 0 ] && return 0
	[ "$(id -u)" = 0 ] || od_die "missing packages: ${missing[*]} (run this as root, or: sudo apt-get install ${missing[*]})"

	od_apt_update_once
	# Packages built from the same source as an installed backport (say
	# qemu-system-x86 beside a qemu-utils from bookworm-backports) must come
	# from that backports suite, or apt would replace the backport.
	local suite group=() group_mins=() rest=() rest_mins=() i
	suite=$(od_apt_backports_suite "${missing[@]}")
	for i in "${!missing[@]}"; do
		if [ -n "$suite" ] && od_apt_same_source_as_backport "${missing[$i]}"; then
			group+=("${missing[$i]}")
			group_mins+=("${mins[$i]}")
		else
			rest+=("${missing[$i]}")
			rest_mins+=("${mins[$i]}")
		fi
	done
	if [ "${#group[@]}" -gt 0 ]; then
		od_apt_backports_sources "$suite"
		od_log "${group[*]}: from $suite, like the installed backport of the same source"
		OD_APT_OPTS=("${OD_APT_BPO_OPTS[@]}" -t "$suite")
		OD_APT_SUITE=$suite
		od_apt_plan_install "${#group[@]}" "${group[@]}" "${group_mins[@]}"
		OD_APT_SUITE=""
	fi
	if [ "${#rest[@]}" -gt 0 ]; then
		OD_APT_OPTS=()
		od_apt_plan_install "${#rest[@]}" "${rest[@]}" "${rest_mins[@]}"
	fi
}

# od_apt_plan_install N NAME... MIN...: simulate installing the N packages
# (with the options in OD_APT_OPTS), stop if apt would remove or downgrade
# anything or offers a version below MIN, else install them.
od_apt_plan_install() {
	local n=$1 missing=() mins=() too_old=()
	shift
	missing=("${@:1:$n}")
	mins=("${@:$((n + 1))}")
	local plan
	if ! plan=$(LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get "${OD_APT_OPTS[@]}" -s -y --no-install-recommends install "${missing[@]}" 2>&1); then
		printf '%s\n' "$plan" | grep -E '^(E:| )' | head -n 20 | sed 's/^/    /' >&2
		od_die "apt cannot install ${missing[*]} as this machine is (see above). Nothing was changed.$(od_apt_hint "$plan" "${missing[@]}") A package apt does not know: on Ubuntu, enable the universe component."
	fi

	# Simulation lines: "Remv NAME [OLD]", "Inst NAME [OLD] (NEW RELEASE [ARCH])",
	# "Inst NAME (NEW RELEASE [ARCH])".
	local line pkg old new removals=() downgrades=() upgrades=() i
	while IFS= read -r line; do
		case "$line" in
		"Remv "*)
			read -r _ pkg old _ <<<"$line"
			removals+=("$pkg ${old//[\[\]]/}")
			;;
		"Inst "*"["*"] ("*)
			pkg=$(awk '{ print $2 }' <<<"$line")
			old=$(sed -n 's/^Inst [^ ]* \[\([^]]*\)\].*/\1/p' <<<"$line")
			new=$(sed -n 's/^Inst [^(]*(\([^ ]*\) .*/\1/p' <<<"$line")
			if dpkg --compare-versions "$new" lt "$old"; then
				downgrades+=("$pkg from $old to $new")
			else
				upgrades+=("$pkg $old -> $new")
			fi
			;;
		esac
	done <<<"$plan"
	for i in "${!missing[@]}"; do
		[ -n "${mins[$i]}" ] || continue
		new=$(sed -n "s/^Inst ${missing[$i]//./\\.} (\([^ ]*\) .*/\1/p" <<<"$plan")
		if [ -n "$new" ] && ! dpkg --compare-versions "$new" ge "${mins[$i]}"; then
			too_old+=("${missing[$i]} $new is what apt offers, ${mins[$i]} or newer is needed")
		fi
	done
	if [ -n "$OD_APT_SUITE" ]; then
		# Each package asked for must come from the suite, and nothing
		# already installed may be moved onto it unless it is of a
		# backported source itself.
		for pkg in "${missing[@]}"; do
			grep -qi "^Inst ${pkg//./\\.} (.*backports" <<<"$plan" ||
				od_die "$OD_APT_SUITE has no $pkg that fits this machine's installed backports. Nothing was changed."
		done
		local stray=()
		while IFS= read -r line; do
			pkg=$(awk '{ print $2 }' <<<"$line")
			od_apt_installed_backports | awk -v s="$(dpkg-query -W -f='${source:Package}' "$pkg" 2>/dev/null)" \
				'$1 == s { found = 1 } END { exit !found }' || stray+=("$pkg")
		done < <(grep -i '^Inst [^ ]* \[.*backports' <<<"$plan" || true)
		[ "${#stray[@]}" -eq 0 ] ||
			od_die "installing ${missing[*]} from $OD_APT_SUITE would also upgrade ${stray[*]} to $OD_APT_SUITE's versions. Nothing was changed. Install ${missing[*]} by hand if that is fine here."
	fi
	if [ "${#removals[@]}" -gt 0 ] || [ "${#downgrades[@]}" -gt 0 ]; then
		local what=""
		[ "${#removals[@]}" -eq 0 ] || what="remove $(printf '%s, ' "${removals[@]}")"
		[ "${#downgrades[@]}" -eq 0 ] || what="${what}downgrade $(printf '%s, ' "${downgrades[@]}")"
		od_die "installing ${missing[*]} would ${what%, }. Nothing was changed.$(od_apt_hint "$plan" "${missing[@]}")"
	fi
	if [ "${#too_old[@]}" -gt 0 ]; then
		od_die "$(printf '%s; ' "${too_old[@]}")install a newer version (e.g. from your distribution's backports) and run this again. Nothing was changed."
	fi
	od_log "apt-get install ${missing[*]}"
	[ "${#upgrades[@]}" -eq 0 ] || od_log "apt upgrades as dependencies: ${upgrades[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get "${OD_APT_OPTS[@]}" install -y -qq --no-install-recommends --no-remove "${missing[@]}" >/dev/null ||
		od_die "apt-get install ${missing[*]} failed"
}
