// Blocks of the README that tests check, so that what the README shows cannot drift from what works.

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

const readme = readFileSync(resolve(import.meta.dirname, '../../README.md'), 'utf8');

// The first ```lang block after the heading `heading`.
export function readmeBlock(heading: string, lang: string): string {
  const at = readme.indexOf(heading);
  if (at < 0) throw new Error(`no "${heading}" in the README`);
  const block = new RegExp('```' + lang + '\\n([\\s\\S]*?)```').exec(readme.slice(at));
  if (!block) throw new Error(`no ${lang} block after "${heading}" in the README`);
  return block[1]!;
}

// Every ```lang block of the README.
export function readmeBlocks(lang: string): string[] {
  return [...readme.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((match) => match[1]!);
}
