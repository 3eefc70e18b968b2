#!/usr/bin/env bash
# The Helm chart (charts/reboot-manager) and the manifests rendered from it:
#
#   hack/chart.sh render   write kubernetes/deployment.yaml (the default values),
#                          kubernetes/monitoring.yaml (ServiceMonitor, PrometheusRule)
#                          and kubernetes/replacement.yaml (cloud=aws's RBAC)
#   hack/chart.sh check    helm lint and helm template with the default and with every
#                          option on; fail if the files differ from a fresh render, or if
#                          the image tag differs from the one `make image` produces
#   hack/chart.sh all-options   render release rm-options with every option on (tests)
#
# Env: HELM, the helm binary (the Makefile builds a pinned one into .cache/tools).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
HELM=${HELM:-helm}
chart=charts/reboot-manager
fail() { echo "chart: ERROR: $*" >&2; exit 1; }

# Every option on: the chart must lint and render with them (the deploy test applies
# this set to a control plane, too).
all_options=(
  --set cloud=aws,drainFailurePolicy=Force,tls.secretName=reboot-manager-tls
  --set basicAuth.credentials='*:zincati:$2y$10$abcdefghijklmnopqrstuu5l0KFEgqvvH5Vl0W5r2HiAR2Z.6nV2e:*'
  --set service.type=NodePort,service.nodePort=30080,service.clusterIP=10.0.0.42
  --set monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true
  --set extraArgs[0]=--verify-source-address,notify.url=generic+https://hooks.example.com/reboots,notify.drainBlockedAfter=20m
)

render_deployment() {
  cat <<'HEAD'
# reboot-manager: kubectl apply -f kubernetes/deployment.yaml
# A FleetLock reboot coordinator for Zincati. See docs/ for the configuration.
# Rendered from charts/reboot-manager with its default values and a Namespace
# (hack/chart.sh render): change the chart, not this file. Helm users: docs/install.md.
HEAD
  "$HELM" template reboot-manager "$chart" --namespace reboot-manager --set namespace.create=true
}

render_monitoring() {
  cat <<'HEAD'
# reboot-manager's Prometheus Operator objects, beside kubernetes/deployment.yaml:
#   kubectl apply -f kubernetes/monitoring.yaml
# Rendered from charts/reboot-manager (hack/chart.sh render): change the chart.
HEAD
  "$HELM" template reboot-manager "$chart" --namespace reboot-manager \
    --set monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true \
    --show-only templates/servicemonitor.yaml --show-only templates/prometheusrule.yaml
}

render_replacement() {
  cat <<'HEAD'
# Replacing nodes that fail to return (docs/replacement.md), on top of deployment.yaml:
#   kubectl apply -f kubernetes/deployment.yaml -f kubernetes/replacement.yaml
# then add --cloud=aws to the Deployment's args and replaceAfter to the policy.
# Rendered from charts/reboot-manager with cloud=aws (hack/chart.sh render): change the
# chart (templates/rbac-cloud.yaml), not this file. Helm users: --set cloud=aws.
HEAD
  "$HELM" template reboot-manager "$chart" --namespace reboot-manager --set cloud=aws \
    --show-only templates/rbac-cloud.yaml
  cat <<'TAIL'
# For EKS with IRSA, annotate the ServiceAccount with the role carrying the IAM policy
# of docs/replacement.md:
#   kubectl -n reboot-manager annotate serviceaccount reboot-manager \
#     eks.amazonaws.com/role-arn=arn:aws:iam::ACCOUNT:role/reboot-manager
# (Helm: --set serviceAccount.annotations.eks\.amazonaws\.com/role-arn=...)
TAIL
}

case ${1:-} in
render)
  render_deployment >kubernetes/deployment.yaml
  render_monitoring >kubernetes/monitoring.yaml
  render_replacement >kubernetes/replacement.yaml
  ;;
check)
  "$HELM" lint --strict "$chart"
  "$HELM" lint --strict "$chart" "${all_options[@]}"
  "$HELM" template reboot-manager "$chart" --namespace reboot-manager >/dev/null
  "$HELM" template reboot-manager "$chart" --namespace reboot-manager "${all_options[@]}" >/dev/null
  diff -u kubernetes/deployment.yaml <(render_deployment) ||
    fail "kubernetes/deployment.yaml differs from the chart's render: run hack/chart.sh render"
  diff -u kubernetes/monitoring.yaml <(render_monitoring) ||
    fail "kubernetes/monitoring.yaml differs from the chart's render: run hack/chart.sh render"
  diff -u kubernetes/replacement.yaml <(render_replacement) ||
    fail "kubernetes/replacement.yaml differs from the chart's render: run hack/chart.sh render"
  # drainFailurePolicy in any spelling the binary accepts: Force's RBAC follows it; a
  # value the binary refuses (or a --cloud it refuses) fails the render, not the pod.
  "$HELM" template reboot-manager "$chart" --set drainFailurePolicy=force | grep -qE '^ +verbs: \[delete\]' ||
    fail "drainFailurePolicy=force renders without delete on pods"
  for bad in drainFailurePolicy=Fore cloud=AWS; do
    ! "$HELM" template reboot-manager "$chart" --set "$bad" >/dev/null 2>&1 ||
      fail "$bad renders; want an error"
  done
  # --notify-url is read at start: a changed notify.url must roll the pods.
  [ "$("$HELM" template reboot-manager "$chart" --set notify.url=generic+https://a.example/1 | grep checksum/notify-url)" != \
    "$("$HELM" template reboot-manager "$chart" --set notify.url=generic+https://a.example/2 | grep checksum/notify-url)" ] ||
    fail "a new notify.url does not change the pod template"
  version=$(sed -n 's/^appVersion: *//p' "$chart/Chart.yaml")
  image=$(sed -n 's/^ *image: *//p' kubernetes/deployment.yaml)
  [ "$image" = "ghcr.io/reboot-manager/reboot-manager:$version" ] ||
    fail "kubernetes/deployment.yaml runs $image; make image tags ghcr.io/reboot-manager/reboot-manager:$version"
  echo "chart: lint, template and rendered manifests OK"
  ;;
all-options)
  # Its own release and namespace, beside an install of kubernetes/deployment.yaml.
  "$HELM" template rm-options "$chart" --namespace rm-options --set namespace.create=true "${all_options[@]}"
  ;;
*)
  echo "usage: hack/chart.sh render|check|all-options" >&2
  exit 2
  ;;
esac
