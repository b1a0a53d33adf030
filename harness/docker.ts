// A private Docker engine for the tests: Debian's dockerd with its own socket, data root and exec root in a
// temp dir, so it never touches a Docker the machine may run; stopped by its pid, pass or fail. No registry
// is reachable, so the Dockerfile's base images are stood in by local images with exactly its names.

import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { requireCommand } from './etcd.ts';
import { isRunning, startProcess, stopPid } from './processes.ts';

export interface TestDocker {
  // DOCKER_HOST for this engine.
  host: string;
  // The docker client against this engine: its output (with its stderr too, if asked: `docker logs` gives a
  // container's stderr there), or an error with its stderr.
  docker(args: string[], options?: { timeoutMs?: number; input?: Buffer; stderr?: boolean }): Promise<string>;
  // The docker client as a child process (for `docker run` in the foreground), tracked like every other.
  spawnDocker(args: string[]): ReturnType<typeof startProcess>;
  stop(): Promise<void>;
}

// Debian's client (docker.io) matches Debian's engine; another client on PATH may be newer than the engine.
function dockerClient(): string {
  return existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
}

export async function startDocker(): Promise<TestDocker> {
  requireCommand('dockerd', 'apt-get install -y --no-install-recommends docker.io');
  if (process.getuid?.() !== 0) throw new Error('dockerd needs root');
  const dir = mkdtempSync(join(tmpdir(), 'ambassador-docker-'));
  const socket = join(dir, 'docker.sock');
  const host = `unix://${socket}`;
  // overlay2 shares each layer's files; vfs (a full copy of every layer, gigabytes of writes that slow every
  // other process on the machine) only where the kernel has no overlay.
  const storage = readFileSync('/proc/filesystems', 'utf8').includes('\toverlay\n') ? 'overlay2' : 'vfs';
  const dockerd = startProcess('dockerd', [
    `--storage-driver=${storage}`, '--iptables=false', '--ip-masq=false', '--bridge=none',
    `--data-root=${join(dir, 'root')}`, `--exec-root=${join(dir, 'exec')}`, '-H', host, `--pidfile=${join(dir, 'docker.pid')}`,
  ]);
  let log = '';
  dockerd.stdout!.resume();
  dockerd.stderr!.on('data', (data) => (log = (log + data).slice(-4000)));
  const env = { ...process.env, DOCKER_HOST: host, DOCKER_BUILDKIT: '0', DOCKER_CLI_HINTS: 'false' };
  const docker = (args: string[], options: { timeoutMs?: number; input?: Buffer; stderr?: boolean } = {}) =>
    new Promise<string>((resolvePromise, reject) => {
      const child = execFile(dockerClient(), args, { env, maxBuffer: 64 << 20, timeout: options.timeoutMs ?? 60_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
        if (err) reject(new Error(`docker ${args.join(' ')}: ${(err as Error).message}\n${stderr}`));
        else resolvePromise(options.stderr ? stdout + stderr : stdout);
      });
      if (options.input !== undefined) child.stdin!.end(options.input);
    });
  const stop = async () => {
    if (dockerd.pid !== undefined) await stopPid(dockerd.pid, 20_000);
    // dockerd leaves the host's network namespace bind-mounted in its exec root (for --network host).
    const mounts = readFileSync('/proc/mounts', 'utf8').split('\n').map((line) => line.split(' ')[1] ?? '');
    for (const mount of mounts.filter((path) => path.startsWith(`${dir}/`)).reverse()) execFileSync('umount', ['-l', mount]);
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (await docker(['version', '--format', '{{.Server.Version}}'], { timeoutMs: 5000 }).then(() => true, () => false)) break;
    if (Date.now() > deadline || !isRunning(dockerd)) {
      await stop();
      throw new Error(`dockerd did not come up:\n${log}`);
    }
    await sleep(200);
  }
  return { host, docker, spawnDocker: (args) => startProcess(dockerClient(), args, { env }), stop };
}

// The Dockerfile's two base images, built here from Debian 13 roots with haproxy 3.4 (rootfs.ts):
// - node:24.21.0-trixie-slim, the build stage's, on this machine's platform (the stage cross-builds): a root
//   of this machine's plus the project's pinned Node and this machine's npm, trusting the CA bundle npm uses
//   here (the registry's certificate chain ends there);
// - haproxy:3.4-trixie, the final stage's, for the platform built: that platform's root as it is, run as the
//   haproxy user with haproxy on PATH, as the official image is.
// Debian 12's engine has no buildx, and its classic builder cannot build for a platform it is not (`--platform`
// refuses its own intermediate images): an arm64 haproxy base is imported from the arm64 root without the
// flag, so its content is arm64's but its label says this machine's. The final stage runs nothing in it.
const baseNames = (dockerfile: string) => {
  const froms = [...dockerfile.matchAll(/^FROM (?:--platform=\S+ )?(\S+)/gm)].map((match) => match[1]!);
  const node = froms.find((name) => name.startsWith('node:'));
  const haproxy = froms.find((name) => name.startsWith('haproxy:'));
  if (!node || !haproxy) throw new Error(`the Dockerfile's FROM lines changed: ${froms.join(', ')}`);
  return { node, haproxy };
};

// A root as an image (the executable the minimal-root test copies in stays out).
async function importRoot(docker: TestDocker, rootfs: string, platform: string): Promise<string> {
  const base = `ambassador-test/debian-root:${platform.replace('/', '-')}`;
  const tar = execFileSync('tar', ['-C', rootfs, '--exclude=./bin/ambassador', '--exclude=./.complete', '--exclude=./tmp/*', '-c', '.'], { maxBuffer: 1 << 30 });
  await docker.docker(['import', '--platform', platform, '-', base], { input: tar, timeoutMs: 300_000 });
  return base;
}

async function buildFrom(docker: TestDocker, image: string, lines: string[], files: Record<string, (dir: string) => void> = {}): Promise<void> {
  const context = mkdtempSync(join(tmpdir(), 'ambassador-standins-'));
  try {
    writeFileSync(join(context, 'Dockerfile'), [...lines, ''].join('\n'));
    for (const put of Object.values(files)) put(context);
    await docker.docker(['build', '-q', '-t', image, context], { timeoutMs: 900_000 });
  } finally {
    rmSync(context, { recursive: true, force: true });
  }
}

// The build stage's base, from a root of this machine's platform; `node`: this machine's Node binary.
export async function standInBuildBase(docker: TestDocker, rootfs: string, dockerfile: string, node: string): Promise<void> {
  const base = await importRoot(docker, rootfs, `linux/${process.arch === 'arm64' ? 'arm64' : 'amd64'}`);
  // npm's own folder, from its executable (`npm root -g` answers after the Node first on PATH, not npm's).
  const npm = resolve(realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim()), '../..');
  const cafile = execFileSync('npm', ['config', 'get', 'cafile'], { encoding: 'utf8' }).trim();
  await buildFrom(
    docker,
    baseNames(dockerfile).node,
    [
      `FROM ${base}`,
      'COPY node /usr/local/bin/node',
      'COPY npm /usr/local/lib/node_modules/npm',
      'COPY ca.crt /usr/local/share/ca-certificates/npm-registry.crt',
      'RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx',
      'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'ENV NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/npm-registry.crt npm_config_cafile=/usr/local/share/ca-certificates/npm-registry.crt',
      'CMD ["node"]',
    ],
    {
      node: (dir) => copyFileSync(node, join(dir, 'node')),
      npm: (dir) => cpSync(npm, join(dir, 'npm'), { recursive: true, dereference: true }),
      ca: (dir) => writeFileSync(join(dir, 'ca.crt'), existsSync(cafile) ? readFileSync(cafile) : ''),
    },
  );
}

// The final stage's base for `platform`, from a root of that platform.
export async function standInFinalBase(docker: TestDocker, rootfs: string, dockerfile: string, platform: 'linux/amd64' | 'linux/arm64'): Promise<void> {
  const base = await importRoot(docker, rootfs, platform);
  await buildFrom(docker, baseNames(dockerfile).haproxy, [
    `FROM ${base}`,
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    'WORKDIR /var/lib/haproxy',
    'USER haproxy',
    'STOPSIGNAL SIGUSR1',
    'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]',
  ]);
}
