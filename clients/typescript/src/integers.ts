/**
 * Integers a JS number cannot hold exactly (|n| > 2^53 − 1), sent as the digits the local
 * database holds.
 *
 * SQLite holds 64-bit integers exactly, and PowerSync records each write in `ps_crud` as JSON text
 * with the exact digits; the SDK's `CrudEntry` parses that text with `JSON.parse`, which rounds
 * such an integer (9007199254740993 becomes 9007199254740992). Uploaded as is, the server would
 * store a number the user never wrote, and a compared previous value (the worker's conflict
 * detection) would no longer match the row. So, for the entries that hold such a number, the
 * exact digits are read again from `ps_crud` and written into the upload body as they are.
 */
import type { CrudEntry } from '@powersync/common';

import { WorkerConnectorError } from './errors.js';
import type { TransactionLike } from './protocol.js';

/** An integer kept as its digits (`-?[0-9]+`), written into the upload body as a JSON number. */
export class ExactInteger {
  constructor(readonly digits: string) {}
}

/** What `withExactIntegers` needs of the database: the SDK's `getAll`. */
export interface RawQueue {
  getAll?: (sql: string, parameters?: unknown[]) => Promise<unknown[]>;
}

/** Whether `value` is an integer a JS number may hold rounded. */
function inexact(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && !Number.isSafeInteger(value);
}

function holdsInexact(values: Record<string, unknown> | null | undefined): boolean {
  return values != null && Object.values(values).some(inexact);
}

/**
 * A marker no JSON text written by the SDK holds: U+0000 and a random part. It carries an
 * integer's exact digits through `JSON.parse` here, and through `JSON.stringify` in
 * `uploadBodyText` (./protocol.ts).
 */
export function exactMarker(): string {
  return `\u0000exact-integer-${Math.random().toString(36).slice(2)}-${Date.now().toString(36)}:`;
}

/**
 * `text` (JSON) parsed with every integer literal a JS number cannot hold exactly as an
 * {@link ExactInteger}; every other value as `JSON.parse` gives it.
 */
export function parseWithExactIntegers(text: string): unknown {
  const marker = exactMarker();
  let marked = '';
  let copied = 0;
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // a string: skipped whole, escapes included
      i++;
      while (i < text.length) {
        const d = text.charCodeAt(i);
        i += d === 0x5c ? 2 : 1;
        if (d === 0x22) break;
      }
      continue;
    }
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      let j = i + 1;
      while (j < text.length && /[0-9eE.+-]/.test(text[j]!)) j++;
      const token = text.slice(i, j);
      if (/^-?[0-9]+$/.test(token) && !Number.isSafeInteger(Number(token))) {
        marked += text.slice(copied, i) + JSON.stringify(marker + token);
        copied = j;
      }
      i = j;
      continue;
    }
    i++;
  }
  if (copied === 0) return JSON.parse(text) as unknown;
  const revive = (value: unknown): unknown => {
    if (typeof value === 'string' && value.startsWith(marker)) return new ExactInteger(value.slice(marker.length));
    if (Array.isArray(value)) return value.map(revive);
    if (value !== null && typeof value === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) out[k] = revive(v);
      return out;
    }
    return value;
  };
  return revive(JSON.parse(marked + text.slice(copied)));
}

/** `values` with each inexact integer replaced by the exact one `raw` holds under the same name. */
function exactValues(values: Record<string, unknown>, raw: unknown): Record<string, unknown> {
  const exact = raw !== null && typeof raw === 'object' ? (raw as Record<string, unknown>) : {};
  const out: Record<string, unknown> = { ...values };
  for (const [name, value] of Object.entries(values)) {
    if (inexact(value) && exact[name] instanceof ExactInteger) out[name] = exact[name];
  }
  return out;
}

/**
 * `transactions` with the entries that hold an integer a JS number rounds re-read from `ps_crud`
 * (`opData` from its `data`, `previousValues` from its `old`), their exact digits as
 * {@link ExactInteger}s; the same objects when no entry holds one (no query).
 *
 * @throws {@link WorkerConnectorError} `inexact_integer` (the upload is retried) when such an entry
 *   cannot be read again: the database has no `getAll`, or its row is not in `ps_crud`. Sending the
 *   rounded number instead would store a value the user never wrote.
 */
export async function withExactIntegers<T extends TransactionLike>(
  database: RawQueue,
  transactions: readonly T[],
): Promise<readonly (T | TransactionLike)[]> {
  const entries = transactions.flatMap((tx) => tx.crud).filter((e) => holdsInexact(e.opData) || holdsInexact(e.previousValues));
  if (entries.length === 0) return transactions;
  const cannot = (why: string) =>
    new WorkerConnectorError(
      `an integer beyond 2^53 could not be read exactly (${why}); it is not sent rounded: will retry`,
      { code: 'inexact_integer' },
    );
  if (typeof database.getAll !== 'function') throw cannot('the database has no getAll');
  const ids = entries.map((e) => e.clientId);
  const rows = await database.getAll(`SELECT id, data FROM ps_crud WHERE id IN (${ids.map(() => '?').join(', ')})`, ids);
  const raw = new Map<number, unknown>();
  for (const row of rows as { id: unknown; data: unknown }[]) {
    if (typeof row?.data === 'string') raw.set(Number(row.id), parseWithExactIntegers(row.data));
  }
  const exactOf = new Map<CrudEntry, CrudEntry>();
  for (const entry of entries) {
    const recorded = raw.get(entry.clientId) as { data?: unknown; old?: unknown } | undefined;
    if (recorded === undefined) throw cannot(`ps_crud has no row ${entry.clientId}`);
    const copy = Object.assign(Object.create(Object.getPrototypeOf(entry) as object) as CrudEntry, entry);
    if (entry.opData != null) copy.opData = exactValues(entry.opData, recorded.data);
    if (entry.previousValues != null) copy.previousValues = exactValues(entry.previousValues, recorded.old);
    exactOf.set(entry, copy);
  }
  return transactions.map((tx) =>
    tx.crud.some((e) => exactOf.has(e)) ? { transactionId: tx.transactionId, crud: tx.crud.map((e) => exactOf.get(e) ?? e) } : tx,
  );
}
