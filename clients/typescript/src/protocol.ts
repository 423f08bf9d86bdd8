/**
 * The worker's wire format, as pure functions: what is sent to `/powersync-upload` and what a
 * response means for each transaction that was sent. No I/O here, so the rules are testable on
 * their own.
 *
 * @packageDocumentation
 */

import type { CrudEntry, CrudTransaction } from '@powersync/common';
import { ExactInteger, exactMarker } from './integers.js';

/** A transaction as this package needs it: the SDK's `CrudTransaction` satisfies it. */
export type TransactionLike = Pick<CrudTransaction, 'transactionId' | 'crud'>;

/** One CRUD entry on the wire. `data` is absent for `DELETE` and when the SDK recorded none. */
export interface UploadEntry {
  op: string;
  table: string;
  id: string;
  data?: Record<string, unknown>;
  /**
   * The row's values before this write, as the app last saw them (the SDK's `previousValues`, from
   * a table with `trackPrevious`). PATCH and DELETE only; absent when the SDK has none. The worker
   * uses them for conflict detection (`UPLOAD_CONFLICT_DETECTION`, docs/conflicts.md).
   */
  previous_values?: Record<string, unknown>;
  /** The write's metadata (the SDK's `metadata`, from a table with `trackMetadata`); absent when none. */
  metadata?: string;
}

/** One transaction on the wire. `transaction_id` is `null` for entries the SDK recorded without one. */
export interface UploadTransaction {
  transaction_id: number | null;
  crud: UploadEntry[];
}

/**
 * The request body of `POST /powersync-upload`. `client_id` is the PowerSync client id of the
 * uploading database (`db.getClientId()`): with it, the worker's atomic function applies each
 * transaction exactly once (a re-send after a lost answer applies nothing and is answered
 * `success` with `already_applied: true`). Absent when the database could not give one.
 */
export interface UploadBody {
  client_id?: string;
  transactions: UploadTransaction[];
}

/** Which entry of a transaction the worker could not apply, and why (`failed_operation`). */
export interface FailedOperation {
  /** Index of the failing entry in the transaction's `crud`; `null` when the whole transaction failed. */
  index: number | null;
  /** SQLSTATE (`23505`), PostgREST code (`PGRST204`) or a worker code (`table_not_allowed`, `http_503`, ...). */
  code: string;
  message: string;
  details?: string | null;
  hint?: string;
  /** The upstream HTTP status, when there was an answer. */
  http_status?: number;
}

/**
 * The outcomes the worker reports per transaction. `conflict` (only with the worker's
 * `UPLOAD_CONFLICT_DETECTION`) is final like `fatal_error`: nothing of the transaction was applied
 * because a row no longer held the previous values the app saw (`failed_operation.index` names the
 * entry, `failed_operation.code` is `conflict`; the server's row reaches the app by sync).
 */
export type TransactionStatus = 'success' | 'fatal_error' | 'conflict' | 'retryable_error' | 'not_attempted';

/** One element of the worker's `results` array, after validation. */
export interface TransactionResult {
  /** The outcome. Any other string is kept as is and treated as "not final" (retry). */
  status: TransactionStatus | (string & {});
  /** The `transaction_id` that was sent, echoed. */
  transaction_id: number | string | null;
  failed_operation?: FailedOperation | null;
  retry_after_ms?: number;
  /**
   * `success` only: the worker's atomic function had already applied this transaction (a re-send
   * after a lost answer), so nothing was applied again. Absent otherwise.
   */
  already_applied?: boolean;
  /**
   * `success` only: indexes (in the transaction's `crud`) of the entries that changed no row: a
   * PATCH or DELETE whose row was gone already, or hidden from the user by row-level security (or,
   * in the worker's service mode, owned by someone else); a PUT a database trigger skipped. Absent when there are none. May list
   * more entries than changed nothing when the worker merged them into one request (the worker's
   * docs/upload.md, "Nothing silent").
   */
  unchanged?: number[];
  /**
   * `rest` when the transaction was sent through REST requests after its atomic call timed out
   * (the worker's docs/upload.md): then it was neither all-or-nothing nor exactly once, and with
   * `fatal_error` or `retryable_error` the entries before `failed_operation.index` stayed applied.
   * Absent otherwise.
   */
  applied_via?: string;
  /** With `applied_via`: the worker's words for why, and what that costs. */
  applied_via_reason?: string;
}

/**
 * What to do with the transactions of one request, decided from the worker's answer.
 *
 * The first `completable` transactions (in the order sent) have a final outcome the worker stands
 * behind and may be completed; nothing after them may be.
 */
export interface UploadInterpretation {
  /** How many leading transactions may be completed, in order. 0 when the answer is not trusted. */
  completable: number;
  /**
   * The validated results, one per transaction sent, or `null` when the answer carries none that
   * match what was sent (an error status, an unparseable body, a count or id mismatch).
   */
  results: TransactionResult[] | null;
  /**
   * - `done`: every transaction sent has a final outcome.
   * - `continue`: a final prefix was applied and the rest are `not_attempted` because the worker ran
   *   out of its per-request subrequest budget: upload the rest again right away.
   * - `retry`: something must be retried later (the connector throws, so the SDK waits and retries).
   */
  next: 'done' | 'continue' | 'retry';
  /** Why the rest must be retried (`next` = `retry`): a stable code and a readable message. */
  reason?: { code: string; message: string };
  /** How long the worker asked the client to wait, from `Retry-After` or the results' `retry_after_ms`. */
  retryAfterMs?: number;
}

const FINAL: ReadonlySet<string> = new Set(['success', 'fatal_error', 'conflict']);

/**
 * The wire form of one SDK entry: `{op, table, id, data?, previous_values?, metadata?}`: `data` is
 * `opData`, left out for `DELETE`; `previous_values` is `previousValues` for PATCH and DELETE when
 * the SDK tracked them; `metadata` when the write carried some.
 */
export function planEntry(
  entry: Pick<CrudEntry, 'op' | 'table' | 'id' | 'opData'> & Partial<Pick<CrudEntry, 'previousValues' | 'metadata'>>,
): UploadEntry {
  const op = String(entry.op);
  const wire: UploadEntry = { op, table: entry.table, id: entry.id };
  if (op !== 'DELETE' && entry.opData != null) {
    wire.data = entry.opData;
  }
  if (op !== 'PUT' && isObject(entry.previousValues)) {
    wire.previous_values = entry.previousValues;
  }
  if (typeof entry.metadata === 'string') {
    wire.metadata = entry.metadata;
  }
  return wire;
}

/**
 * The request body for `POST /powersync-upload`:
 * `{"client_id"?: <PowerSync client id>, "transactions":[{"transaction_id": <id or null>,
 * "crud":[{"op","table","id","data"?}]}]}`.
 *
 * Each entry as {@link planEntry} gives it (`previous_values` and `metadata` only when the SDK has
 * them; the entry's own `clientId` counter is not sent). `client_id` is sent when `clientId` is a
 * non-empty string.
 */
export function planUploadBody(transactions: readonly TransactionLike[], clientId?: string | null): UploadBody {
  const body: UploadBody = {
    transactions: transactions.map((tx) => ({
      transaction_id: tx.transactionId ?? null,
      crud: tx.crud.map(planEntry),
    })),
  };
  return typeof clientId === 'string' && clientId !== '' ? { client_id: clientId, ...body } : body;
}

/**
 * The body's JSON text. A number JSON cannot hold (`Infinity`, `-Infinity`, `NaN`: SQLite's
 * `9e999` is read as `Infinity`) is sent as that word, as a string: PostgreSQL's float and numeric
 * columns read it as the same value, integer columns refuse it (the write is reported), text and
 * JSON columns store the word. `JSON.stringify` alone writes `null`, which the server would store.
 */
export function uploadBodyText(body: UploadBody): string {
  let exact = false;
  const text = JSON.stringify(body, (_key, value: unknown) => {
    if (value instanceof ExactInteger) {
      exact = true;
      return EXACT_MARKER + value.digits;
    }
    return typeof value === 'number' && !Number.isFinite(value) ? String(value) : value;
  });
  // An integer beyond 2^53 (./integers.ts) as its digits, a JSON number.
  return exact ? text.replace(EXACT_IN_TEXT, '$1') : text;
}

/** Marks an {@link ExactInteger}'s digits in the body's text. */
const EXACT_MARKER = exactMarker();
const EXACT_IN_TEXT = new RegExp(`"${JSON.stringify(EXACT_MARKER).slice(1, -1).replace(/[\\^$.*+?()[\]{}|]/g, '\\$&')}(-?[0-9]+)"`, 'g');

/**
 * How many transactions to send again when the worker refused the whole body as malformed (400
 * `invalid_body`) at a place inside transaction `k` > 0 (`field` = `transactions[k]…`): the `k`
 * before it, which are not at fault, so they are not held with it. `undefined` otherwise.
 */
export function sendableBefore(status: number, body: unknown, sent: number): number | undefined {
  if (status !== 400 || !isObject(body) || body.code !== 'invalid_body' || typeof body.field !== 'string') {
    return undefined;
  }
  const match = /^transactions\[(\d+)\]/.exec(body.field);
  const k = match ? Number(match[1]) : NaN;
  return Number.isInteger(k) && k > 0 && k < sent ? k : undefined;
}

/** The `transaction_id` each transaction is sent with, in order (what the results must echo). */
export function sentTransactionIds(transactions: readonly TransactionLike[]): (number | null)[] {
  return transactions.map((tx) => tx.transactionId ?? null);
}

/**
 * `Retry-After` in milliseconds: delta-seconds or an HTTP date. `undefined` when absent or invalid.
 *
 * @param value - the header value
 * @param now - the current time in ms (for the date form); default `Date.now()`
 */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value == null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** `{code, error}` of a worker error body, when it is one. */
export function errorOf(body: unknown): { code?: string; error?: string; requestId?: string } {
  if (!isObject(body)) return {};
  return {
    code: typeof body.code === 'string' ? body.code : undefined,
    error: typeof body.error === 'string' ? body.error : undefined,
    requestId: typeof body.request_id === 'string' ? body.request_id : undefined,
  };
}

function describeFailure(result: TransactionResult): string {
  const failure = result.failed_operation;
  const id = result.transaction_id === null ? 'without id' : String(result.transaction_id);
  const why = failure ? `: ${failure.code} ${failure.message}` : '';
  return `transaction ${id} is ${result.status}${why}`;
}

/** The entry indexes of a result's `unchanged` (integers from 0), in order, without repeats; anything else is ignored. */
function unchangedIndexes(raw: unknown): number[] {
  if (!Array.isArray(raw)) return [];
  const valid = raw.filter((i): i is number => Number.isInteger(i) && (i as number) >= 0);
  return [...new Set(valid)].sort((a, b) => a - b);
}

/**
 * Validates the worker's `results` against what was sent. Returns `null` unless there is exactly
 * one result per transaction sent, in the same order, each echoing its `transaction_id`.
 */
function validResults(body: unknown, sentIds: readonly (number | null)[]): TransactionResult[] | null {
  if (!isObject(body) || !Array.isArray(body.results)) return null;
  const raw = body.results as unknown[];
  if (raw.length !== sentIds.length) return null;
  const results: TransactionResult[] = [];
  for (let i = 0; i < raw.length; i++) {
    const item = raw[i];
    if (!isObject(item) || typeof item.status !== 'string') return null;
    const echoed = item.transaction_id === undefined ? null : item.transaction_id;
    if (echoed !== sentIds[i]) return null;
    const failure = isObject(item.failed_operation) ? (item.failed_operation as unknown as FailedOperation) : null;
    const result: TransactionResult = { status: item.status, transaction_id: echoed as number | string | null };
    if (failure) result.failed_operation = failure;
    if (typeof item.retry_after_ms === 'number' && Number.isFinite(item.retry_after_ms)) {
      result.retry_after_ms = item.retry_after_ms;
    }
    if (item.already_applied === true) result.already_applied = true;
    const unchanged = unchangedIndexes(item.unchanged);
    if (unchanged.length > 0) result.unchanged = unchanged;
    if (typeof item.applied_via === 'string') result.applied_via = item.applied_via;
    if (typeof item.applied_via_reason === 'string') result.applied_via_reason = item.applied_via_reason;
    results.push(result);
  }
  return results;
}

/**
 * Decides, from one `/powersync-upload` answer, which of the transactions sent may be completed.
 *
 * The rules (the worker's docs/upload.md, "`/powersync-upload`"):
 * - Only HTTP 200 and HTTP 503 carry per-transaction results. Any other status (400, 401, 413,
 *   5xx, ...) completes nothing.
 * - The results must match what was sent exactly (same count, same order, same `transaction_id`s);
 *   otherwise nothing is completed (the answer is not trusted).
 * - The leading run of `success` / `fatal_error` / `conflict` results may be completed, in order. The first
 *   other result stops the run: it and everything after it are sent again.
 * - If at least one result is final and every later one is `not_attempted` (no `retryable_error`),
 *   the worker ran out of its per-request subrequest budget: `next` is `continue`, the rest can be
 *   sent again at once, in a fresh request. In every other incomplete case `next` is `retry`.
 *
 * @param status - the HTTP status of the answer
 * @param body - the parsed JSON body, or `undefined` when it was not JSON
 * @param sentIds - the `transaction_id` of each transaction sent, in order (see {@link sentTransactionIds})
 * @param retryAfter - the `Retry-After` header, if any
 */
export function interpretUploadResponse(
  status: number,
  body: unknown,
  sentIds: readonly (number | null)[],
  retryAfter?: string | null,
): UploadInterpretation {
  const headerDelay = parseRetryAfter(retryAfter);
  const withDelay = (interpretation: UploadInterpretation, extra?: number): UploadInterpretation => {
    const delays = [headerDelay, extra].filter((d): d is number => d !== undefined);
    if (delays.length > 0) interpretation.retryAfterMs = Math.max(...delays);
    return interpretation;
  };

  if (status !== 200 && status !== 503) {
    const { code, error } = errorOf(body);
    return withDelay({
      completable: 0,
      results: null,
      next: 'retry',
      reason: {
        code: code ?? `http_${status}`,
        message: `upload answered HTTP ${status}${error ? `: ${error}` : ''}`,
      },
    });
  }

  const results = validResults(body, sentIds);
  if (results === null) {
    const { code, error } = errorOf(body);
    const message =
      body === undefined
        ? `upload answered HTTP ${status} with a body that is not JSON`
        : code !== undefined
          ? `upload answered HTTP ${status}: ${code}${error ? ` (${error})` : ''}`
          : `upload answered HTTP ${status} with results that do not match the ${sentIds.length} transaction(s) sent`;
    return withDelay({
      completable: 0,
      results: null,
      next: 'retry',
      reason: { code: code ?? 'unexpected_response', message },
    });
  }

  let completable = 0;
  while (completable < results.length && FINAL.has(results[completable]!.status)) completable++;
  if (completable === results.length) {
    return { completable, results, next: 'done' };
  }

  const stop = results[completable]!;
  const resultDelays = results.map((r) => r.retry_after_ms).filter((d): d is number => d !== undefined);
  const resultDelay = resultDelays.length > 0 ? Math.max(...resultDelays) : undefined;
  const budgetCut = completable > 0 && results.slice(completable).every((r) => r.status === 'not_attempted');
  return withDelay(
    {
      completable,
      results,
      next: budgetCut ? 'continue' : 'retry',
      reason: { code: stop.status, message: describeFailure(stop) },
    },
    resultDelay,
  );
}
