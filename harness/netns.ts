// Suites that change the network (firewall rules that cut etcd members off) run in a private network, pid and
// mount namespace of their own, made by test/run.ts: the rules, the addresses and every process vanish with it.
// This refuses to run anywhere else, so that no rule ever reaches the host's network.

import { execFileSync } from 'node:child_process';

export function requirePrivateNetwork(): void {
  if (process.env.AMBASSADOR_TEST_NETNS !== '1') {
    throw new Error('this suite changes firewall rules: run it through npm test, which gives it a network namespace of its own');
  }
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).trim().split('\n');
  if (links.length !== 1 || !links[0]!.includes(': lo:')) throw new Error(`not in a private network namespace (links: ${links.length})`);
}

export function iptables(...args: string[]): void {
  execFileSync('iptables', ['-w', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
}
