#!/usr/bin/env bash
# A real kube-apiserver (+ kube-controller-manager) and etcd on 127.0.0.1, with no Docker and no
# internet: built from Debian bookworm's `kubernetes` source package (upstream v1.20.2 with vendor/)
# using Debian's Go 1.19, and cached under $BASE_K8S_CACHE (default ~/.cache/base-operator/k8s).
#
#   scripts/k8s-envtest.sh build          # once: ~6 min on 2 cores, ~1.5 GB peak; then cached
#   scripts/k8s-envtest.sh build node     # also kubelet, kube-scheduler, kube-proxy, pause (scripts/cluster.sh)
#   scripts/k8s-envtest.sh start DIR      # start etcd + apiserver + controller-manager, state in DIR
#   scripts/k8s-envtest.sh stop DIR       # stop what `start DIR` started
#   scripts/k8s-envtest.sh restart-apiserver DIR   # kill and restart only the apiserver (same port)
#
# `start` prints the kubeconfig path; DIR/kubeconfig is written when the apiserver is ready.
# Limits: it is v1.20, so fields it does not know (StatefulSet persistentVolumeClaimRetentionPolicy,
# CRD x-kubernetes-validations) are dropped silently; there is no kubelet or scheduler, so pods stay
# Pending unless a test patches their status.
set -euo pipefail
W=${BASE_K8S_CACHE:-$HOME/.cache/base-operator/k8s}
KVER=1.20.5+really1.20.2-1.1+deb12u1

# The node's binaries (scripts/cluster.sh): kubelet, kube-scheduler, kube-proxy and the pause program.
NODE_BINS="kubelet kube-scheduler kube-proxy pause"

have_all() { local b; for b in "$@"; do [ -x "$W/bin/$b" ] || return 1; done; }

# Downloads (once per build) Debian's Go and the kubernetes source into $W; vendored reflect2 swapped.
fetch_sources() {
  mkdir -p "$W"/apt/lists/partial "$W"/apt/cache/archives/partial "$W"/debs "$W"/root "$W"/bin "$W"/src
  [ -d "$W/src/kubernetes-1.20.2" ] && [ -x "$W/root/usr/lib/go-1.19/bin/go" ] && return 0
  # An apt configuration of our own that adds deb-src on the machine's own mirror; the system's is untouched.
  sed 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources > "$W/apt/debian.sources"
  cat > "$W/apt/apt.conf" <<EOC
Dir::Etc::SourceList "/dev/null"; Dir::Etc::SourceParts "$W/apt"; Dir::State::Lists "$W/apt/lists"; Dir::Cache "$W/apt/cache"; APT::Sandbox::User "root";
EOC
  export APT_CONFIG=$W/apt/apt.conf
  apt-get update -qq
  (cd "$W/debs" && apt-get download -qq golang-1.19-go golang-1.19-src golang-github-modern-go-reflect2-dev etcd-server rsync libpopt0)
  for f in "$W"/debs/*.deb; do dpkg -x "$f" "$W/root"; done
  rm -rf "$W/src/kubernetes-1.20.2"
  (cd "$W/src" && apt-get source -qq --download-only "kubernetes=$KVER" && tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz)
  local K=$W/src/kubernetes-1.20.2
  # The vendored reflect2 1.0.1 segfaults under Go >= 1.18; Debian's 1.0.2 works.
  rm -rf "$K/vendor/github.com/modern-go/reflect2"
  cp -r "$W/root/usr/share/gocode/src/github.com/modern-go/reflect2" "$K/vendor/github.com/modern-go/reflect2"
  rm -f "$K/vendor/github.com/modern-go/reflect2/go.mod"
  mkdir -p "$W/gopath/src/k8s.io" "$W/wrap" && ln -sfn "$K" "$W/gopath/src/k8s.io/kubernetes"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/root/usr/lib/x86_64-linux-gnu exec %s/root/usr/bin/rsync "$@"\n' "$W" "$W" > "$W/wrap/rsync"
  chmod +x "$W/wrap/rsync"
}

# Builds `go build ./cmd/$1` into $W/bin/$1 (GOPATH mode, static, version stamps as upstream's).
go_build() {
  (
    export PATH=$W/wrap:$W/root/usr/lib/go-1.19/bin:$PATH GOPATH=$W/gopath GOCACHE=$W/gocache GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0 HOME=$W
    cd "$W/gopath/src/k8s.io/kubernetes"
    V=k8s.io/kubernetes/vendor/k8s.io/component-base/version; C=k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version
    LD="-s -w -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $C.gitVersion=v1.20.2 -X $C.gitMajor=1 -X $C.gitMinor=20"
    local s; s=$(date +%s)
    go build -ldflags "$LD" -o "$W/bin/$1.tmp" "./cmd/$1"
    mv "$W/bin/$1.tmp" "$W/bin/$1"
    echo "k8s-envtest: built $1 in $(( $(date +%s) - s )) s"
  )
}

# The patches the kubelet needs on a host like CI's (see scripts/cluster.sh, "Pitfalls").
patch_node_sources() {
  local K=$W/src/kubernetes-1.20.2
  # Root without CAP_SYS_RESOURCE (CI's VMs) cannot set a negative oom_score_adj, and runc then fails
  # every pod sandbox ("can't get final child's PID from pipe: EOF"): dockershim gives the pause
  # container -998 and Guaranteed pods -997. Clamp both to 0 (NEG_OOM=1 keeps upstream's values).
  if [ "${NEG_OOM:-0}" != 1 ]; then
    sed -i 's/defaultSandboxOOMAdj int = -998/defaultSandboxOOMAdj int = 0/' "$K/pkg/kubelet/dockershim/docker_sandbox.go"
    sed -i 's/guaranteedOOMScoreAdj int = -997/guaranteedOOMScoreAdj int = 0/' "$K/pkg/kubelet/qos/policy.go"
  fi
  # A deleted pod leaves the API only once its dead containers and sandbox are removed; v1.20 does it
  # on PLEG events, which race, and falls back on the container GC, a hard-coded 1-minute period
  # (1 deletion in 5 took about a minute). Run the GC every 10 s.
  sed -i 's/ContainerGCPeriod = time.Minute/ContainerGCPeriod = 10 * time.Second/' "$K/pkg/kubelet/kubelet.go"
}

# build [node]: the apiserver, controller-manager and etcd; with `node` also the node's binaries.
build() {
  local want="kube-apiserver kube-controller-manager etcd"
  [ "${1:-}" = node ] && want="$want $NODE_BINS"
  # shellcheck disable=SC2086
  if have_all $want; then echo "k8s-envtest: cached binaries in $W/bin"; return 0; fi
  fetch_sources
  if ! have_all kube-apiserver kube-controller-manager; then
    ( export PATH=$W/wrap:$W/root/usr/lib/go-1.19/bin:$PATH GOPATH=$W/gopath GOCACHE=$W/gocache GO111MODULE=off GOFLAGS= GOPROXY=off CGO_ENABLED=0 HOME=$W
      cd "$W/gopath/src/k8s.io/kubernetes" && make gen_openapi )
    go_build kube-apiserver
    go_build kube-controller-manager
  fi
  [ -x "$W/bin/etcd" ] || cp "$W/root/usr/bin/etcd" "$W/bin/etcd"
  if [ "${1:-}" = node ] && ! have_all $NODE_BINS; then
    patch_node_sources
    go_build kubelet
    go_build kube-scheduler
    go_build kube-proxy
    # The pod sandbox: k8s's own pause.c, static (imported as an image by scripts/cluster.sh).
    gcc -static -Os -Wall -Werror -DVERSION=v3.4-local -o "$W/bin/pause.tmp" "$W/src/kubernetes-1.20.2/build/pause/linux/pause.c"
    strip "$W/bin/pause.tmp" && mv "$W/bin/pause.tmp" "$W/bin/pause"
  fi
  # The sources and Go cache are only needed to build; keep the cache small.
  rm -rf "$W/src" "$W/gopath" "$W/gocache" "$W/root/usr/lib/go-1.19" "$W/root/usr/share/go-1.19"
  echo "k8s-envtest: built into $W/bin"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts the apiserver of DIR (ports from DIR/ports) and waits until it is ready.
apiserver_up() {
  local D=$1 etcd_port api_port
  read -r etcd_port api_port < "$D/ports"
  "$W/bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --secure-port="$api_port" --cert-dir="$D/certs" \
    --token-auth-file="$D/pki/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$D/pki/sa.pub" \
    --service-account-signing-key-file="$D/pki/sa.key" --service-cluster-ip-range=10.0.0.0/16 \
    --disable-admission-plugins=ServiceAccount --allow-privileged=true \
    --audit-policy-file="$D/audit-policy.yaml" --audit-log-path="$D/audit.log" >> "$D/apiserver.log" 2>&1 &
  echo $! > "$D/apiserver.pid"
  for _ in $(seq 600); do
    if [ "$(curl -sk -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer envtest-admin-token' "https://127.0.0.1:$api_port/readyz")" = 200 ]; then return 0; fi
    sleep 0.1
  done
  return 1
}

# Kills the apiserver of DIR (SIGKILL: a graceful stop waits up to a minute for open requests)
# and starts it again on the same port, certificates and etcd: every watch is cut, and a client
# resuming from a resourceVersion older than the new watch cache gets 410 Gone.
restart_apiserver() {
  local D=${1:?usage: restart-apiserver DIR}
  D=$(cd "$D" && pwd)
  local pid; pid=$(cat "$D/apiserver.pid")
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  apiserver_up "$D" || { echo "k8s-envtest: apiserver not ready after restart; see $D/apiserver.log" >&2; return 1; }
  # /readyz does not wait for the RBAC authorizer's cache: until it has synced, every request of a
  # plain user is denied (403). Return once the operator's user is authorized again.
  local api_port; api_port=$(cut -d' ' -f2 "$D/ports")
  for _ in $(seq 600); do
    if [ "$(curl -sk -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer envtest-operator-token' "https://127.0.0.1:$api_port/apis/apps/v1/statefulsets?limit=1")" = 200 ]; then return 0; fi
    sleep 0.1
  done
  echo "k8s-envtest: the operator's user is not authorized after the restart" >&2; return 1
}

start() {
  local D=${1:?usage: start DIR}
  mkdir -p "$D/pki"
  D=$(cd "$D" && pwd)
  local etcd_port peer_port api_port kcm_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port); kcm_port=$(free_port)
  openssl genrsa -out "$D/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$D/pki/sa.key" -pubout -out "$D/pki/sa.pub" 2>/dev/null
  # An admin, and a plain user the tests bind to the operator's ClusterRole (deploy/rbac.yaml).
  printf '%s\n' 'envtest-admin-token,admin,admin-uid,"system:masters"' 'envtest-operator-token,base-operator,operator-uid' > "$D/pki/tokens.csv"
  # Audit every request's metadata, so tests can compare the operator's API calls with its RBAC.
  printf 'apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  omitStages: ["RequestReceived"]\n' > "$D/audit-policy.yaml"
  "$W/bin/etcd" --data-dir "$D/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "default=http://127.0.0.1:$peer_port" \
    --listen-metrics-urls "http://127.0.0.1:$(free_port)" > "$D/etcd.log" 2>&1 &
  echo $! > "$D/etcd.pid"
  echo "$etcd_port $api_port" > "$D/ports"
  apiserver_up "$D" || { echo "k8s-envtest: apiserver not ready; see $D/apiserver.log" >&2; stop "$D"; return 1; }
  cat > "$D/kubeconfig" <<EOK
apiVersion: v1
kind: Config
clusters: [{name: envtest, cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: $D/certs/apiserver.crt}}]
users: [{name: admin, user: {token: envtest-admin-token}}]
contexts: [{name: envtest, context: {cluster: envtest, user: admin, namespace: default}}]
current-context: envtest
EOK
  # WITH_KCM=0 leaves the controller-manager out (no pods, PVCs or garbage collection).
  if [ "${WITH_KCM:-1}" = 1 ]; then
  "$W/bin/kube-controller-manager" --kubeconfig="$D/kubeconfig" --leader-elect=false --bind-address=127.0.0.1 \
    --secure-port="$kcm_port" --port=0 --service-account-private-key-file="$D/pki/sa.key" \
    --root-ca-file="$D/certs/apiserver.crt" --use-service-account-credentials=false \
    --controllers='*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder,-cloud-node-lifecycle,-service,-route' \
    > "$D/kcm.log" 2>&1 &
  echo $! > "$D/kcm.pid"
  fi
  sed 's/envtest-admin-token/envtest-operator-token/; s/name: admin/name: operator/g; s/user: admin/user: operator/' "$D/kubeconfig" > "$D/kubeconfig-operator"
  echo "$D/kubeconfig"
}

stop() {
  local D=${1:?usage: stop DIR}
  for p in kcm apiserver etcd; do
    if [ -f "$D/$p.pid" ]; then kill "$(cat "$D/$p.pid")" 2>/dev/null || true; rm -f "$D/$p.pid"; fi
  done
}

case "${1:-}" in
  build) build "${2:-}" ;;
  start) build >/dev/null; start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  restart-apiserver) restart_apiserver "${2:-}" ;;
  *) echo "usage: $0 build [node] | start DIR | stop DIR | restart-apiserver DIR" >&2; exit 2 ;;
esac
