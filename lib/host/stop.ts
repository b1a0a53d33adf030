// Stopping a process in steps: each signal sent, then up to its time for the process to be gone, the next only
// if it is not. The process is named by how to signal it and how to tell it is gone, so that the same steps
// stop a child (its exit event) and a process found by its pid file (its start time in /proc).

type StopStep = [signal: NodeJS.Signals, withinMs: number];

// True once the process is gone, false if it outlived the last step.
export async function stopInSteps(steps: readonly StopStep[], send: (signal: NodeJS.Signals) => void, gone: (withinMs: number) => Promise<boolean>): Promise<boolean> {
  for (const [signal, withinMs] of steps) {
    if (await gone(0)) return true;
    send(signal);
    if (await gone(withinMs)) return true;
  }
  return false;
}
