# Shared helpers for ops/ scripts. Source it: `. "$(dirname "$0")/lib.sh"`.
# Messages go to stderr so stdout stays machine-readable (e.g. the URL printed by `ops/pg start`).

say() { printf '%s: %s\n' "${OPS_NAME:-ops}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${OPS_NAME:-ops}" "$*" >&2; exit 1; }

# Runs a command, echoing it first.
run() { say "+ $*"; "$@"; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Directory holding initdb/pg_ctl: $PGBIN if set, else the newest /usr/lib/postgresql/N/bin, else pg_config, else PATH.
pg_bindir() {
    if [ -n "${PGBIN:-}" ]; then printf '%s\n' "$PGBIN"; return; fi
    local d best="" bestv=0 v
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] || continue
        v=$(basename "$(dirname "$d")"); v=${v%%.*}
        case "$v" in ''|*[!0-9]*) continue ;; esac
        if [ "$v" -gt "$bestv" ]; then bestv=$v; best=$d; fi
    done
    if [ -n "$best" ]; then printf '%s\n' "$best"; return; fi
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
    return 1
}

# Puts Swift on PATH if it is installed at /opt/swift but PATH lacks it (for scripts that build or test).
ensure_swift_path() {
    if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
}
