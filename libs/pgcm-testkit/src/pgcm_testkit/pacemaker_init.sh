#!/bin/bash
# PID 1 of a one-node Corosync + Pacemaker test cluster (pgcm_testkit.pacemaker).
#
# Started by the fixture as
#   ip netns exec <netns> unshare --mount --uts --pid --fork --mount-proc \
#       bash pacemaker_init.sh <state-dir> <node-name>
# so it already runs in a private network namespace and owns fresh mount, UTS and PID
# namespaces. It hides the host's Pacemaker state behind per-node bind mounts, starts
# corosync and pacemakerd, then stays alive as init: killing this process (by PID, from
# the host) makes the kernel kill everything inside the PID namespace.
set -euo pipefail

state=$1
node=$2

# Mounts made below must never propagate back to the host's mount namespace.
mount --make-rprivate /
hostname "$node"

# Debian links /var/run to /run; Pacemaker, corosync and the resource agents keep their
# pid files, IPC helpers and agent state (HA_RSCTMP) there.
mount --bind "$state/run" /run
mkdir -p /run/crm /run/corosync /run/resource-agents /run/lock
chown hacluster:haclient /run/crm
chmod 0750 /run/crm

# libqb names its shared-memory ring buffers after PIDs, and PIDs repeat across PID
# namespaces: a shared /dev/shm lets one node's IPC clobber another's (or the host's).
mount -t tmpfs -o mode=1777,size=64m pgcm-shm /dev/shm

for pair in \
    etc-corosync:/etc/corosync \
    var-lib-corosync:/var/lib/corosync \
    var-log-corosync:/var/log/corosync \
    var-lib-pacemaker:/var/lib/pacemaker \
    var-log-pacemaker:/var/log/pacemaker; do
    mount --bind "$state/${pair%%:*}" "${pair#*:}"
done

set +e
corosync -f >>/var/log/corosync/stderr.log 2>&1 &

# pacemakerd refuses to start before corosync answers on its IPC sockets.
for _ in $(seq 1 200); do
    corosync-cfgtool -s >/dev/null 2>&1 && break
    sleep 0.05
done

PCMK_logfacility=none PCMK_logfile=/var/log/pacemaker/pacemaker.log \
    pacemakerd >>/var/log/pacemaker/stderr.log 2>&1 &

echo "pgcm-pacemaker-init: corosync and pacemakerd started"

# As PID 1 we inherit every orphan; bash's SIGCHLD handling reaps them while we wait.
while :; do
    sleep 3600 &
    wait $!
done
