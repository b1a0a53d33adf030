// npm run demo: the whole job in one minute, on this machine alone. A throwaway etcd holds the layout of
// a service "mysql" with three instances (three small local servers that say who they are), the built
// dist/ambassador proxies a port to its master, and the master changes under it.

import { startAmbassador } from './ambassador.ts';
import { startEtcd } from './etcd.ts';
import { freePort, startBackend, whoAnswers } from './net.ts';
import { stopAll } from './processes.ts';

const say = (text: string) => console.log(text);
const prefix = '/services/mysql';

const etcd = await startEtcd();
const backendPort = await freePort('127.0.0.11');
const backends = await Promise.all([1, 2, 3].map((i) => startBackend(`instance ${i} (127.0.0.1${i}:${backendPort})`, `127.0.0.1${i}`, backendPort)));
const port = await freePort();
let ambassador: Awaited<ReturnType<typeof startAmbassador>> | undefined;

const cleanUp = async () => {
  await ambassador?.cleanup();
  await Promise.all(backends.map((backend) => backend.close()));
  await etcd.stop();
  await stopAll();
};
process.on('SIGINT', () => void cleanUp().then(() => process.exit(130)));

try {
  say(`1. A throwaway etcd runs on ${etcd.endpoint}. It gets the registry of a service "mysql":`);
  for (const i of [1, 2, 3]) {
    await etcd.put(`${prefix}/instances/${i}/private_ip`, `127.0.0.1${i}`);
    say(`     ${prefix}/instances/${i}/private_ip = "127.0.0.1${i}"`);
  }
  await etcd.put(`${prefix}/master`, '2');
  say(`     ${prefix}/master = "2"`);
  say(`   Each instance is a small server on port ${backendPort} that answers with its name.\n`);

  const flags = [`--etcd=${etcd.endpoint}`, `--etcd-prefix=${prefix}`, '--master-only', `--port=${port}`, '--bind=127.0.0.1', `--backend-port=${backendPort}`];
  say(`2. Start ambassador in front of it:\n     dist/ambassador ${flags.join(' ')}`);
  ambassador = await startAmbassador(flags, { binary: 'dist' });
  const applied = await ambassador.waitForLog(/applied revision/);
  say(`   It logs: ${applied.replace(/^\S+ \S+\s+/, '')}\n`);

  say(`3. Connect to 127.0.0.1:${port} three times. Who answers?`);
  for (let i = 0; i < 3; i++) say(`     ${await whoAnswers(port)}`);

  say(`\n4. The master fails over: etcd put ${prefix}/master = "3".`);
  const began = performance.now();
  await etcd.put(`${prefix}/master`, '3');
  let answer = '';
  while (!answer.startsWith('instance 3') && performance.now() - began < 10_000) answer = await whoAnswers(port);
  say(`   The first new connection to reach instance 3 did so ${(performance.now() - began).toFixed(0)} ms after the put.`);
  for (let i = 0; i < 3; i++) say(`     ${await whoAnswers(port)}`);

  say(`\n5. A bad value is refused, not written into haproxy's config:`);
  await etcd.put(`${prefix}/instances/1/private_ip`, '127.0.0.11\n    server evil 127.0.0.99:1\n#');
  const rejected = await ambassador.waitForLog(/rejected .*instances\/1\/private_ip/);
  say(`   ambassador logs: ${rejected.replace(/^\S+ \S+\s+/, '')}`);
  say(`   and the master still answers: ${await whoAnswers(port)}`);

  say(`\n6. SIGTERM stops haproxy and ambassador cleanly.`);
  const code = await ambassador.stop();
  say(`   ambassador exited with code ${code}. Everything the demo started is being stopped now.`);
} finally {
  await cleanUp();
}
