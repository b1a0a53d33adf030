// The one logger: leveled events with a subject and facts, as text for people or JSON for machines.
// It writes lines to a sink (stderr by default) and never decides what is worth saying.

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['text', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

type Facts = Record<string, string | number | boolean | bigint | null | undefined>;

export interface Logger {
  debug(message: string, facts?: Facts): void;
  info(message: string, facts?: Facts): void;
  warn(message: string, facts?: Facts): void;
  error(message: string, facts?: Facts): void;
}

interface LoggerSettings {
  format: LogFormat;
  level: LogLevel;
  write?: (line: string) => void;
  now?: () => Date;
}

export function createLogger(settings: LoggerSettings): Logger {
  const write = settings.write ?? ((line: string) => process.stderr.write(line));
  const now = settings.now ?? (() => new Date());
  const threshold = LOG_LEVELS.indexOf(settings.level);
  const format = settings.format === 'json' ? formatJson : formatText;
  const at = (level: LogLevel) => (message: string, facts: Facts = {}) => {
    if (LOG_LEVELS.indexOf(level) >= threshold) write(format(now(), level, message, facts) + '\n');
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

function formatText(time: Date, level: LogLevel, message: string, facts: Facts): string {
  let line = `${time.toISOString()} ${level.toUpperCase().padEnd(5)} ${oneLine(message)}`;
  for (const [key, value] of Object.entries(facts)) {
    if (value !== undefined) line += ` ${key}=${textValue(value)}`;
  }
  return line;
}

function formatJson(time: Date, level: LogLevel, message: string, facts: Facts): string {
  const record: Record<string, unknown> = { time: time.toISOString(), level, msg: message };
  for (const [key, value] of Object.entries(facts)) {
    if (value !== undefined) record[key] = typeof value === 'bigint' ? value.toString() : value;
  }
  return JSON.stringify(record);
}

// A value from etcd or haproxy may hold newlines or escapes; a log line must stay one line.
function oneLine(text: string): string {
  return /[\u0000-\u001f\u007f]/.test(text) ? JSON.stringify(text).slice(1, -1) : text;
}

function textValue(value: string | number | boolean | bigint | null): string {
  const text = String(value);
  return /^[^\s"=\u0000-\u001f\u007f]+$/.test(text) ? text : JSON.stringify(text);
}
