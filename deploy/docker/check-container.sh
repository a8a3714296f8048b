#!/usr/bin/env bash
# Build the streamwatch image and check it the way a plant machine runs it:
#
#   deploy/docker/check-container.sh [EXTRAS]     # EXTRAS: "" (lean, default here) or "train"
#
# Needs a Docker engine (DOCKER_HOST is honoured), the python:3.11-slim base image (see
# local-base-image.sh where no registry is reachable) and mosquitto/mosquitto_pub/_sub on the
# host. Checks, each printed as "ok: ..." or the script stops with "FAIL: ...":
#   the image builds; the container runs as a non-root user with a read-only root filesystem;
#   HEALTHCHECK turns healthy; readings published to a Mosquitto on the host are scored and a
#   spike raises an alert on MQTT; the alert state lands in the state volume and survives a
#   container restart (the raised alert is not raised again).
set -euo pipefail
cd "$(dirname "$0")/../.."

extras="${1:-}"
image="streamwatch:check"
name="sw-check-$$"
volume="sw-check-state-$$"
work="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))

fail() { echo "FAIL: $*" >&2; docker logs "$name" 2>&1 | tail -20 >&2 || true; exit 1; }
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker volume rm "$volume" >/dev/null 2>&1 || true
  [ -n "${broker_pid:-}" ] && kill "$broker_pid" 2>/dev/null || true
  [ -n "${sub_pid:-}" ] && kill "$sub_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

docker build -q --network host --build-arg "EXTRAS=$extras" \
  -f deploy/docker/Dockerfile -t "$image" . >/dev/null || fail "docker build"
echo "ok: image built (EXTRAS='$extras'), $(docker image inspect -f '{{.Size}}' "$image" \
  | awk '{printf "%.0f MB", $1/1e6}')"

printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$work/mosquitto.conf"
chmod 755 "$work" && chmod 644 "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
broker_pid=$!
sleep 1
mosquitto_sub -p "$port" -t 'streamwatch/alerts/#' -q 1 -v >"$work/alerts.txt" &
sub_pid=$!

run() {
  docker run -d --name "$name" --network host --read-only --tmpfs /tmp \
    --health-interval 3s --health-start-period 60s \
    -v "$volume:/var/lib/streamwatch" "$image" \
    --config /etc/streamwatch/streamwatch.toml --broker "mqtt://127.0.0.1:$port" \
    --metrics-bind 127.0.0.1 >/dev/null
}
run || fail "docker run"

uid="$(docker exec "$name" id -u)"
[ "$uid" != 0 ] || fail "runs as root"
echo "ok: runs as uid $uid"
if docker exec "$name" sh -c 'touch /opt/streamwatch/x' 2>/dev/null; then
  fail "root filesystem is writable"
fi
echo "ok: root filesystem is read-only"

for _ in $(seq 60); do
  health="$(docker inspect -f '{{.State.Health.Status}}' "$name")"
  [ "$health" = healthy ] && break
  sleep 2
done
[ "$health" = healthy ] || fail "HEALTHCHECK: $health"
echo "ok: HEALTHCHECK healthy"

# 600 normal readings (warm-up is 500), then a spike.
publish() {
  local t0=$1
  for i in $(seq 0 599); do
    printf '{"value": %s, "ts": %s}\n' "$(( (i * 7919) % 11 ))" "$((t0 + i))"
  done | mosquitto_pub -p "$port" -t sensors/pump1 -q 1 -l
}
t0=$(( $(date +%s) - 700 ))
publish "$t0"
mosquitto_pub -p "$port" -t sensors/pump1 -q 1 -m "{\"value\": 500, \"ts\": $((t0 + 650))}"
for _ in $(seq 30); do grep -q '"state": *"raised"' "$work/alerts.txt" && break; sleep 1; done
grep -q '"state": *"raised"' "$work/alerts.txt" || fail "no alert for the spike"
echo "ok: a spike raised $(grep -c '"state": *"raised"' "$work/alerts.txt") alert"

docker restart -t 30 "$name" >/dev/null || fail "docker restart"
docker run --rm -v "$volume:/s" --entrypoint ls "$image" /s | grep -q alerts.json \
  || fail "no alerts.json in the state volume"
echo "ok: alert state kept in the volume: $(docker run --rm -v "$volume:/s" \
  --entrypoint ls "$image" /s | tr '\n' ' ')"
sleep 5
raised="$(grep -c '"state": *"raised"' "$work/alerts.txt")"
[ "$raised" = 1 ] || fail "the alert was raised $raised times across the restart"
echo "ok: after the restart the alert was not raised again"
echo "all container checks passed"
