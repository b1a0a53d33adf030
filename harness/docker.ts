// A private Docker engine for the tests: Debian's dockerd with its own socket, data root and exec root in a
// temp dir, so it never touches a Docker the machine may run; stopped by its pid, pass or fail. No registry
// is reachable, so the Dockerfile's base images are stood in by local images with exactly its names.

import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
  const dockerd = startProcess('dockerd', [
    '--storage-driver=vfs', '--iptables=false', '--ip-masq=false', '--bridge=none',
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

// The Dockerfile's two base images for one platform, built here from a Debian 13 root with haproxy 3.4 for it
// (rootfs.ts):
// - haproxy:3.4-trixie: that root as it is, run as the haproxy user with haproxy on PATH, as the official
//   image is;
// - node:24.21.0-trixie-slim: that root plus the project's pinned Node for that platform and this machine's npm,
//   trusting the CA bundle npm uses here (the registry's certificate chain ends there).
// `node`: the Node binary for the platform. An image of another platform than this machine's runs under
// emulation (harness/binfmt.ts). Debian 12's engine has no buildx, and its classic builder cannot build for a
// platform it is not (`--platform` refuses its own intermediate images): the images are built from bases of
// that platform without the flag, so their content is that platform's but their label says this machine's.
export async function standInBaseImages(docker: TestDocker, rootfs: string, dockerfile: string, platform: 'linux/amd64' | 'linux/arm64', node: string): Promise<void> {
  const froms = [...dockerfile.matchAll(/^FROM (?:--platform=\S+ )?(\S+)/gm)].map((match) => match[1]!);
  const nodeImage = froms.find((name) => name.startsWith('node:'));
  const haproxyImage = froms.find((name) => name.startsWith('haproxy:'));
  if (!nodeImage || !haproxyImage) throw new Error(`the Dockerfile's FROM lines changed: ${froms.join(', ')}`);
  const base = `ambassador-test/debian-root:${platform.replace('/', '-')}`;
  // The root as an image; the executable the minimal-root test copies in stays out.
  const tar = execFileSync('tar', ['-C', rootfs, '--exclude=./bin/ambassador', '--exclude=./.complete', '--exclude=./tmp/*', '-c', '.'], { maxBuffer: 1 << 30 });
  await docker.docker(['import', '--platform', platform, '-', base], { input: tar, timeoutMs: 300_000 });

  const context = mkdtempSync(join(tmpdir(), 'ambassador-standins-'));
  try {
    writeFileSync(join(context, 'Dockerfile.haproxy'), [
      `FROM ${base}`,
      'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'WORKDIR /var/lib/haproxy',
      'USER haproxy',
      'STOPSIGNAL SIGUSR1',
      'CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]',
      '',
    ].join('\n'));
    copyFileSync(node, join(context, 'node'));
    const npm = execFileSync('npm', ['root', '-g'], { encoding: 'utf8' }).trim();
    cpSync(join(npm, 'npm'), join(context, 'npm'), { recursive: true, dereference: true });
    const cafile = execFileSync('npm', ['config', 'get', 'cafile'], { encoding: 'utf8' }).trim();
    writeFileSync(join(context, 'ca.crt'), existsSync(cafile) ? readFileSync(cafile) : '');
    writeFileSync(join(context, 'Dockerfile.node'), [
      `FROM ${base}`,
      'COPY node /usr/local/bin/node',
      'COPY npm /usr/local/lib/node_modules/npm',
      'COPY ca.crt /usr/local/share/ca-certificates/npm-registry.crt',
      'RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx',
      'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'ENV NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/npm-registry.crt npm_config_cafile=/usr/local/share/ca-certificates/npm-registry.crt',
      'CMD ["node"]',
      '',
    ].join('\n'));
    await docker.docker(['build', '-q', '-f', join(context, 'Dockerfile.haproxy'), '-t', haproxyImage, context], { timeoutMs: 300_000 });
    await docker.docker(['build', '-q', '-f', join(context, 'Dockerfile.node'), '-t', nodeImage, context], { timeoutMs: 900_000 });
  } finally {
    rmSync(context, { recursive: true, force: true });
  }
}
