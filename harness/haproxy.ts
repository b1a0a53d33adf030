// Looking at a running haproxy from outside, as an operator would: its admin socket and its processes.

import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';

export function adminCommand(runtimeDir: string, command: string): Promise<string> {
  return ask(join(runtimeDir, 'admin.sock'), command);
}

// haproxy's master answers on its CLI only once it runs in wait mode (it re-executes itself into it after its
// first load), and takes a SIGHUP only from then.
export function masterCommand(runtimeDir: string, command: string): Promise<string> {
  return ask(join(runtimeDir, 'master.sock'), command);
}

function ask(path: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let answer = '';
    socket.on('data', (data) => (answer += data));
    socket.on('end', () => resolve(answer));
    socket.on('error', reject);
    socket.end(command + '\n');
  });
}

// The servers of the proxy as "name address:port state", state one of ready, maint, drain; sorted.
export async function serverStates(runtimeDir: string): Promise<string[]> {
  const state = await adminCommand(runtimeDir, 'show servers state service');
  return state
    .split('\n')
    .filter((line) => /^\d+ service /.test(line))
    .map((line) => line.split(' '))
    // srv_admin_state (field 7): 0x01, 0x02 and 0x20 are kinds of maintenance, 0x08 and 0x10 of drain.
    .map((f) => `${f[3]} ${f[4]}:${f[18]} ${Number(f[6]) & 0x23 ? 'maint' : Number(f[6]) & 0x18 ? 'drain' : 'ready'}`)
    .sort();
}

export function workerPids(masterPid: number): number[] {
  return readFileSync(`/proc/${masterPid}/task/${masterPid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
}
