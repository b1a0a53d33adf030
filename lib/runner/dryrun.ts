// --dry-run's output: the config for the current etcd state, or a unified diff against the config file in
// place, and a one-line summary. Pure: the caller reads the file and prints.

import { createTwoFilesPatch } from 'diff';

interface DryRun {
  // For stdout: the config, a diff, or nothing when the file already holds this config.
  output: string;
  summary: string;
}

export function dryRunReport(path: string, current: string | undefined, config: string, revision: bigint, servers: number, problems: number): DryRun {
  const output = current === undefined ? config : current === config ? '' : createTwoFilesPatch(path, `${path} (revision ${revision})`, current, config);
  const compared = current === undefined ? '' : current === config ? `; ${path} is already this config` : `; diff against ${path}`;
  return { output, summary: `dry run: revision ${revision}, ${servers} server(s), ${problems} problem(s)${compared}` };
}
