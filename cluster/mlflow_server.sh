#!/usr/bin/env bash
# MLflow tracking server for runs on more than one machine: a database backend for runs and metrics, and an
# artifact store proxied through the server, so training nodes need only HTTP access to this one address (no
# credentials for the bucket or database on the nodes).
#
#   cluster/mlflow_server.sh run              # foreground (Ctrl-C stops it)
#   cluster/mlflow_server.sh start            # background, in its own process group; pid file in $MLFLOW_HOME
#   cluster/mlflow_server.sh stop             # stops exactly the process group it started
#   cluster/mlflow_server.sh status
#   python pipeline/run.py --tracking-uri http://127.0.0.1:5000 ...    # point the pipeline at it
#
# Settings (environment):
#   MLFLOW_HOME                   state directory: pid file, log, default SQLite file and artifacts
#                                 (default ~/.flowgmm/mlflow-server)
#   MLFLOW_BACKEND_URI            runs/metrics database (default sqlite:///$MLFLOW_HOME/mlflow.db; on a team or
#                                 cluster use a database server: postgresql://user:pass@db-host:5432/mlflow,
#                                 which needs `pip install psycopg2-binary`)
#   MLFLOW_ARTIFACTS_DESTINATION  where artifacts land (default $MLFLOW_HOME/artifacts; on a cluster an object store
#                                 the server can write: s3://bucket/mlflow (needs boto3), gs://..., or a shared path)
#   MLFLOW_HOST                   interface to bind (default 127.0.0.1: this machine only). On a cluster bind the
#                                 head node's private address (e.g. MLFLOW_HOST=$(hostname -I | awk '{print $1}'))
#                                 and allow the port only from the cluster's own network (see docs/CLUSTER.md).
#   MLFLOW_PORT                   default 5000
#   MLFLOW_WORKERS                uvicorn workers (default 2)
#   MLFLOW_ALLOWED_HOSTS          Host headers accepted (default: MLflow's own, localhost and private addresses)
#   MLFLOW_AUTH=basic             MLflow's built-in basic auth (--app-name basic-auth)
#   MLFLOW_BIN                    the mlflow executable (default: mlflow beside $PYTHON, else on PATH)
# Background job execution is off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): the pipeline does not use it, and
# it would start 7 more processes (~1.5 GB).
set -euo pipefail

cmd="${1:-run}"
MLFLOW_HOME="${MLFLOW_HOME:-$HOME/.flowgmm/mlflow-server}"
MLFLOW_BACKEND_URI="${MLFLOW_BACKEND_URI:-sqlite:///$MLFLOW_HOME/mlflow.db}"
MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$MLFLOW_HOME/artifacts}"
MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
MLFLOW_WORKERS="${MLFLOW_WORKERS:-2}"
PIDFILE="$MLFLOW_HOME/mlflow-server.pid"
LOG="$MLFLOW_HOME/mlflow-server.log"
if [[ -z "${MLFLOW_BIN:-}" ]]; then
    if [[ -n "${PYTHON:-}" && -x "$(dirname "$PYTHON")/mlflow" ]]; then
        MLFLOW_BIN="$(dirname "$PYTHON")/mlflow"
    else
        MLFLOW_BIN="$(command -v mlflow || true)"
    fi
fi
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

server_args() {
    local args=(server --backend-store-uri "$MLFLOW_BACKEND_URI" --serve-artifacts
                --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
                --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS")
    [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]] && args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
    [[ "${MLFLOW_AUTH:-}" == "basic" ]] && args+=(--app-name basic-auth)
    printf '%s\n' "${args[@]}"
}

prepare() {
    [[ -n "$MLFLOW_BIN" ]] || { echo "error: mlflow not found (set MLFLOW_BIN or PYTHON)" >&2; exit 1; }
    mkdir -p "$MLFLOW_HOME"
    chmod 700 "$MLFLOW_HOME"
    case "$MLFLOW_ARTIFACTS_DESTINATION" in
        *://*) ;;
        *) mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION" ;;
    esac
    if [[ "$MLFLOW_HOST" != "127.0.0.1" && "$MLFLOW_HOST" != "localhost" ]]; then
        echo "note: MLflow listens on $MLFLOW_HOST:$MLFLOW_PORT; allow that port only from the cluster network" >&2
    fi
}

running_pgid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pgid
    pgid="$(cat "$PIDFILE")"
    [[ -n "$pgid" ]] && kill -0 -- "-$pgid" 2>/dev/null && echo "$pgid"
}

case "$cmd" in
    run)
        prepare
        mapfile -t args < <(server_args)
        exec "$MLFLOW_BIN" "${args[@]}"
        ;;
    start)
        prepare
        if pgid="$(running_pgid)"; then
            echo "already running (process group $pgid)"; exit 0
        fi
        mapfile -t args < <(server_args)
        setsid "$MLFLOW_BIN" "${args[@]}" >>"$LOG" 2>&1 < /dev/null &
        echo $! > "$PIDFILE"        # setsid makes the server its own process-group leader: pid == pgid
        for _ in $(seq 1 120); do
            if curl -fsS "http://$MLFLOW_HOST:$MLFLOW_PORT/health" >/dev/null 2>&1; then
                echo "MLflow at http://$MLFLOW_HOST:$MLFLOW_PORT (backend $MLFLOW_BACKEND_URI," \
                     "artifacts $MLFLOW_ARTIFACTS_DESTINATION; log $LOG)"
                exit 0
            fi
            kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { echo "error: server exited; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
            sleep 1
        done
        echo "error: no answer on /health after 120 s; see $LOG" >&2; exit 1
        ;;
    stop)
        if pgid="$(running_pgid)"; then
            kill -TERM -- "-$pgid" 2>/dev/null || true
            for _ in $(seq 1 20); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.5; done
            kill -KILL -- "-$pgid" 2>/dev/null || true
            echo "stopped (process group $pgid)"
        else
            echo "not running"
        fi
        rm -f "$PIDFILE"
        ;;
    status)
        if pgid="$(running_pgid)"; then echo "running (process group $pgid) on $MLFLOW_HOST:$MLFLOW_PORT"
        else echo "not running"; exit 1; fi
        ;;
    *)
        echo "usage: $0 [run|start|stop|status]" >&2; exit 2
        ;;
esac
