// The etcd TLS and password files, checked with real certificates made by openssl.

import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as assert from 'uvu/assert';
import { CredentialError, readCredentials, type CredentialFiles } from '../../lib/etcd/credentials.ts';
import { limitedSuite } from '../../harness/limits.ts';
import { makeCertificates, type Certificates } from '../../harness/tls.ts';

const test = limitedSuite<{ dir: string; certs: Certificates }>('credentials');

test.before((context) => {
  context.dir = mkdtempSync(join(tmpdir(), 'ambassador-credentials-'));
  context.certs = makeCertificates(context.dir);
});
test.after(({ dir }) => rmSync(dir, { recursive: true, force: true }));

async function refused(files: CredentialFiles): Promise<string> {
  try {
    await readCredentials(files);
  } catch (err) {
    assert.instance(err, CredentialError);
    return (err as Error).message;
  }
  throw new Error(`accepted ${JSON.stringify(files)}`);
}

test('reads a CA, a client certificate and its key, and a password file', async ({ dir, certs }) => {
  writeFileSync(join(dir, 'password'), 'secret\n');
  const read = await readCredentials({ ca: certs.ca, cert: certs.clientCert, key: certs.clientKey, passwordFile: join(dir, 'password') });
  assert.ok(read.ca && read.cert && read.key);
  assert.is(read.password, 'secret');
});

test('names the flag and the file when it is missing, a directory, unreadable, empty or not PEM', async ({ dir, certs }) => {
  assert.is(await refused({ ca: join(dir, 'nope.pem') }), `--etcd-ca=${join(dir, 'nope.pem')}: no such file`);
  mkdirSync(join(dir, 'a-dir'));
  assert.is(await refused({ ca: join(dir, 'a-dir') }), `--etcd-ca=${join(dir, 'a-dir')}: is a directory, not a file`);
  writeFileSync(join(dir, 'garbage.pem'), 'hello\n');
  assert.match(await refused({ ca: join(dir, 'garbage.pem') }), 'no PEM certificate in it');
  writeFileSync(join(dir, 'broken.pem'), '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
  assert.match(await refused({ cert: join(dir, 'broken.pem'), key: certs.clientKey }), '--etcd-cert=');
  assert.match(await refused({ cert: certs.clientCert, key: certs.ca }), '--etcd-key=');
  assert.match(await refused({ cert: certs.clientCert, key: certs.serverKey }), 'not the key of the certificate');
  writeFileSync(join(dir, 'empty'), '');
  assert.match(await refused({ passwordFile: join(dir, 'empty') }), 'the file is empty');
  assert.match(await refused({ passwordFile: '/dev/zero' }), 'not a regular file');
  if (process.getuid?.() !== 0) {
    writeFileSync(join(dir, 'private'), 'x');
    chmodSync(join(dir, 'private'), 0o000);
    assert.match(await refused({ passwordFile: join(dir, 'private') }), 'permission denied');
  }
});

test.run();
