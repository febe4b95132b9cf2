#!/usr/bin/env bash
# Runs the whole test suite. On a fresh machine, run as root (or with sudo) so
# the Debian packages the integration tests drive (qemu-img, nbdinfo, nbdfuse,
# mkfs, ...) are installed first; they are listed in .ci/apt-packages.txt.
#   WALB_TEST_SOAK=1 ./test.sh   also runs the long soak/crash trials.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
while read -r pkg; do
	[ -z "$pkg" ] || [ "${pkg#\#}" != "$pkg" ] && continue
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < .ci/apt-packages.txt
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -eq 0 ]; then
		echo "installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	else
		echo "warning: missing packages (${missing[*]}); run as root to install them, or the tests that need them skip" >&2
	fi
fi

go vet ./...
go test -race -timeout 15m "$@" ./...
