import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import type { CrudEntry } from '@powersync/common';

import {
  interpretUploadResponse,
  parseRetryAfter,
  planUploadBody,
  sendableBefore,
  sentTransactionIds,
  uploadBodyText,
} from '../src/index.js';

function entry(op: string, table: string, id: string, opData?: Record<string, unknown>): CrudEntry {
  return { op, table, id, opData, clientId: 1 } as unknown as CrudEntry;
}

describe('uploadBodyText', () => {
  test('writes non-finite numbers as their words and everything else as JSON.stringify does', () => {
    const body = { transactions: [{ transaction_id: 1, crud: [{ op: 'PUT', table: 't', id: 'a', data: { a: Infinity, b: -Infinity, c: NaN, d: 1.5, e: null, f: 'x' } }] }] };
    assert.equal(
      uploadBodyText(body),
      '{"transactions":[{"transaction_id":1,"crud":[{"op":"PUT","table":"t","id":"a","data":{"a":"Infinity","b":"-Infinity","c":"NaN","d":1.5,"e":null,"f":"x"}}]}]}',
    );
  });
});

describe('sendableBefore', () => {
  test('is k for a 400 invalid_body at transactions[k] with 0 < k < sent, else undefined', () => {
    const at = (field: unknown, status = 400, code = 'invalid_body') => sendableBefore(status, { code, field }, 5);
    assert.equal(at('transactions[3].crud[0].op'), 3);
    assert.equal(at('transactions[1]'), 1);
    for (const none of [at('transactions[0].crud[0].op'), at('transactions[5].crud[0]'), at('client_id'), at(7),
      at('transactions[2]', 413), at('transactions[2]', 400, 'other'), sendableBefore(400, undefined, 5)]) {
      assert.equal(none, undefined);
    }
  });
});

describe('planUploadBody', () => {
  test('maps transactions to {transaction_id, crud:[{op, table, id, data}]}, data from opData, none for DELETE', () => {
    const body = planUploadBody([
      { transactionId: 1, crud: [entry('PUT', 'todos', 'a', { x: 1 }), entry('DELETE', 'todos', 'b', { ignored: true })] },
      { transactionId: undefined, crud: [entry('PATCH', 'lists', 'c', { name: null })] },
      { transactionId: 3, crud: [entry('PATCH', 'lists', 'd')] },
    ]);
    assert.deepEqual(body, {
      transactions: [
        { transaction_id: 1, crud: [{ op: 'PUT', table: 'todos', id: 'a', data: { x: 1 } }, { op: 'DELETE', table: 'todos', id: 'b' }] },
        { transaction_id: null, crud: [{ op: 'PATCH', table: 'lists', id: 'c', data: { name: null } }] },
        { transaction_id: 3, crud: [{ op: 'PATCH', table: 'lists', id: 'd' }] },
      ],
    });
    assert.ok(!('data' in body.transactions[0]!.crud[1]!), 'DELETE has no data key');
  });

  test('puts the client id first when there is one, and leaves it out otherwise', () => {
    const txs = [{ transactionId: 1, crud: [entry('DELETE', 'todos', 'a')] }];
    assert.deepEqual(Object.keys(planUploadBody(txs, 'c-1')), ['client_id', 'transactions']);
    assert.equal(planUploadBody(txs, 'c-1').client_id, 'c-1');
    for (const none of [undefined, null, '']) {
      assert.ok(!('client_id' in planUploadBody(txs, none)), `client id ${String(none)}`);
    }
  });

  test('forwards previousValues (PATCH and DELETE only) as previous_values and metadata when the SDK has them', () => {
    const withPrevious = (op: string, previousValues: unknown, metadata?: unknown) =>
      ({ op, table: 'todos', id: 'a', opData: op === 'DELETE' ? undefined : { title: 'new' }, clientId: 1, previousValues, metadata }) as unknown as CrudEntry;
    const body = planUploadBody([
      {
        transactionId: 1,
        crud: [
          withPrevious('PATCH', { title: 'old', done: null }, 'edited offline'),
          withPrevious('DELETE', { title: 'old' }),
          withPrevious('PUT', { title: 'ignored' }, 'm'),
          withPrevious('PATCH', undefined, 42),
        ],
      },
    ]);
    assert.deepEqual(body.transactions[0]!.crud, [
      { op: 'PATCH', table: 'todos', id: 'a', data: { title: 'new' }, previous_values: { title: 'old', done: null }, metadata: 'edited offline' },
      { op: 'DELETE', table: 'todos', id: 'a', previous_values: { title: 'old' } },
      { op: 'PUT', table: 'todos', id: 'a', data: { title: 'new' }, metadata: 'm' },
      { op: 'PATCH', table: 'todos', id: 'a', data: { title: 'new' } },
    ]);
  });

  test('sentTransactionIds uses null for transactions without an id', () => {
    assert.deepEqual(sentTransactionIds([{ transactionId: 4, crud: [] }, { transactionId: undefined, crud: [] }]), [4, null]);
  });
});

describe('interpretUploadResponse', () => {
  test('conflict is final like fatal_error: completable, and it keeps failed_operation', () => {
    const failure = { index: 0, code: 'conflict', message: 'row changed', details: null };
    const body = { results: [{ status: 'conflict', transaction_id: 1, failed_operation: failure }, { status: 'success', transaction_id: 2 }] };
    const v = interpretUploadResponse(200, body, [1, 2]);
    assert.equal(v.completable, 2);
    assert.equal(v.next, 'done');
    assert.deepEqual(v.results![0]!.failed_operation, failure);
  });

  test('keeps already_applied on a success the worker had applied before, and completes it', () => {
    const body = { results: [{ status: 'success', transaction_id: 1, already_applied: true }, { status: 'success', transaction_id: 2 }] };
    const v = interpretUploadResponse(200, body, [1, 2]);
    assert.equal(v.completable, 2);
    assert.equal(v.next, 'done');
    assert.equal(v.results![0]!.already_applied, true);
    assert.ok(!('already_applied' in v.results![1]!));
  });

  test('keeps the unchanged entry indexes of a success, valid ones only, in order', () => {
    const body = {
      results: [
        { status: 'success', transaction_id: 1, unchanged: [3, 0, 3, -2, 1.5, '2', null] },
        { status: 'success', transaction_id: 2, unchanged: 'all' },
        { status: 'success', transaction_id: 3 },
      ],
    };
    const v = interpretUploadResponse(200, body, [1, 2, 3]);
    assert.equal(v.completable, 3);
    assert.deepEqual(v.results![0]!.unchanged, [0, 3]);
    assert.ok(!('unchanged' in v.results![1]!));
    assert.ok(!('unchanged' in v.results![2]!));
  });

  const ok = (...statuses: string[]) => ({ results: statuses.map((status, i) => ({ status, transaction_id: i + 1 })) });

  test('200 with all final results: everything completable, done', () => {
    const v = interpretUploadResponse(200, ok('success', 'fatal_error', 'success'), [1, 2, 3]);
    assert.equal(v.completable, 3);
    assert.equal(v.next, 'done');
    assert.equal(v.reason, undefined);
  });

  test('503 [success, retryable_error, not_attempted]: prefix of 1, retry, largest delay wins', () => {
    const body = ok('success', 'retryable_error', 'not_attempted');
    (body.results[1] as Record<string, unknown>).retry_after_ms = 9000;
    const v = interpretUploadResponse(503, body, [1, 2, 3], '5');
    assert.equal(v.completable, 1);
    assert.equal(v.next, 'retry');
    assert.equal(v.reason?.code, 'retryable_error');
    assert.equal(v.retryAfterMs, 9000);
  });

  test('503 [success, not_attempted, not_attempted]: prefix of 1, continue (budget ran out)', () => {
    const v = interpretUploadResponse(503, ok('success', 'not_attempted', 'not_attempted'), [1, 2, 3], '5');
    assert.deepEqual([v.completable, v.next, v.retryAfterMs], [1, 'continue', 5000]);
  });

  test('503 [not_attempted]: nothing completable, retry', () => {
    const v = interpretUploadResponse(503, ok('not_attempted'), [1]);
    assert.deepEqual([v.completable, v.next], [0, 'retry']);
  });

  test('an unknown status stops the prefix and is retried', () => {
    const v = interpretUploadResponse(200, ok('success', 'applied_maybe', 'success'), [1, 2, 3]);
    assert.deepEqual([v.completable, v.next, v.reason?.code], [1, 'retry', 'applied_maybe']);
  });

  test('statuses other than 200 and 503 never complete anything, even with results', () => {
    for (const status of [201, 204, 400, 401, 403, 404, 409, 413, 429, 500, 502, 504]) {
      const v = interpretUploadResponse(status, ok('success'), [1]);
      assert.deepEqual([v.completable, v.results, v.next], [0, null, 'retry'], `HTTP ${status}`);
    }
  });

  test('results that do not match the ids sent are not trusted', () => {
    assert.equal(interpretUploadResponse(200, ok('success', 'success'), [1, 3]).completable, 0);
    assert.equal(interpretUploadResponse(200, ok('success'), [1, 2]).completable, 0);
    assert.equal(interpretUploadResponse(200, ok('success', 'success'), [1]).completable, 0);
    assert.equal(interpretUploadResponse(200, { results: [{ status: 'success' }] }, [1]).completable, 0);
    assert.equal(interpretUploadResponse(200, { results: [{ status: 'success', transaction_id: null }] }, [null]).completable, 1);
    assert.equal(interpretUploadResponse(200, { results: [{ status: 'success' }] }, [null]).completable, 1);
    assert.equal(interpretUploadResponse(200, { results: [{ transaction_id: 1 }] }, [1]).completable, 0);
    assert.equal(interpretUploadResponse(200, undefined, [1]).reason?.code, 'unexpected_response');
    assert.equal(interpretUploadResponse(200, [], [1]).completable, 0);
  });

  test('parseRetryAfter reads seconds and HTTP dates', () => {
    assert.equal(parseRetryAfter('5'), 5000);
    assert.equal(parseRetryAfter(' 0 '), 0);
    assert.equal(parseRetryAfter(null), undefined);
    assert.equal(parseRetryAfter('soon'), undefined);
    const now = Date.parse('2025-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('Wed, 01 Jan 2025 00:00:30 GMT', now), 30_000);
  });
});
