// Debian root filesystems for the tests, built with debootstrap and kept outside the clone
// ($AMBASSADOR_TEST_CACHE, else ~/.cache/ambassador-test), so that runs on one machine share them; built
// again when missing or when what they should hold changed. They carry what users install:
//   bookworm-haproxy  minimal Debian 12 with its haproxy (2.6): what the official 2.6 image had
//   trixie            Debian 13: haproxy 3.0, etcd 3.5.16, Patroni 4, PostgreSQL 17
//   sid               Debian sid: haproxy 3.2, etcd 3.5.30, Patroni 4.1, PostgreSQL 18
//   trixie-haproxy-3.4  Debian 13 with haproxy 3.4 (Debian experimental's, with the newer pcre2 it needs) and
//                     sid's etcd 3.5.30: what the official haproxy:3.4 image is (the image's stand-in base),
//                     beside the etcd a new deployment installs
//   trixie-haproxy-3.4-arm64  the same for arm64, run under emulation (harness/binfmt.ts): the arm64 image's
//                     stand-in base, and the root the arm64 suites run in

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { requireCommand } from './etcd.ts';

export const TEST_CACHE = process.env.AMBASSADOR_TEST_CACHE ?? join(homedir(), '.cache/ambassador-test');
const cache = join(TEST_CACHE, 'rootfs');
const MIRROR = process.env.AMBASSADOR_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';

// What the integration suites use inside a root, besides haproxy and etcd.
const SUITE_TOOLS = ['etcd-server', 'etcd-client', 'iproute2', 'iptables', 'tcpdump', 'openssl', 'procps', 'ca-certificates', 'libstdc++6'];

interface RootSpec {
  suite: string;
  // Another architecture than this machine's (built and run under emulation: harness/binfmt.ts).
  arch?: 'arm64';
  include: string[];
  // Run in the root once it is bootstrapped, with apt given extra sources (sid and experimental's Release
  // files are served past their Valid-Until, hence the option).
  after?: string[];
}

const APT = 'apt-get -o Acquire::Check-Valid-Until=false -o APT::Get::Assume-Yes=true -o Dpkg::Options::=--force-confnew';

// Debian 13 with haproxy 3.4 (Debian experimental's, with the newer pcre2 it needs) and sid's etcd 3.5.30.
const HAPROXY_34 = [
  `echo 'deb ${MIRROR} sid main' > /etc/apt/sources.list.d/sid.list`,
  `echo 'deb ${MIRROR} experimental main' > /etc/apt/sources.list.d/experimental.list`,
  // Debian 13 first; from sid only the pcre2 haproxy 3.4 needs, from experimental haproxy itself.
  `printf 'Package: *\\nPin: release n=sid\\nPin-Priority: 100\\n' > /etc/apt/preferences.d/sid`,
  `${APT} update`,
  `DEBIAN_FRONTEND=noninteractive ${APT} install --no-install-recommends -t sid libpcre2-8-0`,
  `DEBIAN_FRONTEND=noninteractive ${APT} install --no-install-recommends -t experimental haproxy`,
  // sid's etcd-server runs systemd-tmpfiles when it is configured, which needs /proc.
  `mount -t proc proc /proc && DEBIAN_FRONTEND=noninteractive ${APT} install --no-install-recommends -t sid etcd-server etcd-client; status=$?; umount /proc; exit $status`,
  'rm /etc/apt/sources.list.d/sid.list /etc/apt/sources.list.d/experimental.list /etc/apt/preferences.d/sid',
  `${APT} update || true`,
];

export const ROOTS = {
  'bookworm-haproxy': { suite: 'bookworm', include: ['haproxy'] },
  trixie: {
    suite: 'trixie',
    include: ['haproxy', ...SUITE_TOOLS],
    // Patroni's etcd client is one of several alternatives apt would not choose by itself.
    after: [`DEBIAN_FRONTEND=noninteractive ${APT} install --no-install-recommends patroni python3-etcd postgresql-17`],
  },
  sid: {
    suite: 'sid',
    include: ['haproxy', ...SUITE_TOOLS],
    // Patroni 4.1, the first to write each member's replay position.
    after: [`DEBIAN_FRONTEND=noninteractive ${APT} install --no-install-recommends patroni python3-etcd postgresql-18`],
  },
  'trixie-haproxy-3.4': { suite: 'trixie', include: SUITE_TOOLS, after: HAPROXY_34 },
  'trixie-haproxy-3.4-arm64': { suite: 'trixie', arch: 'arm64', include: SUITE_TOOLS, after: HAPROXY_34 },
} satisfies Record<string, RootSpec>;

export type RootName = keyof typeof ROOTS;

// The root, built if it is missing or was built to another spec.
export function debianRoot(name: RootName): string {
  const spec: RootSpec = ROOTS[name];
  const root = join(cache, name);
  const stamp = createHash('sha256').update(JSON.stringify([spec, MIRROR])).digest('hex').slice(0, 16);
  const marker = join(root, '.complete');
  if (existsSync(marker) && readFileSync(marker, 'utf8').includes(stamp)) return root;
  if (process.getuid?.() !== 0) throw new Error('building and entering a root filesystem needs root (debootstrap, chroot, mount)');
  requireCommand('debootstrap', 'apt-get install -y debootstrap');
  const building = `${root}.partial`;
  rmSync(building, { recursive: true, force: true });
  const log = join(cache, `${name}.log`);
  const run = (command: string, args: string[]) => {
    try {
      execFileSync(command, args, { stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 256 << 20, timeout: 1_200_000 });
    } catch (err) {
      const { stdout, stderr } = err as { stdout?: Buffer; stderr?: Buffer };
      writeFileSync(log, `${stdout ?? ''}\n${stderr ?? ''}`);
      throw new Error(`building the ${name} root: ${command} ${args.slice(0, 4).join(' ')}… failed (${log})`);
    }
  };
  // An unpacking error of a package in --include is finished by `after` (see trixie's).
  try {
    run('debootstrap', ['--variant=minbase', ...(spec.arch ? [`--arch=${spec.arch}`] : []), `--include=${spec.include.join(',')}`, spec.suite, building, MIRROR]);
  } catch (err) {
    if (spec.after === undefined) throw err;
  }
  // With /proc, in a mount namespace that takes it away again: postgresql-common's postinst needs it.
  for (const step of spec.after ?? []) run('unshare', ['--mount', '--pid', '--fork', `--mount-proc=${building}/proc`, 'chroot', building, 'sh', '-c', step]);
  run('chroot', [building, 'sh', '-c', 'apt-get clean']);
  writeFileSync(join(building, '.complete'), `${stamp} ${new Date().toISOString()} ${MIRROR}\n`);
  rmSync(root, { recursive: true, force: true });
  renameSync(building, root);
  return root;
}

// A command run inside the root `name` (built if need be), in a mount and pid namespace of its own (and a
// private network namespace with `network`): `project`, /tmp, /dev and /sys bound in at the same paths,
// /proc mounted, the command run from `project`; and `binds`, the host's files or folders at the same paths
// (the host's own tools for a root of another architecture, say). The namespaces' first process is a shell,
// which reaps whatever is left orphaned in there; everything dies with it.
export function inRoot(name: RootName, project: string, command: string[], network: boolean, binds: string[] = []): string[] {
  const root = debianRoot(name);
  const script = [
    'root=$1; project=$2; binds=$3; shift 3',
    ...(network ? ['ip link set lo up'] : []),
    'mkdir -p "$root$project"',
    'mount --rbind /dev "$root/dev" && mount --rbind /sys "$root/sys" && mount --bind /tmp "$root/tmp"',
    'mount -t proc proc "$root/proc" && mount --bind "$project" "$root$project"',
    'for path in $binds; do if [ -d "$path" ]; then mkdir -p "$root$path"; else touch "$root$path"; fi; mount --bind "$path" "$root$path" || exit 1; done',
    'chroot "$root" sh -c \'cd "$0" && "$@"\' "$project" "$@"',
  ].join('\n');
  const namespaces = network ? ['--net', '--pid', '--fork', '--mount', '--kill-child'] : ['--pid', '--fork', '--mount', '--kill-child'];
  return ['unshare', ...namespaces, '--', 'sh', '-c', script, 'sh', root, project, binds.join(' '), ...command];
}

export function bookwormWithHaproxy(): string {
  return debianRoot('bookworm-haproxy');
}

// The version line of a program inside a root, e.g. "HAProxy version 3.0.11-1+deb13u4 …".
export function versionIn(root: string, command: string[]): string {
  return execFileSync('chroot', [root, ...command], { encoding: 'utf8' }).split('\n')[0]!.trim();
}
