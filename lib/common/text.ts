// What etcd's bytes become as text in the mirror, and back: keys and values are bytes in etcd, and any bytes
// must come through whole and unambiguous, however large or however far from UTF-8. Pure.
// - Valid UTF-8 is itself.
// - A byte that is not part of valid UTF-8 becomes one lone low surrogate (U+DC80-U+DCFF, the "surrogateescape"
//   of Python and Rust's OsStr): decoding UTF-8 never yields one, so the text maps back to the very bytes, and a
//   name read back from a value finds its key again (a lossy decode would look for another key forever).
// - Bytes over a bound are never held: they become a stand-in that keeps a short head, their size and a digest
//   (two different values never look the same), marked by a lone high surrogate, which neither of the above yields.

import { createHash } from 'node:crypto';

// Marks a stand-in for bytes over a bound.
const OVERSIZED = '\uD800';
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

// `bytes` as mirror text, or its stand-in if it is longer than `maxBytes`. `keep`: how many of its first bytes
// the stand-in shows (a key keeps its prefix).
export function textOf(bytes: Uint8Array, maxBytes: number, keep = 32): string {
  if (bytes.length > maxBytes) {
    const digest = createHash('sha256').update(bytes).digest('hex').slice(0, 16);
    return `${decode(bytes.subarray(0, Math.min(keep, maxBytes)))}${OVERSIZED}${bytes.length}:${digest}`;
  }
  return decode(bytes);
}

function decode(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return decodeEscaped(bytes);
  }
}

// How many bytes the UTF-8 sequence at `at` takes, or 0 if it is not a valid one (overlong forms, surrogates and
// code points past U+10FFFF are not valid).
function sequenceLength(bytes: Uint8Array, at: number): number {
  const first = bytes[at]!;
  const continuation = (i: number, low = 0x80, high = 0xbf) => at + i < bytes.length && bytes[at + i]! >= low && bytes[at + i]! <= high;
  if (first < 0x80) return 1;
  if (first >= 0xc2 && first <= 0xdf) return continuation(1) ? 2 : 0;
  if (first >= 0xe0 && first <= 0xef) {
    const [low, high] = first === 0xe0 ? [0xa0, 0xbf] : first === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
    return continuation(1, low, high) && continuation(2) ? 3 : 0;
  }
  if (first >= 0xf0 && first <= 0xf4) {
    const [low, high] = first === 0xf0 ? [0x90, 0xbf] : first === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
    return continuation(1, low, high) && continuation(2) && continuation(3) ? 4 : 0;
  }
  return 0;
}

function decodeEscaped(bytes: Uint8Array): string {
  let text = '';
  let runStart = 0;
  let at = 0;
  while (at < bytes.length) {
    const length = sequenceLength(bytes, at);
    if (length > 0) {
      at += length;
      continue;
    }
    text += strictUtf8.decode(bytes.subarray(runStart, at)) + String.fromCharCode(0xdc00 + bytes[at]!);
    at++;
    runStart = at;
  }
  return text + strictUtf8.decode(bytes.subarray(runStart));
}

// The bytes mirror text stands for (a stand-in has none: it is never read back by name).
export function bytesOf(text: string): Buffer {
  if (!/[\uDC80-\uDCFF]/.test(text)) return Buffer.from(text);
  const parts: Buffer[] = [];
  let runStart = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    const escaped = code >= 0xdc80 && code <= 0xdcff && !(i > 0 && isHighSurrogate(text.charCodeAt(i - 1)));
    if (!escaped) continue;
    parts.push(Buffer.from(text.slice(runStart, i)), Buffer.of(code - 0xdc00));
    runStart = i + 1;
  }
  parts.push(Buffer.from(text.slice(runStart)));
  return Buffer.concat(parts);
}

const isHighSurrogate = (code: number) => code >= 0xd800 && code <= 0xdbff;

// Whether the text is a stand-in for bytes over a bound.
export function isOversized(text: string): boolean {
  return text.includes(OVERSIZED);
}

// Whether the text holds bytes that were not UTF-8.
export function hasInvalidUtf8(text: string): boolean {
  return /(?:^|[^\uD800-\uDBFF])[\uDC80-\uDCFF]/.test(text);
}

// The size in bytes of what the text stands for.
export function byteLength(text: string): number {
  const mark = text.indexOf(OVERSIZED);
  if (mark !== -1) return Number(text.slice(mark + 1, text.indexOf(':', mark)));
  return bytesOf(text).length;
}

// The text as a person reads it, at most about `max` characters: a stand-in shows its head and size, long text
// is cut with its size. Control characters stay in; a log or JSON escapes them.
export function shortText(text: string, max = 80): string {
  const mark = text.indexOf(OVERSIZED);
  if (mark !== -1) return `${text.slice(0, Math.min(mark, max))}… (${byteLength(text)} bytes)`;
  return text.length > max ? `${text.slice(0, max)}… (${byteLength(text)} bytes)` : text;
}
