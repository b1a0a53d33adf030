// The README's systemd and fleet units, as written there, checked by systemd itself (systemd-analyze verify):
// the unit text is read from the README, so the two cannot drift apart.

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DIST_BINARY } from '../../harness/ambassador.ts';
import { requireCommand } from '../../harness/etcd.ts';
import { docBlocks } from '../../harness/docs.ts';

const iniBlocks = docBlocks('docs/install.md', 'ini');

// The unit whose first line names its file, e.g. "# /etc/systemd/system/ambassador-mysql.service".
function unit(file: string): string {
  const block = iniBlocks.find((text) => text.split('\n')[0]!.endsWith(file));
  if (!block) throw new Error(`no ini block for ${file} in the README`);
  return block;
}

// systemd-analyze verify's complaints about a unit file, less the fleet section systemd does not know.
function verify(name: string, text: string): string[] {
  requireCommand('systemd-analyze', 'apt-get install -y systemd');
  const dir = mkdtempSync(join(tmpdir(), 'ambassador-units-'));
  try {
    const path = join(dir, name);
    writeFileSync(path, text);
    const result = spawnSync('systemd-analyze', ['verify', path], { encoding: 'utf8', timeout: 30_000 });
    const complaints = (result.stdout + result.stderr).split('\n').filter((line) => line.trim() !== '' && !/X-Fleet/.test(line));
    if (result.status !== 0 && complaints.length === 0) complaints.push(`exit ${result.status}`);
    return complaints;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the systemd unit passes systemd-analyze verify', () => {
  const text = unit('/etc/systemd/system/ambassador-mysql.service');
  assert.match(text, 'ExecStart=/usr/local/bin/ambassador ');
  // Installed where the README puts it: here, the built executable stands at that path.
  assert.ok(existsSync(DIST_BINARY), 'npm run build first');
  assert.equal(verify('ambassador-mysql.service', text.replace('/usr/local/bin/ambassador', DIST_BINARY)), []);
});

test('the fleet unit passes systemd-analyze verify, its [X-Fleet] section aside', () => {
  requireCommand('docker', 'apt-get install -y docker.io');
  const text = unit('mysql-ambassador.service');
  assert.match(text, '[X-Fleet]');
  assert.match(text, /docker run --rm --name mysql-ambassador --net host ambassador \\\n  \/bin\/ambassador /);
  const docker = execFileSync('sh', ['-c', 'command -v docker'], { encoding: 'utf8' }).trim();
  assert.equal(verify('mysql-ambassador.service', text.replaceAll('/usr/bin/docker', docker)), []);
});

test('a broken unit is caught: the check can fail', () => {
  const text = unit('/etc/systemd/system/ambassador-mysql.service').replace('/usr/local/bin/ambassador', DIST_BINARY);
  assert.ok(verify('broken.service', text.replace('Restart=on-failure', 'Restart=on-failur')).length > 0);
});

test.run();
