#!/usr/bin/env bash
# Builds the control-plane binaries the integration tests start: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl, from the official Go modules at
# pinned versions, into a gitignored cache folder. Binaries already there are kept.
#
#   hack/controlplane.sh            build what is missing, print the bin folder
#
# Needs only Go and the module proxy. Env: CONTROLPLANE_DIR overrides the cache folder.
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

missing=()
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
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
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy -e >/dev/null 2>&1 || true
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [ -x "$bin/$b" ] && continue
    log "go build k8s.io/kubernetes/cmd/$b"
    go build -trimpath -ldflags=-s -tags tools -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b" ||
      fail "building $b failed (is the Go module proxy reachable?)"
    mv "$bin/$b.tmp" "$bin/$b"
  done
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
  go build -trimpath -ldflags=-s -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3 ||
    fail "building etcd failed (is the Go module proxy reachable?)"
  mv "$bin/etcd.tmp" "$bin/etcd"
}

[ -x "$bin/etcd" ] || build_etcd
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  if [ ! -x "$bin/$b" ]; then build_kubernetes; break; fi
done
log "ready in $bin"
echo "$bin"
