#!/usr/bin/env bash
# `make container-test`: build the CPU image with podman and run distilflow in real containers.
#
#   1. podman/buildah (apt, needs root) when missing; docker/containers.conf via CONTAINERS_CONF;
#   2. the base image named by docker/Dockerfile's FROM: pulled, or — where no registry can be
#      reached — made with debootstrap (Debian bookworm + python3) and imported under that tag,
#      so the same Dockerfile builds here and in real life;
#   3. the image, with this machine's pip settings (index, find-links, CA bundle) passed as build
#      args and read-only volumes, never baked in;
#   4. smoke tests: `--help`, prepare-data on the packaged demo data (no network, non-root), the
#      MLflow server started like the Kubernetes Deployment (read-only root fs) and probed;
#   5. the whole pipeline under kfp.local.DockerRunner through podman's Docker API socket:
#      `distilflow run --runner docker --config configs/tiny.yaml`.
# It removes what it started (the API service by PID, its socket, containers, the images it
# built; KEEP_IMAGES=1 keeps them) and prints wall time and image size.
#
# Settings (environment): IMAGE, PYTHON (host venv python), KEEP_IMAGES=1, SKIP_PIPELINE=1,
# TORCH_SPEC / TORCH_INDEX (default: a CPU torch wheel in pip's find-links, else the Dockerfile's).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-localhost/distilflow:container-test}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
KEEP_IMAGES="${KEEP_IMAGES:-0}"
SKIP_PIPELINE="${SKIP_PIPELINE:-0}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/docker/containers.conf}"
START=$(date +%s)
WORK="$(mktemp -d /tmp/distilflow-container-test.XXXXXX)"
SOCK="$WORK/podman.sock"
SERVICE_PID=""
MLFLOW_CTR="distilflow-ct-mlflow-$$"
BUILT_BASE=""
BUILT_IMAGE=""

log() { printf '[container-test %4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { log "FAILED: $*"; exit 1; }

cleanup() {
  local rc=$?
  set +e
  podman rm --force --time 0 --ignore "$MLFLOW_CTR" >/dev/null 2>&1
  if [[ -n "$SERVICE_PID" ]] && kill -0 "$SERVICE_PID" 2>/dev/null; then
    kill "$SERVICE_PID" && wait "$SERVICE_PID" 2>/dev/null
  fi
  rm -f "$SOCK"
  if [[ "$KEEP_IMAGES" != 1 ]]; then
    [[ -n "$BUILT_IMAGE" ]] && podman rmi --force "$BUILT_IMAGE" >/dev/null 2>&1
    [[ -n "$BUILT_BASE" ]] && podman rmi --force "$BUILT_BASE" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  log "wall time $(($(date +%s) - START)) s, exit $rc"
  exit "$rc"
}
trap cleanup EXIT

# --- 1. tools ----------------------------------------------------------------------------------
need_apt=()
for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || need_apt+=("$tool"); done
if ((${#need_apt[@]})); then
  [[ $(id -u) == 0 ]] || die "missing ${need_apt[*]}: run as root (apt-get) or install podman buildah runc debootstrap"
  log "installing podman, buildah and friends (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman buildah runc fuse-overlayfs slirp4netns uidmap debootstrap >/dev/null
fi
[[ -x "$PYTHON" ]] || die "no host venv at $PYTHON: run 'make setup' first"

# --- 2. base image -----------------------------------------------------------------------------
BASE="$(awk '/^FROM /{print $2; exit}' "$ROOT/docker/Dockerfile")"
[[ "$BASE" == */* ]] || BASE="docker.io/library/$BASE"
if podman image exists "$BASE"; then
  log "base image $BASE is present"
elif timeout 120 podman pull --quiet "$BASE" >/dev/null 2>&1; then
  log "pulled base image $BASE"
else
  # Either file may be missing (deb822-only machines have no sources.list): grep's exit 2 must not
  # end the script under pipefail.
  mirror="$( { grep -rhoE '^(URIs: |deb )https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null || true; } \
    | head -1 | sed -E 's/^(URIs: |deb )//')"
  mirror="${mirror:-http://deb.debian.org/debian}"
  log "no registry: building $BASE with debootstrap from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  tar -C "$WORK/rootfs" -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$WORK/rootfs"
  BUILT_BASE="$BASE"
fi

# --- 3. build ----------------------------------------------------------------------------------
# pip's settings on this machine become build args; local paths among them become read-only
# volumes at the same path (a file:///x/simple index links to files beside it, so mount x).
build_args=(--build-arg "VCS_REF=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
volumes=()
declare -A mounted=()
pip_setting() { # $1 = pip config key; env PIP_* wins over pip config files
  local env_name="PIP_$(tr 'a-z-' 'A-Z_' <<<"$1")"
  if [[ -n "${!env_name:-}" ]]; then echo "${!env_name}"; return; fi
  "$PYTHON" -m pip config list 2>/dev/null | sed -nE "s/^global\.$1='(.*)'$/\1/p" | tail -1
}
mount_local() { # $1 = path or file:// URL
  local path="${1#file://}"
  [[ "$path" == /* && -e "$path" ]] || return 0
  [[ "$(basename "$path")" == simple ]] && path="$(dirname "$path")"
  [[ -n "${mounted[$path]:-}" ]] && return 0
  mounted[$path]=1
  volumes+=(--volume "$path:$path:ro")
}
for key in index-url extra-index-url find-links; do
  value="$(pip_setting "$key")"
  [[ -n "$value" ]] || continue
  build_args+=(--build-arg "PIP_$(tr 'a-z-' 'A-Z_' <<<"$key")=$value")
  for item in $value; do mount_local "$item"; done
done
cert="$(pip_setting cert)"
if [[ -n "$cert" && -f "$cert" ]]; then
  volumes+=(--volume "$cert:/etc/distilflow-build-ca.crt:ro")
  build_args+=(--build-arg "PIP_CERT=/etc/distilflow-build-ca.crt")
fi
# torch: a CPU wheel for this Python in find-links (no pytorch.org index here), else the defaults.
if [[ -z "${TORCH_SPEC:-}" ]]; then
  for dir in $(pip_setting find-links); do
    wheel="$(ls "${dir#file://}"/torch-*+cpu-cp311-*.whl 2>/dev/null | sort -V | tail -1 || true)"
    [[ -n "$wheel" ]] && TORCH_SPEC="torch==$(basename "$wheel" | cut -d- -f2)" && TORCH_INDEX="" && break
  done
fi
[[ -n "${TORCH_SPEC:-}" ]] && build_args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC" --build-arg "TORCH_INDEX=${TORCH_INDEX:-}")

log "building $IMAGE (${TORCH_SPEC:-torch from the Dockerfile defaults})"
build_start=$(date +%s)
# --format docker: the OCI format drops SHELL (and with it bash's pipefail).
podman build --format docker --network host --file "$ROOT/docker/Dockerfile" --tag "$IMAGE" \
  "${build_args[@]}" "${volumes[@]}" "$ROOT" >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "podman build"; }
BUILT_IMAGE="$IMAGE"
BUILD_SECONDS=$(($(date +%s) - build_start))
IMAGE_SIZE="$(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"
log "built $IMAGE in ${BUILD_SECONDS} s, size $IMAGE_SIZE"

# --- 4. smoke tests ----------------------------------------------------------------------------
podman run --rm "$IMAGE" python -m components.prepare_data --help >/dev/null || die "prepare_data --help"
[[ "$(podman run --rm "$IMAGE" id -u)" == 1000 ]] || die "the image must run as UID 1000"
podman run --rm "$IMAGE" bash -c 'env | grep -q "^PIP_CERT=\|^PIP_FIND_LINKS="' && die "build-time pip settings leaked into the image"

mkdir -p "$WORK/smoke" && chmod 0777 "$WORK/smoke"
log "prepare-data on the packaged demo data, no network, as UID 1000"
podman run --rm --network none --volume "$WORK/smoke:/out" "$IMAGE" \
  python -m components.prepare_data --set work_dir=/out/demo --set tracking.enabled=false >"$WORK/prepare.json" \
  || die "prepare-data in the container"
"$PYTHON" - "$WORK/smoke/demo/data" <<'EOF' || die "prepare-data output"
import sys
from pathlib import Path
import pyarrow.parquet as pq
data = Path(sys.argv[1])
rows = {s: pq.read_metadata(data / f"{s}.parquet").num_rows for s in ("train", "dev", "test", "transfer")}
assert all(rows.values()) and (data / "data_card.json").exists(), rows
print("  prepare-data rows:", rows)
EOF

# The tracking server as manifests/base/mlflow-deployment.yaml runs it: UID 1000, read-only
# root file system, writable /tmp, /cache and the data volume, Host-header allow-list.
mkdir -p "$WORK/mlflow" && chmod 0777 "$WORK/mlflow"
port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
podman run --detach --name "$MLFLOW_CTR" --network host --read-only --tmpfs /tmp --tmpfs /cache \
  --volume "$WORK/mlflow:/mlflow" "$IMAGE" mlflow server --host=127.0.0.1 --port="$port" --workers=1 \
  --backend-store-uri=sqlite:////mlflow/mlflow.db --serve-artifacts --artifacts-destination=/mlflow/artifacts \
  --allowed-hosts='distilflow-mlflow.distilflow.svc.cluster.local:*,localhost:*,127.0.0.1:*' >/dev/null
"$PYTHON" - "$port" <<'EOF' || { podman logs --tail 30 "$MLFLOW_CTR"; die "mlflow server in the container"; }
import sys, time, urllib.error, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
def get(path, host):
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, headers={"Host": host}), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code
deadline = time.monotonic() + 120
while True:
    try:
        if get("/health", "10.0.0.7:5000") == 200:
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("no /health after 120 s")
    time.sleep(1)
api = "/api/2.0/mlflow/experiments/search?max_results=1"
codes = (get(api, "distilflow-mlflow.distilflow.svc.cluster.local:5000"), get(api, "attacker.example.com"))
assert codes == (200, 403), codes
print("  mlflow server: /health 200, service host 200, foreign host 403")
EOF
podman rm --force --time 0 "$MLFLOW_CTR" >/dev/null  # mlflow as PID 1 ignores SIGTERM

# --- 5. the pipeline in containers -------------------------------------------------------------
if [[ "$SKIP_PIPELINE" == 1 ]]; then
  log "SKIP_PIPELINE=1: not running the pipeline under DockerRunner"
else
  podman system service --time=0 "unix://$SOCK" >"$WORK/podman-service.log" 2>&1 &
  SERVICE_PID=$!
  for _ in $(seq 50); do [[ -S "$SOCK" ]] && break; sleep 0.2; done
  [[ -S "$SOCK" ]] || die "podman system service did not open $SOCK"
  log "distilflow run --runner docker --config configs/tiny.yaml (podman API at $SOCK)"
  pipeline_start=$(date +%s)
  mkdir -p "$WORK/run"
  (cd "$WORK/run" && DOCKER_HOST="unix://$SOCK" DISTILFLOW_WORK_DIR="$WORK/run/tiny" \
    "$(dirname "$PYTHON")/distilflow" run --runner docker --config "$ROOT/configs/tiny.yaml" \
    --set kubernetes.image="$IMAGE") >"$WORK/pipeline.log" 2>&1 || { tail -60 "$WORK/pipeline.log"; die "pipeline under DockerRunner (steps run as the image user, UID 1000: pipeline.py must start DockerRunner with user=<host uid>:<gid> to write its work_dir)"; }
  tail -25 "$WORK/pipeline.log"
  [[ -s "$WORK/run/tiny/eval/report.json" ]] || die "no report.json"
  log "pipeline in containers: $(($(date +%s) - pipeline_start)) s"
fi

log "OK: image $IMAGE, size $IMAGE_SIZE, build ${BUILD_SECONDS} s"
