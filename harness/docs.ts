// Blocks of the docs that tests check, so that what a page shows cannot drift from what works.

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');

// The first ```lang block after the text `heading` in the page `file` (a path from the repository's root).
export function docBlock(file: string, heading: string, lang: string): string {
  const page = readFileSync(resolve(root, file), 'utf8');
  const at = page.indexOf(heading);
  if (at < 0) throw new Error(`no "${heading}" in ${file}`);
  const block = new RegExp('```' + lang + '\\n([\\s\\S]*?)```').exec(page.slice(at));
  if (!block) throw new Error(`no ${lang} block after "${heading}" in ${file}`);
  return block[1]!;
}

// Every ```lang block of the page.
export function docBlocks(file: string, lang: string): string[] {
  const page = readFileSync(resolve(root, file), 'utf8');
  return [...page.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((match) => match[1]!);
}
