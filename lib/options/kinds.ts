// How a flag's text is read: each kind checks the text and gives the value Options holds, or says why not (a
// Refusal, which parse.ts turns into a usage error naming where the text came from). Pure.

import { isIP } from 'node:net';
import { isHostName, parsePort } from '../common/address.ts';

// Why a text is refused; said after the flag's source and, unless `withValue` is false, its text:
// `--port="x" is not a port (1-65535)`, `--etcd-prefix must name a prefix …`.
export class Refusal {
  readonly message: string;
  readonly withValue: boolean;
  constructor(message: string, withValue = true) {
    this.message = message;
    this.withValue = withValue;
  }
}

export interface Kind<T> {
  read(text: string): T | Refusal;
  // A boolean flag takes no value on the command line.
  boolean?: true;
  // The text may hold any character (a password); other kinds refuse control characters.
  anyText?: true;
}

export const text: Kind<string> = { read: (value) => value };

export const secret: Kind<string> = { read: (value) => value, anyText: true };

export const boolean: Kind<boolean> = {
  boolean: true,
  read: (value) => (/^(1|true|yes|on)$/i.test(value) ? true : /^(0|false|no|off)$/i.test(value) ? false : new Refusal('is not a boolean (use true or false)')),
};

export const port: Kind<number> = { read: (value) => parsePort(value) ?? new Refusal('is not a port (1-65535)') };

export const size: Kind<number> = {
  read: (value) => {
    const match = /^(\d{1,12})\s*(B|kB|KB|MB|GB)?$/.exec(value);
    if (!match) return new Refusal('is not a size (e.g. 16MB, 1048576)');
    return Number(match[1]) * { B: 1, kB: 1024, KB: 1024, MB: 1 << 20, GB: 1 << 30 }[match[2] ?? 'B']!;
  },
};

// What --replicas selects, in the words of Patroni's REST health checks (its haproxy recipe asks the same):
// the endpoint, and the query parameters Patroni takes with it.
export const REPLICA_ENDPOINTS = ['replica', 'async', 'sync', 'quorum', 'read-only', 'read-only-sync'] as const;
export type ReplicaEndpoint = (typeof REPLICA_ENDPOINTS)[number];
export interface ReplicaSelection {
  endpoint: ReplicaEndpoint;
  // Replay lag allowed, bytes (lag=).
  lag: number | undefined;
  // replication_state= (streaming, in archive recovery).
  replicationState: string | undefined;
  // tag_<key>=<value>, each required.
  tags: readonly (readonly [string, string])[];
}

export const replicaSelection: Kind<ReplicaSelection> = {
  read: (value) => {
    const match = /^\/([a-z-]+)(?:\?(.*))?$/.exec(value);
    const endpoint = match?.[1] === 'synchronous' ? 'sync' : match?.[1];
    if (!match || !REPLICA_ENDPOINTS.includes(endpoint as ReplicaEndpoint)) return new Refusal(`is not one of Patroni's endpoints ${REPLICA_ENDPOINTS.map((e) => `/${e}`).join(', ')}, with its query (e.g. /replica?lag=16MB&replication_state=streaming&tag_zone=a)`);
    const selection: ReplicaSelection = { endpoint: endpoint as ReplicaEndpoint, lag: undefined, replicationState: undefined, tags: [] };
    const tags: [string, string][] = [];
    for (const part of (match[2] ?? '').split('&').filter(Boolean)) {
      const [name, raw = ''] = part.split('=', 2) as [string, string?];
      let text: string;
      try {
        text = decodeURIComponent(raw.replaceAll('+', ' '));
      } catch {
        return new Refusal(`has a value that is not URL-encoded text: ${part}`);
      }
      if (name === 'lag') {
        const lag = size.read(text);
        if (lag instanceof Refusal) return new Refusal(`lag=${text} ${lag.message}`);
        selection.lag = lag;
      } else if (name === 'replication_state' && text !== '') {
        selection.replicationState = text;
      } else if (/^tag_[A-Za-z0-9_.-]+$/.test(name) && text !== '') {
        tags.push([name.slice(4), text]);
      } else {
        return new Refusal(`has ${part}: Patroni's parameters are lag=, replication_state= and tag_<key>=`);
      }
    }
    return { ...selection, tags };
  },
};

// haproxy's time format: a number with an optional unit (milliseconds by default).
export function durationMs(text: string): number | undefined {
  const match = /^(\d{1,9})(ms|s|m|h|d)?$/.exec(text);
  if (!match) return undefined;
  return Number(match[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] ?? 'ms']!;
}

// In ms, at least `least` (0 is "off" when `off` says what 0 means).
export function duration(example: string, least?: number, off?: string): Kind<number> {
  return {
    read: (value) => {
      const ms = durationMs(value);
      if (ms === undefined || (least !== undefined && off === undefined && ms < least)) return new Refusal(`is not a duration (e.g. ${example})`);
      if (least !== undefined && ms > 0 && ms < least) return new Refusal(`is too often for etcd: ${least}ms at least (or 0, off)`);
      return ms;
    },
  };
}

// In ms, from 0 to `most`.
export function upTo(example: string, most: number): Kind<number> {
  return {
    read: (value) => {
      const ms = durationMs(value);
      if (ms === undefined) return new Refusal(`is not a duration (e.g. ${example})`);
      if (ms > most) return new Refusal(`is more than ${most / 60_000} minutes`);
      return ms;
    },
  };
}

// haproxy's time format, checked and kept as written (it goes into haproxy's config).
export function time(example: string): Kind<string> {
  return { read: (value) => (durationMs(value) === undefined ? new Refusal(`is not a duration (e.g. ${example})`) : value) };
}

export function oneOf<const V extends string>(values: readonly V[]): Kind<V> {
  return { read: (value) => (values.includes(value as V) ? (value as V) : new Refusal(`is not one of ${values.join(', ')}`)) };
}

// An IPv4 or IPv6 literal.
export const address: Kind<string> = { read: (value) => (isIP(value) === 0 ? new Refusal('is not an IPv4 or IPv6 address') : value) };

// ADDR:PORT, the address a literal.
export const listen: Kind<{ host: string; port: number }> = {
  read: (value) => {
    const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(value);
    const host = match?.[1] ?? match?.[2];
    const number = parsePort(match?.[3] ?? '');
    if (host === undefined || isIP(host) === 0 || number === undefined) return new Refusal('is not ADDR:PORT (e.g. 127.0.0.1:9110 or [::1]:9110)');
    return { host, port: number };
  },
};

// A key prefix below the root, without a trailing slash.
export const prefix: Kind<string> = {
  read: (value) => {
    const stripped = value.replace(/\/+$/, '');
    return stripped === '' ? new Refusal('must name a prefix below the root, e.g. /services/mysql', false) : stripped;
  },
};

// An etcd endpoint as given: its scheme, if it names one, host and port (2379 if none).
export interface Endpoint {
  scheme: 'http' | 'https' | undefined;
  host: string;
  port: number;
}

export const endpoints: Kind<Endpoint[]> = {
  read: (value) => {
    const list = value.split(',').map((e) => e.trim()).filter((e) => e !== '');
    if (list.length === 0) return new Refusal('names no endpoint', false);
    const read: Endpoint[] = [];
    for (const endpoint of list) {
      const match = /^(?:(https?):\/\/)?(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+)(?::(\d{1,5}))?\/?$/.exec(endpoint);
      const host = match?.[2];
      const hostOk = host !== undefined && (host.startsWith('[') ? isIP(host.slice(1, -1)) === 6 : isIP(host) === 4 || isHostName(host));
      const number = parsePort(match?.[3] ?? '2379');
      if (!match || !hostOk || number === undefined) return new Refusal(`: ${JSON.stringify(endpoint)} is not an etcd endpoint (host, host:port or http(s)://host:port)`, false);
      read.push({ scheme: match[1] as Endpoint['scheme'], host, port: number });
    }
    return read;
  },
};

// Endpoints as URLs: a bare one is https when TLS is on.
export function endpointUrls(list: readonly Endpoint[], tls: boolean): string[] {
  return list.map(({ scheme, host, port }) => `${scheme ?? (tls ? 'https' : 'http')}://${host}:${port}`);
}
