#!/usr/bin/env bash
# Builds reboot-manager's multi-arch OCI image without a container daemon:
#
#   hack/image.sh        bin/image/ (OCI image layout) and bin/image.tar (oci-archive)
#
# Static binaries (CGO_ENABLED=0, -trimpath) for each of PLATFORMS, then hack/image
# puts each with the CA bundle into a one-layer image run as 65532:65532 (FROM
# scratch, go-containerregistry). Reproducible: timestamps are SOURCE_DATE_EPOCH
# (default 0), so the same commit gives the same digest, which it prints.
# Env: IMAGE_REPO, IMAGE_VERSION (default: the chart's appVersion, the tag the
# manifests reference), PLATFORMS, CA_BUNDLE, SOURCE_DATE_EPOCH, OUT (default bin).
# Load it: `skopeo copy oci-archive:bin/image.tar docker-daemon:...`,
# `podman load -i bin/image.tar`, or push: `crane push bin/image REF`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/reboot-manager/reboot-manager}
IMAGE_VERSION=${IMAGE_VERSION:-$(sed -n 's/^appVersion: *//p' charts/reboot-manager/Chart.yaml)}
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
OUT=${OUT:-bin}
GO=${GO:-go}
mkdir -p "$OUT"
out=$(cd "$OUT" && pwd)

fail() { echo "image: ERROR: $*" >&2; exit 1; }
[ -n "$IMAGE_VERSION" ] || fail "no appVersion in charts/reboot-manager/Chart.yaml"

if [ ! -f "$CA_BUNDLE" ]; then
  # Debian's ca-certificates makes the bundle.
  echo "image: $CA_BUNDLE missing: installing ca-certificates" >&2
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq ca-certificates >/dev/null ||
    fail "could not install ca-certificates; give a PEM bundle as CA_BUNDLE"
fi

args=()
pids=()
for p in $PLATFORMS; do
  dir=$out/${p//\//_}
  mkdir -p "$dir"
  # The builds run in parallel: each is mostly one linker process.
  CGO_ENABLED=0 GOOS=${p%/*} GOARCH=${p#*/} $GO build -trimpath \
    -ldflags "-s -w -X main.version=$IMAGE_VERSION" -o "$dir/reboot-manager" ./cmd/reboot-manager &
  pids+=($!)
  args+=(--binary "$p=$dir/reboot-manager")
done
for pid in "${pids[@]}"; do wait "$pid" || fail "go build failed"; done

cd hack
$GO run ./image --tag "$IMAGE_REPO:$IMAGE_VERSION" --ca-bundle "$CA_BUNDLE" \
  --layout "$out/image" --archive "$out/image.tar" "${args[@]}"
