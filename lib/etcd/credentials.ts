// The etcd TLS and password files: read and checked, so that a missing, unreadable or malformed one is said in
// one line naming its flag. Checked before anything starts (a usage error), and read again on every etcd
// reconnect (then a retryable etcd error): Node's TLS would take a CA that is not PEM without a word.

import { createPrivateKey, X509Certificate } from 'node:crypto';
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';

export interface CredentialFiles {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  passwordFile?: string | undefined;
}

export interface Credentials {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  password?: string;
}

export class CredentialError extends Error {}

// A certificate, key or password file is small; anything bigger is the wrong file (or /dev/zero).
const MAX_BYTES = 1 << 20;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

export async function readCredentials(files: CredentialFiles): Promise<Credentials> {
  const credentials: Credentials = {};
  if (files.ca !== undefined) credentials.ca = certificates('--etcd-ca', files.ca, await readSmall('--etcd-ca', files.ca));
  if (files.cert !== undefined) credentials.cert = certificates('--etcd-cert', files.cert, await readSmall('--etcd-cert', files.cert));
  if (files.key !== undefined) {
    const key = await readSmall('--etcd-key', files.key);
    let parsed;
    try {
      parsed = createPrivateKey(key);
    } catch {
      throw new CredentialError(`--etcd-key=${files.key}: not a PEM private key`);
    }
    if (credentials.cert && !new X509Certificate(credentials.cert).checkPrivateKey(parsed)) {
      throw new CredentialError(`--etcd-key=${files.key}: not the key of the certificate in --etcd-cert=${files.cert}`);
    }
    credentials.key = key;
  }
  if (files.passwordFile !== undefined) {
    const password = (await readSmall('--etcd-password-file', files.passwordFile)).toString('utf8').replace(/\r?\n$/, '');
    if (password === '') throw new CredentialError(`--etcd-password-file=${files.passwordFile}: the file is empty`);
    credentials.password = password;
  }
  return credentials;
}

// One or more PEM certificates, each of which parses.
function certificates(flag: string, path: string, data: Buffer): Buffer {
  const blocks = data.toString('latin1').match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new CredentialError(`${flag}=${path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)`);
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch {
      throw new CredentialError(`${flag}=${path}: holds a certificate that does not parse`);
    }
  }
  return data;
}

async function readSmall(flag: string, path: string): Promise<Buffer> {
  let handle;
  try {
    // Non-blocking, so that a FIFO given by mistake is refused rather than waited on.
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    throw new CredentialError(`${flag}=${path}: ${fileProblem(err as NodeJS.ErrnoException)}`);
  }
  try {
    const info = await handle.stat();
    if (info.isDirectory()) throw new CredentialError(`${flag}=${path}: is a directory, not a file`);
    if (!info.isFile()) throw new CredentialError(`${flag}=${path}: is not a regular file`);
    if (info.size > MAX_BYTES) throw new CredentialError(`${flag}=${path}: is ${info.size} bytes, too big for a certificate, key or password`);
    return await handle.readFile();
  } catch (err) {
    if (err instanceof CredentialError) throw err;
    throw new CredentialError(`${flag}=${path}: ${fileProblem(err as NodeJS.ErrnoException)}`);
  } finally {
    await handle.close();
  }
}

function fileProblem(err: NodeJS.ErrnoException): string {
  if (err.code === 'ENOENT') return 'no such file';
  if (err.code === 'EACCES') return 'cannot be read (permission denied)';
  if (err.code === 'EISDIR') return 'is a directory, not a file';
  return `cannot be read (${err.code ?? err.message})`;
}
