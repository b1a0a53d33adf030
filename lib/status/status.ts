// The operator's window, on --status=ADDR:PORT: GET /healthz (200 or 503 with the reason), GET /metrics
// (Prometheus text) and GET /state (JSON of what is live). Each answer is read from a snapshot the runner
// assembles on each request (lib/status/health.ts); nothing here changes anything. lib/status/server.ts serves
// the answers over HTTP.

import type { ApplyPath, Traffic } from '../haproxy/driver.ts';
import { health, type StatusSnapshot } from './health.ts';
import { createMetrics } from './metrics.ts';
import { serveStatus, type StatusAnswer, type StatusServer } from './server.ts';
import { stateJson } from './state.ts';

export type { LastChange, StatusSnapshot } from './health.ts';

interface Status {
  // Counts what happened, as the runner sees it.
  changeApplied(path: ApplyPath, convergenceSeconds: number): void;
  problemsFound(count: number): void;
  listen(host: string, port: number): Promise<void>;
  close(): Promise<void>;
}

export function createStatus(source: () => StatusSnapshot, maxStaleMs: number, readTraffic: () => Promise<Traffic | undefined>): Status {
  const metrics = createMetrics(source, maxStaleMs, readTraffic);
  const respond = async (path: string): Promise<StatusAnswer> => {
    const snapshot = source();
    if (path === '/healthz') {
      const verdict = health(snapshot, maxStaleMs);
      return { code: verdict.healthy ? 200 : 503, type: 'text/plain; charset=utf-8', body: verdict.reason + '\n' };
    }
    if (path === '/metrics') return { code: 200, type: metrics.contentType, body: await metrics.scrape(snapshot) };
    if (path === '/state') return { code: 200, type: 'application/json', body: JSON.stringify(stateJson(snapshot, maxStaleMs, (await readTraffic())?.hold), null, 2) + '\n' };
    return { code: 404, type: 'text/plain; charset=utf-8', body: 'not found: try /healthz, /metrics or /state\n' };
  };
  let server: StatusServer | undefined;
  return {
    changeApplied: metrics.changeApplied,
    problemsFound: metrics.problemsFound,
    listen: async (host, port) => {
      server = await serveStatus(host, port, respond);
    },
    close: async () => server?.close(),
  };
}
