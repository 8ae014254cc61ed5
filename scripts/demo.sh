#!/usr/bin/env bash
# The main job, in one command: a real one-node cluster on this machine (scripts/cluster.sh up: kubelet,
# Docker, DNS, storage, the project's images, the operator from deploy/), then the example Base
# (deploy/examples/local.yaml): pods Running, `kubectl get bapp` with writer and term, rows written
# through the gateway and read back, and a failover: `kubectl delete pod <writer>`, the new writer and
# how long writes were refused. Everything is stopped on exit (KEEP=1 leaves the cluster up).
# Where this host cannot run containers (exit 3 of cluster.sh: not root, no dockerd, runc refused),
# it says why and runs the apiserver-only demo instead (scripts/demo-apiserver.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/base-demo.XXXXXX)
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then echo "### left up: export KUBECONFIG=$dir/kubeconfig; stop with scripts/cluster.sh down $dir"
  else ./scripts/cluster.sh down "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"; fi
}
trap cleanup EXIT
now() { date +%s.%N; }; dt() { python3 -c "print('%.1f' % ($(now) - $1))"; }

echo "### building base-operator and the cluster's binaries (cached after the first run)"
./scripts/host-deps.sh
cargo build --locked -q -p base-adapter-k8s
echo "### scripts/cluster.sh up $dir"
rc=0; ./scripts/cluster.sh up "$dir" > "$dir/up.out" || rc=$?
if [ $rc = 3 ]; then
  echo "### this host cannot run containers (reason above); the apiserver-only demo instead"
  ./scripts/cluster.sh down "$dir" >/dev/null 2>&1 || true
  exec ./scripts/demo-apiserver.sh
fi
[ $rc = 0 ] || { echo "cluster.sh up failed (logs in $dir)"; KEEP=1; exit 1; }
export KUBECONFIG=$dir/kubeconfig KUBECACHEDIR=$dir/kubectl-cache
kubectl get nodes -o wide
kubectl -n base-system get pods -o wide

echo; echo "### kubectl apply -f deploy/examples/local.yaml"
t=$(now)
kubectl apply -f deploy/examples/local.yaml
writer=""
for _ in $(seq 600); do
  writer=$(kubectl -n hanzo get bapp local -o jsonpath='{.status.currentWriter}' 2>/dev/null || true)
  ready=$(kubectl -n hanzo get bapp local -o jsonpath='{.status.readyReplicas}' 2>/dev/null || true)
  [ -n "$writer" ] && [ "$ready" = 3 ] && break
  sleep 0.5
done
[ -n "$writer" ] || { echo "no writer after 300 s"; kubectl -n hanzo get pods -o wide; KEEP=1; exit 1; }
kubectl -n hanzo rollout status deployment/local-gateway --timeout=120s >/dev/null
echo "### Base local: 3 replicas Ready with writer $writer, $(dt "$t") s after the apply"
kubectl -n hanzo get pods -o wide
echo; kubectl -n hanzo get bapp

gw=http://$(kubectl -n hanzo get svc local-gateway -o jsonpath='{.spec.clusterIP}')
sql() {  # sql PATH JSON: one request through the gateway; prints the status line's code and the body
  curl -sS --max-time 5 -o "$dir/body" -w '%{http_code}' -XPOST "$gw$1" -H 'content-type: application/json' -d "$2"
  echo " $(cat "$dir/body")"
}
echo; echo "### writes through the gateway ($gw, the Service local-gateway)"
writes=0
for _ in $(seq 50); do
  r=$(sql /db/execute '["CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)"]' || true)
  case "$r" in 200*) writes=1; break ;; *not_writer*) break ;; esac
  sleep 0.2
done
echo "$r"
if [ $writes = 1 ]; then
  sql /db/execute '[["INSERT INTO notes (body) VALUES (?)", "hello from the demo"], ["INSERT INTO notes (body) VALUES (?)", "through the gateway"]]'
  echo "### read back"; sql '/db/query?level=strong' '["SELECT id, body FROM notes"]'
else
  # The request went gateway -> the writer's agent -> its store, and the store answered as a
  # replica: its agent has not pushed the writer role to it (docs/replica-contract.md, PUT /_replica/role).
  echo "### the store refused the write: its agent has not told it the writer role"
fi

pod_ip() { kubectl -n hanzo get pod "$1" -o jsonpath='{.status.podIP}'; }
term=$(kubectl -n hanzo get bapp local -o jsonpath='{.status.term}')
others=""; for p in local-0 local-1 local-2; do [ "$p" = "$writer" ] || others="$others $(pod_ip "$p")"; done
echo; echo "### failover: kubectl delete pod $writer (term $term)"
t=$(now)
kubectl -n hanzo delete pod "$writer" --wait=false
# Done when a surviving agent names a new writer of a newer term (GET /_ha/leader, every 20 ms).
n=0; new=""
while [ -z "$new" ] && [ $n -lt 3000 ]; do
  for ip in $others; do
    a=$(curl -s --max-time 1 "http://$ip:8090/_ha/leader" || true)
    nt=$(echo "$a" | sed -n 's/.*"term":\([0-9]*\).*/\1/p'); nw=$(echo "$a" | sed -n 's/.*"node_id":"\([^"]*\)".*/\1/p')
    if [ -n "$nw" ] && [ -n "$nt" ] && [ "$nt" -gt "$term" ]; then new=$nw; break; fi
  done
  n=$((n + 1)); [ -n "$new" ] || sleep 0.02
done
[ -n "$new" ] || { echo "no new writer within 60 s"; KEEP=1; exit 1; }
echo "### new writer $new (term $nt), elected $(dt "$t") s after the delete"
if [ $writes = 1 ]; then
  until [ "$(sql /db/execute '[["INSERT INTO notes (body) VALUES (?)", "after the failover"]]' | cut -c1-3)" = 200 ]; do sleep 0.05; done
  echo "### first write acknowledged through the gateway $(dt "$t") s after the delete"
  sql '/db/query?level=strong' '["SELECT id, body FROM notes"]'
fi
for _ in $(seq 100); do [ "$(kubectl -n hanzo get bapp local -o jsonpath='{.status.currentWriter}')" = "$new" ] && break; sleep 0.2; done
echo "### status.currentWriter follows $(dt "$t") s after the delete"
kubectl -n hanzo get bapp
kubectl -n hanzo wait --for=condition=Ready "pod/$writer" --timeout=120s >/dev/null
echo "### $writer is back as a follower"; kubectl -n hanzo get pods -L hanzo.ai/role
