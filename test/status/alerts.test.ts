// The alert rules in the README, as written there, checked and unit-tested by Prometheus' own promtool.

import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { requireCommand } from '../../harness/etcd.ts';
import { docBlock } from '../../harness/docs.ts';

const alertRules = () => docBlock('docs/operating.md', '## Alerts', 'yaml');

function promtool(rules: string, ...args: string[]): { status: number | null; output: string } {
  requireCommand('promtool', 'apt-get install -y prometheus');
  const dir = mkdtempSync(join(tmpdir(), 'ambassador-alerts-'));
  try {
    writeFileSync(join(dir, 'ambassador-alerts.yml'), rules);
    copyFileSync(resolve(import.meta.dirname, '../fixtures/alerts.test.yml'), join(dir, 'alerts.test.yml'));
    const result = spawnSync('promtool', args, { cwd: dir, encoding: 'utf8', timeout: 60_000 });
    return { status: result.status, output: result.stdout + result.stderr };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the README\'s rules pass promtool check rules', () => {
  const { status, output } = promtool(alertRules(), 'check', 'rules', 'ambassador-alerts.yml');
  assert.is(status, 0, output);
  assert.match(output, 'SUCCESS: 7 rules found');
});

test('each alert passes its unit test (promtool test rules)', () => {
  const { status, output } = promtool(alertRules(), 'test', 'rules', 'alerts.test.yml');
  assert.is(status, 0, output);
  const names = [...alertRules().matchAll(/- alert: (\w+)/g)].map((match) => match[1]!);
  const tested = readFileSync(resolve(import.meta.dirname, '../fixtures/alerts.test.yml'), 'utf8');
  for (const name of names) assert.match(tested, `alertname: ${name}\n`, `${name} has a unit test`);
});

test('the unit tests can fail: a rule with another threshold fails them', () => {
  const changed = alertRules().replace('ambassador_instances_routed == 0', 'ambassador_instances_routed < 0');
  assert.is.not(promtool(changed, 'test', 'rules', 'alerts.test.yml').status, 0);
});

test.run();
