import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { byteLength, bytesOf, hasInvalidUtf8, isOversized, shortText, textOf } from '../../lib/common/text.ts';

const test = suite('etcd bytes as text');

const roundTrip = (bytes: number[]) => [...bytesOf(textOf(Buffer.from(bytes), 1024))];

test('valid UTF-8 is itself, and maps back to its bytes', () => {
  assert.is(textOf(Buffer.from('10.0.0.1'), 1024), '10.0.0.1');
  assert.is(textOf(Buffer.from('名前😀'), 1024), '名前😀');
  assert.equal([...bytesOf('名前😀')], [...Buffer.from('名前😀')]);
  assert.not.ok(hasInvalidUtf8('名前😀'));
});

test('bytes that are not UTF-8 come through whole and map back to the very bytes', () => {
  for (const bytes of [[0xff], [0x6e, 0xff, 0x31], [0xc0, 0x2e], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xf0, 0x9f, 0x98, 0x80, 0xff], [0x80, 0x80]]) {
    const text = textOf(Buffer.from(bytes), 1024);
    assert.ok(hasInvalidUtf8(text), `${bytes} is flagged`);
    assert.equal(roundTrip(bytes), bytes, `${bytes} round trip`);
  }
  // Two different invalid values never read the same (a lossy decode makes both U+FFFD).
  assert.is.not(textOf(Buffer.from([0xfe]), 1024), textOf(Buffer.from([0xff]), 1024));
  assert.is(byteLength(textOf(Buffer.from([0x6e, 0xff, 0x31]), 1024)), 3);
});

test('bytes over the bound are a stand-in: short, sized, distinct, and never mistaken for text', () => {
  const big = Buffer.alloc(1_000_000, 'x');
  const other = Buffer.from(big);
  other[999_999] = 0x79;
  const text = textOf(big, 512);
  assert.ok(isOversized(text));
  assert.ok(text.length < 100, `${text.length} chars held`);
  assert.is(byteLength(text), 1_000_000);
  assert.is.not(textOf(other, 512), text, 'a change of the last byte changes the stand-in');
  assert.is(textOf(big, 512), text, 'the same bytes, the same stand-in');
  assert.not.ok(isOversized(textOf(Buffer.alloc(512, 'x'), 512)), 'at the bound is held whole');
  assert.ok(textOf(Buffer.from('/p/instances/aaaa'), 8, 3).startsWith('/p/'), 'a key keeps its prefix');
});

test('text as a person reads it: a stand-in or a long text cut, with its size', () => {
  assert.is(shortText('short'), 'short');
  assert.is(shortText('y'.repeat(100), 10), `${'y'.repeat(10)}… (100 bytes)`);
  assert.is(shortText(textOf(Buffer.alloc(2000, 'z'), 512)), `${'z'.repeat(32)}… (2000 bytes)`);
});

test.run();
