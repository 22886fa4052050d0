#!/usr/bin/env bash
# Builds deploy/Dockerfile with buildah on a base root file system made from Debian packages
# (mmdebstrap: no image registry is needed), then runs the image: `cos --version`, its user and
# contents, and a node on SQLite beside the bank write handler, both from the image, answering the
# README's HTTP command. Opt-in (`make image`, a few minutes), not part of CI. Needs root; installs
# podman, buildah and mmdebstrap with apt-get when they are missing.
#
# Containers run with buildah's chroot isolation on the host network: the sandboxes this was written in
# lack CAP_SYS_RESOURCE, so an OCI runtime (crun) cannot apply its resource limits, while a chroot can.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${IMAGE_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/chiefofstate/image}
SUITE=${DEBIAN_SUITE:-bookworm}
TAG=localhost/chiefofstate:$(python3 -c 'import re;print(re.search(r"__version__ = \"(.+)\"",open("src/chiefofstate/__init__.py").read())[1])')
B=(buildah --storage-driver vfs)
mkdir -p "$WORK"

missing=()
for tool in buildah mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if (( ${#missing[@]} )); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman mmdebstrap >/dev/null
fi

started=$(date +%s)
if [[ ! -f "$WORK/base-$SUITE.tar" ]]; then
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" \
        "$WORK/base-$SUITE.tar.partial"
    mv "$WORK/base-$SUITE.tar.partial" "$WORK/base-$SUITE.tar"
fi
if ! "${B[@]}" inspect --type image "localhost/debian-python:$SUITE" >/dev/null 2>&1; then
    "${B[@]}" import "$WORK/base-$SUITE.tar" "localhost/debian-python:$SUITE" >/dev/null
fi
echo "image: base ready in $(( $(date +%s) - started ))s"

# The host's CA bundle is lent to the build so that pip trusts the same certificates as the host.
"${B[@]}" bud --quiet --format docker --isolation chroot --network host --layers=false \
    -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    -f deploy/Dockerfile --build-arg "BASE=localhost/debian-python:$SUITE" -t "$TAG" . >/dev/null
echo "image: $TAG built in $(( $(date +%s) - started ))s"

container=$("${B[@]}" from --pull=never "$TAG" | tail -1)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "${B[@]}" rm "$container" >/dev/null 2>&1 || true
}
trap cleanup EXIT
run() { "${B[@]}" run --isolation chroot --network host "$container" -- "$@"; }

[[ "$(run cos --version)" == "cos "* ]]
[[ "$(run id -u)" == 10001 ]]
[[ "$(run sh -c 'for t in gcc cc pip pip3; do command -v $t; done; true')" == "" ]]
config=$("${B[@]}" inspect --type image "$TAG" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["Docker"]["config"], separators=(",", ":")))')
for expected in '"User":"10001:10001"' '"Entrypoint":["cos"]' '"Cmd":["serve"]' '/alive' '"25520/tcp"'; do
    [[ "$config" == *"$expected"* ]] || { echo "image config lacks $expected: $config"; exit 1; }
done

read -r handler grpc http management metrics cluster < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
run python3 -m chiefofstate_examples.bank.write_handler --host 127.0.0.1 --port "$handler" \
    > "$WORK/handler.log" 2>&1 &
pids+=($!)
"${B[@]}" run --isolation chroot --network host \
    --env COS_WRITE_SIDE_HOST=127.0.0.1 --env COS_WRITE_SIDE_PORT="$handler" --env COS_PORT="$grpc" \
    --env COS_SERVER_PROTOCOL=both --env COS_HTTP_PORT="$http" --env COS_MANAGEMENT_PORT="$management" \
    --env COS_PROMETHEUS_PORT="$metrics" --env COS_CLUSTER_PORT="$cluster" \
    --env COS_DB_PATH=/var/lib/cos/cos.db "$container" -- cos serve > "$WORK/node.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$management/ready" >/dev/null && break
    sleep 1
done
curl -sf "http://127.0.0.1:$management/ready" >/dev/null || { cat "$WORK/node.log"; exit 1; }
answer=$(curl -s -X POST "http://127.0.0.1:$http/v1/commands/acc-1/process" \
    -H 'Content-Type: application/json' -H 'x-user: ann' \
    -d '{"command": "Cid0eXBlLmdvb2dsZWFwaXMuY29tL2JhbmsudjEuT3BlbkFjY291bnQSCAoDYW5uEJBO"}')
[[ "$answer" == *'"revision_number":1'* ]] || { echo "unexpected answer: $answer"; exit 1; }
curl -sf "http://127.0.0.1:$metrics/metrics" | grep -q '^cos_requests_total'
echo "image: ran a node and the bank handler from $TAG; a command was answered at revision 1"
echo "image: done in $(( $(date +%s) - started ))s"
