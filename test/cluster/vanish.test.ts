// The master's host vanishes silently: every packet to it and from it is dropped (iptables DROP, in this
// suite's private network namespace), nothing answers, not even a reset, as when a host loses power. Then etcd
// names another master, as Patroni does once the old leader's lease lapses. What clients see is recorded with
// their own clock; the fence is checked on the wire (a packet capture, which sees haproxy's packets to the
// vanished host as they leave): no client reaches the new master while a session to the old one is open, and
// "none left open" is not waited out on a peer that never answers.

import * as assert from 'uvu/assert';
import { startCapture } from '../../harness/capture.ts';
import { within } from '../../harness/limits.ts';
import { freePort, openSession, whoAnswers } from '../../harness/net.ts';
import { iptables, requirePrivateNetwork } from '../../harness/netns.ts';
import { fenceOverlaps, startRecordingBackends } from '../../harness/recorder.ts';
import { worldSuite } from '../../harness/world.ts';

const { test, run } = worldSuite('the master\'s host vanishes');

const report = (what: string, ms: number) => console.log(`      ${what}: ${ms.toFixed(0)} ms`);

test('the master\'s host drops every packet, then etcd names another: its sessions are cut, no client waits on it past its checks, and the fence holds on the wire', async ({ world }) => {
  requirePrivateNetwork();
  const prefix = world.prefix();
  const port = await freePort('127.0.0.41');
  const addresses = new Map([['node-a', '127.0.0.41'], ['node-b', '127.0.0.42']]);
  const backends = await startRecordingBackends([...addresses].map(([name, host]) => ({ name, host, port })));
  const capture = await startCapture(addresses, port);
  const rules = [
    ['INPUT', '-d', '127.0.0.41', '-j', 'DROP'],
    ['OUTPUT', '-s', '127.0.0.41', '-j', 'DROP'],
  ];
  let vanished = false;
  try {
    for (const [name, host] of [['a', '127.0.0.41'], ['b', '127.0.0.42']] as const) {
      await world.etcd.put(`${prefix}/instances/${name}/private_ip`, host);
      await world.etcd.put(`${prefix}/instances/${name}/port`, String(port));
    }
    await world.etcd.put(`${prefix}/master`, 'a');
    const ambassador = await world.start([`--etcd-prefix=${prefix}`, '--master-only']);
    await world.routesTo(ambassador.port, 'node-a');
    const held = await openSession(ambassador.port);
    let heldClosedAt: number | undefined;
    void held.closed.then(() => (heldClosedAt = performance.now()));

    for (const rule of rules) iptables('-A', ...rule);
    vanished = true;
    const vanishedAt = performance.now();
    // A new client meanwhile: haproxy's connection attempt to the host gets no answer.
    const during = performance.now();
    const answer = await whoAnswers(ambassador.port, '127.0.0.1', 10_000);
    report(`a new client while the master's host is gone: answered ${JSON.stringify(answer)} after`, performance.now() - during);
    assert.is(answer, '', 'refused (closed), not sent anywhere else');
    // haproxy's own checks (inter 2 s, fall 2) mark the server down and cut its sessions, before etcd says anything.
    await within(held.closed, 15_000, 'the held session cut by the health check');
    report('vanished → the held session cut by haproxy\'s checks', heldClosedAt! - vanishedAt);

    const wrote = performance.now();
    await world.etcd.put(`${prefix}/master`, 'b');
    await world.routesTo(ambassador.port, 'node-b', 5_000);
    const routed = performance.now() - wrote;
    report('etcd names b → routed', routed);
    assert.ok(routed < 1_000, `routed in ${routed.toFixed(0)} ms: the fence does not wait on a host that never answers`);
    assert.not.ok(ambassador.logs.some((line) => line.includes('still open')), 'the fence confirmed, not waited out');

    await capture.stop();
    assert.is(capture.dropped(), 0, 'the capture lost no packet');
    const overlaps = fenceOverlaps(capture.events);
    assert.equal(overlaps.length, 0, `overlaps on the wire: ${JSON.stringify(overlaps, (_, v) => (typeof v === 'bigint' ? String(v) : v))}`);
  } finally {
    if (vanished) for (const rule of rules) iptables('-D', ...rule);
    await capture.stop();
    await backends.stop();
  }
});

run();
