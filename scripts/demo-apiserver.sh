#!/usr/bin/env bash
# The apiserver-only demo (what scripts/demo.sh falls back to where Docker cannot run containers):
# start a real kube-apiserver (scripts/k8s-envtest.sh), run the operator against it, apply the spec's
# example Base, and show what the operator made. Everything it starts is stopped on exit. There is
# no kubelet, so pods stay Pending.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/base-demo.XXXXXX)
op_pid=""
cleanup() {
  [ -n "$op_pid" ] && kill "$op_pid" 2>/dev/null || true
  ./scripts/k8s-envtest.sh stop "$dir" || true
}
trap cleanup EXIT

echo "### building base-operator and the local apiserver (cached after the first run)"
./scripts/host-deps.sh
# BASE_OPERATOR_BIN: a binary built already (tests/demo.rs runs this under cargo test, which holds
# the build directory's lock).
bin="${BASE_OPERATOR_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --locked -q -p base-adapter-k8s
  bin="${CARGO_TARGET_DIR:-target}/debug/base-operator"
fi
./scripts/k8s-envtest.sh build
export KUBECONFIG
KUBECONFIG=$(./scripts/k8s-envtest.sh start "$dir")

echo "### installing the CRDs, RBAC and a Gateway"
# --validate=false: kubectl checks against v1.20's schema, which predates CEL rules (the server drops them).
kubectl apply --validate=false -f deploy/crd.yaml >/dev/null
kubectl apply -f deploy/rbac.yaml -f tests/fixtures/gateway-crd.yaml -f tests/fixtures/operator-binding.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/bases.hanzo.ai crd/gateways.hanzo.ai >/dev/null
kubectl create namespace hanzo >/dev/null
printf 'apiVersion: hanzo.ai/v1\nkind: Gateway\nmetadata: {name: gateway, namespace: hanzo}\nspec: {routes: []}\n' | kubectl apply -f - >/dev/null

echo "### running the operator (as the least-privilege user of deploy/rbac.yaml)"
KUBECONFIG="$dir/kubeconfig-operator" "$bin" run --lease-namespace base-system --metrics-addr 127.0.0.1:0 \
  > "$dir/operator.log" 2>&1 &
op_pid=$!

echo "### kubectl apply -f deploy/examples/my-app.yaml"
kubectl apply -f deploy/examples/my-app.yaml
for _ in $(seq 120); do
  kubectl get statefulset my-app -n hanzo >/dev/null 2>&1 && [ -n "$(kubectl get bapp my-app -n hanzo -o jsonpath='{.status.phase}')" ] && break
  sleep 0.5
done
sleep 1
echo; echo "### kubectl get bapp -n hanzo"
kubectl get bapp -n hanzo
echo; echo "### what the operator created"
kubectl get statefulsets,services,poddisruptionbudgets,pods,persistentvolumeclaims -n hanzo -l hanzo.ai/base=my-app
echo; echo "### the Gateway's routes"
kubectl get gateway gateway -n hanzo -o jsonpath='{.spec.routes}'; echo
echo; echo "### status.conditions"
kubectl get bapp my-app -n hanzo -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
