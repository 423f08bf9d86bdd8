import type {
  CommonPowerSyncDatabase,
  CrudEntry,
  CrudTransaction,
  PowerSyncBackendConnector,
  PowerSyncCredentials,
} from '@powersync/common';

import { WorkerConnectorError } from './errors.js';
import { fetchWithin } from './fetching.js';
import { withExactIntegers, type RawQueue } from './integers.js';
import {
  errorOf,
  interpretUploadResponse,
  parseRetryAfter,
  planUploadBody,
  sendableBefore,
  sentTransactionIds,
  uploadBodyText,
  type FailedOperation,
} from './protocol.js';

/** The subset of a `fetch` response the connector reads. The global `Response` satisfies it. */
export interface FetchResponseLike {
  readonly status: number;
  readonly headers: { get(name: string): string | null };
  text(): Promise<string>;
}

/** What the connector passes to `fetch` as its second argument. */
export interface FetchInitLike {
  method: 'GET' | 'POST';
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}

/** A `fetch` implementation: `globalThis.fetch`, or any function with this shape. */
export type FetchLike = (url: string, init: FetchInitLike) => Promise<FetchResponseLike>;

/** What {@link WorkerConnectorOptions.onFatalError} receives for a transaction the worker rejected for good. */
export interface FatalErrorReport {
  /**
   * `fatal_error`: the worker rejected the transaction for good. `conflict` (only with the worker's
   * `UPLOAD_CONFLICT_DETECTION`): nothing of it was applied because a row had changed on the server
   * since the app saw it; `failedEntry` is that entry (the server's row reaches the app by sync).
   * Either way the transaction is discarded from the queue once this returns.
   */
  status: 'fatal_error' | 'conflict';
  /** The SDK's transaction id; `undefined` for entries recorded without one (each is its own transaction). */
  transactionId: number | undefined;
  /**
   * Every entry of the transaction, as the SDK queued it. The whole transaction is discarded from
   * the queue; what of it the server holds depends on how it was applied: see `appliedVia`.
   */
  entries: CrudEntry[];
  /** The worker's `failed_operation`: which entry failed (`index`) and why (`code`, `message`, ...). */
  failedOperation: FailedOperation | null;
  /** `entries[failedOperation.index]`, when the worker named the entry. */
  failedEntry: CrudEntry | undefined;
  /**
   * `rest` when the worker applied the transaction through REST requests after its atomic call
   * timed out: the entries before `failedOperation.index` stayed applied (they are on the server,
   * and reach the app by sync), so an app that re-creates the transaction must leave them out.
   * `undefined` when the atomic function applied nothing of it. A worker without the atomic
   * function (the worker's `UPLOAD_ATOMIC=false`) applies every transaction that way without
   * saying so (its docs/upload.md).
   */
  appliedVia: string | undefined;
  /** With `appliedVia`: the worker's words for why, and what that costs. */
  appliedViaReason: string | undefined;
}

/** What {@link WorkerConnectorOptions.onUnchanged} receives for an applied transaction some of whose writes changed nothing. */
export interface UnchangedReport {
  /** The SDK's transaction id; `undefined` for entries recorded without one. */
  transactionId: number | undefined;
  /** Every entry of the transaction, as the SDK queued it. */
  entries: CrudEntry[];
  /** Indexes in `entries` of the entries that changed no row, in order. */
  unchangedIndexes: number[];
  /** `entries[i]` for each of `unchangedIndexes`. */
  unchangedEntries: CrudEntry[];
}

/** Options of {@link WorkerConnector}. */
export interface WorkerConnectorOptions {
  /**
   * Base URL of the worker, e.g. `https://powersync-supabase-worker.example.workers.dev`. Requests go
   * to `<workerUrl>/powersync-token` and `<workerUrl>/powersync-upload`; trailing slashes are ignored.
   * Required; no default.
   */
  workerUrl: string;
  /**
   * Returns the user's current session access token (Supabase, or whatever the worker verifies),
   * or `null`/`undefined` when signed out. Called before every request; it should return a fresh
   * token (e.g. supabase-js `getSession()`, which refreshes an expired one). Required; no default.
   */
  getSessionToken: () => Promise<string | null | undefined> | string | null | undefined;
  /**
   * Called once after the worker answered 401 (e.g. `session_expired` while the app's clock
   * still took the token for valid) to get a refreshed token, with which the request is sent
   * again at once (e.g. supabase-js `async () => (await supabase.auth.refreshSession()).data.session?.access_token`).
   * Not set, or answering nothing new: no second attempt; the 401 is thrown and the SDK retries
   * later (nothing is completed). Default: not set.
   */
  refreshSessionToken?: () => Promise<string | null | undefined> | string | null | undefined;
  /**
   * Called once for each transaction the worker rejected permanently (`fatal_error`, or `conflict`
   * when the worker's conflict detection found a row changed since the app saw it), before that
   * transaction is removed from the local upload queue. Use it to tell the user, log, or keep a copy.
   * If it throws (or rejects), the transaction stays queued and `uploadData` rethrows that error, so
   * the upload is retried later (and this is called again).
   * Default: logs the transaction id and the worker's error code and message with `console.error`
   * (no row data).
   */
  onFatalError?: (report: FatalErrorReport) => void | Promise<void>;
  /**
   * Called once for each transaction the worker applied (`success`) in which some entries changed
   * no row (the worker's `unchanged`): the row was already gone, or hidden from the user by
   * row-level security, or a database trigger skipped a PUT. The user's change to it is not in the database: tell the user, or
   * re-create the row. Called before the transaction is removed from the upload queue; if it
   * throws (or rejects), the transaction stays queued and `uploadData` rethrows that error (the
   * transaction is sent again later, and this is called again for it: a worker with the atomic
   * function's exactly-once ledger answers `already_applied` with the same `unchanged`).
   * Default: logs the transaction id and the entries' indexes, tables and ops with `console.warn`
   * (no row data).
   */
  onUnchanged?: (report: UnchangedReport) => void | Promise<void>;
  /**
   * Most transactions sent in one upload request. Set 1 for one transaction per request.
   * Default: 20.
   */
  maxTransactionsPerRequest?: number;
  /**
   * Most CRUD entries sent in one upload request, all transactions together. A single transaction
   * with more entries is still sent, alone. Keep it at or below the worker's `UPLOAD_MAX_ENTRIES`
   * (10,000 by default). Default: 1000.
   */
  maxEntriesPerRequest?: number;
  /**
   * Milliseconds before a request to the worker is aborted (then it counts as a network error and is
   * retried; nothing is completed). 0 disables the timeout. Default: 60000.
   */
  requestTimeoutMs?: number;
  /** The `fetch` to use. Default: `globalThis.fetch`, looked up at each request. */
  fetch?: FetchLike;
  /**
   * Whether each upload reports the local upload queue to the worker, in the
   * `PowerSync-Upload-Queue` header (`count=<entries waiting>; oldest_seconds=<how long the
   * transaction at the head of the queue has waited since this connector first tried it>`), from
   * the SDK's `getUploadQueueStats()`. The worker records it in its log line and metrics (docs/metrics.md).
   * No row data is sent. Default: true.
   */
  reportQueue?: boolean;
}

/**
 * The local upload queue: the methods of the PowerSync database `uploadData` uses. Every
 * `@powersync/web`, `@powersync/node` and `@powersync/react-native` database satisfies it.
 */
export type UploadQueue = Pick<CommonPowerSyncDatabase, 'getNextCrudTransaction'> &
  Partial<Pick<CommonPowerSyncDatabase, 'getCrudTransactions' | 'getClientId' | 'getUploadQueueStats' | 'getAll'>>;

/** The request header the queue report travels in (see {@link WorkerConnectorOptions.reportQueue}). */
export const QUEUE_HEADER = 'PowerSync-Upload-Queue';

const DEFAULT_MAX_TRANSACTIONS = 20;
const DEFAULT_MAX_ENTRIES = 1000;
const DEFAULT_TIMEOUT_MS = 60_000;

/** The SDK's own choice (`utils/compatibility.ts`), so its iterables work on engines without the symbol. */
const asyncIteratorSymbol: typeof Symbol.asyncIterator =
  Symbol.asyncIterator ?? (Symbol.for('Symbol.asyncIterator') as typeof Symbol.asyncIterator);

function positiveInteger(name: string, value: number | undefined, fallback: number, allowZero = false): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < (allowZero ? 0 : 1)) {
    throw new TypeError(`${name} must be ${allowZero ? 'a non-negative' : 'a positive'} integer, got ${value}`);
  }
  return value;
}

/** Each database's client id once read: it never changes for a database. */
const knownClientIds = new WeakMap<object, string>();

/**
 * The database's PowerSync client id (`getClientId()`), sent with every upload so the worker's
 * atomic function applies each transaction exactly once. Read once per database and kept: a
 * later failure to read it again must not send an attempt without it, which the ledger could not
 * tell from a late keyed one. `undefined` when the database has no such method or has never
 * given one: the upload is then sent without it (applied as before: a re-send after a lost
 * answer is applied again).
 */
async function clientIdOf(database: UploadQueue): Promise<string | undefined> {
  const known = knownClientIds.get(database);
  if (known !== undefined) return known;
  if (typeof database.getClientId !== 'function') return undefined;
  try {
    const id = await database.getClientId();
    if (typeof id !== 'string' || id === '') return undefined;
    knownClientIds.set(database, id);
    return id;
  } catch {
    return undefined;
  }
}

function defaultOnUnchanged(report: UnchangedReport): void {
  const which = report.unchangedIndexes
    .map((i) => `${i} (${report.entries[i]?.op ?? '?'} ${report.entries[i]?.table ?? '?'})`)
    .join(', ');
  console.warn(
    `[WorkerConnector] transaction ${report.transactionId ?? '(no id)'} was applied, but entries ${which} ` +
      'changed no row (gone, hidden by row-level security, or skipped by a trigger)',
  );
}

function defaultOnFatalError(report: FatalErrorReport): void {
  const failure = report.failedOperation;
  console.error(
    `[WorkerConnector] the worker ${report.status === 'conflict' ? 'found a conflict in' : 'rejected'} transaction ${report.transactionId ?? '(no id)'} for good; ` +
      `it is discarded from the upload queue: ${failure ? `${failure.code} ${failure.message}` : 'no details'}` +
      (failure?.index != null ? ` (entry ${failure.index})` : '') +
      (report.appliedVia === 'rest' && failure?.index != null
        ? `; the entries before it were applied (through REST: ${report.appliedViaReason ?? 'no reason given'})`
        : ''),
  );
}

/**
 * PowerSync backend connector for powersync-supabase-worker.
 *
 * - `fetchCredentials()` exchanges the session token for a PowerSync token at `/powersync-token`.
 * - `uploadData()` sends queued transactions, several per request, to `/powersync-upload` and
 *   completes exactly those the worker reports as applied (`success`) or rejected for good
 *   (`fatal_error`, `conflict`), in order; anything else throws so the SDK retries later.
 *
 * @example
 * ```ts
 * const connector = new WorkerConnector({
 *   workerUrl: 'https://my-worker.example.workers.dev',
 *   getSessionToken: async () => (await supabase.auth.getSession()).data.session?.access_token,
 * });
 * await db.connect(connector);
 * ```
 */
export class WorkerConnector implements PowerSyncBackendConnector {
  private readonly baseUrl: string;
  private readonly getSessionToken: WorkerConnectorOptions['getSessionToken'];
  private readonly refreshSessionToken: WorkerConnectorOptions['refreshSessionToken'];
  private readonly onFatalError: (report: FatalErrorReport) => void | Promise<void>;
  private readonly onUnchanged: (report: UnchangedReport) => void | Promise<void>;
  private readonly maxTransactions: number;
  private readonly maxEntries: number;
  private readonly timeoutMs: number;
  private readonly fetchImpl: FetchLike | undefined;
  private readonly reportQueue: boolean;
  /** The transaction at the head of the queue and when this connector first read it there. */
  private head: { key: string; since: number } | undefined;

  constructor(options: WorkerConnectorOptions) {
    if (typeof options?.workerUrl !== 'string' || options.workerUrl.trim() === '') {
      throw new TypeError('workerUrl is required');
    }
    if (typeof options.getSessionToken !== 'function') {
      throw new TypeError('getSessionToken is required');
    }
    this.baseUrl = options.workerUrl.trim().replace(/\/+$/, '');
    this.getSessionToken = options.getSessionToken;
    if (options.refreshSessionToken !== undefined && typeof options.refreshSessionToken !== 'function') {
      throw new TypeError('refreshSessionToken must be a function');
    }
    this.refreshSessionToken = options.refreshSessionToken;
    this.onFatalError = options.onFatalError ?? defaultOnFatalError;
    this.onUnchanged = options.onUnchanged ?? defaultOnUnchanged;
    this.maxTransactions = positiveInteger('maxTransactionsPerRequest', options.maxTransactionsPerRequest, DEFAULT_MAX_TRANSACTIONS);
    this.maxEntries = positiveInteger('maxEntriesPerRequest', options.maxEntriesPerRequest, DEFAULT_MAX_ENTRIES);
    this.timeoutMs = positiveInteger('requestTimeoutMs', options.requestTimeoutMs, DEFAULT_TIMEOUT_MS, true);
    this.reportQueue = options.reportQueue ?? true;
    this.fetchImpl = options.fetch;
  }

  /**
   * Asks the worker for a PowerSync token (`GET <workerUrl>/powersync-token`).
   *
   * @returns the credentials, or `null` when `getSessionToken` says the user is signed out
   * @throws {@link WorkerConnectorError} on a network error or any answer other than a valid 200
   *   (its `code` is the worker's, e.g. `session_expired`); the SDK retries
   */
  async fetchCredentials(): Promise<PowerSyncCredentials | null> {
    const session = await this.getSessionToken();
    if (!session) return null;
    const { response, body } = await this.request('GET', '/powersync-token', session);
    const requestId = response.headers.get('X-Request-Id') ?? errorOf(body).requestId ?? undefined;
    if (response.status !== 200) {
      const { code, error } = errorOf(body);
      throw new WorkerConnectorError(
        `powersync-token answered HTTP ${response.status}${code ? ` ${code}` : ''}${error ? `: ${error}` : ''}`,
        {
          code: code ?? `http_${response.status}`,
          status: response.status,
          requestId,
          retryAfterMs: parseRetryAfter(response.headers.get('Retry-After')),
        },
      );
    }
    const fields = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>;
    const endpoint = fields.endpoint ?? fields.powersync_url;
    const token = fields.token;
    if (typeof endpoint !== 'string' || endpoint === '' || typeof token !== 'string' || token === '') {
      throw new WorkerConnectorError('powersync-token answered 200 without a token and an endpoint', {
        code: 'unexpected_response',
        status: 200,
        requestId,
      });
    }
    const credentials: PowerSyncCredentials = { endpoint, token };
    if (typeof fields.expires_at === 'string' || typeof fields.expires_at === 'number') {
      const expiresAt = new Date(fields.expires_at);
      if (!Number.isNaN(expiresAt.getTime())) credentials.expiresAt = expiresAt;
    }
    return credentials;
  }

  /**
   * Uploads the oldest queued transactions (`POST <workerUrl>/powersync-upload`), several per
   * request, and completes those the worker reports as `success` or `fatal_error`, in order.
   *
   * Returns normally when at least one transaction was completed and nothing needs a delayed retry
   * (the SDK then calls it again for the rest); throws otherwise, and the SDK retries after its
   * retry delay. A transaction is never completed unless the worker reported a final outcome for it.
   *
   * @throws {@link WorkerConnectorError} when something must be retried; or the error
   *   `onFatalError` or `onUnchanged` threw
   */
  async uploadData(database: UploadQueue): Promise<void> {
    const transactions = await this.readQueue(database);
    if (transactions.length === 0) return;

    const session = await this.getSessionToken();
    if (!session) {
      throw new WorkerConnectorError('signed out: no session token to upload with', { code: 'signed_out' });
    }

    // An integer beyond 2^53 is re-read from ps_crud with its exact digits (./integers.ts).
    const exact = await withExactIntegers(database as RawQueue, transactions);
    const clientId = await clientIdOf(database);
    const queue = this.reportQueue ? await this.queueReport(database, transactions[0]!) : undefined;
    // Send; on 413 send the first half only, until it fits or a single transaction is refused; on
    // a 400 that names a place in transaction k > 0, the k before it only (the one at fault is
    // then sent first, and its refusal thrown).
    let batch = transactions;
    let token = session;
    for (;;) {
      const { response, body, session: used } = await this.request(
        'POST',
        '/powersync-upload',
        token,
        uploadBodyText(planUploadBody(exact.slice(0, batch.length), clientId)),
        queue === undefined ? undefined : { [QUEUE_HEADER]: queue },
      );
      token = used;
      if (response.status === 413 && batch.length > 1) {
        batch = batch.slice(0, Math.ceil(batch.length / 2));
        continue;
      }
      const before = sendableBefore(response.status, body, batch.length);
      if (before !== undefined) {
        batch = batch.slice(0, before);
        continue;
      }
      await this.settle(batch, response, body);
      return;
    }
  }

  /** Completes what the answer allows, in order, then throws when something must be retried. */
  private async settle(batch: CrudTransaction[], response: FetchResponseLike, body: unknown): Promise<void> {
    const verdict = interpretUploadResponse(
      response.status,
      body,
      sentTransactionIds(batch),
      response.headers.get('Retry-After'),
    );
    const results = verdict.results ?? [];

    // Completing transaction k removes every queued entry up to k's last one, so only the last
    // transaction of the completable prefix is completed, after every fatal one (and every one with
    // unchanged entries) in it was reported. If onFatalError or onUnchanged throws for transaction
    // k, the ones before k are completed and k stays queued.
    let reported = 0;
    let handlerFailed = false;
    let handlerError: unknown;
    for (; reported < verdict.completable; reported++) {
      const result = results[reported]!;
      const tx = batch[reported]!;
      try {
        if (result.status === 'fatal_error' || result.status === 'conflict') {
          const failedOperation = result.failed_operation ?? null;
          const index = failedOperation?.index;
          await this.onFatalError({
            status: result.status === 'conflict' ? 'conflict' : 'fatal_error',
            transactionId: tx.transactionId,
            entries: tx.crud,
            failedOperation,
            failedEntry: typeof index === 'number' ? tx.crud[index] : undefined,
            appliedVia: result.applied_via,
            appliedViaReason: result.applied_via_reason,
          });
        } else {
          const unchangedIndexes = (result.unchanged ?? []).filter((i) => i < tx.crud.length);
          if (unchangedIndexes.length === 0) continue;
          await this.onUnchanged({
            transactionId: tx.transactionId,
            entries: tx.crud,
            unchangedIndexes,
            unchangedEntries: unchangedIndexes.map((i) => tx.crud[i]!),
          });
        }
      } catch (error) {
        handlerFailed = true;
        handlerError = error;
        break;
      }
    }
    if (reported > 0) await batch[reported - 1]!.complete();
    if (handlerFailed) throw handlerError;

    if (verdict.next === 'done' || verdict.next === 'continue') return;
    const requestId = response.headers.get('X-Request-Id') ?? errorOf(body).requestId ?? undefined;
    const reason = verdict.reason ?? { code: 'unexpected_response', message: 'upload must be retried' };
    throw new WorkerConnectorError(`${reason.message}; will retry`, {
      code: reason.code,
      status: response.status,
      requestId,
      retryAfterMs: verdict.retryAfterMs,
      completedTransactions: verdict.completable,
    });
  }

  /**
   * The queue header's value: `count=<n>; oldest_seconds=<s>`. The count is the SDK's
   * `getUploadQueueStats().count`; the age is how long `head` (the oldest queued transaction) has
   * been at the head of the queue since this connector first read it there. `undefined` when the
   * database has no statistics or they fail: the upload then goes without the header.
   */
  private async queueReport(database: UploadQueue, head: CrudTransaction): Promise<string | undefined> {
    if (typeof database.getUploadQueueStats !== 'function') return undefined;
    let count: number;
    try {
      count = (await database.getUploadQueueStats()).count;
    } catch {
      return undefined;
    }
    if (!Number.isInteger(count) || count < 0) return undefined;
    const key = `${head.transactionId ?? ''}:${head.crud[0]?.clientId ?? ''}`;
    const now = Date.now();
    if (this.head?.key !== key) this.head = { key, since: now };
    return `count=${count}; oldest_seconds=${Math.max(0, Math.floor((now - this.head.since) / 1000))}`;
  }

  /**
   * The oldest queued transactions, in order: at most `maxTransactionsPerRequest` and
   * `maxEntriesPerRequest` entries (but always at least one transaction).
   */
  private async readQueue(database: UploadQueue): Promise<CrudTransaction[]> {
    if (typeof database.getCrudTransactions !== 'function' || this.maxTransactions === 1) {
      const tx = await database.getNextCrudTransaction();
      return tx ? [tx] : [];
    }
    const iterator = database.getCrudTransactions()[asyncIteratorSymbol]();
    const selected: CrudTransaction[] = [];
    let entries = 0;
    try {
      while (selected.length < this.maxTransactions && entries < this.maxEntries) {
        const step = await iterator.next();
        if (step.done || !step.value) break;
        const tx = step.value;
        if (selected.length > 0 && entries + tx.crud.length > this.maxEntries) break;
        selected.push(tx);
        entries += tx.crud.length;
      }
    } finally {
      await iterator.return?.();
    }
    return selected;
  }

  /**
   * One request to the worker; the body is read too, within the timeout (`body` is `undefined`
   * when not JSON). After a 401, once more with `refreshSessionToken`'s token when it gives a new
   * one; `session` is the token the answer was given for, for the next request.
   */
  private async request(
    method: 'GET' | 'POST',
    path: string,
    session: string,
    body?: string,
    extraHeaders?: Record<string, string>,
  ): Promise<{ response: FetchResponseLike; body: unknown; session: string }> {
    const answer = await this.requestOnce(method, path, session, body, extraHeaders);
    if (answer.response.status !== 401 || !this.refreshSessionToken) return { ...answer, session };
    const fresh = await this.refreshSessionToken();
    if (!fresh || fresh === session) return { ...answer, session };
    return { ...(await this.requestOnce(method, path, fresh, body, extraHeaders)), session: fresh };
  }

  private async requestOnce(
    method: 'GET' | 'POST',
    path: string,
    session: string,
    body?: string,
    extraHeaders?: Record<string, string>,
  ): Promise<{ response: FetchResponseLike; body: unknown }> {
    const headers: Record<string, string> = {
      ...extraHeaders,
      Authorization: `Bearer ${session}`,
      Accept: 'application/json',
    };
    const init: FetchInitLike = { method, headers };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = body;
    }
    return fetchWithin(this.fetchImpl, `${this.baseUrl}${path}`, init, this.timeoutMs, `${method} ${path}`, async (response) => ({
      response,
      body: parseJson(await response.text()),
    }));
  }
}

/** The parsed JSON, or `undefined` when the text is empty or not JSON. */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
