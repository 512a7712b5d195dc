#!/usr/bin/env bash
# Static checks of the deployment recipes under deploy/ (nothing is deployed or built):
#   - every *.yaml / *.yml parses (python3 + PyYAML, all documents of multi-document files);
#   - every systemd unit passes `systemd-analyze verify` with no output (skipped if systemd-analyze is missing);
#     units are verified in a scratch root with a stub /usr/local/bin/tessera, since verify rejects an
#     ExecStart binary that is not installed, and its warnings (unknown keys, bad values) do not change its
#     exit status, so any output counts as a failure;
#   - the Slurm batch script passes `bash -n`;
#   - deploy/kubernetes builds with `kubectl kustomize` (skipped if kubectl is missing; offline, no cluster).
# Last line: "N passed, N failed"; exit status 1 if anything failed.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"; [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/      /'; }
skip() { printf 'skip  %s\n' "$1"; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# YAML
if ! python3 -c 'import yaml' 2>/dev/null; then
    fail "python3 with PyYAML is needed to check YAML"
else
    while IFS= read -r -d '' f; do
        rel=${f#"$here"/}
        if out=$(python3 -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1], encoding="utf-8")))' "$f" 2>&1); then
            pass "yaml $rel"
        else
            fail "yaml $rel" "$out"
        fi
    done < <(find "$here" -type f \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z)
fi

# systemd units
units=()
while IFS= read -r -d '' f; do units+=("$f"); done < <(find "$here" -type f \( -name '*.service' -o -name '*.socket' -o -name '*.timer' \) -print0 | sort -z)
if ! command -v systemd-analyze >/dev/null 2>&1; then
    for f in "${units[@]}"; do skip "systemd ${f#"$here"/} (systemd-analyze is not installed)"; done
elif [ "${#units[@]}" -gt 0 ]; then
    root="$scratch/root"
    mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd"
    printf '#!/bin/sh\nexit 0\n' > "$root/usr/local/bin/tessera"
    chmod 0755 "$root/usr/local/bin/tessera"
    for d in /usr/lib/systemd/system /lib/systemd/system; do
        if [ -d "$d" ]; then cp -R "$d" "$root/usr/lib/systemd/"; break; fi
    done
    for f in "${units[@]}"; do cp "$f" "$root/etc/systemd/system/"; done
    for f in "${units[@]}"; do
        rel=${f#"$here"/}
        name=$(basename "$f")
        # A template is verified through an instance of it.
        case "$name" in *@.*) name="${name%%@.*}@check.${name##*@.}" ;; esac
        out=$(cd "$root" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --root="$root" "$name" 2>&1)
        rc=$?
        if [ $rc -eq 0 ] && [ -z "$out" ]; then pass "systemd $rel"; else fail "systemd $rel" "$out"; fi
    done
fi

# Slurm batch scripts
while IFS= read -r -d '' f; do
    rel=${f#"$here"/}
    if out=$(bash -n "$f" 2>&1); then pass "bash -n $rel"; else fail "bash -n $rel" "$out"; fi
done < <(find "$here" -type f -name '*.sbatch' -print0 | sort -z)

# Kubernetes kustomization (offline)
if [ -f "$here/kubernetes/kustomization.yaml" ]; then
    if command -v kubectl >/dev/null 2>&1; then
        if out=$(kubectl kustomize "$here/kubernetes" 2>&1 >/dev/null); then
            pass "kubectl kustomize kubernetes"
        else
            fail "kubectl kustomize kubernetes" "$out"
        fi
    else
        skip "kubectl kustomize kubernetes (kubectl is not installed)"
    fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
