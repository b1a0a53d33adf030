import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { kernelEndpoint, openConnections } from '../../lib/haproxy/sockets.ts';

const test = suite('kernel sockets');

test('writes addresses as /proc/net/tcp does: IPv4 little-endian, IPv6 by little-endian words, port in hex', () => {
  assert.is(kernelEndpoint('127.0.0.1', 8080), '0100007F:1F90');
  assert.is(kernelEndpoint('10.0.19.22', 5432), '1613000A:1538');
  assert.is(kernelEndpoint('::1', 5432), '00000000000000000000000001000000:1538');
  assert.is(kernelEndpoint('fd00::1:2', 80), '000000FD000000000000000002000100:0050');
  assert.is(kernelEndpoint('db.example', 5432), undefined);
  // IPv4-mapped: haproxy connects by an IPv6 socket, which the kernel lists in tcp6 with the IPv4 address last.
  assert.is(kernelEndpoint('::ffff:127.0.0.3', 5432), '0000000000000000FFFF00000300007F:1538');
  assert.is(kernelEndpoint('::FFFF:7F00:3', 5432), '0000000000000000FFFF00000300007F:1538');
});

const table = [
  '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
  '   0: 0100007F:A000 1500000A:1538 01 00000000:00000000 00:00000000 00000000     0        0 101 1 0 20 4 30 10 -1',
  '   1: 0100007F:A001 1500000A:1538 04 00000000:00000000 00:00000000 00000000     0        0 102 1 0 20 4 30 10 -1',
  '   2: 0100007F:A002 1500000A:1538 08 00000000:00000000 00:00000000 00000000     0        0 103 1 0 20 4 30 10 -1',
  '   3: 0100007F:A003 1500000A:1538 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0 20 4 30 10 -1',
  '   4: 0100007F:A004 1600000A:1538 01 00000000:00000000 00:00000000 00000000     0        0 104 1 0 20 4 30 10 -1',
  '   5: 1500000A:1538 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 105 1 0 20 4 30 10 -1',
].join('\n');

test('finds the connections to an endpoint whose near side is not closed yet, by socket inode', () => {
  const endpoint = kernelEndpoint('10.0.0.21', 5432)!;
  // 101, 999 established, 103 close-wait: open. 102 fin-wait-1: closed by its owner. 104: elsewhere. 105: the
  // endpoint's own side of 101 (the instance on this host).
  assert.equal(openConnections(table, new Set([endpoint])), new Map([['101', endpoint], ['103', endpoint], ['999', endpoint]]));
  assert.equal(openConnections(table, new Set([kernelEndpoint('10.0.0.23', 5432)!])), new Map());
});

test.run();
