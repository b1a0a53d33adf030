// The build: npm run build on this machine (the executable's own behaviour is test/e2e/dist.test.ts).

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as assert from 'uvu/assert';
import { DIST_BINARY, ambassadorCommand } from '../../harness/ambassador.ts';
import { limitedSuite } from '../../harness/limits.ts';

const test = limitedSuite('the build');

test('is reproducible: a second build of the same tree gives the same bytes', () => {
  ambassadorCommand('dist');
  const other = mkdtempSync(join(tmpdir(), 'ambassador-build-'));
  try {
    execFileSync(process.execPath, [resolve(import.meta.dirname, '../../build/build.ts'), other], { stdio: 'ignore' });
    const digest = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
    assert.is(digest(join(other, 'ambassador')), digest(DIST_BINARY));
  } finally {
    rmSync(other, { recursive: true, force: true });
  }
});

test.run();
