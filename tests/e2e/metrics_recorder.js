// Test-only entry point (tests/e2e/test_metrics.py): the built worker, unchanged, with its
// Analytics Engine binding (METRICS, configured in wrangler.toml as for a deployment) wrapped so
// that every data point is also printed as `{"event":"data_point",...}` before reaching the
// real local binding. The test compares each printed point with the worker's log line.
import Worker from "../../build/index.js";

function recording(env) {
  return new Proxy(env, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (name !== "METRICS" || value == null) return value;
      return {
        writeDataPoint(point) {
          console.log(JSON.stringify({ event: "data_point", point }));
          return value.writeDataPoint(point);
        },
      };
    },
  });
}

export default class extends Worker {
  constructor(ctx, env) {
    super(ctx, recording(env));
  }
}
