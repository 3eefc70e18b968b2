#!/usr/bin/env bash
# Builds the control-plane binaries the integration tests start: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl, from the official Go modules at
# pinned versions, into a gitignored cache folder. Binaries already there are kept.
#
#   hack/controlplane.sh            build what is missing, print the bin folder
#   hack/controlplane.sh etcd ...   only these (make demo needs no kubectl)
#
# Needs only Go and the module proxy. Env: CONTROLPLANE_DIR overrides the cache folder.
# Built for speed, not debugging: no DWARF, no symbol table, trimmed paths; etcd beside
# the Kubernetes binaries, which one `go build` links in parallel.
set -euo pipefail

KUBERNETES_VERSION=v1.36.3
STAGING_VERSION=v0.36.3
ETCD_VERSION=v3.6.8

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${CONTROLPLANE_DIR:-$repo/.cache/controlplane}
bin=$dir/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION
mkdir -p "$bin"

log() { echo "controlplane: $*" >&2; }
fail() { echo "controlplane: ERROR: $*" >&2; exit 1; }

command -v go >/dev/null || fail "go is not on PATH"

all=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${all[@]}")
missing=()
for b in "${wanted[@]}"; do
  [[ " ${all[*]} " == *" $b "* ]] || fail "unknown binary $b (want some of: ${all[*]})"
  [ -x "$bin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "$bin"
  exit 0
fi
log "building ${missing[*]} into $bin (a few minutes the first time)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod CGO_ENABLED=0
# No DWARF (-dwarf=false, -w) and no symbol table (-s): smaller objects, faster links.
buildflags=(-trimpath -ldflags=-s\ -w -gcflags=all=-dwarf=false)

build_kubernetes() {
  local m=$work/kubernetes
  mkdir -p "$m"
  cd "$m"
  go mod init controlplane.local/kubernetes >/dev/null 2>&1
  go mod edit -require=k8s.io/kubernetes@$KUBERNETES_VERSION
  # k8s.io/kubernetes replaces its staging modules with local folders; a module that
  # requires it must point them at their published versions instead.
  local gomod
  gomod=$(go mod download -json k8s.io/kubernetes@$KUBERNETES_VERSION | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  [ -f "$gomod" ] || fail "could not download k8s.io/kubernetes@$KUBERNETES_VERSION"
  local staged
  staged=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
  [ -n "$staged" ] || fail "no staging replacements found in k8s.io/kubernetes's go.mod"
  for s in $staged; do
    go mod edit -replace="$s=$s@$STAGING_VERSION"
  done
  local pkgs=()
  for b in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  { echo '//go:build tools'; echo; echo 'package tools'; echo; echo 'import ('
    for p in "${pkgs[@]}"; do echo "	_ \"$p\""; done; echo ')'; } > tools.go
  go mod tidy -e >/dev/null 2>&1 || true
  # One go build for all: shared packages compile once, the links run in parallel.
  log "go build ${pkgs[*]}"
  mkdir -p "$m/out"
  go build "${buildflags[@]}" -tags tools -o "$m/out/" "${pkgs[@]}" ||
    fail "building $* failed (is the Go module proxy reachable?)"
  for b in "$@"; do mv "$m/out/$b" "$bin/$b"; done
}

build_etcd() {
  local m=$work/etcd
  mkdir -p "$m"
  cd "$m"
  go mod init controlplane.local/etcd >/dev/null 2>&1
  go mod edit -require=go.etcd.io/etcd/server/v3@$ETCD_VERSION
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go mod tidy -e >/dev/null 2>&1 || true
  log "go build go.etcd.io/etcd/server/v3"
  go build "${buildflags[@]}" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3 ||
    fail "building etcd failed (is the Go module proxy reachable?)"
  mv "$bin/etcd.tmp" "$bin/etcd"
}

k8s=()
pid=
for b in "${missing[@]}"; do
  if [ "$b" = etcd ]; then
    (build_etcd) & pid=$!
  else
    k8s+=("$b")
  fi
done
[ ${#k8s[@]} -eq 0 ] || (build_kubernetes "${k8s[@]}") || { [ -z "$pid" ] || wait "$pid"; exit 1; }
[ -z "$pid" ] || wait "$pid" || exit 1
log "ready in $bin"
echo "$bin"
