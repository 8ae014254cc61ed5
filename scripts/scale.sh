#!/usr/bin/env bash
# Scale: N Base objects (default 1000) reconciled from cold by one operator against the local
# kube-apiserver. Prints the time to converge (every Base has its StatefulSet and a status for its
# generation), the operator's peak RSS, its API writes, and the writes of a further idle period
# (the steady state must add none). No controller-manager, so no pods: this measures the operator.
#   scripts/scale.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
dir=$(mktemp -d /tmp/base-scale.XXXXXX)
op_pid=""
cleanup() { [ -n "$op_pid" ] && kill "$op_pid" 2>/dev/null || true; ./scripts/k8s-envtest.sh stop "$dir" || true; }
trap cleanup EXIT
cargo build --locked -q --release -p base-adapter-k8s
bin="${CARGO_TARGET_DIR:-target}/release/base-operator"
./scripts/k8s-envtest.sh build >/dev/null
export KUBECONFIG
KUBECONFIG=$(WITH_KCM=0 ./scripts/k8s-envtest.sh start "$dir")
kubectl apply --validate=false -f deploy/crd.yaml >/dev/null
kubectl apply -f deploy/rbac.yaml -f tests/fixtures/operator-binding.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/bases.hanzo.ai >/dev/null
kubectl create namespace scale >/dev/null
python3 - "$n" > "$dir/bases.yaml" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print(f"""---
apiVersion: hanzo.ai/v1
kind: Base
metadata: {{name: app-{i}, namespace: scale}}
spec:
  image: {{repository: ghcr.io/hanzoai/base, tag: v1.2.3}}
  replicas: 3
  storage: {{size: 1Gi}}""")
PY
# create, not apply: no read-modify-write per object, so 1000 objects load in a fraction of the time
kubectl create -f "$dir/bases.yaml" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start=$(date +%s.%N)
KUBECONFIG="$dir/kubeconfig-operator" RUST_LOG=warn "$bin" run --lease-namespace base-system \
  --metrics-addr "127.0.0.1:$port" --resync 30s > "$dir/operator.log" 2>&1 &
op_pid=$!
writes() { curl -s "127.0.0.1:$port/metrics" | awk '/^base_operator_api_writes_total/ {s+=$NF} END {print s+0}'; }
while :; do
  done_n=$(kubectl get bapp -n scale -o jsonpath='{range .items[*]}{.status.observedGeneration}{"\n"}{end}' | grep -c '^1$' || true)
  sts_n=$(kubectl get statefulsets -n scale --no-headers 2>/dev/null | wc -l)
  [ "$done_n" -ge "$n" ] && [ "$sts_n" -ge "$n" ] && break
  kill -0 "$op_pid" || { echo "operator died; see $dir/operator.log"; exit 1; }
  sleep 1
done
end=$(date +%s.%N)
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$op_pid/status")
w1=$(writes)
sleep 40   # longer than one resync: every Base is re-planned once more
w2=$(writes)
rss2_kib=$(awk '/VmHWM/ {print $2}' "/proc/$op_pid/status")
python3 -c 'import sys; n,s,e,r,w1,w2=sys.argv[1:]; print(f"bases={n} converge_s={float(e)-float(s):.1f} operator_peak_rss_mib={int(r)/1024:.1f} api_writes_to_converge={int(float(w1))} idle_resync_writes={int(float(w2))-int(float(w1))}")' \
  "$n" "$start" "$end" "$rss2_kib" "$w1" "$w2"
[ "$rss_kib" -gt 0 ]
