// Patroni 3.0.2's member JSON, as a real member writes it, for tests that write Patroni's keys themselves.

export function patroniMember(host: string, port: number, over: Record<string, unknown> = {}): string {
  return JSON.stringify({
    conn_url: `postgres://${host}:${port}/postgres`,
    api_url: `http://${host}:8008/patroni`,
    state: 'running',
    role: 'replica',
    version: '3.0.2',
    xlog_location: 67108864,
    timeline: 1,
    ...over,
  });
}
