#!/usr/bin/env bash
# End-to-end test of the compose deployment, run by .ci/run whenever a Docker
# engine answers: build the image, bring three regions up, write at one
# region and read it at the others, disconnect one region's network, write on
# both sides, reconnect, check convergence, and tear everything down, leaving
# nothing running.
set -euo pipefail
cd "$(dirname "$0")"
project="meridian-ci-$$"
export MERIDIAN_US_EAST_PORT=27070 MERIDIAN_EU_WEST_PORT=27071 MERIDIAN_AP_SOUTHEAST_PORT=27072
compose() { docker-compose -p "$project" -f docker-compose.yml "$@"; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
step() { printf '[compose-test] %s\n' "$*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

step "building the image"
./build-image.sh meridian:latest
step "starting three regions"
compose up -d
for port in 27070 27071 27072; do
  for _ in $(seq 1 90); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 1
  done
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { compose logs; echo "region on $port never became ready"; exit 1; }
done

step "write in us-east, read it converged in eu-west and ap-southeast"
token=$(curl -sf -X PUT http://127.0.0.1:27070/v1/docs/greeting -H 'content-type: application/json' -d '{"hello":"world"}' | json 'd["token"]')
for port in 27071 27072; do
  body=$(curl -sf "http://127.0.0.1:$port/v1/docs/greeting?after=$token&wait_ms=15000")
  [ "$body" = '{"hello":"world"}' ] || { echo "port $port read $body"; exit 1; }
done

step "disconnect ap-southeast from the regions network; write on both sides"
network="${project}_regions"
container=$(compose ps -q ap-southeast)
docker network disconnect "$network" "$container"
incr() { curl -sf -X PATCH "http://127.0.0.1:$1/v1/docs/counter" -H 'content-type: application/json-patch+json' -d "[{\"op\":\"increment\",\"path\":\"/n\",\"value\":$2}]" >/dev/null; }
for _ in 1 2 3; do incr 27070 1; incr 27072 100; done
sleep 3
us=$(curl -sf http://127.0.0.1:27070/v1/docs/counter | json 'd["n"]')
ap=$(curl -sf http://127.0.0.1:27072/v1/docs/counter | json 'd["n"]')
[ "$us" = 3 ] && [ "$ap" = 300 ] || { echo "during the partition us-east read $us and ap-southeast read $ap; expected 3 and 300"; exit 1; }

step "reconnect; the regions converge"
docker network connect --ip 172.31.77.13 "$network" "$container"
for _ in $(seq 1 90); do
  digests=$(for port in 27070 27071 27072; do curl -sf "http://127.0.0.1:$port/v1/cluster" | json 'd["node"]["digest"]'; done | sort -u | wc -l)
  n=$(curl -sf http://127.0.0.1:27071/v1/docs/counter | json 'd["n"]' || echo 0)
  [ "$digests" = 1 ] && [ "$n" = 303 ] && break
  sleep 1
done
[ "$digests" = 1 ] && [ "$n" = 303 ] || { compose logs --tail 50; echo "not converged after reconnect (digests: $digests, counter: $n)"; exit 1; }
step "passed: converged after the partition healed; tearing down"
