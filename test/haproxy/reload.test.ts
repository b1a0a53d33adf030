// Reading a worker's "proxy stopped" lines, which end a reload (lib/haproxy/reload.ts): a pure function.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { noteStopped } from '../../lib/haproxy/reload.ts';

test('a worker says its proxies stopped, bare or after the context its thread last had', () => {
  const stopped = new Map<number, Set<string>>();
  // As Debian's haproxy 2.6.12 printed them on reloads, the second after a runtime command on the same thread.
  noteStopped('[WARNING]  (10831) : Proxy service stopped (cumulated conns: FE: 4, BE: 0).', stopped);
  noteStopped('[WARNING]  (10824) : CLI : Proxy service stopped (cumulated conns: FE: 28, BE: 22).', stopped);
  noteStopped('[WARNING]  (10824) : CLI : Proxy <HTTPCLIENT> stopped (cumulated conns: FE: 0, BE: 0).', stopped);
  assert.equal(stopped, new Map([[10831, new Set(['service'])], [10824, new Set(['service', '<HTTPCLIENT>'])]]));
});

test('other lines that name a proxy are not a stop', () => {
  const stopped = new Map<number, Set<string>>();
  noteStopped('[WARNING]  (10822) : Former worker (10824) exited with code 0 (Exit)', stopped);
  noteStopped("[WARNING]  (10822) : config : [haproxy.cfg:30] : 'server service/c' : could not resolve address 'nohost.invalid', disabling server.", stopped);
  noteStopped('[WARNING]  (10831) : Server service/Proxy stopped is DOWN, reason: Layer4 connection problem', stopped);
  assert.equal(stopped, new Map());
});

test.run();
