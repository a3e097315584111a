#!/usr/bin/env bash
# Build the gateway's Docker image and check it end to end against the fake provider:
#
#   1. one container: healthy, /health, /ready, a chat completion, runs as uid 10001,
#      counts tokens offline (no network), exits 0 on `docker stop`;
#   2. docker-compose.yml (Redis and two gateways): a burst through both gateways gets
#      only 200s and the provider sees no 429 (the limits are shared through Redis); then
#      gateway-1 is stopped during a burst and drains: still only 200s, exit status 0.
#   With --control, two gateways without Redis take the same burst first: the provider
#   then does see 429s, which shows the burst is tight enough to tell.
#
# Usage: scripts/docker_check.sh [--start-dockerd] [--local-images] [--control] [--clean]
#
#   --start-dockerd  install Debian's docker.io, docker-compose, socat (and debootstrap) if
#                    missing, start dockerd for this run and stop it at the end
#   --local-images   no registry reachable: make local/bookworm-python:3.11 (debootstrap
#                    bookworm + python3 + pip) and local/redis:7 (Debian's redis-server),
#                    and use them as BASE_IMAGE and REDIS_IMAGE
#   --clean          remove the images this run used or made (and dockerd's build cache)
#
# Environment: PYTHON (default .venv/bin/python, with the package installed: it runs the
# fake provider and the burst), BASE_IMAGE, REDIS_IMAGE, GATEWAY_IMAGE (default
# maxllm_gate:check), GATEWAY_1_PORT / GATEWAY_2_PORT (default 18001 / 18002),
# BURST (requests, default 120). Needs root for --start-dockerd and --local-images.
set -Eeuo pipefail
trap 'printf "FAIL: line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

cd "$(dirname "$0")/.."
repo=$(pwd)
start_dockerd=0 local_images=0 control=0 clean=0
for arg in "$@"; do
    case $arg in
        --start-dockerd) start_dockerd=1 ;;
        --local-images) local_images=1 ;;
        --control) control=1 ;;
        --clean) clean=1 ;;
        -h | --help) sed -n '2,24s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "unknown option: $arg" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-$repo/.venv/bin/python}
GATEWAY_IMAGE=${GATEWAY_IMAGE:-maxllm_gate:check}
export GATEWAY_1_PORT=${GATEWAY_1_PORT:-18001} GATEWAY_2_PORT=${GATEWAY_2_PORT:-18002}
BURST=${BURST:-120}
TOKEN=tok-docker-check
PROJECT=maxllm_gate_check
work=$(mktemp -d /tmp/docker_check.XXXXXX)
pids=() containers=() made_images=() compose_up=0 dockerd_pid=

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    trap - ERR
    set +e
    if ((compose_up)); then compose down --remove-orphans >/dev/null 2>&1; fi
    for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if ((clean)); then
        docker rmi "$GATEWAY_IMAGE" "${made_images[@]}" >/dev/null 2>&1
        docker image prune -f >/dev/null 2>&1
        docker builder prune -af >/dev/null 2>&1
    fi
    if [[ -n $dockerd_pid ]]; then
        kill "$dockerd_pid" && wait "$dockerd_pid" 2>/dev/null
        echo "dockerd stopped (its log: $work/dockerd.log)"
    fi
    rm -rf "$work/rootfs"
}
trap cleanup EXIT

# -- the engine ---------------------------------------------------------------------------

if ((start_dockerd)); then
    step "dockerd"
    need=()
    for tool in dockerd:docker.io containerd:containerd runc:runc docker-compose:docker-compose \
        socat:socat debootstrap:debootstrap; do
        command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
    done
    if ((${#need[@]})); then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${need[@]}" iptables >/dev/null
    fi
    if docker info >/dev/null 2>&1; then
        echo "a daemon already answers: using it"
    else
        dockerd >"$work/dockerd.log" 2>&1 &
        dockerd_pid=$!
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    fi
fi
docker info >/dev/null 2>&1 || fail "no Docker daemon answers (try --start-dockerd)"
docker version --format 'client {{.Client.Version}}, server {{.Server.Version}}'

if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    command -v docker-compose >/dev/null || fail "neither 'docker compose' nor docker-compose"
    compose_cmd=(docker-compose)
fi
# The gateways reach the fake provider on this host as host.docker.internal.
cat >"$work/compose.check.yml" <<'EOF'
services:
  gateway-1: {extra_hosts: ["host.docker.internal:host-gateway"]}
  gateway-2: {extra_hosts: ["host.docker.internal:host-gateway"]}
EOF
compose() {
    "${compose_cmd[@]}" -p $PROJECT -f docker-compose.yml -f "$work/compose.check.yml" "$@"
}

# -- images without a registry ------------------------------------------------------------

if ((local_images)); then
    step "local base images"
    if ! docker image inspect local/bookworm-python:3.11 >/dev/null 2>&1; then
        debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
            bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
            || fail "debootstrap (see $work/debootstrap.log)"
        # Like python:3.11-slim: pip may install into the system Python.
        rm -f "$work"/rootfs/usr/lib/python3.*/EXTERNALLY-MANAGED
        # This host's extra CAs (e.g. an egress proxy's), so pip inside the build can reach PyPI.
        if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
            cp /usr/local/share/ca-certificates/*.crt "$work/rootfs/usr/local/share/ca-certificates/"
            chroot "$work/rootfs" update-ca-certificates >/dev/null 2>&1
        fi
        chroot "$work/rootfs" apt-get clean
        rm -rf "$work"/rootfs/var/lib/apt/lists/*
        tar -C "$work/rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' - local/bookworm-python:3.11 >/dev/null
        rm -rf "$work/rootfs"
        made_images+=(local/bookworm-python:3.11)
    fi
    if ! docker image inspect local/redis:7 >/dev/null 2>&1; then
        docker build -q -t local/redis:7 - >/dev/null 2>"$work/redis_build.log" <<'EOF'
FROM local/bookworm-python:3.11
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    redis-server redis-tools && rm -rf /var/lib/apt/lists/*
CMD ["redis-server", "--protected-mode", "no"]
EOF
        made_images+=(local/redis:7)
    fi
    docker images local/bookworm-python:3.11 --format '{{.Repository}}:{{.Tag}} {{.Size}}'
    docker images local/redis:7 --format '{{.Repository}}:{{.Tag}} {{.Size}}'
    export BASE_IMAGE=local/bookworm-python:3.11 REDIS_IMAGE=local/redis:7
fi
export BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim} REDIS_IMAGE=${REDIS_IMAGE:-redis:7-alpine}
export GATEWAY_IMAGE

step "build $GATEWAY_IMAGE from $BASE_IMAGE"
start=$SECONDS
docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$GATEWAY_IMAGE" . >"$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log"; fail "docker build (see $work/build.log)"; }
echo "built in $((SECONDS - start)) s; $(docker image inspect -f '{{.Size}}' "$GATEWAY_IMAGE" \
    | awk '{printf "%d MB", $1 / 1e6}')"
built=$(docker image inspect -f '{{.Id}}' "$GATEWAY_IMAGE")
# The same build through docker-compose.yml's build section (as `up --build` does).
API_KEYS_CONFIG=unused GATEWAY_API_KEYS=unused compose build gateway-1 >"$work/compose_build.log" 2>&1 \
    || { tail -20 "$work/compose_build.log"; fail "compose build (see $work/compose_build.log)"; }
if [[ $(docker image inspect -f '{{.Id}}' "$GATEWAY_IMAGE") == "$built" ]]; then
    echo "compose build: the same image (every step cached)"
else
    echo "compose build: a different image (the sources changed meanwhile?)"
fi

# -- the fake provider, reachable from containers -----------------------------------------

step "fake provider"
# It listens on 127.0.0.1 only; socat relays from the docker0 bridge's address, which
# containers reach as host.docker.internal (host-gateway).
limits='{"sk-fake-1": {"gpt-4o-mini": [600, 1000000]}}'  # 10 requests/s, 10 at once
start_fake() {
    "$PYTHON" -m maxllm_gate.testing.fake_provider --limits "$limits" >"$work/fake.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do grep -q '^URL ' "$work/fake.log" && break; sleep 0.1; done
    fake_port=$(sed -n 's|^URL http://127.0.0.1:\([0-9]*\)/v1|\1|p' "$work/fake.log")
    [[ -n $fake_port ]] || fail "the fake provider did not start: $(cat "$work/fake.log")"
}
start_fake
bridge_if=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')
bridge_ip=$(ip -4 -o addr show "$bridge_if" | awk '{print $4; exit}')
bridge_ip=${bridge_ip%/*}
[[ -n $bridge_ip ]] || fail "no IPv4 address on the bridge $bridge_if"
relay_port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
relay() {
    socat "TCP-LISTEN:$relay_port,bind=$bridge_ip,fork,reuseaddr" "TCP:127.0.0.1:$fake_port" &
    pids+=($!)
}
relay
echo "fake provider on 127.0.0.1:$fake_port, relayed at $bridge_ip:$relay_port"
keys_config() {  # $1: the provider's base URL
    printf '{"k1": {"api_key": "sk-fake-1", "provider": "openai", "transport": "openai_compat", "api_base": "%s", "models": {"gpt-4o-mini": {"tpm_limit": 1000000, "rpm_limit": 600}}}}' "$1"
}
restart_fake() {  # fresh buckets and counters for the next burst
    kill "${pids[-2]}" "${pids[-1]}"
    wait "${pids[-2]}" "${pids[-1]}" 2>/dev/null || true
    unset 'pids[-1]' 'pids[-1]'
    start_fake
    relay
}

cat >"$work/burst.py" <<'EOF'
"""Send `total` chat completions at once, round-robin over the gateways; print a summary."""
import json
import sys
import time

import anyio
import httpx

urls, token, total, stats_url = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), sys.argv[4]
body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
codes: dict[str, int] = {}


async def one(http: httpx.AsyncClient, i: int) -> None:
    try:
        reply = await http.post(
            urls[i % len(urls)] + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {token}"},
        )
        code = str(reply.status_code)
    except httpx.HTTPError as exc:
        code = type(exc).__name__
    codes[code] = codes.get(code, 0) + 1


async def main() -> None:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=500)) as http:
        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(total):
                tg.start_soon(one, http, i)
        seconds = time.monotonic() - start
        stats = (await http.get(stats_url)).json()
    key = next(iter(stats.values()), {})
    print(json.dumps({"status": codes, "seconds": round(seconds, 1), "provider_429s":
                      key.get("rate_limited", 0), "provider_calls": key.get("calls", 0)}))


anyio.run(main)
EOF
burst() {  # $1: comma-separated gateway URLs; prints the summary, saves it in $work/burst.json
    "$PYTHON" "$work/burst.py" "$1" "$TOKEN" "$BURST" "http://127.0.0.1:$fake_port/stats" \
        | tee "$work/burst.json"
}
summary() { "$PYTHON" -c "import json, sys; d = json.load(open(sys.argv[1])); print($1)" "$work/burst.json"; }
wait_ready() {  # $@: gateway base URLs
    for url in "$@"; do
        for _ in $(seq 60); do curl -sf "$url/ready" >/dev/null && continue 2; sleep 1; done
        fail "$url/ready never answered 200"
    done
}

# -- one container ------------------------------------------------------------------------

step "one container"
containers+=(maxllm_gate_check_one)
docker run -d --name maxllm_gate_check_one -p "127.0.0.1:$GATEWAY_1_PORT:8000" \
    --add-host host.docker.internal:host-gateway \
    -e API_KEYS_CONFIG="$(keys_config "http://host.docker.internal:$relay_port/v1")" \
    -e GATEWAY_API_KEYS=$TOKEN "$GATEWAY_IMAGE" >/dev/null
for _ in $(seq 60); do
    health=$(docker inspect -f '{{.State.Health.Status}}' maxllm_gate_check_one)
    [[ $health == healthy ]] && break
    sleep 1
done
[[ $health == healthy ]] || { docker logs maxllm_gate_check_one; fail "not healthy: $health"; }
echo "docker health: $health"
base=http://127.0.0.1:$GATEWAY_1_PORT
echo "/health: $(curl -sf $base/health)"
echo "/ready: $(curl -sf $base/ready)"
reply=$(curl -sf $base/v1/chat/completions -H "authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' \
    -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}')
[[ $reply == *'"object":"chat.completion"'* ]] || fail "chat completion: $reply"
echo "chat completion: ${reply:0:120}..."
user=$(docker exec maxllm_gate_check_one id -u)
[[ $user == 10001 ]] || fail "runs as uid $user"
echo "runs as uid $user"
# The tokenizers must load from the files LiteLLM ships: no network in this container.
docker run --rm --network none "$GATEWAY_IMAGE" python -c '
import anyio
from maxllm_gate.tokens import TokenEstimator
estimator = TokenEstimator()
for model in ("gpt-4o-mini", "gpt-3.5-turbo"):
    anyio.run(estimator.prepare, model)
    assert estimator.count_text(model, "hello world") == 2, model
print("tokenizers load offline")'
start=$SECONDS
docker stop maxllm_gate_check_one >/dev/null
status=$(docker inspect -f '{{.State.ExitCode}}' maxllm_gate_check_one)
[[ $status == 0 ]] || fail "exit status $status after docker stop"
echo "docker stop: exit status 0 after $((SECONDS - start)) s"
docker rm maxllm_gate_check_one >/dev/null

# -- without Redis (control) --------------------------------------------------------------

if ((control)); then
    step "control: two gateways without Redis, burst of $BURST"
    for n in 1 2; do
        port_var=GATEWAY_${n}_PORT
        containers+=(maxllm_gate_check_ctl$n)
        docker run -d --name maxllm_gate_check_ctl$n -p "127.0.0.1:${!port_var}:8000" \
            --add-host host.docker.internal:host-gateway \
            -e API_KEYS_CONFIG="$(keys_config "http://host.docker.internal:$relay_port/v1")" \
            -e GATEWAY_API_KEYS=$TOKEN "$GATEWAY_IMAGE" >/dev/null
    done
    urls=http://127.0.0.1:$GATEWAY_1_PORT,http://127.0.0.1:$GATEWAY_2_PORT
    wait_ready "${urls%%,*}" "${urls##*,}"
    burst "$urls"
    echo "(the provider's 429s above are what sharing the limits through Redis avoids)"
    docker rm -f maxllm_gate_check_ctl1 maxllm_gate_check_ctl2 >/dev/null
    restart_fake
fi

# -- docker-compose.yml -------------------------------------------------------------------

step "docker-compose.yml: Redis and two gateways (${compose_cmd[*]})"
API_KEYS_CONFIG=$(keys_config "http://host.docker.internal:$relay_port/v1")
export API_KEYS_CONFIG GATEWAY_API_KEYS=$TOKEN
compose_up=1
compose up -d --no-build >"$work/compose.log" 2>&1 || { cat "$work/compose.log"; fail "compose up"; }
urls=http://127.0.0.1:$GATEWAY_1_PORT,http://127.0.0.1:$GATEWAY_2_PORT
wait_ready "${urls%%,*}" "${urls##*,}"
for url in ${urls/,/ }; do echo "$url/ready: $(curl -sf "$url/ready")"; done

echo "burst of $BURST through both gateways:"
burst "$urls"
[[ $(summary 'd["status"] == {"200": '"$BURST"'} and d["provider_429s"] == 0') == True ]] \
    || fail "expected $BURST 200s and no 429 at the provider"
echo "Redis keys: $(compose exec -T redis redis-cli --scan | sort | tr '\n' ' ')"

echo "burst of $BURST, gateway-1 stopped after 2 s:"
restart_fake
burst "$urls" >"$work/drain.out" &
burst_pid=$!
sleep 2
start=$SECONDS
compose stop gateway-1 >/dev/null 2>&1
echo "gateway-1 stopped in $((SECONDS - start)) s"
wait $burst_pid
cat "$work/drain.out"
container=$(compose ps -q gateway-1)
status=$(docker inspect -f '{{.State.ExitCode}}' "$container")
[[ $status == 0 ]] || fail "gateway-1 exit status $status"
[[ $(summary 'd["status"] == {"200": '"$BURST"'}') == True ]] \
    || fail "requests in flight were lost in the stop"
echo "gateway-1 drained its requests and exited with status 0"

compose down --remove-orphans >/dev/null 2>&1
compose_up=0
step "all checks passed"
