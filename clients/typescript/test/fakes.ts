/**
 * Test doubles: a local upload queue that behaves like the PowerSync SDK's `ps_crud` table, and a
 * scripted `fetch`.
 */
import type { CrudEntry, CrudTransaction } from '@powersync/common';
import type { FetchInitLike, FetchLike, FetchResponseLike, UploadQueue } from '../src/index.js';

export interface EntrySpec {
  op: 'PUT' | 'PATCH' | 'DELETE';
  table?: string;
  id: string;
  data?: Record<string, unknown>;
  previousValues?: Record<string, unknown>;
  metadata?: string;
}

/**
 * A queue with the SDK's semantics (`@powersync/shared-internals` BasePowerSyncDatabase and
 * SqliteBucketStorage):
 * - `getCrudTransactions()` yields consecutive entries with the same `transactionId` as one
 *   transaction; entries without one (SQL NULL never equals NULL) are one transaction each;
 * - a transaction's `complete()` deletes every entry whose `clientId` is at most its last one's.
 */
export class FakeQueue implements UploadQueue {
  private entries: CrudEntry[] = [];
  private nextClientId = 1;
  /** What `getClientId()` answers; `undefined` makes it throw (a database that cannot tell). */
  clientIdAnswer: string | undefined = 'client-abc';

  async getClientId(): Promise<string> {
    if (this.clientIdAnswer === undefined) throw new Error('no client id');
    return this.clientIdAnswer;
  }

  /** The `transactionId` of each transaction whose `complete()` was called, in call order. */
  readonly completeCalls: (number | undefined)[] = [];

  /** Queues one transaction (`transactionId` undefined: entries recorded without one). */
  add(transactionId: number | undefined, specs: EntrySpec[]): this {
    for (const spec of specs) {
      const clientId = this.nextClientId++;
      const entry = {
        clientId,
        id: spec.id,
        op: spec.op,
        table: spec.table ?? 'todos',
        opData: spec.data,
        previousValues: spec.previousValues,
        metadata: spec.metadata,
        transactionId,
        toJSON: () => ({ op_id: clientId }),
        equals: (other: CrudEntry) => other.clientId === clientId,
        toComparisonArray: () => [clientId],
      } as unknown as CrudEntry;
      this.entries.push(entry);
    }
    return this;
  }

  /** Queues `count` transactions with ids `first`, `first + 1`, ..., one PUT each. */
  addMany(first: number, count: number): this {
    for (let i = 0; i < count; i++) this.add(first + i, [{ op: 'PUT', id: `row-${first + i}`, data: { n: i } }]);
    return this;
  }

  /** The transaction ids still queued, in order, one per transaction (`undefined` for id-less entries). */
  remainingTransactionIds(): (number | undefined)[] {
    return this.groups().map((group) => group[0]!.transactionId);
  }

  remainingEntryCount(): number {
    return this.entries.length;
  }

  private groups(afterClientId = -1): CrudEntry[][] {
    const groups: CrudEntry[][] = [];
    for (const entry of this.entries) {
      if (entry.clientId <= afterClientId) continue;
      const current = groups[groups.length - 1];
      const last = current?.[current.length - 1];
      if (
        current &&
        last &&
        last.transactionId !== undefined &&
        last.transactionId === entry.transactionId &&
        last.clientId + 1 === entry.clientId
      ) {
        current.push(entry);
      } else {
        groups.push([entry]);
      }
    }
    return groups;
  }

  private transaction(items: CrudEntry[]): CrudTransaction {
    const last = items[items.length - 1]!;
    return {
      crud: items,
      transactionId: last.transactionId,
      haveMore: false,
      complete: async () => {
        this.completeCalls.push(last.transactionId);
        this.entries = this.entries.filter((e) => e.clientId > last.clientId);
      },
    } as CrudTransaction;
  }

  async getNextCrudTransaction(): Promise<CrudTransaction | null> {
    const first = this.groups()[0];
    return first ? this.transaction(first) : null;
  }

  getCrudTransactions(): AsyncIterable<CrudTransaction, null> {
    return {
      [Symbol.asyncIterator]: () => {
        let lastClientId = -1;
        return {
          next: async (): Promise<IteratorResult<CrudTransaction, null>> => {
            const group = this.groups(lastClientId)[0];
            if (!group) return { done: true, value: null };
            lastClientId = group[group.length - 1]!.clientId;
            return { done: false, value: this.transaction(group) };
          },
        };
      },
    };
  }
}

/** The same queue without `getCrudTransactions` (only `getNextCrudTransaction`). */
export function withoutIterator(queue: FakeQueue): UploadQueue {
  return { getNextCrudTransaction: () => queue.getNextCrudTransaction() };
}

export interface RecordedRequest {
  url: string;
  init: FetchInitLike;
  /** The parsed JSON body, for POSTs. */
  json: unknown;
}

/** A scripted answer: a status and JSON body (or raw text), or a function of the request, or an Error to throw. */
export type Answer =
  | { status: number; body?: unknown; text?: string; headers?: Record<string, string> }
  | Error
  | ((request: RecordedRequest) => Promise<FetchResponseLike> | FetchResponseLike);

/** A `fetch` that answers from a script, in order, and records every request. */
export class FakeFetch {
  readonly requests: RecordedRequest[] = [];
  private readonly answers: Answer[];

  constructor(...answers: Answer[]) {
    this.answers = answers;
  }

  readonly fetch: FetchLike = async (url, init) => {
    const request: RecordedRequest = {
      url,
      init,
      json: typeof init.body === 'string' ? JSON.parse(init.body) : undefined,
    };
    this.requests.push(request);
    const answer = this.answers.shift();
    if (answer === undefined) throw new Error(`unexpected request ${init.method} ${url}`);
    if (answer instanceof Error) throw answer;
    if (typeof answer === 'function') return answer(request);
    const text = answer.text ?? (answer.body === undefined ? '' : JSON.stringify(answer.body));
    return new Response(text, {
      status: answer.status,
      headers: { 'Content-Type': 'application/json', ...answer.headers },
    });
  };
}

/** A worker result list as the worker writes it. */
export function results(...items: [status: string, id: number | null, extra?: Record<string, unknown>][]) {
  return {
    results: items.map(([status, id, extra]) => ({ status, transaction_id: id, ...extra })),
    applied: items.filter(([status]) => status === 'success').length,
    subrequests: items.length,
  };
}

/** The transaction ids of a recorded upload request, in order. */
export function sentIds(request: RecordedRequest | undefined): unknown[] {
  const body = request?.json as { transactions: { transaction_id: unknown }[] } | undefined;
  return body?.transactions.map((t) => t.transaction_id) ?? [];
}
