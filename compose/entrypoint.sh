#!/bin/bash
# Start one compose lab node. Configuration comes from pgcm_lab.render, the same code the
# netns lab uses; the steps mirror pgcm_lab.lab (bootstrap PostgreSQL on n1, clone the
# standbys, then Corosync + Pacemaker with the pre-seeded CIB, etcd and PgBouncer).
set -euo pipefail
NODE=${PGCM_LAB_NODE:?set PGCM_LAB_NODE to n1..nN or app}
SIZE=${PGCM_LAB_SIZE:-3}
PGDATA=/var/lib/postgresql/15/main
as_pg() { runuser -u postgres -- "$@"; }

mkdir -p /run/postgresql /run/pgbouncer /run/crm /var/log/postgresql /var/lib/postgresql/15
chown postgres:postgres /run/postgresql /run/pgbouncer /var/log/postgresql /var/lib/postgresql/15
chmod 2775 /run/postgresql
chown hacluster:haclient /run/crm
python3 -m pgcm_lab.render --node "$NODE" --size "$SIZE"

if [ "$NODE" = app ]; then
  exec runuser -u postgres -- pgbouncer /etc/pgbouncer/pgbouncer.ini
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ "$NODE" = n1 ]; then
    as_pg initdb -D "$PGDATA" -A trust -U postgres --no-sync >/dev/null
    cat /var/lib/postgresql/pgcm-postgresql.conf >> "$PGDATA/postgresql.conf"
    cat /var/lib/postgresql/pgcm-pg_hba.conf >> "$PGDATA/pg_hba.conf"
    as_pg pg_ctl -D "$PGDATA" -w -l /var/log/postgresql/bootstrap.log \
      -o "-c synchronous_standby_names=''" start
    as_pg psql -h /run/postgresql -qc "CREATE ROLE replicator LOGIN REPLICATION"
    for k in $(seq 2 "$SIZE"); do
      until [ -e "/bootstrap/n$k.done" ]; do sleep 0.5; done
    done
    as_pg pg_ctl -D "$PGDATA" -w -m fast stop
  else
    until pg_isready -q -h n1 -p 5432; do sleep 0.5; done
    as_pg pg_basebackup -h n1 -U replicator -D "$PGDATA" -X stream -c fast
    as_pg touch "$PGDATA/standby.signal"
    touch "/bootstrap/$NODE.done"
  fi
fi

corosync -f >>/var/log/corosync/stderr.log 2>&1 &
until corosync-cfgtool -s >/dev/null 2>&1; do sleep 0.1; done
PCMK_logfacility=none PCMK_logfile=/var/log/pacemaker/pacemaker.log pacemakerd \
  >>/var/log/pacemaker/stderr.log 2>&1 &
mapfile -t ETCD < <(python3 -m pgcm_lab.render --node "$NODE" --size "$SIZE" --etcd-argv)
"${ETCD[@]}" >>/var/lib/etcd/etcd.log 2>&1 &
runuser -u postgres -- pgbouncer /etc/pgbouncer/pgbouncer.ini &
wait -n
