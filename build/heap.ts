// The V8 heap flags baked into the executable (see README, "Memory"): a sidecar's heap bounded by design, not
// by V8's lazy growth. The bench runs the pipeline under the same ones. --optimize-for-size keeps the heap
// near what is live under a burst of writes to a large registry (4,700 instances and 2,000 master changes at
// full speed: private memory at 75 MB at its peak with it, 110 MB without; the fuzzer's memory bound).
export const V8_FLAGS = ['--max-old-space-size=96', '--max-semi-space-size=1', '--optimize-for-size'] as const;
