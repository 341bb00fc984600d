#!/usr/bin/env bash
# Debian's packages that CI needs and this machine lacks, in one apt-get: Chromium for the screenshot
# tests, a C++ compiler for the native loops (src/native.py), SLURM, munge and MariaDB for
# .ci/slurm.sh, PostgreSQL for .ci/postgres.sh. Each of those scripts still installs its own packages
# when run alone; after this they find them present.
set -euo pipefail
want=()
command -v chromium >/dev/null 2>&1 || want+=(chromium)
command -v c++ >/dev/null 2>&1 || want+=(g++)   # src/native.py builds the mixture loops with it
for cmd in munged slurmctld slurmd slurmdbd sinfo mariadbd; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        want+=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)
        break
    fi
done
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || want+=(postgresql)
if [ ${#want[@]} -eq 0 ]; then
    echo "packages.sh: all present" >&2
    exit 0
fi
echo "packages.sh: installing ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
