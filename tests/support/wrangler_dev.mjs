// `wrangler dev` through wrangler's own programmatic API, without a devtools inspector session.
//
//   node tests/support/wrangler_dev.mjs <wrangler.toml> <port>
//
// Same wrangler, Miniflare, proxy and workerd as the `wrangler dev` CLI, and the worker's
// console.log lines are still printed (workerd's structured logs on stdout). What is left out is
// the devtools inspector the CLI always attaches, which turns every console.log call into a
// DevTools protocol message relayed through wrangler's proxy to node: a development-only cost
// (about 1 ms of workerd CPU per log line, measured in bench/results.md) that a deployed worker
// never pays. Used by the benchmarks (bench/run.py); the tests use the CLI.
import { unstable_startWorker } from "wrangler";

const [config, port] = process.argv.slice(2);
const worker = await unstable_startWorker({
  config,
  dev: {
    server: { hostname: "127.0.0.1", port: Number(port) },
    inspector: false,
    watch: false,
    logLevel: "log", // prints console.log lines, like the CLI's default
  },
});
await worker.ready;
console.log(`Ready on ${(await worker.url).href}`);
const stop = async () => {
  await worker.dispose();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
