#!/usr/bin/env python3
"""The two small services of scripts/cluster.sh's one-node cluster, in one loop over the API:

- cluster DNS records: writes a dnsmasq hosts file (re-read by dnsmasq on change) with
  <svc>.<ns>.svc.cluster.local -> ClusterIP (headless: every ready endpoint, plus the not-ready ones
  with publishNotReadyAddresses) and <hostname>.<svc>.<ns>.svc.cluster.local -> that endpoint;
- a hostPath provisioner for the StorageClass `local` (provisioner hanzo.ai/local-hostpath): each
  Pending claim of that class gets a PV pre-bound to it (claimRef) on a fresh directory under
  PV_DIR, mode 0777 because hostPath volumes ignore the pod's fsGroup; a Released PV whose
  reclaim policy is Delete is deleted with its directory.

Env: SERVER, TOKEN, CA (the apiserver's cert), HOSTS (the hosts file), PV_DIR.
Standard library only (CI's machines have python3 but nothing else).
"""
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request

SERVER, TOKEN = os.environ["SERVER"], os.environ["TOKEN"]
CTX = ssl.create_default_context(cafile=os.environ["CA"])
HOSTS, PV_DIR = os.environ["HOSTS"], os.environ["PV_DIR"]
PROVISIONER = "hanzo.ai/local-hostpath"
CLASS = "local"


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(SERVER + path, data=data, method=method, headers={
        "Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=CTX, timeout=5) as r:
        return json.load(r)


def dns_records():
    eps = {(e["metadata"]["namespace"], e["metadata"]["name"]): e
           for e in call("GET", "/api/v1/endpoints")["items"]}
    lines = []
    for s in call("GET", "/api/v1/services")["items"]:
        ns, name, spec = s["metadata"]["namespace"], s["metadata"]["name"], s["spec"]
        fq = f"{name}.{ns}.svc.cluster.local"
        if spec.get("clusterIP") not in (None, "", "None"):
            lines.append(f"{spec['clusterIP']} {fq}")
            continue
        for sub in eps.get((ns, name), {}).get("subsets") or []:
            addrs = list(sub.get("addresses") or [])
            if spec.get("publishNotReadyAddresses"):
                addrs += sub.get("notReadyAddresses") or []
            for a in addrs:
                lines.append(f"{a['ip']} {fq}")
                if a.get("hostname"):
                    lines.append(f"{a['ip']} {a['hostname']}.{fq}")
    return "\n".join(sorted(set(lines))) + "\n"


def provision():
    for c in call("GET", "/api/v1/persistentvolumeclaims")["items"]:
        meta, spec = c["metadata"], c["spec"]
        if spec.get("storageClassName") != CLASS or c.get("status", {}).get("phase") != "Pending":
            continue
        if spec.get("volumeName"):
            continue
        name = f"pvc-{meta['uid']}"
        path = os.path.join(PV_DIR, name)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)  # hostPath ignores fsGroup: the pod's user (65532) must write here
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
              "spec": {"capacity": {"storage": spec["resources"]["requests"]["storage"]},
                       "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                       "persistentVolumeReclaimPolicy": "Delete", "storageClassName": CLASS,
                       "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                       "hostPath": {"path": path, "type": "Directory"}}}
        try:
            call("POST", "/api/v1/persistentvolumes", pv)
            print(f"provisioned {name} for {meta['namespace']}/{meta['name']}", flush=True)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise
    for pv in call("GET", "/api/v1/persistentvolumes")["items"]:
        meta, spec = pv["metadata"], pv["spec"]
        if (meta.get("annotations", {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
                and pv.get("status", {}).get("phase") == "Released"
                and spec.get("persistentVolumeReclaimPolicy") == "Delete"):
            path = spec["hostPath"]["path"]
            assert path.startswith(PV_DIR + "/"), path
            shutil.rmtree(path, ignore_errors=True)
            try:
                call("DELETE", f"/api/v1/persistentvolumes/{meta['name']}")
                print(f"deleted {meta['name']}", flush=True)
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise


def main():
    last = None
    while True:
        try:
            text = dns_records()
            if text != last:
                tmp = os.path.dirname(os.path.dirname(HOSTS)) + "/hosts.tmp"  # outside dnsmasq's dir
                with open(tmp, "w") as f:
                    f.write(text)
                os.replace(tmp, HOSTS)  # atomic: dnsmasq never reads a half-written file
                last = text
            provision()
        except Exception as e:  # the apiserver not up yet, or a transient error: try again
            print("cluster-helper:", e, file=sys.stderr, flush=True)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
