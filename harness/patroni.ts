// A real Patroni cluster for the tests: three members (Debian's Patroni and PostgreSQL: 3.0.2 and 15 on
// Debian 12, 4.0.7 and 17 on Debian 13) on
// 127.0.0.31-33, ports 5432 (PostgreSQL) and 8008 (Patroni's REST API), data in memory (/dev/shm), run as the
// postgres user against the suite's etcd, with small ttl/loop_wait. Every Patroni and postmaster is stopped by
// its pid, pass or fail, and a postmaster killed on purpose has its shared memory removed by exact id and name.

import { execFile, execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { requireCommand } from './etcd.ts';
import { signal, startProcess, stopPid, track } from './processes.ts';

// The newest PostgreSQL installed.
export const POSTGRES_BIN = (() => {
  const versions = existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').filter((v) => /^\d+$/.test(v)).map(Number) : [];
  return `/usr/lib/postgresql/${versions.length > 0 ? Math.max(...versions) : 15}/bin`;
})();

export interface PatroniMember {
  name: string;
  host: string;
  config: string;
}

export interface PatroniCluster {
  scope: string;
  prefix: string;
  members: PatroniMember[];
  // The member a host belongs to.
  memberAt(host: string): PatroniMember | undefined;
  // Runs SQL through host:port as postgres; its output, or an error.
  sql(host: string, port: number, query: string, timeoutMs?: number): Promise<string>;
  // The member name the leader key holds now, if any.
  leader(): Promise<string | undefined>;
  // Waits until a member leads and the other two run as replicas.
  healthy(timeoutMs?: number): Promise<string>;
  switchover(from: string, to: string): Promise<void>;
  // SIGKILL of a member's Patroni and postmaster, as a crash would; its shared memory is removed.
  crash(name: string): Promise<void>;
  // Holds back (or lets go on) a replica's replay: it goes on receiving WAL and replays none past the next commit.
  replay(name: string, on: boolean): Promise<void>;
  // What the member's Patroni REST API answers to GET `path` (200, 503…), or 0 if it does not answer.
  rest(name: string, path: string): Promise<number>;
  // Starts a crashed member's Patroni again: it comes back as a replica.
  restart(name: string): Promise<void>;
  stop(): Promise<void>;
}

export interface PatroniOptions {
  // Tags per member name, e.g. { pg3: { noloadbalance: true } }.
  tags?: Record<string, Record<string, boolean | string>>;
  // Patroni's synchronous_mode: on (true), or quorum (Patroni 4).
  synchronousMode?: 'on' | 'quorum';
}

interface Running {
  member: PatroniMember;
  dataDir: string;
  patroni: ReturnType<typeof startProcess> | undefined;
}

let clusters = 0;

export async function startPatroni(etcdEndpoint: string, etcdGet: (key: string) => Promise<string | undefined>, options: PatroniOptions = {}): Promise<PatroniCluster> {
  requireCommand('patroni', 'apt-get install -y patroni postgresql-15 postgresql-client');
  if (!existsSync(`${POSTGRES_BIN}/postgres`)) throw new Error(`PostgreSQL is not installed (${POSTGRES_BIN}): apt-get install -y postgresql-15`);
  if (process.getuid?.() !== 0) throw new Error('the Patroni tests run PostgreSQL as the postgres user: they need root');
  const postgres = { uid: Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' })), gid: Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' })) };
  const root = mkdtempSync('/dev/shm/ambassador-patroni-');
  chownSync(root, postgres.uid, postgres.gid);
  // A scope of its own for each cluster: one a test left behind in the suite's etcd is never joined.
  const scope = `t${process.pid}-${++clusters}`;
  const prefix = `/service/${scope}`;
  const running: Running[] = [1, 2, 3].map((i) => {
    const name = `pg${i}`;
    const host = `127.0.0.3${i}`;
    const dir = join(root, name);
    mkdirSync(dir, { mode: 0o700 });
    chownSync(dir, postgres.uid, postgres.gid);
    const config = join(dir, 'patroni.yml');
    const tags = options.tags?.[name];
    writeFileSync(config, [
      `scope: ${scope}`,
      'namespace: /service/',
      `name: ${name}`,
      `restapi: {listen: '${host}:8008', connect_address: '${host}:8008'}`,
      `etcd3: {hosts: '${etcdEndpoint}'}`,
      'bootstrap:',
      `  dcs: {ttl: 10, loop_wait: 2, retry_timeout: 4, maximum_lag_on_failover: 1048576, ${options.synchronousMode === undefined ? '' : `synchronous_mode: ${options.synchronousMode === 'on' ? 'true' : 'quorum'}, `}postgresql: {use_pg_rewind: true, use_slots: true}}`,
      '  initdb: [{encoding: UTF8}]',
      '  pg_hba: [local all all trust, host all all 127.0.0.0/8 trust, host replication all 127.0.0.0/8 trust]',
      'postgresql:',
      `  listen: '${host}:5432'`,
      `  connect_address: '${host}:5432'`,
      `  data_dir: ${join(dir, 'data')}`,
      `  bin_dir: ${POSTGRES_BIN}`,
      `  pgpass: ${join(dir, 'pgpass')}`,
      '  authentication:',
      '    superuser: {username: postgres, password: postgres}',
      '    replication: {username: replicator, password: rep}',
      '    rewind: {username: postgres, password: postgres}',
      `  parameters: {unix_socket_directories: '${dir}', max_connections: 50, shared_buffers: 16MB}`,
      ...(tags ? [`tags: ${JSON.stringify(tags)}`] : []),
      '',
    ].join('\n'));
    chownSync(config, postgres.uid, postgres.gid);
    return { member: { name, host, config }, dataDir: join(dir, 'data'), patroni: undefined };
  });

  const launch = (entry: Running) => {
    const child = startProcess('/usr/bin/patroni', [entry.member.config], { uid: postgres.uid, gid: postgres.gid, env: { PATH: '/usr/bin:/bin', HOME: root, LANG: 'C.UTF-8' } });
    child.stdout!.resume();
    child.stderr!.resume();
    entry.patroni = child;
  };
  // The postmaster of a member, from its pid file; tracked so that the suite's leak check sees it.
  const postmaster = (entry: Running): number | undefined => {
    try {
      const pid = Number(readFileSync(join(entry.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      if (pid > 1) track(pid, 'postgres');
      return pid > 1 ? pid : undefined;
    } catch {
      return undefined;
    }
  };
  const memberKey = async (name: string) => {
    const value = await etcdGet(`${prefix}/members/${name}`);
    return value === undefined ? undefined : (JSON.parse(value) as { role: string; state: string });
  };
  const leader = () => etcdGet(`${prefix}/leader`);

  const cluster: PatroniCluster = {
    scope,
    prefix,
    members: running.map((entry) => entry.member),
    memberAt: (host) => running.find((entry) => entry.member.host === host)?.member,
    sql: (host, port, query, timeoutMs = 5000) =>
      new Promise((resolve, reject) => {
        execFile(`${POSTGRES_BIN}/psql`, ['-h', host, '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-XAtc', query], {
          timeout: timeoutMs,
          killSignal: 'SIGKILL',
          env: { PGCONNECT_TIMEOUT: '3', PGPASSWORD: 'postgres', PATH: '/usr/bin:/bin' },
        }, (err, stdout, stderr) => (err ? reject(new Error(`${stderr.trim() || err.message}`)) : resolve(stdout.trim())));
      }),
    leader,
    healthy: async (timeoutMs = 60_000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const name = await leader();
        if (name !== undefined) {
          const states = await Promise.all(running.map((entry) => memberKey(entry.member.name)));
          const ok = states.every((state, i) => state?.state === 'running' && (running[i]!.member.name === name ? state.role === 'master' || state.role === 'primary' : state.role === 'replica'));
          if (ok) {
            for (const entry of running) postmaster(entry);
            return name;
          }
        }
        if (Date.now() > deadline) throw new Error(`the Patroni cluster did not become healthy within ${timeoutMs} ms (leader ${name})`);
        await sleep(250);
      }
    },
    // patronictl exits 0 when Patroni refuses a switchover (a candidate not ready yet, say): the leader key
    // tells whether it happened; it is asked again, a few times, once the cluster is settled.
    switchover: async (from, to) => {
      let said = '';
      for (let attempt = 0; attempt < 5; attempt++) {
        said = await new Promise<string>((resolve, reject) =>
          execFile('/usr/bin/patronictl', ['-c', running[0]!.member.config, 'switchover', '--leader', from, '--candidate', to, '--force'], { timeout: 30_000 }, (err, stdout, stderr) =>
            err ? reject(new Error(`patronictl switchover: ${stdout}${stderr}`)) : resolve(stdout + stderr),
          ),
        );
        for (let waited = 0; waited < 20_000; waited += 250) {
          if ((await leader()) === to) return;
          await sleep(250);
        }
        if ((await leader()) !== from) break;
        await cluster.healthy(60_000);
      }
      throw new Error(`the switchover from ${from} to ${to} did not happen; patronictl said: ${said.trim()}`);
    },
    crash: async (name) => {
      const entry = running.find((e) => e.member.name === name)!;
      const pid = postmaster(entry);
      // What it holds in shared memory, read while it runs: the System V segment and the /dev/shm files.
      const ids = readFileSync(join(entry.dataDir, 'postmaster.pid'), 'utf8').split('\n')[6]?.trim().split(/\s+/) ?? [];
      const processes = pid === undefined ? [] : [pid, ...childrenOf(pid)];
      const maps = processes.map((p) => readIfThere(`/proc/${p}/maps`)).join('\n');
      const shmFiles = [...new Set([...maps.matchAll(/\/dev\/shm\/PostgreSQL\.\d+/g)].map((m) => m[0]))];
      if (entry.patroni?.pid !== undefined) signal(entry.patroni.pid, 'SIGKILL');
      if (pid !== undefined) signal(pid, 'SIGKILL');
      await Promise.all([entry.patroni?.pid, pid].map((p) => (p === undefined ? undefined : stopPid(p, 100))));
      entry.patroni = undefined;
      // The backends follow their postmaster out within a moment; then the segment has no one attached.
      for (let tries = 0; tries < 40; tries++) {
        if (ids[1] === undefined) break;
        try {
          execFileSync('ipcrm', ['-m', ids[1]], { stdio: 'ignore' });
          break;
        } catch {
          await sleep(100);
        }
      }
      for (const file of shmFiles) if (existsSync(file)) unlinkSync(file);
    },
    // recovery_min_apply_delay holds replay at the next commit record while WAL still arrives, and the member
    // still takes connections (a stopped startup process would also stall every new session's start). Set in
    // the member's Patroni config, as a user delays a replica: Patroni takes it out of postgresql.auto.conf.
    replay: async (name, on) => {
      const entry = running.find((e) => e.member.name === name)!;
      // Set back to 0, not removed: Patroni leaves alone a recovery parameter its config stops naming.
      const config = readFileSync(entry.member.config, 'utf8').replace(/\n {2}recovery_conf: .*\n/, '\n');
      const delay = `  recovery_conf: {recovery_min_apply_delay: ${on ? '0' : '1h'}}\n`;
      writeFileSync(entry.member.config, config.replace('\npostgresql:\n', `\npostgresql:\n${delay}`));
      if (entry.patroni?.pid !== undefined) signal(entry.patroni.pid, 'SIGHUP');
      const want = on ? '0' : '1h';
      for (let waited = 0; ; waited += 250) {
        if ((await cluster.sql(entry.member.host, 5432, "select current_setting('recovery_min_apply_delay')").catch(() => '')) === want) return;
        if (waited > 30_000) throw new Error(`${name}'s recovery_min_apply_delay did not become ${want} within 30 s of Patroni's reload`);
        await sleep(250);
      }
    },
    rest: async (name, path) => {
      const host = running.find((e) => e.member.name === name)!.member.host;
      return fetch(`http://${host}:8008${path}`, { signal: AbortSignal.timeout(2000) }).then(
        (response) => response.status,
        () => 0,
      );
    },
    restart: async (name) => {
      const entry = running.find((e) => e.member.name === name)!;
      if (entry.patroni === undefined) launch(entry);
    },
    stop: async () => {
      await Promise.all(
        running.map(async (entry) => {
          const pid = postmaster(entry);
          if (entry.patroni?.pid !== undefined) await stopPid(entry.patroni.pid, 20_000);
          if (pid !== undefined) await stopPid(pid, 10_000);
        }),
      );
      rmSync(root, { recursive: true, force: true });
    },
  };

  for (const entry of running) launch(entry);
  try {
    await cluster.healthy(90_000);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

function readIfThere(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function childrenOf(pid: number): number[] {
  return readIfThere(`/proc/${pid}/task/${pid}/children`).trim().split(/\s+/).filter(Boolean).map(Number);
}
