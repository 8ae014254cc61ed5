#!/usr/bin/env bash
# A real one-node Kubernetes v1.20.2 on this machine, with no registry and no internet: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet (dockershim) and kube-proxy, all
# built from Debian's `kubernetes` source (scripts/k8s-envtest.sh build node, cached), a Docker daemon
# of its own (Debian's docker.io), a cluster DNS (dnsmasq), a StorageClass `local` whose claims bind
# (hostPath volumes made on demand), the project's images built from ./Dockerfile, and the operator
# installed from deploy/ (`kubectl apply -k deploy/` with the local image). Runs as root.
#
#   scripts/cluster.sh up DIR      # everything above; state, logs and pids in DIR; prints the KUBECONFIG path
#   scripts/cluster.sh down DIR    # stops all of it; nothing is left running, mounted or in iptables
#   scripts/cluster.sh images DIR  # rebuilds the images from the current binary and loads them
#   scripts/cluster.sh check       # exits 0 if Docker can run containers here, else says why
#   scripts/cluster.sh build       # only the Kubernetes binaries (cached in ~/.cache/base-operator/k8s)
#
# Env: BASE_OPERATOR_BIN (the binary for the images; default: cargo's debug build, built if missing),
#      BASE_CLUSTER_BRIDGE (default kbase0) and BASE_CLUSTER_CIDR (default 10.244.0.1/24): the bridge of
#      its dockerd, which the node, DNS and apiserver listen on; WITH_OPERATOR=0 skips the install.
# One cluster per machine at a time (the bridge, and the kubelet's fixed paths /var/log/pods).
# What it is not: one node, v1.20 (no CEL rules enforced, no StatefulSet PVC retention policy),
# no registry (images exist only in this dockerd; pods use imagePullPolicy IfNotPresent).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/.." && pwd)
W=${BASE_K8S_CACHE:-$HOME/.cache/base-operator/k8s}; BIN=$W/bin
BRIDGE=${BASE_CLUSTER_BRIDGE:-kbase0}; CIDR=${BASE_CLUSTER_CIDR:-10.244.0.1/24}; BRIP=${CIDR%/*}
NODE=${BASE_CLUSTER_NODE:-base-node}
PAUSE=k8s.gcr.io/pause:3.2   # kubelet v1.20's default --pod-infra-container-image; never pulled when present
# Debian's docker CLI speaks to its own daemon with BuildKit built in (a newer CLI would want buildx).
if [ -x /usr/bin/docker ]; then DOCKER_CLI=/usr/bin/docker; else DOCKER_CLI=docker; fi
docker() { DOCKER_HOST="unix://$D/docker.sock" "$DOCKER_CLI" "$@"; }
say() { echo "cluster: $*" >&2; }
die() { echo "cluster: $*" >&2; exit 1; }
# Exit 3: this host cannot run containers (not root, no Docker daemon, runc refused); scripts/demo.sh
# then falls back to the apiserver-only demo. Any other failure is a bug and exits 1.
cannot() { echo "cluster: cannot run containers here: $*" >&2; exit 3; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0",0)); print(s.getsockname()[1])'; }
T0=$(date +%s.%N); since() { python3 -c "import time; print('%.1f s' % (time.time()-$T0))"; }

host_deps() {
  [ "$(id -u)" = 0 ] || cannot "needs root (a Docker daemon, iptables, mounts, port 53 on the bridge)"
  local pkgs=""
  command -v dockerd >/dev/null || pkgs="$pkgs docker.io"
  command -v iptables >/dev/null || pkgs="$pkgs iptables"
  command -v dnsmasq >/dev/null || pkgs="$pkgs dnsmasq-base"
  command -v socat >/dev/null || pkgs="$pkgs socat"          # kubectl port-forward
  command -v conntrack >/dev/null || pkgs="$pkgs conntrack"  # kube-proxy flushes stale UDP entries
  command -v strip >/dev/null || pkgs="$pkgs binutils"
  command -v gcc >/dev/null || pkgs="$pkgs gcc libc6-dev"    # the pause program
  if [ -n "$pkgs" ]; then
    say "installing$pkgs (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
}

# The daemons outlive this script (reparented to init, which may reap them late): a zombie still
# passes `kill -0`, so "gone" means no such pid or state Z.
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s#Z}" = "$s" ]; }
stop_pid() {
  [ -f "$D/$1.pid" ] || return 0; local p; p=$(cat "$D/$1.pid")
  kill "$p" 2>/dev/null; for _ in $(seq "${2:-100}"); do alive "$p" || break; sleep 0.1; done
  alive "$p" && kill -9 "$p" 2>/dev/null; rm -f "$D/$1.pid"
}
bg() {  # bg NAME CMD...: start CMD in the background, its output in DIR/NAME.log, its pid in DIR/NAME.pid
  local n=$1; shift
  "$@" > "$D/$n.log" 2>&1 < /dev/null &
  echo $! > "$D/$n.pid"
}

start_docker() {
  # Exit 4: another cluster holds the bridge (one per machine); tests/cluster.rs waits and retries.
  ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "cluster: bridge $BRIDGE exists: another cluster is up (scripts/cluster.sh down DIR)" >&2; exit 4; }
  ip link add "$BRIDGE" type bridge && ip addr add "$CIDR" dev "$BRIDGE" && ip link set "$BRIDGE" up
  echo "$BRIDGE" > "$D/bridge"   # ours: `down` deletes it
  # sysctls the daemons change, restored by `down`.
  local k; for k in net/ipv4/ip_forward net/ipv4/conf/all/route_localnet net/bridge/bridge-nf-call-iptables; do
    [ -e "/proc/sys/$k" ] && echo "$k $(cat "/proc/sys/$k")" >> "$D/sysctl.orig"
  done
  echo '{}' > "$D/daemon.json"
  # Its own data root, exec root (and containerd under it), socket and pidfile, on its own bridge;
  # no iptables rules of its own (pods need none: the bridge, kube-proxy and the host's routes do).
  bg dockerd dockerd --config-file="$D/daemon.json" --data-root="$D/docker" --exec-root="$D/run" \
    --host="unix://$D/docker.sock" --pidfile="$D/run/dockerd.pid" --bridge="$BRIDGE" \
    --iptables=false --ip-masq=false
  for _ in $(seq 300); do docker info >/dev/null 2>&1 && break; alive "$(cat "$D/dockerd.pid")" || break; sleep 0.1; done
  docker info >/dev/null 2>&1 || { tail -5 "$D/dockerd.log" >&2; cannot "dockerd did not start (see $D/dockerd.log)"; }
  # The pod sandbox image: k8s's static pause program alone in a rootfs.
  local r; r=$(mktemp -d); cp "$BIN/pause" "$r/pause"
  tar -C "$r" -c . | docker import -c 'ENTRYPOINT ["/pause"]' - "$PAUSE" >/dev/null; rm -rf "$r"
  # Can this host run a container at all? (e.g. no overlayfs, no cgroups, seccomp refused)
  docker run --rm --network=none "$PAUSE" -v >/dev/null 2>"$D/docker-check.log" ||
    { cat "$D/docker-check.log" >&2; cannot "docker run failed (above)"; }
}

# The images, from ./Dockerfile: its base is a rootfs of the build host's own runtime libraries (what
# the binary links, found by ldd), imported with `docker import`; the binary is the one cargo built
# (stripped), so no second, release build runs. Pods use them with imagePullPolicy IfNotPresent.
build_images() {
  local bin=${BASE_OPERATOR_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/base-operator}
  if [ ! -x "$bin" ]; then (cd "$REPO" && cargo build --locked -q -p base-adapter-k8s --bin base-operator); fi
  local s; s=$(date +%s.%N)
  local ctx=$D/image-ctx r=$D/image-rootfs; rm -rf "$ctx" "$r"; mkdir -p "$ctx" "$r/etc" "$r/tmp"
  strip -o "$ctx/base-operator" "$bin"
  local l; for l in $(ldd "$ctx/base-operator" | grep -o '/[^ ]*'); do mkdir -p "$r$(dirname "$l")"; cp -L "$l" "$r$l"; done
  chmod 1777 "$r/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$r/etc/group"
  echo 'hosts: files dns' > "$r/etc/nsswitch.conf"
  [ -f /etc/ssl/certs/ca-certificates.crt ] && mkdir -p "$r/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
  tar -C "$r" -c . | docker import - base-runtime:local >/dev/null
  local b=(build -q --build-arg RUNTIME=base-runtime:local --build-arg BINARY=prebuilt -f "$REPO/Dockerfile")
  DOCKER_BUILDKIT=1 docker "${b[@]}" -t base-operator:local "$ctx" >/dev/null
  DOCKER_BUILDKIT=1 docker "${b[@]}" --target store -t base-store:local "$ctx" >/dev/null
  rm -rf "$ctx" "$r"
  say "images base-operator:local and base-store:local built in $(python3 -c "import time; print('%.1f s' % (time.time()-$s))")"
}

tok() { grep ",$1," "$D/pki/tokens.csv" | cut -d, -f1; }
kc() {  # kc FILE USER: a kubeconfig with the apiserver's self-signed cert as its CA
  cat > "$D/$1" <<EOK
apiVersion: v1
kind: Config
clusters: [{name: base-local, cluster: {server: "https://$BRIP:$API_PORT", certificate-authority: $D/certs/apiserver.crt}}]
users: [{name: u, user: {token: $(tok "$2")}}]
contexts: [{name: base-local, context: {cluster: base-local, user: u, namespace: default}}]
current-context: base-local
EOK
}

start_node() {
  mkdir -p "$D/pki"; local p=$D/pki
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null; openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  # The apiserver presents a client cert from this CA to the kubelet (logs, exec, port-forward).
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" -days 365 -subj /CN=base-local-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$p/kubelet-client.key" -out "$p/kubelet-client.csr" \
    -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" 2>/dev/null
  openssl x509 -req -in "$p/kubelet-client.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 365 \
    -out "$p/kubelet-client.crt" 2>/dev/null
  t() { openssl rand -hex 16; }
  { echo "$(t),admin,admin-uid,\"system:masters\""; echo "$(t),system:node:$NODE,node-uid,\"system:nodes\""
    echo "$(t),system:kube-scheduler,sched-uid"; echo "$(t),system:kube-proxy,proxy-uid"; } > "$p/tokens.csv"
  local etcd_port peer_port; etcd_port=$(free_port); peer_port=$(free_port); API_PORT=$(free_port)
  bg etcd "$BIN/etcd" --data-dir "$D/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "default=http://127.0.0.1:$peer_port" \
    --listen-metrics-urls "http://127.0.0.1:$(free_port)"
  # On the bridge's address: pods reach it there, and the kubelet refuses a loopback node IP.
  bg apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$BRIP" --advertise-address="$BRIP" --secure-port="$API_PORT" --cert-dir="$D/certs" \
    --token-auth-file="$p/tokens.csv" --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-client-certificate="$p/kubelet-client.crt" --kubelet-client-key="$p/kubelet-client.key" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$p/sa.pub" \
    --service-account-signing-key-file="$p/sa.key" --service-cluster-ip-range=10.0.0.0/16 --allow-privileged=true
  local ok=0
  for _ in $(seq 900); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(tok admin)" "https://$BRIP:$API_PORT/readyz")" = 200 ] && { ok=1; break; }
    sleep 0.1
  done
  [ $ok = 1 ] || die "apiserver not ready; see $D/apiserver.log"
  say "apiserver ready after $(since)"
  kc kubeconfig admin; kc node.kubeconfig "system:node:$NODE"; kc sched.kubeconfig system:kube-scheduler
  kc proxy.kubeconfig system:kube-proxy
  # Every controller that works without a cloud, the PV binder included.
  bg kcm "$BIN/kube-controller-manager" --kubeconfig="$D/kubeconfig" --leader-elect=false --bind-address=127.0.0.1 \
    --secure-port="$(free_port)" --port=0 --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$D/certs/apiserver.crt" --use-service-account-credentials=false \
    --flex-volume-plugin-dir="$D/kcm-flexvolume" --controllers='*,-cloud-node-lifecycle,-route,-service'
  bg scheduler "$BIN/kube-scheduler" --kubeconfig="$D/sched.kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port="$(free_port)" --port=0
  # Everything the kubelet would keep under /var/lib goes under DIR, except v1.20's fixed
  # /var/lib/kubelet/device-plugins, /var/log/pods and /var/log/containers (cleaned by `down`).
  # Image GC off: the images cannot be pulled back. Status every 2 s: Ready 8 s sooner.
  mkdir -p "$D/kubelet"
  bg kubelet "$BIN/kubelet" --kubeconfig="$D/node.kubeconfig" --hostname-override="$NODE" \
    --node-ip="$BRIP" --address="$BRIP" --port="$(free_port)" --read-only-port=0 \
    --healthz-bind-address=127.0.0.1 --healthz-port="$(free_port)" \
    --container-runtime=docker --docker-endpoint="unix://$D/docker.sock" \
    --container-runtime-endpoint="unix://$D/dockershim.sock" \
    --experimental-dockershim-root-directory="$D/dockershim" --pod-infra-container-image="$PAUSE" \
    --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= --fail-swap-on=false \
    --root-dir="$D/kubelet" --cert-dir="$D/kubelet/pki" --volume-plugin-dir="$D/kubelet/volume-plugins" \
    --seccomp-profile-root="$D/kubelet/seccomp" \
    --anonymous-auth=false --authentication-token-webhook --authorization-mode=Webhook --client-ca-file="$p/ca.crt" \
    --cluster-dns="$BRIP" --cluster-domain=cluster.local \
    --make-iptables-util-chains=false --oom-score-adj=0 --node-status-update-frequency=2s \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --eviction-hard='memory.available<100Mi,nodefs.available<1%,imagefs.available<1%'
  # kube-proxy (iptables mode): Service ClusterIPs, kubernetes.default.svc for in-cluster clients.
  bg proxy "$BIN/kube-proxy" --kubeconfig="$D/proxy.kubeconfig" --hostname-override="$NODE" --proxy-mode=iptables \
    --cluster-cidr="$(python3 -c "import ipaddress; print(ipaddress.ip_interface('$CIDR').network)")" --bind-address=127.0.0.1 \
    --healthz-bind-address="127.0.0.1:$(free_port)" --metrics-bind-address="127.0.0.1:$(free_port)" \
    --oom-score-adj=0 --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0
  # A pod reaching itself through a ClusterIP is sent back out of the bridge port it came in on,
  # which the bridge drops unless that port has hairpin_mode=1 (CNI would set it; nobody does here).
  bg hairpin bash -c "while sleep 1; do for f in /sys/class/net/$BRIDGE/brif/*/hairpin_mode; do
      [ -e \"\$f\" ] && { read -r v < \"\$f\"; [ \"\$v\" = 1 ] || echo 1 > \"\$f\"; }; done; done"
  # Cluster DNS: dnsmasq on the bridge (the kubelet's --cluster-dns), records from cluster-helper.py.
  mkdir -p "$D/dns/hosts.d" "$D/pv"; : > "$D/dns/hosts.d/cluster"
  local ups; ups=$(awk '/^nameserver/ && $2 !~ /^127\./ {printf " --server=%s", $2}' /etc/resolv.conf)
  # shellcheck disable=SC2086
  bg dnsmasq dnsmasq --keep-in-foreground --user=root --pid-file= --conf-file=/dev/null \
    --listen-address="$BRIP" --bind-interfaces --port=53 --no-hosts --no-resolv $ups \
    --local=/cluster.local/ --hostsdir="$D/dns/hosts.d" --local-ttl=1 --no-negcache
  SERVER="https://$BRIP:$API_PORT" TOKEN=$(tok admin) CA=$D/certs/apiserver.crt HOSTS=$D/dns/hosts.d/cluster \
    PV_DIR=$D/pv bg helper python3 "$HERE/cluster-helper.py"
  export KUBECONFIG=$D/kubeconfig KUBECACHEDIR=$D/kubectl-cache
  for _ in $(seq 600); do
    [ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break
    sleep 0.2
  done
  [ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] ||
    die "node not Ready after 120 s; see $D/kubelet.log"
  # Pods are refused until the controller-manager has made the namespace's `default` ServiceAccount.
  for _ in $(seq 300); do kubectl get serviceaccount default >/dev/null 2>&1 && break; sleep 0.2; done
  kubectl apply -f - >/dev/null <<'EOF'
# Claims of this class bind at once to a hostPath volume made for them (scripts/cluster-helper.py).
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: hanzo.ai/local-hostpath
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
  say "node $NODE Ready after $(since)"
}

install_operator() {
  # --validate=false: kubectl checks against v1.20's schema, which predates CRD CEL rules (dropped by the server).
  # deploy/ as production has it (kubectl apply -k deploy/), with the image built here instead of the registry's.
  kubectl kustomize "$REPO/deploy" | sed 's#image: ghcr.io/hanzoai/base-operator:[^ ]*#image: base-operator:local#; s#value: ghcr.io/hanzoai/base-operator:.*#value: base-operator:local#' |
    kubectl apply --validate=false -f - >/dev/null
  kubectl wait --for=condition=Established --timeout=60s crd/bases.hanzo.ai >/dev/null
  kubectl -n base-system rollout status deployment/base-operator --timeout=180s >/dev/null ||
    { kubectl -n base-system get pods -o wide >&2; die "the operator did not become available"; }
  say "operator running (deploy/) after $(since)"
}

up() {
  mkdir -p "$D"; D=$(cd "$D" && pwd)
  [ -f "$D/apiserver.pid" ] && die "$D is in use (scripts/cluster.sh down $D first)"
  [ ${#D} -le 60 ] || die "DIR too long for the daemons' unix sockets: $D"
  host_deps
  "$HERE/k8s-envtest.sh" build node >&2
  start_docker
  start_node
  build_images
  [ "${WITH_OPERATOR:-1}" = 1 ] && install_operator
  say "up after $(since); export KUBECONFIG=$D/kubeconfig; then: kubectl apply -f deploy/examples/local.yaml"
  echo "$D/kubeconfig"
}

down() {
  [ -d "$D" ] || die "no such directory: $D"; D=$(cd "$D" && pwd)
  export KUBECONFIG=$D/kubeconfig KUBECACHEDIR=$D/kubectl-cache
  stop_pid kcm; stop_pid helper; stop_pid kubelet; stop_pid hairpin; stop_pid dnsmasq
  if [ -f "$D/proxy.pid" ]; then
    stop_pid proxy; "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    # v1.20's --cleanup leaves its canary chains and KUBE-MARK-* behind.
    local t c; for t in mangle nat filter; do for c in KUBE-PROXY-CANARY KUBE-MARK-DROP KUBE-MARK-MASQ; do
      iptables -t $t -F $c 2>/dev/null && iptables -t $t -X $c 2>/dev/null; done; done
  fi
  stop_pid scheduler; stop_pid apiserver; stop_pid etcd
  # The containers: all of this dockerd's (it is ours alone), then the daemon and its containerd.
  if [ -S "$D/docker.sock" ] && docker info >/dev/null 2>&1; then
    docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1 || true
  fi
  stop_pid dockerd 300
  # Mounts under DIR, deepest first: the kubelet's rshared root and its tmpfs volumes, dockerd's
  # overlays and netns files.
  awk -v r="$D" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  if [ -f "$D/bridge" ]; then ip link delete "$(cat "$D/bridge")" 2>/dev/null || true; rm -f "$D/bridge"; fi
  if [ -f "$D/sysctl.orig" ]; then
    while read -r k v; do echo "$v" > "/proc/sys/$k" 2>/dev/null || true; done < "$D/sysctl.orig"; rm -f "$D/sysctl.orig"
  fi
  # The data: docker's data root (images, layers) and the volumes. DIR itself stays (logs).
  rm -rf "$D/docker" "$D/run" "$D/pv" "$D/kubelet" "$D/etcd" "$D/dockershim"
  # v1.20's fixed paths: /var/log/pods, /var/log/containers (dangling links by now), the device-plugin socket.
  find /var/log/containers /var/log/pods -xtype l -delete 2>/dev/null || true
  find /var/log/pods -mindepth 1 -depth -type d -empty -delete 2>/dev/null || true
  rmdir /var/log/containers /var/log/pods 2>/dev/null || true
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/DEPRECATION
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
  say "down: $D"
}

check() {
  host_deps
  D=$(mktemp -d /tmp/base-check.XXXXXX)
  trap 'down >/dev/null 2>&1; rm -rf "$D"' EXIT
  "$HERE/k8s-envtest.sh" build node >&2
  start_docker && say "Docker runs containers here"
}

cmd=${1:-}; D=${2:-}
case "$cmd" in
  up) [ -n "$D" ] || die "usage: $0 up DIR"; up ;;
  down) [ -n "$D" ] || die "usage: $0 down DIR"; down ;;
  images) [ -n "$D" ] || die "usage: $0 images DIR"; D=$(cd "$D" && pwd); build_images ;;
  check) check ;;
  build) host_deps; "$HERE/k8s-envtest.sh" build node ;;
  *) echo "usage: $0 up DIR | down DIR | images DIR | check | build" >&2; exit 2 ;;
esac
