#!/usr/bin/env bash
# Real local services for streaminfer: Apache Kafka (single node, KRaft, broker+controller in one
# process) and Redis, both on 127.0.0.1, started and stopped by PID files.
#
#   deploy/local/services.sh up     [kafka|redis]...   start what is not running (idempotent)
#   deploy/local/services.sh down   [kafka|redis]...   stop exactly what `up` started
#   deploy/local/services.sh status [kafka|redis]...   running/stopped, pid, address (exit 3 if not all up)
#   deploy/local/services.sh reset                     down, then delete the state (topics, keys)
#   deploy/local/services.sh libs                      print the broker jars' directory (fetch once)
#
# Clusters, beside (never instead of) the single-node services above, each on its own ports and
# state directory:
#   deploy/local/services.sh up --brokers 3       Kafka: 3 KRaft nodes, each broker+controller
#                                                 (a 3-voter quorum), = service kafka-cluster
#   deploy/local/services.sh up --redis-cluster   Redis Cluster: 3 masters + 1 replica each,
#                                                 = service redis-cluster
#   (down / status / reset take the same flags or service names)
#
# Kafka version: 4.4.0, the newest Kafka on Maven Central when this was written. Checked on
# Java 17 with confluent-kafka 2.16 (librdkafka 2.16) and aiokafka 0.14 / faust-streaming 0.15.3:
# produce, consume, consumer-group commit and Faust topic creation/rebalance all work, so there is
# no need for the 3.9.x fallback (set STREAMINFER_KAFKA_VERSION=3.9.1 to use it anyway).
# Broker start-up (format excluded) takes about 5 s on 2 cores.
#
# Environment (all optional):
#   STREAMINFER_CACHE        jar cache, outside the repo     [~/.cache/streaminfer]
#   STREAMINFER_STATE        data, logs, pid files, env file [$STREAMINFER_CACHE/state]
#   STREAMINFER_KAFKA_VERSION                                [4.4.0]
#   STREAMINFER_KAFKA_PORT / STREAMINFER_KAFKA_CONTROLLER_PORT  [9092 / 9093]
#   STREAMINFER_REDIS_PORT   preferred port; a free one is picked if it is taken [6379]
#   STREAMINFER_KAFKA_HEAP   JVM -Xmx                        [1g]
#   KAFKA_BOOTSTRAP          use this broker, start no Kafka
#   KAFKA_HOME               use $KAFKA_HOME/libs/*.jar instead of fetching with Maven
#   REDIS_URL                use this Redis, start no Redis
#   STREAMINFER_KAFKA_CLUSTER_PORT  first broker port of kafka-cluster; brokers use
#                            PORT..PORT+2, controllers PORT+100..PORT+102 [29092]
#   STREAMINFER_KAFKA_CLUSTER_HEAP  JVM -Xmx of each cluster node [512m]
#   STREAMINFER_REDIS_CLUSTER_PORT  first port of redis-cluster: PORT..PORT+5 [17001]
#   STREAMINFER_REDIS_CLUSTER_NODE_TIMEOUT_MS  cluster-node-timeout: how long a dead master
#                            goes unnoticed before its replica is promoted [2000]
# After `up`, $STREAMINFER_STATE/env holds KAFKA_BOOTSTRAP=... and REDIS_URL=... lines; the
# clusters' addresses go to $STREAMINFER_STATE/env.cluster (KAFKA_CLUSTER_BOOTSTRAP=...,
# REDIS_CLUSTER_URL=redis+cluster://...).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${STREAMINFER_CACHE:-$HOME/.cache/streaminfer}"
STATE="${STREAMINFER_STATE:-$CACHE/state}"
KAFKA_VERSION="${STREAMINFER_KAFKA_VERSION:-4.4.0}"
KAFKA_PORT="${STREAMINFER_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${STREAMINFER_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
REDIS_PORT_WANTED="${STREAMINFER_REDIS_PORT:-6379}"
KAFKA_HEAP="${STREAMINFER_KAFKA_HEAP:-1g}"
KAFKA_DIR="$STATE/kafka"
REDIS_DIR="$STATE/redis"
KAFKA_START_TIMEOUT=120
STOP_TIMEOUT=30

log() { printf '%s\n' "$*" >&2; }
die() { printf 'services.sh: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() {  # pid -> true if the process exists and is not a zombie waiting to be reaped
  [[ -r "/proc/$1/stat" ]] && [[ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]]
}

read_pid() { [[ -s "$1" ]] && tr -dc '0-9' <"$1" || true; }

# ---------------------------------------------------------------- Kafka

kafka_is_ours() {  # pid -> true if it is the broker started with our server.properties
  local pid="$1"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $KAFKA_DIR/server.properties"
}

kafka_pid() {  # our running broker's pid (adopts one whose pid file was lost), else empty
  local pid
  pid="$(read_pid "$KAFKA_DIR/kafka.pid")"
  if kafka_is_ours "$pid"; then echo "$pid"; return; fi
  for cmd in /proc/[0-9]*/cmdline; do
    pid="${cmd#/proc/}"; pid="${pid%/cmdline}"
    if kafka_is_ours "$pid"; then echo "$pid" >"$KAFKA_DIR/kafka.pid"; echo "$pid"; return; fi
  done 2>/dev/null
}

kafka_answers() {  # bootstrap -> true if the broker serves metadata
  local bootstrap="$1"
  if python3 -c 'import confluent_kafka' 2>/dev/null; then
    python3 - "$bootstrap" <<'EOF' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1], "socket.timeout.ms": 2000})
sys.exit(0 if admin.list_topics(timeout=2).brokers else 1)
EOF
  else  # fresh machine before `pip install`: port open + "started" in the broker log
    local host="${bootstrap%%,*}"
    port_open "${host##*:}" && grep -q 'Kafka Server started' "$KAFKA_DIR/kafka.log" 2>/dev/null
  fi
}

kafka_libs() {  # -> directory holding the broker jars
  if [[ -n "${KAFKA_HOME:-}" ]]; then
    compgen -G "$KAFKA_HOME/libs/kafka_2.1[0-9]-*.jar" >/dev/null \
      || die "KAFKA_HOME=$KAFKA_HOME has no libs/kafka_2.1x-*.jar"
    echo "$KAFKA_HOME/libs"
    return
  fi
  local dest="$CACHE/kafka-$KAFKA_VERSION"
  if [[ ! -f "$dest/.complete" ]]; then
    command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) or set KAFKA_HOME"
    log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $dest/libs ..."
    rm -rf "$dest"
    mkdir -p "$dest"
    cp "$HERE/kafka-pom.xml" "$dest/pom.xml"
    if ! (cd "$dest" && mvn -q -B -Dstyle.color=never -Dkafka.version="$KAFKA_VERSION" \
          dependency:copy-dependencies -DincludeScope=runtime \
          -DoutputDirectory="$dest/libs") >"$dest/mvn.log" 2>&1; then
      cat "$dest/mvn.log" >&2
      die "Maven could not supply Kafka $KAFKA_VERSION (full output above, also in $dest/mvn.log)"
    fi
    touch "$dest/.complete"
  fi
  echo "$dest/libs"
}

kafka_libs_version() {  # libs dir -> version from the kafka_2.1x-X.jar name
  local jar
  jar="$(compgen -G "$1/kafka_2.1[0-9]-*.jar" | grep -v -e -test -e -sources | head -n1)"
  jar="${jar##*/kafka_2.1[0-9]-}"
  echo "${jar%.jar}"
}

version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

kafka_write_config() {  # version
  local quorum
  if version_ge "$1" 3.9; then
    quorum="controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT"
  else
    quorum="controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT"
  fi
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by deploy/local/services.sh; edits are overwritten on the next \`up\`.
node.id=1
process.roles=broker,controller
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
$quorum
log.dirs=$KAFKA_DIR/data
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# Quiet broker logging to a file; warnings and the broker's own lifecycle lines only.
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $KAFKA_DIR/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
EOF
  cat >"$KAFKA_DIR/log4j.properties" <<EOF
# The same for Kafka 3.x distributions (KAFKA_HOME), which log through reload4j.
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$KAFKA_DIR/kafka.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
EOF
}

kafka_up() {
  if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
    kafka_answers "$KAFKA_BOOTSTRAP" || die "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP does not answer"
    log "kafka: using KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP (started nothing)"
    BOOTSTRAP="$KAFKA_BOOTSTRAP"
    return
  fi
  BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
  mkdir -p "$KAFKA_DIR"
  local pid
  pid="$(kafka_pid)"
  if [[ -n "$pid" ]]; then
    log "kafka: already running (pid $pid) on $BOOTSTRAP"
    return
  fi
  rm -f "$KAFKA_DIR/kafka.pid"  # stale: its process is gone or is not our broker
  for port in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
    port_open "$port" && die "port $port is taken by another process: stop it, or set \
KAFKA_BOOTSTRAP to use that broker, or STREAMINFER_KAFKA_PORT for another port"
  done

  local libs version t0
  t0="$(date +%s.%N)"
  libs="$(kafka_libs)"
  version="$(kafka_libs_version "$libs")"
  kafka_write_config "$version"
  # Kafka's own launcher's JVM options (kafka-run-class.sh): G1 with a 20 ms pause goal. The
  # JVM's default goal (200 ms) let young collections of the large eden pause the broker for
  # ~40 ms, which shows in the pipeline's p99.
  local java=(java -Xmx"$KAFKA_HEAP" -Xms256m -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
              -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
              -Djava.awt.headless=true
              -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties"
              -Dlog4j.configuration="file:$KAFKA_DIR/log4j.properties"
              -cp "$libs/*")
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    local cluster_id format=(format -t)
    # What `StorageTool random-uuid` prints (base64url UUID, never starting with '-'), minus a JVM.
    cluster_id="$(python3 -c 'import base64, uuid
while (u := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(u)')"
    version_ge "$version" 3.9 && format=(format --standalone -t)
    "${java[@]}" kafka.tools.StorageTool "${format[@]}" "$cluster_id" \
      -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1 \
      || { cat "$KAFKA_DIR/format.log" >&2; die "formatting Kafka storage failed"; }
  fi
  log "kafka: starting Kafka $version on $BOOTSTRAP ..."
  local t1
  t1="$(date +%s.%N)"
  setsid nohup "${java[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" \
    >"$KAFKA_DIR/stdout.log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$KAFKA_DIR/kafka.pid"
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until kafka_answers "$BOOTSTRAP"; do
    if ! alive "$pid"; then
      tail -n 30 "$KAFKA_DIR/stdout.log" "$KAFKA_DIR/kafka.log" >&2 2>/dev/null || true
      rm -f "$KAFKA_DIR/kafka.pid"
      die "kafka exited during start-up (logs above; state in $KAFKA_DIR)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$KAFKA_DIR/kafka.log" >&2 2>/dev/null || true
      die "kafka did not answer on $BOOTSTRAP within ${KAFKA_START_TIMEOUT}s (pid $pid still running)"
    fi
    sleep 0.25
  done
  log "$(awk -v a="$t0" -v b="$t1" -v c="$(date +%s.%N)" -v p="$pid" 'BEGIN {
    printf "kafka: running (pid %s); broker answered %.1fs after launch, %.1fs in all", p, c - b, c - a }')"
}

kafka_down() {
  [[ -n "${KAFKA_BOOTSTRAP:-}" ]] && { log "kafka: KAFKA_BOOTSTRAP is set; not ours to stop"; return; }
  [[ -d "$KAFKA_DIR" ]] || { log "kafka: not running"; return; }
  stop_pid kafka "$(kafka_pid)"
  rm -f "$KAFKA_DIR/kafka.pid"
}

kafka_status() {
  if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
    if kafka_answers "$KAFKA_BOOTSTRAP"; then
      echo "kafka  external  $KAFKA_BOOTSTRAP  answers"; return 0
    fi
    echo "kafka  external  $KAFKA_BOOTSTRAP  NOT answering"; return 1
  fi
  local pid=""
  [[ -d "$KAFKA_DIR" ]] && pid="$(kafka_pid)"
  if [[ -n "$pid" ]]; then
    echo "kafka  running  pid $pid  127.0.0.1:$KAFKA_PORT"
  else
    echo "kafka  stopped"; return 1
  fi
}

# ---------------------------------------------------------------- Redis

redis_port() { local p; p="$(read_pid "$REDIS_DIR/port")"; echo "${p:-$REDIS_PORT_WANTED}"; }

redis_is_ours() {  # pid -> true if it is a redis-server listening on our recorded port
  local pid="$1"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- ":$(redis_port)\b"
}

redis_pid() {  # our running redis-server's pid (adopts one whose pid file was lost), else empty
  local pid port
  pid="$(read_pid "$REDIS_DIR/redis.pid")"
  if redis_is_ours "$pid"; then echo "$pid"; return; fi
  port="$(redis_port)"
  command -v redis-cli >/dev/null && port_open "$port" || return 0
  [[ "$(timeout 5 redis-cli -p "$port" config get dir 2>/dev/null | tail -n1)" == "$REDIS_DIR/data" ]] \
    || return 0
  pid="$(timeout 5 redis-cli -p "$port" info server 2>/dev/null | tr -d '\r' \
         | sed -n 's/^process_id://p')"
  if redis_is_ours "$pid"; then echo "$pid" >"$REDIS_DIR/redis.pid"; echo "$pid"; fi
}

redis_answers() {  # url -> true if PING gets PONG
  if command -v redis-cli >/dev/null; then
    [[ "$(timeout 5 redis-cli -u "$1" ping 2>/dev/null)" == PONG ]]
  else
    python3 -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_timeout=2).ping()' \
      "$1" 2>/dev/null
  fi
}

redis_install() {
  command -v redis-server >/dev/null && return
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    log "redis: installing redis-server with apt-get ..."
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >&2
  else
    die "redis-server not found: apt-get install redis-server (or set REDIS_URL)"
  fi
}

redis_up() {
  if [[ -n "${REDIS_URL:-}" ]]; then
    redis_answers "$REDIS_URL" || die "REDIS_URL=$REDIS_URL does not answer PING"
    log "redis: using REDIS_URL=$REDIS_URL (started nothing)"
    REDIS_ADDR="$REDIS_URL"
    return
  fi
  mkdir -p "$REDIS_DIR/data"
  local pid port
  pid="$(redis_pid)"
  if [[ -n "$pid" ]]; then
    REDIS_ADDR="redis://127.0.0.1:$(redis_port)/0"
    log "redis: already running (pid $pid) at $REDIS_ADDR"
    return
  fi
  rm -f "$REDIS_DIR/redis.pid"
  redis_install
  port="$REDIS_PORT_WANTED"
  if port_open "$port"; then
    port="$(free_port)"
    log "redis: port $REDIS_PORT_WANTED is taken by another process; using $port"
  fi
  echo "$port" >"$REDIS_DIR/port"
  cat >"$REDIS_DIR/redis.conf" <<EOF
# Written by deploy/local/services.sh; edits are overwritten on the next \`up\`.
bind 127.0.0.1
port $port
daemonize yes
pidfile $REDIS_DIR/redis.pid
logfile $REDIS_DIR/redis.log
dir $REDIS_DIR/data
appendonly yes
appendfsync everysec
# A rewrite forks and dumps the whole dataset; at the default 64mb a dev box under a steady
# 30k writes/s rewrote every ~10 s, taking CPU from the pipeline it shares the cores with.
auto-aof-rewrite-min-size 512mb
# The AOF is the durability; RDB snapshots of a busy dataset would fork and rewrite it all
# every minute, which stalls the hot path's Redis writes.
save ""
EOF
  REDIS_ADDR="redis://127.0.0.1:$port/0"
  redis-server "$REDIS_DIR/redis.conf" >&2 9>&-
  local deadline=$((SECONDS + 30))
  until redis_answers "$REDIS_ADDR"; do
    ((SECONDS > deadline)) && { tail -n 20 "$REDIS_DIR/redis.log" >&2; die "redis did not start"; }
    sleep 0.1
  done
  log "redis: running (pid $(redis_pid)) at $REDIS_ADDR"
}

redis_down() {
  [[ -n "${REDIS_URL:-}" ]] && { log "redis: REDIS_URL is set; not ours to stop"; return; }
  [[ -d "$REDIS_DIR" ]] || { log "redis: not running"; return; }
  stop_pid redis "$(redis_pid)"
  rm -f "$REDIS_DIR/redis.pid"
}

redis_status() {
  if [[ -n "${REDIS_URL:-}" ]]; then
    if redis_answers "$REDIS_URL"; then echo "redis  external  $REDIS_URL  answers"; return 0; fi
    echo "redis  external  $REDIS_URL  NOT answering"; return 1
  fi
  local pid=""
  [[ -d "$REDIS_DIR" ]] && pid="$(redis_pid)"
  if [[ -n "$pid" ]]; then
    echo "redis  running  pid $pid  redis://127.0.0.1:$(redis_port)/0"
  else
    echo "redis  stopped"; return 1
  fi
}

# ---------------------------------------------------------------- Kafka cluster (3 KRaft nodes)

KCLUSTER_PORT="${STREAMINFER_KAFKA_CLUSTER_PORT:-29092}"
KCLUSTER_HEAP="${STREAMINFER_KAFKA_CLUSTER_HEAP:-512m}"
KCLUSTER_DIR="$STATE/kafka-cluster"
KCLUSTER_NODES=3

kcluster_bootstrap() {
  local i out=()
  for ((i = 0; i < KCLUSTER_NODES; i++)); do out+=("127.0.0.1:$((KCLUSTER_PORT + i))"); done
  (IFS=,; echo "${out[*]}")
}

kcluster_node_pid() {  # node id -> pid of that node's JVM (matched by its server.properties)
  local dir="$KCLUSTER_DIR/node$1" pid
  pid="$(read_pid "$dir/kafka.pid")"
  if [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] && alive "$pid" \
     && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $dir/server.properties"; then
    echo "$pid"
  fi
}

kcluster_write_config() {  # node id
  local id="$1" dir="$KCLUSTER_DIR/node$1" voters="" j
  for ((j = 1; j <= KCLUSTER_NODES; j++)); do
    voters+="${voters:+,}$j@127.0.0.1:$((KCLUSTER_PORT + 100 + j - 1))"
  done
  mkdir -p "$dir"
  cat >"$dir/server.properties" <<EOF
# Written by deploy/local/services.sh (kafka-cluster); edits are overwritten on the next \`up\`.
node.id=$id
process.roles=broker,controller
listeners=PLAINTEXT://127.0.0.1:$((KCLUSTER_PORT + id - 1)),CONTROLLER://127.0.0.1:$((KCLUSTER_PORT + 100 + id - 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$((KCLUSTER_PORT + id - 1))
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
controller.quorum.voters=$voters
log.dirs=$dir/data
num.partitions=4
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
# The controller fences a silent broker after this long (default 9 s), then moves its leaders.
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
EOF
  cat >"$dir/log4j2.properties" <<EOF
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/kafka.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
EOF
}

kafka_cluster_up() {
  local libs version t0 id pid cluster_id started=()
  t0="$(date +%s.%N)"
  libs="$(kafka_libs)"
  version="$(kafka_libs_version "$libs")"
  mkdir -p "$KCLUSTER_DIR"
  if [[ ! -s "$KCLUSTER_DIR/cluster.id" ]]; then
    python3 -c 'import base64, uuid
while (u := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(u)' >"$KCLUSTER_DIR/cluster.id"
  fi
  cluster_id="$(cat "$KCLUSTER_DIR/cluster.id")"
  for ((id = 1; id <= KCLUSTER_NODES; id++)); do
    local dir="$KCLUSTER_DIR/node$id"
    pid="$(kcluster_node_pid "$id")"
    if [[ -n "$pid" ]]; then log "kafka-cluster: node $id already running (pid $pid)"; continue; fi
    for port in $((KCLUSTER_PORT + id - 1)) $((KCLUSTER_PORT + 100 + id - 1)); do
      port_open "$port" && die "port $port is taken by another process (set STREAMINFER_KAFKA_CLUSTER_PORT)"
    done
    kcluster_write_config "$id"
    local java=(java -Xmx"$KCLUSTER_HEAP" -Xms128m -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
                -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
                -Djava.awt.headless=true -Dlog4j2.configurationFile="$dir/log4j2.properties"
                -cp "$libs/*")
    if [[ ! -f "$dir/data/meta.properties" ]]; then
      "${java[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
        >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "formatting node $id failed"; }
    fi
    setsid nohup "${java[@]}" kafka.Kafka "$dir/server.properties" \
      >"$dir/stdout.log" 2>&1 </dev/null 9>&- &
    echo $! >"$dir/kafka.pid"
    started+=("$id")
  done
  [[ ${#started[@]} -eq 0 ]] && return
  log "kafka-cluster: starting node(s) ${started[*]} of Kafka $version on $(kcluster_bootstrap) ..."
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  for id in "${started[@]}"; do
    until kafka_answers "127.0.0.1:$((KCLUSTER_PORT + id - 1))"; do
      if [[ -z "$(kcluster_node_pid "$id")" ]]; then
        tail -n 30 "$KCLUSTER_DIR/node$id/stdout.log" "$KCLUSTER_DIR/node$id/kafka.log" >&2 2>/dev/null || true
        die "kafka-cluster: node $id exited during start-up (logs above)"
      fi
      ((SECONDS > deadline)) && die "kafka-cluster: node $id did not answer within ${KAFKA_START_TIMEOUT}s"
      sleep 0.25
    done
  done
  log "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "kafka-cluster: running, up in %.1fs", b - a }')"
}

kafka_cluster_down() {
  local id
  for ((id = 1; id <= KCLUSTER_NODES; id++)); do
    [[ -d "$KCLUSTER_DIR/node$id" ]] || continue
    stop_pid "kafka-cluster node $id" "$(kcluster_node_pid "$id")"
    rm -f "$KCLUSTER_DIR/node$id/kafka.pid"
  done
}

kafka_cluster_status() {
  local id pid rc=0
  for ((id = 1; id <= KCLUSTER_NODES; id++)); do
    pid="$(kcluster_node_pid "$id")"
    if [[ -n "$pid" ]]; then
      echo "kafka-cluster  node $id  running  pid $pid  127.0.0.1:$((KCLUSTER_PORT + id - 1))"
    else
      echo "kafka-cluster  node $id  stopped"; rc=1
    fi
  done
  return "$rc"
}

# ---------------------------------------------------------------- Redis Cluster (3 masters + 3 replicas)

RCLUSTER_PORT="${STREAMINFER_REDIS_CLUSTER_PORT:-17001}"
RCLUSTER_TIMEOUT="${STREAMINFER_REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}"
RCLUSTER_DIR="$STATE/redis-cluster"
RCLUSTER_NODES=6

rcluster_ports() { local i; for ((i = 0; i < RCLUSTER_NODES; i++)); do echo $((RCLUSTER_PORT + i)); done; }

rcluster_url() {
  local out=() p
  for p in $(rcluster_ports); do out+=("127.0.0.1:$p"); done
  (IFS=,; echo "redis+cluster://${out[*]}")
}

rcluster_pid() {  # port -> pid of our redis-server on it (pid file, name and port match)
  local pid
  pid="$(read_pid "$RCLUSTER_DIR/$1/redis.pid")"
  if [[ -n "$pid" ]] && alive "$pid" && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]] \
     && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- ":$1\b"; then
    echo "$pid"
  fi
}

rcluster_info() { timeout 5 redis-cli -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }

redis_cluster_up() {
  redis_install
  local p started=0
  for p in $(rcluster_ports); do
    local dir="$RCLUSTER_DIR/$p"
    mkdir -p "$dir"
    [[ -n "$(rcluster_pid "$p")" ]] && continue
    port_open "$p" && die "port $p is taken by another process (set STREAMINFER_REDIS_CLUSTER_PORT)"
    cat >"$dir/redis.conf" <<EOF
# Written by deploy/local/services.sh (redis-cluster); edits are overwritten on the next \`up\`.
bind 127.0.0.1
port $p
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout $RCLUSTER_TIMEOUT
appendonly yes
appendfsync everysec
auto-aof-rewrite-min-size 512mb
save ""
EOF
    redis-server "$dir/redis.conf" >&2 9>&-
    started=$((started + 1))
  done
  local deadline=$((SECONDS + 30))
  for p in $(rcluster_ports); do
    until [[ "$(timeout 5 redis-cli -p "$p" ping 2>/dev/null)" == PONG ]]; do
      ((SECONDS > deadline)) && { tail -n 20 "$RCLUSTER_DIR/$p/redis.log" >&2; die "redis-cluster: node $p did not start"; }
      sleep 0.1
    done
  done
  if [[ "$(rcluster_info "$RCLUSTER_PORT" cluster_slots_assigned)" != 16384 ]]; then
    local addrs=()
    for p in $(rcluster_ports); do addrs+=("127.0.0.1:$p"); done
    log "redis-cluster: creating the cluster (3 masters, 1 replica each) ..."
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
      >"$RCLUSTER_DIR/create.log" 2>&1 \
      || { cat "$RCLUSTER_DIR/create.log" >&2; die "redis-cli --cluster create failed"; }
  fi
  deadline=$((SECONDS + 60))
  for p in $(rcluster_ports); do
    until [[ "$(rcluster_info "$p" cluster_state)" == ok ]]; do
      ((SECONDS > deadline)) && die "redis-cluster: node $p does not report cluster_state:ok"
      sleep 0.2
    done
  done
  log "redis-cluster: running ($started node(s) started now) at $(rcluster_url)"
}

redis_cluster_down() {
  local p
  for p in $(rcluster_ports); do
    [[ -d "$RCLUSTER_DIR/$p" ]] || continue
    stop_pid "redis-cluster $p" "$(rcluster_pid "$p")"
  done
}

redis_cluster_status() {
  local p pid rc=0 role
  for p in $(rcluster_ports); do
    pid="$(rcluster_pid "$p")"
    if [[ -n "$pid" ]]; then
      role="$(timeout 5 redis-cli -p "$p" role 2>/dev/null | head -n1)"
      echo "redis-cluster  127.0.0.1:$p  running  pid $pid  $role  cluster_state:$(rcluster_info "$p" cluster_state)"
    else
      echo "redis-cluster  127.0.0.1:$p  stopped"; rc=1
    fi
  done
  return "$rc"
}

# ---------------------------------------------------------------- common

stop_pid() {  # name pid: SIGTERM, wait, SIGKILL after STOP_TIMEOUT; never touches other pids
  local name="$1" pid="$2"
  if [[ -z "$pid" ]]; then log "$name: not running"; return; fi
  log "$name: stopping pid $pid ..."
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid"; do
    if ((SECONDS > deadline)); then
      log "$name: pid $pid ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  log "$name: stopped"
}

write_env() {
  local bootstrap="${KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}"
  local redis="${REDIS_URL:-redis://127.0.0.1:$(redis_port)/0}"
  printf 'KAFKA_BOOTSTRAP=%s\nREDIS_URL=%s\n' "$bootstrap" "$redis" >"$STATE/env.tmp"
  mv "$STATE/env.tmp" "$STATE/env"
  echo "# services are up; use them with (also in $STATE/env):"
  cat "$STATE/env"
}

write_cluster_env() {
  printf 'KAFKA_CLUSTER_BOOTSTRAP=%s\nREDIS_CLUSTER_URL=%s\n' "$(kcluster_bootstrap)" \
    "$(rcluster_url)" >"$STATE/env.cluster.tmp"
  mv "$STATE/env.cluster.tmp" "$STATE/env.cluster"
  echo "# cluster addresses (also in $STATE/env.cluster):"
  cat "$STATE/env.cluster"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  if [[ "$cmd" == libs ]]; then kafka_libs; exit 0; fi  # for tests that start brokers of their own
  local which=() arg
  while [[ $# -gt 0 ]]; do
    arg="$1"; shift
    case "$arg" in
      --brokers) [[ "${1:-}" == 3 ]] || die "--brokers takes 3 (the only cluster size offered)"
                 shift; which+=(kafka-cluster) ;;
      --brokers=3) which+=(kafka-cluster) ;;
      --redis-cluster) which+=(redis-cluster) ;;
      *) which+=("$arg") ;;
    esac
  done
  [[ ${#which[@]} -eq 0 ]] && which=(kafka redis)
  local clusters_only=1
  for svc in "${which[@]}"; do
    case "$svc" in
      kafka|redis) clusters_only=0 ;;
      kafka-cluster|redis-cluster) ;;
      *) die "unknown service '$svc' (kafka, redis, kafka-cluster or redis-cluster)" ;;
    esac
  done
  mkdir -p "$STATE"
  # One `up`/`down` at a time per state dir: concurrent test sessions share the services.
  if [[ "$cmd" != status ]]; then
    exec 9>"$STATE/.lock"
    flock 9
  fi
  local rc=0
  case "$cmd" in
    up)
      for svc in "${which[@]}"; do "${svc//-/_}_up"; done
      if ((clusters_only)); then write_cluster_env; else write_env; fi ;;
    down)
      for svc in "${which[@]}"; do "${svc//-/_}_down"; done ;;
    status)
      for svc in "${which[@]}"; do "${svc//-/_}_status" || rc=3; done ;;
    reset)  # the named services (default: kafka redis), then their state
      for svc in "${which[@]}"; do
        "${svc//-/_}_down"
        case "$svc" in
          kafka) rm -rf "$KAFKA_DIR" "$STATE/env" ;;
          redis) rm -rf "$REDIS_DIR" "$STATE/env" ;;
          kafka-cluster) rm -rf "$KCLUSTER_DIR" "$STATE/env.cluster" ;;
          redis-cluster) rm -rf "$RCLUSTER_DIR" "$STATE/env.cluster" ;;
        esac
      done
      log "state removed from $STATE" ;;
    *)
      sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
      exit 2 ;;
  esac
  exit "$rc"
}

main "$@"
