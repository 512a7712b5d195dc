#!/usr/bin/env bash
# Static checks of the deployment recipes under deploy/ (nothing is deployed or built):
#   - every *.yaml / *.yml parses (python3 + PyYAML, all documents of multi-document files);
#   - every systemd unit passes `systemd-analyze verify` with no output (skipped if systemd-analyze is missing);
#     units are verified in a scratch root with a stub /usr/local/bin/tessera, since verify rejects an
#     ExecStart binary that is not installed, and its warnings (unknown keys, bad values) do not change its
#     exit status, so any output counts as a failure;
#   - every shell script (*.sh, *.sbatch) passes `bash -n`;
#   - deploy/kubernetes/keys.sh makes keys in a scratch copy of deploy/kubernetes (with $TESSERA if set, else a stub
#     of `tessera keygen` that writes the same files), and that copy builds with `kubectl kustomize`; the built
#     objects are then cross-checked (what pods mount exists, keys directories are 0600-capable emptyDirs, the
#     Service, the NetworkPolicy and the workers' endpoint agree on the port) (skipped if kubectl is missing;
#     offline, no cluster);
#   - no recipe mentions the old tunnels any more (stunnel, TLS-PSK, SSH -L forwards): connections are direct.
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
    # ExecReload=/bin/kill (verify checks it exists under --root too).
    mkdir -p "$root/bin"
    printf '#!/bin/sh\nexit 0\n' > "$root/bin/kill"
    chmod 0755 "$root/bin/kill"
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

# Shell scripts (the Slurm batch script, keys.sh, this file)
while IFS= read -r -d '' f; do
    rel=${f#"$here"/}
    if out=$(bash -n "$f" 2>&1); then pass "bash -n $rel"; else fail "bash -n $rel" "$out"; fi
done < <(find "$here" -type f \( -name '*.sbatch' -o -name '*.sh' \) -print0 | sort -z)

# Kubernetes: keys.sh in a scratch copy, then kustomize (offline), then cross-checks of what it built.
if [ -f "$here/kubernetes/kustomization.yaml" ]; then
    if ! command -v kubectl >/dev/null 2>&1; then
        skip "kubernetes keys.sh + kubectl kustomize (kubectl is not installed)"
    else
        k8s="$scratch/kubernetes"
        mkdir -p "$k8s"
        # Not keys/: an operator's real keys stay where they are.
        tar -C "$here/kubernetes" --exclude=./keys -cf - . | tar -C "$k8s" -xf -
        if [ -n "${TESSERA:-}" ]; then
            keygen="$TESSERA"
            keygen_label="tessera keygen: $TESSERA"
        else
            # The file layout and modes of the `tessera keygen` contract (deploy/README.md, "Keys"), not real keys.
            keygen="$scratch/tessera-stub"
            keygen_label="tessera keygen: a stub (set TESSERA=/path/to/tessera for the real one)"
            cat > "$keygen" <<'STUB'
#!/bin/sh
set -eu
[ "${1:-}" = keygen ] || { echo "tessera stub: only keygen" >&2; exit 2; }
role=$2; shift 2; name=""
if [ "$role" = client ]; then name=$1; shift; fi
dir=""; auth=""; force=0
while [ $# -gt 0 ]; do
    case $1 in
        --keys-dir) dir=$2; shift 2 ;;
        --authorize-in) auth=$2; shift 2 ;;
        --force) force=1; shift ;;
        *) echo "tessera stub: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$dir"; chmod 0700 "$dir"
if [ "$role" = coordinator ]; then secret=coordinator.key_secret; public=coordinator.key; else secret=client.key_secret; public=client.key; fi
if [ -e "$dir/$secret" ] && [ "$force" = 0 ]; then echo "$dir/$secret exists; pass --force" >&2; exit 1; fi
pk=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n'); sk=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
(umask 077; printf 'metadata\ncurve\n    public-key = "%s"\n    secret-key = "%s"\n' "$pk" "$sk" > "$dir/$secret")
printf 'metadata\ncurve\n    public-key = "%s"\n' "$pk" > "$dir/$public"; chmod 0644 "$dir/$public"
if [ "$role" = coordinator ]; then mkdir -p "$dir/authorized"; chmod 0755 "$dir/authorized"; exit 0; fi
[ -n "$auth" ] || exit 0
if [ -e "$auth/authorized/$name.key" ] && [ "$force" = 0 ]; then echo "$auth/authorized/$name.key exists" >&2; exit 1; fi
cp "$dir/$public" "$auth/authorized/$name.key"; cp "$auth/coordinator.key" "$dir/coordinator.key"
STUB
            chmod 0755 "$keygen"
        fi
        ks() { TESSERA="$keygen" TESSERA_K8S_KEYS="$k8s/keys" "$k8s/keys.sh" "$@" 2>&1; }
        if out=$(ks init && ks client alice && ks authorize bob "$k8s/keys/clients/alice/client.key" \
                && ks revoke bob && ks client k8s-workers-2 && ks worker-key k8s-workers-2 \
                && ks rotate-coordinator && ks list); then
            problems=""
            [ "$(stat -c %a "$k8s/keys/coordinator/coordinator.key_secret")" = 600 ] || problems+="coordinator.key_secret is not 0600; "
            [ "$(stat -c %a "$k8s/keys/keys.yaml")" = 600 ] || problems+="keys.yaml is not 0600; "
            [ ! -e "$k8s/keys/coordinator/authorized/bob.key" ] || problems+="revoke left bob.key; "
            for d in "$k8s"/keys/clients/*/; do
                cmp -s "$d/coordinator.key" "$k8s/keys/coordinator/coordinator.key" || problems+="stale $d/coordinator.key after rotate-coordinator; "
            done
            if ks authorize carol "$k8s/keys/clients/alice/client.key_secret" >/dev/null; then problems+="authorize accepted a secret key; "; fi
            if [ -z "$problems" ]; then pass "kubernetes keys.sh init/client/authorize/revoke/worker-key/rotate-coordinator ($keygen_label)"
            else fail "kubernetes keys.sh ($keygen_label)" "$problems"; fi
        else
            fail "kubernetes keys.sh ($keygen_label)" "$out"
        fi
        if out=$(kubectl kustomize "$k8s" 2>&1 > "$scratch/kustomized.yaml"); then
            pass "kubectl kustomize kubernetes"
            if out=$(python3 - "$scratch/kustomized.yaml" k8s-workers-2 <<'PY' 2>&1
import base64, sys, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1], encoding="utf-8")) if d]
worker_key = sys.argv[2]
objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
problems = []

def pod_specs():
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield d, d["spec"]["template"]
for d, tpl in pod_specs():
    spec, where = tpl["spec"], "%s/%s" % (d["kind"], d["metadata"]["name"])
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        for kind, key in (("secret", "secretName"), ("configMap", "name")):
            src = v.get(kind)
            if src and not src.get("optional") and (kind[0].upper() + kind[1:], src[key]) not in objs:
                problems.append("%s: volume %s needs %s %s, which nothing creates" % (where, v["name"], kind, src[key]))
        if "secret" in v and spec.get("securityContext", {}).get("runAsUser", 0) != 0 and "fsGroup" not in spec.get("securityContext", {}):
            problems.append("%s: Secret volume %s is root's 0400/0440 without fsGroup: uid %s cannot read it"
                            % (where, v["name"], spec["securityContext"]["runAsUser"]))
    for c in spec.get("initContainers", []) + spec["containers"]:
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for m in mounts.values():
            if m["name"] not in volumes:
                problems.append("%s/%s mounts unknown volume %s" % (where, c["name"], m["name"]))
        commands = [c.get("args", []), c.get("command", [])]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            commands.append(c.get(probe, {}).get("exec", {}).get("command", []))
        for argv in commands:
            for i, a in enumerate(argv[:-1]):
                if a != "--keys-dir":
                    continue
                m = mounts.get(argv[i + 1])
                if m is None:
                    problems.append("%s/%s: --keys-dir %s is not a mount" % (where, c["name"], argv[i + 1]))
                elif "emptyDir" not in volumes[m["name"]]:
                    problems.append("%s/%s: --keys-dir %s is volume %s, not an emptyDir: a Secret volume cannot hold a"
                                    " 0600 file a non-root user owns (fsGroup makes it 0440, which tessera refuses)"
                                    % (where, c["name"], argv[i + 1], m["name"]))
            for i, a in enumerate(argv[:-1]):
                if a == "--coordinator" and not argv[i + 1].startswith("tcp://127."):
                    host, port = argv[i + 1][len("tcp://"):].rsplit(":", 1)
                    name, ns = (host.split(".") + ["tessera"])[:2]
                    svc = objs.get(("Service", name))
                    if svc is None or svc["metadata"]["namespace"] != ns:
                        problems.append("%s/%s: --coordinator %s: no Service %s in %s" % (where, c["name"], argv[i + 1], name, ns))
                    elif int(port) not in [p["port"] for p in svc["spec"]["ports"]]:
                        problems.append("%s/%s: --coordinator %s: Service %s has no port %s" % (where, c["name"], argv[i + 1], name, port))

svc = objs[("Service", "tessera-coordinator")]
coord = objs[("Deployment", "tessera-coordinator")]["spec"]["template"]
sel = svc["spec"]["selector"]
if any(coord["metadata"]["labels"].get(k) != v for k, v in sel.items()):
    problems.append("Service tessera-coordinator does not select the coordinator pods")
ports = {p["name"]: p["containerPort"] for c in coord["spec"]["containers"] for p in c.get("ports", [])}
for p in svc["spec"]["ports"]:
    if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
        problems.append("Service port %s: target %s is no container port" % (p["port"], p["targetPort"]))
    np = objs[("NetworkPolicy", "tessera-coordinator")]
    if p["port"] not in [q["port"] for r in np["spec"]["ingress"] for q in r.get("ports", [])]:
        problems.append("NetworkPolicy tessera-coordinator does not admit port %s" % p["port"])
bind = coord["spec"]["containers"][0]["args"]
if "--bind" in bind and not bind[bind.index("--bind") + 1].endswith(":%d" % ports.get("zmq", -1)):
    problems.append("the coordinator binds %s, not its container port %s" % (bind[bind.index("--bind") + 1], ports.get("zmq")))

allow = objs[("ConfigMap", "tessera-authorized-keys")].get("data", {})
for name in ("coordinator-probe.key", worker_key + ".key"):
    if name not in allow:
        problems.append("allow-list ConfigMap lacks %s (has %s)" % (name, sorted(allow)))
sec = lambda n: {k: base64.b64decode(v).decode() for k, v in objs[("Secret", n)]["data"].items()}
wk, pk, ck = sec("tessera-worker-key"), sec("tessera-probe-key"), sec("tessera-coordinator-key")
if set(wk) != {"client.key_secret", "coordinator.key"} or set(pk) != set(wk) or set(ck) != {"coordinator.key_secret"}:
    problems.append("key Secrets have keys %s / %s / %s" % (sorted(wk), sorted(pk), sorted(ck)))
elif wk["coordinator.key"] != pk["coordinator.key"]:
    problems.append("worker and probe Secrets hold different coordinator public keys")
else:
    pub = lambda t: [l.split('"')[1] for l in t.splitlines() if l.strip().startswith("public-key")]
    if pub(wk["coordinator.key"]) != pub(ck["coordinator.key_secret"]):
        problems.append("the workers' coordinator.key is not the coordinator's public key")
    if pub(wk["client.key_secret"]) != pub(allow.get(worker_key + ".key", "")):
        problems.append("the worker Secret's key is not the one authorized as %s" % worker_key)
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
            ); then pass "kubernetes manifests agree (mounts, keys directories, Service, NetworkPolicy, key Secrets)"
            else fail "kubernetes manifests agree" "$out"; fi
        else
            fail "kubectl kustomize kubernetes" "$out"
        fi
    fi
fi

# No tunnels: every recipe connects directly with CURVE keys (issue 10).
pattern='stunnel|tls-psk|pskSecrets|ssh[^|]* -L|-L [^ ]*:127\.0\.0\.1|TUNNEL_HOST'
if out=$(grep -rniE --exclude=check.sh -e "$pattern" "$here"); then
    fail "no tunnel recipes left (stunnel, TLS-PSK, SSH -L forwards)" "$out"
else
    pass "no tunnel recipes left (stunnel, TLS-PSK, SSH -L forwards)"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
