#!/usr/bin/env bash
# Installs the peers that `npm run bench:peers` compares Spool with, from Debian packages and npm
# only (nothing is downloaded from anywhere else):
#
#   rabbitmq-server (Debian) + amqplib           RabbitMQ classic and quorum queues
#   nats-server     (Debian) + nats              NATS JetStream, file storage
#   redis-server    (Debian) + bullmq, ioredis   BullMQ on Redis with appendfsync always
#                              better-sqlite3    SQLite, WAL, synchronous=FULL
#
# The servers are never started system-wide: bench/peers/run.js starts each one itself, bound to
# 127.0.0.1 on a free port with a temporary data dir, and stops it by pid. Where the machine has
# no /usr/sbin/policy-rc.d, one is put in place for the install (so that the packages' init
# scripts do not start daemons) and removed afterwards.
#
# Run as root from the repository root:  bash bench/peers/setup.sh
set -euo pipefail

cd "$(dirname "$0")/../.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

POLICY=/usr/sbin/policy-rc.d
ADDED_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  ADDED_POLICY=1
fi
cleanup() { if [ "$ADDED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

$SUDO apt-get update
# nats-server is packaged by Debian (bookworm: 2.9.10), so npm is not needed for the binary.
echo "== apt-cache policy nats-server"
apt-cache policy nats-server
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends rabbitmq-server nats-server redis-server

# Debian starts nothing here (policy-rc.d), but on a machine with systemd the units may be enabled
# and running: the benchmark does not use them and binds its own ports, so they can stay.
for bin in rabbitmq-server nats-server redis-server; do
  printf '%-16s %s\n' "$bin" "$(command -v "$bin" || echo 'NOT FOUND')"
done
nats-server --version || true
redis-server --version || true
dpkg-query -W -f='rabbitmq-server ${Version}\n' rabbitmq-server || true

# bullmq 6 made ioredis an optional peer dependency: it must be installed beside it.
npm install --save-dev amqplib nats bullmq ioredis better-sqlite3
echo "peers installed; run: npm run bench:peers"
