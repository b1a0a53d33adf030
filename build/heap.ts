// The V8 heap flags baked into the executable (see README, "Memory"): a sidecar's heap bounded by design, not
// by V8's lazy growth. The bench runs the pipeline under the same ones.
export const V8_FLAGS = ['--max-old-space-size=96', '--max-semi-space-size=1'] as const;
