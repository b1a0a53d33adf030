// What crossed the wire between haproxy and the backends, as the kernel saw it: a packet capture (tcpdump) of
// the backends' addresses, read as connections. Packets are stamped by the kernel when they are sent, in the
// order they are sent, so the order of two events here is the true one, which no process's own record can
// promise (a process reads a reset in a later turn of its loop than a connection accepted in the same turn).
// Times are the kernel's realtime stamps moved onto the monotonic clock (process.hrtime.bigint()).

import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { requireCommand } from './etcd.ts';
import { isRunning, stopPid, track } from './processes.ts';
import type { BackendEvent } from './recorder.ts';

export interface Capture {
  // The connections so far, as events: accept (haproxy's SYN reached the backend), session (the first byte of
  // the client's reached it), close (the first FIN or reset either way).
  events: BackendEvent[];
  // Packets the kernel dropped before tcpdump read them, as tcpdump counts them when it stops: a capture that
  // dropped any has lost events, and its order proves nothing.
  dropped(): number | undefined;
  stop(): Promise<void>;
}

// Realtime minus monotonic, in ns, read as close together as one process can.
function clockOffset(): bigint {
  const before = process.hrtime.bigint();
  const real = BigInt(Date.now()) * 1_000_000n;
  const after = process.hrtime.bigint();
  return real - (before + after) / 2n;
}

// The kernel's buffer for the capture (tcpdump's default is 2 MiB): a 2-core machine busy with the load the
// capture watches can leave tcpdump unscheduled for long enough to fill the default one.
const CAPTURE_BUFFER_KIB = 32_768;

const LINE = /^(\d+)\.(\d{9}) IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\].*length (\d+)/;

// Captures TCP traffic to or from `backends` (name → address), all on `port`, on interface `device`.
export async function startCapture(backends: ReadonlyMap<string, string>, port: number, device = 'lo'): Promise<Capture> {
  requireCommand('tcpdump', 'apt-get install -y tcpdump');
  const hosts = [...backends.values()].map((address) => `host ${address}`).join(' or ');
  const child: ChildProcess = spawn(
    'tcpdump',
    ['-i', device, '-n', '-l', '-tt', '--time-stamp-precision=nano', '-s', '128', '-B', String(CAPTURE_BUFFER_KIB), `tcp port ${port} and (${hosts})`],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  track(child.pid);
  const byAddress = new Map([...backends].map(([name, address]) => [address, name]));
  const offset = clockOffset();
  const events: BackendEvent[] = [];
  const open = new Map<string, { id: number; spoke: boolean }>();
  let ids = 0;
  const lines = createInterface({ input: child.stdout! });
  const drained = new Promise((resolve) => lines.once('close', resolve));
  lines.on('line', (line) => {
    const match = LINE.exec(line);
    if (!match) return;
    const [, seconds, nanos, srcHost, srcPort, dstHost, dstPort, flags, length] = match as unknown as string[];
    const at = BigInt(seconds!) * 1_000_000_000n + BigInt(nanos!) - offset;
    const toBackend = byAddress.has(dstHost!) && Number(dstPort) === port;
    const backend = byAddress.get(toBackend ? dstHost! : srcHost!);
    if (backend === undefined) return;
    const key = `${backend} ${toBackend ? srcPort : dstPort}`;
    if (toBackend && flags === 'S') {
      const id = ++ids;
      open.set(key, { id, spoke: false });
      events.push({ kind: 'accept', at, backend, id });
      return;
    }
    const connection = open.get(key);
    if (connection === undefined) return;
    if (toBackend && Number(length) > 0 && !connection.spoke) {
      connection.spoke = true;
      events.push({ kind: 'session', at, backend, id: connection.id });
    }
    if (flags!.includes('F') || flags!.includes('R')) {
      open.delete(key);
      events.push({ kind: 'close', at, backend, id: connection.id });
    }
  });
  let stderr = '';
  child.stderr!.on('data', (data) => (stderr += data));
  // tcpdump says "listening on ..." once its filter is in place.
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`tcpdump did not start listening: ${stderr}`)), 10_000);
    child.stderr!.on('data', () => {
      if (!stderr.includes('listening on')) return;
      clearTimeout(timer);
      resolve();
    });
    child.once('exit', (code) => reject(new Error(`tcpdump exited (${code}): ${stderr}`)));
  });
  return {
    events,
    dropped: () => {
      const match = /(\d+) packets? dropped by kernel/.exec(stderr);
      return match ? Number(match[1]) : undefined;
    },
    stop: async () => {
      if (!isRunning(child) || child.pid === undefined) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      // SIGINT: tcpdump prints what it holds, then its counts, then exits; what it holds can take seconds to
      // write and parse after a long capture on a busy machine, and without the counts the capture proves nothing.
      child.kill('SIGINT');
      await Promise.race([Promise.all([exited, drained]), new Promise((resolve) => setTimeout(resolve, 30_000))]);
      await stopPid(child.pid);
    },
  };
}
