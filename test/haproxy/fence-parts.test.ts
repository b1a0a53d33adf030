// The fence's pure parts (lib/haproxy/fence.ts): which haproxy releases drain a server before its fence, and
// what `show sess` says of the fenced servers' streams. The fence itself is held to the wire in fence.test.ts.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { fenceDrainsFirst, streamsOf } from '../../lib/haproxy/fence.ts';

test('the releases whose shut-down streams can freeze (2.7 to 3.1) drain first', () => {
  for (const v of ['HAProxy version 2.6.12-1+deb12u3 2025/07/23', 'HAProxy version 3.2.26-1 2026/10/01', 'HAProxy version 3.4.7-1', 'garbage']) assert.not.ok(fenceDrainsFirst(v), v);
  for (const v of ['HAProxy version 2.8.5-1ubuntu3', 'HAProxy version 3.0.11-1+deb13u4 2026/05/02', 'HAProxy version 3.1.6-1~bpo11+1 2025/03/22']) assert.ok(fenceDrainsFirst(v), v);
});

test("show sess: each fenced server's streams, and those still connecting", () => {
  const answer = [
    '0x7f5c006f6400: proto=tcpv4 src=127.0.0.1:52278 fe=service be=service srv=b ts=00 epoch=0x12 age=0s calls=3 rate=1 cpu=0 lat=0 rq[f=808000h,i=0,an=00h,ax=] rp[f=80000000h,i=0,an=00h,ax=] scf=[8,14200h,fd=25,rex=,wex=] scb=[10,30005h,fd=26,rex=,wex=] exp=1s rc=0 c_exp=',
    '0x7f5c00c92000: proto=tcpv4 src=127.0.0.1:58850 fe=service be=service srv=b ts=00 epoch=0x16 age=0s calls=1 rate=1 cpu=0 lat=0 rq[f=808000h,i=0,an=00h,ax=] rp[f=80000000h,i=0,an=00h,ax=] scf=[8,14000h,fd=14,rex=,wex=] scb=[5,30005h,fd=15,rex=,wex=] exp=2s rc=0 c_exp=',
    '0x7f5c00c93000: proto=tcpv4 src=127.0.0.1:58851 fe=replicas be=replicas srv=b ts=00 epoch=0x16 age=0s calls=1 rate=1 cpu=0 lat=0 rq[f=808000h,i=0,an=00h,ax=] rp[f=80000000h,i=0,an=00h,ax=] scf=[8,14000h,fd=16,rex=,wex=] scb=[8,30005h,fd=17,rex=,wex=] exp=2s rc=0 c_exp=',
    '0x7f5c00c94000: proto=unix_stream src=unix:1 fe=GLOBAL be=<NONE> srv=<none> ts=00 epoch=0x16 age=0s calls=1 rate=1 cpu=0 lat=0 scf=[8,1h,fd=18] scb=[8,1h,fd=-1] exp=10s rc=0 c_exp=',
  ].join('\n');
  assert.equal([...streamsOf(answer, ['service/b', 'service/a'])], [['service/b', { listed: 2, connecting: 1 }], ['service/a', { listed: 0, connecting: 0 }]]);
});

test.run();
