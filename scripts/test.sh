#!/usr/bin/env bash
# The one test command (`npm test`): on a fresh Debian machine it installs everything the tests need, builds
# the runner bundle, type-checks, and runs every unit and integration test against the real lab services
# (libvirtd + QEMU, LVM in User-Mode Linux, sshd on 127.0.0.1, tmpfs), which vitest's globalSetup starts and stops.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/lab-install.sh || { echo "test: installing the lab packages failed" >&2; exit 1; }
if [ ! -d node_modules ] || ! npm ls --silent >/dev/null 2>&1; then
  npm ci --no-audit --no-fund || exit 1
fi
npm run --silent build || { echo "test: building dist/kvm-backup.mjs failed" >&2; exit 1; }
npx tsc --noEmit || { echo "test: type check failed" >&2; exit 1; }
mkdir -p .lab
npx vitest run --reporter=default --reporter=json --outputFile=.lab/vitest-report.json "$@"
rc=$?
node scripts/test-summary.mjs .lab/vitest-report.json || rc=1
exit $rc
