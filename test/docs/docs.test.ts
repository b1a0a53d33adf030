// The docs cannot drift: docs/operating.md's flag table against lib/options/flags.ts's FLAGS and --help, both ways;
// every relative link and #anchor in README.md and the manual resolves; cross-references are links, not
// quoted headings; each folder of lib/ says what each of its modules is.

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FLAGS } from '../../lib/options/flags.ts';
import { usage } from '../../lib/options/parse.ts';

const root = resolve(import.meta.dirname, '../..');
const LIB_FOLDERS = readdirSync(join(root, 'lib'), { withFileTypes: true }).filter((entry) => entry.isDirectory()).map((entry) => entry.name);
const PAGES = [
  'README.md',
  ...readdirSync(join(root, 'docs')).filter((name) => name.endsWith('.md')).map((name) => `docs/${name}`),
  'bench/README.md',
  'soak/README.md',
  'fuzz/README.md',
  'lib/README.md',
  ...LIB_FOLDERS.map((folder) => `lib/${folder}/README.md`),
];
const read = (page: string) => readFileSync(join(root, page), 'utf8');
// The executable's own flag (Node's single-executable support reads it), beside those lib/options/ parses.
const EXECUTABLE_FLAGS = ['node-options'];

// The rows of the table under `## Flags` in docs/operating.md: each `--flag` its first cell names, with the
// row's default cell.
function flagTable(): Map<string, string> {
  const page = read('docs/operating.md');
  const section = page.slice(page.indexOf('## Flags'), page.indexOf('\n## ', page.indexOf('## Flags') + 1));
  const rows = new Map<string, string>();
  for (const line of section.split('\n').filter((l) => l.startsWith('| `--'))) {
    const cells = line.split(' | ');
    for (const [, name] of cells[0]!.matchAll(/`--([a-z-]+)/g)) rows.set(name!, cells.at(-1)!.replace(/ \|$/, ''));
  }
  return rows;
}

test('the flag table names every flag, and only those, with each default as lib/options/flags.ts has it', () => {
  const table = flagTable();
  const names = [...FLAGS.map((flag) => flag.name), ...EXECUTABLE_FLAGS].sort();
  assert.equal([...table.keys()].sort(), names);
  for (const flag of FLAGS) {
    if (flag.default === undefined) continue;
    assert.ok(table.get(flag.name)!.includes(`\`${flag.default}\``), `--${flag.name}: the table says ${table.get(flag.name)}, flags.ts ${flag.default}`);
  }
});

test('--help names every flag of the table, and only those', () => {
  const helped = new Set([...usage().matchAll(/^ {2}--([a-z-]+)/gm)].map((match) => match[1]!));
  assert.equal([...helped].sort(), [...flagTable().keys()].sort());
});

// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens; repeats get -1, -2...
function anchors(page: string): Set<string> {
  const seen = new Map<string, number>();
  const found = new Set<string>();
  let fenced = false;
  for (const line of read(page).split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const heading = !fenced && /^#{1,6} (.+)$/.exec(line)?.[1];
    if (!heading) continue;
    const slug = heading.toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replaceAll(' ', '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    found.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return found;
}

// [text](target) outside code blocks and inline code.
function links(page: string): string[] {
  const text = read(page).replace(/```[\s\S]*?```/g, '').replace(/`[^`\n]*`/g, '');
  return [...text.matchAll(/\[[^\]\n]*\]\(([^)\s]+)\)/g)].map((match) => match[1]!);
}

test('every relative link and #anchor in the README and the manual resolves', () => {
  const broken: string[] = [];
  let checked = 0;
  for (const page of PAGES) {
    for (const link of links(page)) {
      if (/^[a-z]+:/.test(link)) continue;
      checked++;
      const [path, anchor] = link.split('#') as [string, string | undefined];
      const target = path === '' ? page : relative(root, resolve(root, dirname(page), path));
      if (!existsSync(join(root, target))) broken.push(`${page}: ${link} (no ${target})`);
      else if (anchor !== undefined && !anchors(target).has(anchor)) broken.push(`${page}: ${link} (no heading #${anchor} in ${target})`);
    }
  }
  assert.equal(broken, []);
  assert.ok(checked > 30, `${checked} links checked`);
});

test('cross-references are links, not a heading quoted in the text', () => {
  const headings = new Set(PAGES.flatMap((page) => [...read(page).matchAll(/^#{1,6} (.+)$/gm)].map((match) => match[1]!.toLowerCase())));
  const quoted: string[] = [];
  for (const page of PAGES) {
    const text = read(page).replace(/```[\s\S]*?```/g, '').replace(/`[^`\n]*`/g, '');
    for (const [, inner] of text.matchAll(/"([^"\n]{3,80})"/g)) if (headings.has(inner!.toLowerCase())) quoted.push(`${page}: "${inner}"`);
  }
  assert.equal(quoted, []);
});

test('each folder of lib/ has a README that names each of its modules, and lib/README.md names each folder', () => {
  const unnamed: string[] = [];
  for (const folder of LIB_FOLDERS) {
    const readme = read(`lib/${folder}/README.md`);
    for (const module of readdirSync(join(root, 'lib', folder)).filter((name) => name.endsWith('.ts'))) if (!readme.includes(`\`${module}\``)) unnamed.push(`lib/${folder}/${module}`);
    if (!read('lib/README.md').includes(`[${folder}/](${folder}/README.md)`)) unnamed.push(`lib/${folder}/`);
  }
  assert.equal(unnamed, []);
  assert.ok(LIB_FOLDERS.length >= 9, LIB_FOLDERS.join(' '));
});

test('the README is the front page: at most 250 lines', () => {
  const lines = read('README.md').split('\n').length;
  assert.ok(lines <= 250, `${lines} lines`);
});

test.run();
