import { WorkerConnectorError } from './errors.js';

/**
 * `fetchFn(url, init)` (the global `fetch` when none is given), then `read` on its answer, both
 * within `timeoutMs` (0: no limit; the request is aborted when it passes). A failure becomes a
 * {@link WorkerConnectorError} naming `what`: code `timeout` when the limit passed, else
 * `network_error`. Shared by the connector and the storage adapter.
 */
export async function fetchWithin<I extends { signal?: AbortSignal }, R, T>(
  fetchFn: ((url: string, init: I) => Promise<R>) | undefined,
  url: string,
  init: I,
  timeoutMs: number,
  what: string,
  read: (response: R) => Promise<T>,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut = false;
  if (timeoutMs > 0 && typeof AbortController === 'function') {
    const controller = new AbortController();
    init.signal = controller.signal;
    timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
  }
  try {
    // Called as a plain function (never as a method of an options object: browsers refuse that).
    const response = fetchFn
      ? await fetchFn(url, init)
      : await (globalThis.fetch as unknown as (url: string, init: I) => Promise<R>)(url, init);
    return await read(response);
  } catch (cause) {
    throw new WorkerConnectorError(
      timedOut
        ? `${what}: no answer within ${timeoutMs} ms`
        : `${what} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
      { code: timedOut ? 'timeout' : 'network_error', cause },
    );
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
}
