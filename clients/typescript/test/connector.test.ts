import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import type { CommonPowerSyncDatabase, PowerSyncBackendConnector, UploadQueueStats } from '@powersync/common';

import {
  QUEUE_HEADER,
  WorkerConnector,
  WorkerConnectorError,
  type FatalErrorReport,
  type UnchangedReport,
  type WorkerConnectorOptions,
} from '../src/index.js';
import { FakeFetch, FakeQueue, results, sentIds, withoutIterator, type Answer } from './fakes.js';

const WORKER = 'https://worker.example.test';
const SESSION = 'session-token-abc';

function connector(fake: FakeFetch, options: Partial<WorkerConnectorOptions> = {}): WorkerConnector {
  return new WorkerConnector({
    workerUrl: WORKER,
    getSessionToken: async () => SESSION,
    fetch: fake.fetch,
    onFatalError: () => {},
    onUnchanged: () => {},
    ...options,
  });
}

async function rejectsWith(promise: Promise<unknown>, expected: Partial<WorkerConnectorError>): Promise<WorkerConnectorError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof WorkerConnectorError, `expected a WorkerConnectorError, got ${String(caught)}`);
  for (const [key, value] of Object.entries(expected)) {
    assert.deepEqual((caught as unknown as Record<string, unknown>)[key], value, `error.${key}`);
  }
  return caught;
}

/** The SDK's upload-queue statistics with only the count (what the connector reads). */
const stats = (count: number) => ({ count }) as unknown as UploadQueueStats;

const FAILURE_23505 = {
  index: 1,
  code: '23505',
  message: 'duplicate key value violates unique constraint "profiles_handle_key"',
  details: 'Key (handle)=(x) already exists.',
  http_status: 409,
};

describe('fetchCredentials', () => {
  test('sends GET /powersync-token with the session as Bearer and returns endpoint, token and expiresAt', async () => {
    const fake = new FakeFetch({
      status: 200,
      body: {
        token: 'ps-token',
        powersync_url: 'https://x.powersync.journeyapps.com',
        endpoint: 'https://x.powersync.journeyapps.com',
        expires_at: '2025-10-22T20:30:00.000Z',
        user_id: 'u1',
      },
    });
    const credentials = await connector(fake, { workerUrl: `${WORKER}/` }).fetchCredentials();
    assert.deepEqual(credentials, {
      endpoint: 'https://x.powersync.journeyapps.com',
      token: 'ps-token',
      expiresAt: new Date('2025-10-22T20:30:00.000Z'),
    });
    assert.equal(fake.requests.length, 1);
    const [request] = fake.requests;
    assert.equal(request!.url, `${WORKER}/powersync-token`);
    assert.equal(request!.init.method, 'GET');
    assert.equal(request!.init.body, undefined);
    assert.deepEqual(request!.init.headers, { Authorization: `Bearer ${SESSION}`, Accept: 'application/json' });
  });

  test('falls back to powersync_url when the body has no endpoint', async () => {
    const fake = new FakeFetch({ status: 200, body: { token: 't', powersync_url: 'https://ps.example' } });
    const credentials = await connector(fake).fetchCredentials();
    assert.deepEqual(credentials, { endpoint: 'https://ps.example', token: 't' });
  });

  test('returns null without calling fetch when signed out (null or undefined token)', async () => {
    for (const signedOut of [null, undefined, '']) {
      const fake = new FakeFetch();
      const credentials = await connector(fake, { getSessionToken: async () => signedOut }).fetchCredentials();
      assert.equal(credentials, null);
      assert.equal(fake.requests.length, 0);
    }
  });

  test('throws an error carrying the worker code and status on 401', async () => {
    const fake = new FakeFetch({
      status: 401,
      body: { error: 'Unauthorized', code: 'session_expired', request_id: 'req-1' },
    });
    const error = await rejectsWith(connector(fake).fetchCredentials(), {
      code: 'session_expired',
      status: 401,
      requestId: 'req-1',
    });
    assert.match(error.message, /401 session_expired: Unauthorized/);
  });

  test('throws on 500 and 503 with the worker code, and on a non-JSON error body with http_<status>', async () => {
    await rejectsWith(
      connector(new FakeFetch({ status: 500, body: { error: 'PowerSync not configured', code: 'powersync_not_configured' } })).fetchCredentials(),
      { code: 'powersync_not_configured', status: 500 },
    );
    await rejectsWith(
      connector(
        new FakeFetch({
          status: 503,
          body: { error: 'Session keys unavailable, try again', code: 'session_keys_unavailable' },
          headers: { 'Retry-After': '7' },
        }),
      ).fetchCredentials(),
      { code: 'session_keys_unavailable', status: 503, retryAfterMs: 7000 },
    );
    await rejectsWith(connector(new FakeFetch({ status: 502, text: '<html>bad gateway</html>' })).fetchCredentials(), {
      code: 'http_502',
      status: 502,
    });
  });

  test('throws unexpected_response on a 200 without token or endpoint', async () => {
    await rejectsWith(connector(new FakeFetch({ status: 200, body: { token: 't' } })).fetchCredentials(), {
      code: 'unexpected_response',
      status: 200,
    });
    await rejectsWith(connector(new FakeFetch({ status: 200, text: 'not json' })).fetchCredentials(), {
      code: 'unexpected_response',
    });
  });

  test('throws network_error when fetch rejects', async () => {
    const cause = new TypeError('fetch failed');
    const error = await rejectsWith(connector(new FakeFetch(cause)).fetchCredentials(), {
      code: 'network_error',
      status: null,
    });
    assert.equal(error.cause, cause);
  });
});

describe('uploadData: request', () => {
  test('reports the queue depth and how long the head transaction has waited', async (t) => {
    let clock = 1_000_000;
    t.mock.method(Date, 'now', () => clock);
    const queue = Object.assign(new FakeQueue().add(1, [{ op: 'DELETE', id: 'a' }]).add(2, [{ op: 'DELETE', id: 'b' }]), {
      getUploadQueueStats: async () => stats(2),
    });
    const retry = { status: 503, body: results(['retryable_error', 1], ['not_attempted', 2]), headers: { 'Retry-After': '1' } };
    const fake = new FakeFetch(retry, retry, { status: 200, body: results(['success', 1], ['retryable_error', 2]) }, retry);
    const c = connector(fake);
    const header = (i: number) => fake.requests[i]!.init.headers[QUEUE_HEADER];
    await assert.rejects(c.uploadData(queue));
    assert.equal(header(0), 'count=2; oldest_seconds=0');
    clock += 90_500;
    await assert.rejects(c.uploadData(queue));
    assert.equal(header(1), 'count=2; oldest_seconds=90', 'the same head, 90 s later');
    await assert.rejects(c.uploadData(queue));
    clock += 5_000;
    await assert.rejects(c.uploadData(queue));
    assert.equal(header(3), 'count=2; oldest_seconds=0', 'a new head: its own wait starts when first read');
  });

  test('sends no queue header without statistics, when they fail, or with reportQueue false', async () => {
    const cases: [ReturnType<typeof withoutIterator>, Partial<WorkerConnectorOptions>][] = [
      [new FakeQueue().add(1, [{ op: 'DELETE', id: 'a' }]), {}],
      [Object.assign(new FakeQueue().add(1, [{ op: 'DELETE', id: 'a' }]), { getUploadQueueStats: async (): Promise<UploadQueueStats> => { throw new Error('closed'); } }), {}],
      [Object.assign(new FakeQueue().add(1, [{ op: 'DELETE', id: 'a' }]), { getUploadQueueStats: async () => stats(-1) }), {}],
      [Object.assign(new FakeQueue().add(1, [{ op: 'DELETE', id: 'a' }]), { getUploadQueueStats: async () => stats(4) }), { reportQueue: false }],
    ];
    for (const [database, options] of cases) {
      const fake = new FakeFetch({ status: 200, body: results(['success', 1]) });
      await connector(fake, options).uploadData(database);
      assert.ok(!(QUEUE_HEADER in fake.requests[0]!.init.headers), 'no queue header');
      assert.equal(fake.requests[0]!.init.headers.Authorization, `Bearer ${SESSION}`, 'uploaded as usual');
    }
  });

  test('sends the database client id, and no client_id when the database cannot give one', async () => {
    const queue = new FakeQueue().add(1, [{ op: 'DELETE', id: 'a' }]);
    let fake = new FakeFetch({ status: 200, body: results(['success', 1]) });
    await connector(fake).uploadData(queue);
    assert.equal((fake.requests[0]!.json as { client_id?: string }).client_id, 'client-abc');

    for (const database of [
      withoutIterator(new FakeQueue().add(2, [{ op: 'DELETE', id: 'b' }])),
      Object.assign(new FakeQueue().add(2, [{ op: 'DELETE', id: 'b' }]), { clientIdAnswer: undefined }),
    ]) {
      fake = new FakeFetch({ status: 200, body: results(['success', 2]) });
      await connector(fake).uploadData(database);
      assert.ok(!('client_id' in (fake.requests[0]!.json as object)), 'sent without client_id');
    }
  });

  test('keeps sending the client id once read, when reading it again fails', async () => {
    // An attempt without it could not be told from a late attempt with it: never mixed.
    const queue = new FakeQueue().add(1, [{ op: 'DELETE', id: 'a' }]);
    let fake = new FakeFetch({ status: 503, body: { error: 'down' } });
    await assert.rejects(connector(fake).uploadData(queue));
    assert.equal((fake.requests[0]!.json as { client_id?: string }).client_id, 'client-abc');
    queue.clientIdAnswer = undefined;
    fake = new FakeFetch({ status: 200, body: results(['success', 1]) });
    await connector(fake).uploadData(queue);
    assert.equal((fake.requests[0]!.json as { client_id?: string }).client_id, 'client-abc', 'the same id again');
  });

  test('sends POST /powersync-upload with Bearer, JSON headers and the exact transactions body', async () => {
    const queue = new FakeQueue()
      .add(7, [
        { op: 'PUT', table: 'lists', id: 'l1', data: { name: 'Groceries', owner_id: 'u1' } },
        { op: 'PATCH', table: 'todos', id: 't1', data: { completed: 1, description: null } },
        { op: 'DELETE', table: 'todos', id: 't2' },
      ])
      .add(8, [{ op: 'PATCH', table: 'todos', id: 't3' }]);
    const fake = new FakeFetch({ status: 200, body: results(['success', 7], ['success', 8]) });
    await connector(fake, { workerUrl: `${WORKER}///` }).uploadData(queue);

    assert.equal(fake.requests.length, 1);
    const [request] = fake.requests;
    assert.equal(request!.url, `${WORKER}/powersync-upload`);
    assert.equal(request!.init.method, 'POST');
    assert.deepEqual(request!.init.headers, {
      Authorization: `Bearer ${SESSION}`,
      Accept: 'application/json',
      'Content-Type': 'application/json',
    });
    assert.equal(
      request!.init.body,
      JSON.stringify({
        client_id: 'client-abc',
        transactions: [
          {
            transaction_id: 7,
            crud: [
              { op: 'PUT', table: 'lists', id: 'l1', data: { name: 'Groceries', owner_id: 'u1' } },
              { op: 'PATCH', table: 'todos', id: 't1', data: { completed: 1, description: null } },
              { op: 'DELETE', table: 'todos', id: 't2' },
            ],
          },
          { transaction_id: 8, crud: [{ op: 'PATCH', table: 'todos', id: 't3' }] },
        ],
      }),
    );
  });

  test('does nothing and calls no fetch when the queue is empty', async () => {
    const fake = new FakeFetch();
    await connector(fake).uploadData(new FakeQueue());
    assert.equal(fake.requests.length, 0);
  });

  test('signed out: throws signed_out without calling fetch and completes nothing', async () => {
    const queue = new FakeQueue().addMany(1, 2);
    const fake = new FakeFetch();
    await rejectsWith(connector(fake, { getSessionToken: async () => null }).uploadData(queue), {
      code: 'signed_out',
      status: null,
    });
    assert.equal(fake.requests.length, 0);
    assert.deepEqual(queue.remainingTransactionIds(), [1, 2]);
  });

  test('entries without a transactionId are each their own transaction, sent with transaction_id null', async () => {
    const queue = new FakeQueue()
      .add(undefined, [{ op: 'PUT', id: 'a', data: { n: 1 } }])
      .add(undefined, [{ op: 'PUT', id: 'b', data: { n: 2 } }])
      .add(5, [{ op: 'DELETE', id: 'c' }]);
    assert.deepEqual(queue.remainingTransactionIds(), [undefined, undefined, 5]);
    const fake = new FakeFetch({ status: 200, body: results(['success', null], ['success', null], ['success', 5]) });
    await connector(fake).uploadData(queue);
    assert.deepEqual(sentIds(fake.requests[0]), [null, null, 5]);
    assert.deepEqual(
      (fake.requests[0]!.json as { transactions: { crud: unknown[] }[] }).transactions.map((t) => t.crud.length),
      [1, 1, 1],
    );
    assert.equal(queue.remainingEntryCount(), 0);
  });
});

describe('uploadData: what is completed', () => {
  test('200 success completes the transaction', async () => {
    const queue = new FakeQueue().addMany(1, 1);
    const fake = new FakeFetch({ status: 200, body: results(['success', 1]) });
    await connector(fake).uploadData(queue);
    assert.deepEqual(queue.remainingTransactionIds(), []);
    assert.deepEqual(queue.completeCalls, [1]);
  });

  test('several transactions go in one request, in queue order, and are all completed', async () => {
    const queue = new FakeQueue().addMany(10, 5);
    const fake = new FakeFetch({
      status: 200,
      body: results(['success', 10], ['success', 11], ['fatal_error', 12, { failed_operation: FAILURE_23505 }], ['success', 13], ['success', 14]),
    });
    await connector(fake).uploadData(queue);
    assert.equal(fake.requests.length, 1);
    assert.deepEqual(sentIds(fake.requests[0]), [10, 11, 12, 13, 14]);
    assert.deepEqual(queue.remainingTransactionIds(), []);
  });

  test('200 fatal_error calls onFatalError with id, entries and failed_operation, then completes', async () => {
    const queue = new FakeQueue()
      .add(3, [
        { op: 'PUT', table: 'profiles', id: 'p1', data: { handle: 'y' } },
        { op: 'PUT', table: 'profiles', id: 'p2', data: { handle: 'x' } },
      ])
      .addMany(4, 1);
    const reports: FatalErrorReport[] = [];
    let queuedDuringCallback: (number | undefined)[] = [];
    const fake = new FakeFetch({
      status: 200,
      body: results(['fatal_error', 3, { failed_operation: FAILURE_23505 }], ['success', 4]),
    });
    await connector(fake, {
      onFatalError: (report) => {
        reports.push(report);
        queuedDuringCallback = queue.remainingTransactionIds();
      },
    }).uploadData(queue);

    assert.equal(reports.length, 1);
    const [report] = reports;
    assert.equal(report!.status, 'fatal_error');
    assert.equal(report!.transactionId, 3);
    assert.deepEqual(
      report!.entries.map((e) => [e.op, e.table, e.id, e.opData]),
      [
        ['PUT', 'profiles', 'p1', { handle: 'y' }],
        ['PUT', 'profiles', 'p2', { handle: 'x' }],
      ],
    );
    assert.deepEqual(report!.failedOperation, FAILURE_23505);
    assert.equal(report!.failedEntry?.id, 'p2');
    assert.equal(report!.appliedVia, undefined, 'the atomic function applied nothing of it');
    assert.deepEqual(queuedDuringCallback, [3, 4], 'onFatalError runs before the transaction is discarded');
    assert.deepEqual(queue.remainingTransactionIds(), []);
  });

  test('a fatal_error applied through REST after the atomic call timed out tells onFatalError that the entries before it were applied', async () => {
    const queue = new FakeQueue().add(7, [
      { op: 'PUT', table: 'lists', id: 'l1', data: { name: 'groceries' } },
      { op: 'PUT', table: 'todos', id: 't1', data: { list_id: 'l1', priority: 9 } },
    ]);
    const reason = 'the atomic call was cancelled by the statement timeout; entries before the failing one stayed applied';
    const reports: FatalErrorReport[] = [];
    const fake = new FakeFetch({
      status: 200,
      body: results([
        'fatal_error',
        7,
        { failed_operation: { index: 1, code: '23514', message: 'check' }, applied_via: 'rest', applied_via_reason: reason },
      ]),
    });
    await connector(fake, { onFatalError: (report) => void reports.push(report) }).uploadData(queue);
    assert.equal(reports.length, 1);
    assert.equal(reports[0]!.appliedVia, 'rest');
    assert.equal(reports[0]!.appliedViaReason, reason);
    assert.equal(reports[0]!.failedEntry?.id, 't1');
    assert.deepEqual(queue.remainingTransactionIds(), []);
  });

  test('200 conflict calls onFatalError with status conflict and the entry, then completes (previous values sent)', async () => {
    const queue = new FakeQueue()
      .add(5, [{ op: 'PATCH', id: 't1', data: { title: 'mine' }, previousValues: { title: 'seen' } }])
      .addMany(6, 1);
    const conflict = { index: 0, code: 'conflict', message: 'row changed since the client saw it', details: null };
    const reports: FatalErrorReport[] = [];
    const fake = new FakeFetch({ status: 200, body: results(['conflict', 5, { failed_operation: conflict }], ['success', 6]) });
    await connector(fake, { onFatalError: (report) => void reports.push(report) }).uploadData(queue);

    assert.deepEqual((fake.requests[0]!.json as { transactions: { crud: unknown[] }[] }).transactions[0]!.crud, [
      { op: 'PATCH', table: 'todos', id: 't1', data: { title: 'mine' }, previous_values: { title: 'seen' } },
    ]);
    assert.equal(reports.length, 1);
    assert.equal(reports[0]!.status, 'conflict');
    assert.equal(reports[0]!.transactionId, 5);
    assert.equal(reports[0]!.failedEntry?.id, 't1');
    assert.equal(reports[0]!.failedOperation?.code, 'conflict');
    assert.deepEqual(queue.remainingTransactionIds(), []);
  });

  test('onFatalError throwing keeps that transaction queued, completes the ones before it, and rethrows', async () => {
    const queue = new FakeQueue().addMany(1, 3);
    const boom = new Error('could not save the rejected transaction');
    const fake = new FakeFetch({
      status: 200,
      body: results(['success', 1], ['fatal_error', 2, { failed_operation: FAILURE_23505 }], ['success', 3]),
    });
    let caught: unknown;
    try {
      await connector(fake, {
        onFatalError: async () => {
          throw boom;
        },
      }).uploadData(queue);
    } catch (error) {
      caught = error;
    }
    assert.equal(caught, boom);
    assert.deepEqual(queue.remainingTransactionIds(), [2, 3]);
  });

  test('onFatalError throwing on the first transaction completes nothing', async () => {
    const queue = new FakeQueue().addMany(1, 1);
    const fake = new FakeFetch({ status: 200, body: results(['fatal_error', 1, { failed_operation: FAILURE_23505 }]) });
    await assert.rejects(
      connector(fake, {
        onFatalError: () => {
          throw new Error('no');
        },
      }).uploadData(queue),
      /no/,
    );
    assert.deepEqual(queue.remainingTransactionIds(), [1]);
    assert.deepEqual(queue.completeCalls, []);
  });

  test('without onFatalError, a fatal_error is logged with console.error and completed', async (t) => {
    const logged = t.mock.method(console, 'error', () => {});
    const queue = new FakeQueue().addMany(1, 1);
    const fake = new FakeFetch({ status: 200, body: results(['fatal_error', 1, { failed_operation: FAILURE_23505 }]) });
    await new WorkerConnector({ workerUrl: WORKER, getSessionToken: () => SESSION, fetch: fake.fetch }).uploadData(queue);
    assert.equal(logged.mock.callCount(), 1);
    assert.match(String(logged.mock.calls[0]!.arguments[0]), /transaction 1 .*23505/);
    assert.deepEqual(queue.remainingTransactionIds(), []);
  });

  test('success with unchanged entries calls onUnchanged with those entries before completing', async () => {
    const queue = new FakeQueue()
      .add(1, [
        { op: 'PUT', table: 'lists', id: 'l1', data: { name: 'x' } },
        { op: 'PATCH', table: 'todos', id: 'gone', data: { done: true } },
        { op: 'DELETE', table: 'todos', id: 'hidden' },
      ])
      .addMany(2, 1);
    const reports: UnchangedReport[] = [];
    let queuedDuringCallback: (number | undefined)[] = [];
    const fake = new FakeFetch({
      status: 200,
      body: results(['success', 1, { unchanged: [2, 1, 1, 7, -1, 'x'] }], ['success', 2]),
    });
    await connector(fake, {
      onUnchanged: (report) => {
        reports.push(report);
        queuedDuringCallback = queue.remainingTransactionIds();
      },
    }).uploadData(queue);
    assert.equal(reports.length, 1, 'only the transaction with unchanged entries');
    const [report] = reports;
    assert.equal(report!.transactionId, 1);
    assert.equal(report!.entries.length, 3);
    assert.deepEqual(report!.unchangedIndexes, [1, 2], 'in order, valid indexes only');
    assert.deepEqual(
      report!.unchangedEntries.map((e) => [e.op, e.table, e.id]),
      [
        ['PATCH', 'todos', 'gone'],
        ['DELETE', 'todos', 'hidden'],
      ],
    );
    assert.deepEqual(queuedDuringCallback, [1, 2], 'onUnchanged runs before the transaction is completed');
    assert.deepEqual(queue.remainingTransactionIds(), []);
  });

  test('onUnchanged throwing keeps that transaction queued and rethrows', async () => {
    const queue = new FakeQueue().addMany(1, 2);
    const fake = new FakeFetch({ status: 200, body: results(['success', 1], ['success', 2, { unchanged: [0] }]) });
    await assert.rejects(
      connector(fake, {
        onUnchanged: () => {
          throw new Error('could not tell the user');
        },
      }).uploadData(queue),
      /could not tell the user/,
    );
    assert.deepEqual(queue.remainingTransactionIds(), [2]);
  });

  test('without onUnchanged, unchanged entries are logged with console.warn, without row data', async (t) => {
    const warned = t.mock.method(console, 'warn', () => {});
    const queue = new FakeQueue().add(5, [{ op: 'DELETE', table: 'todos', id: 'secret-id' }]);
    const fake = new FakeFetch({ status: 200, body: results(['success', 5, { unchanged: [0] }]) });
    await new WorkerConnector({ workerUrl: WORKER, getSessionToken: () => SESSION, fetch: fake.fetch }).uploadData(queue);
    assert.equal(warned.mock.callCount(), 1);
    const line = String(warned.mock.calls[0]!.arguments[0]);
    assert.match(line, /transaction 5 .*0 \(DELETE todos\)/);
    assert.doesNotMatch(line, /secret-id/);
    assert.deepEqual(queue.remainingTransactionIds(), []);
  });

  test('503 with [success, retryable_error] completes only the first, then throws with Retry-After', async () => {
    const queue = new FakeQueue().addMany(1, 2);
    const fake = new FakeFetch({
      status: 503,
      headers: { 'Retry-After': '5', 'X-Request-Id': 'ray-1' },
      body: results(['success', 1], [
        'retryable_error',
        2,
        { failed_operation: { index: 0, code: 'http_503', message: 'upstream unavailable', details: null }, retry_after_ms: 5000 },
      ]),
    });
    const error = await rejectsWith(connector(fake).uploadData(queue), {
      code: 'retryable_error',
      status: 503,
      retryAfterMs: 5000,
      requestId: 'ray-1',
      completedTransactions: 1,
    });
    assert.match(error.message, /transaction 2 is retryable_error: http_503 upstream unavailable/);
    assert.deepEqual(queue.remainingTransactionIds(), [2]);
    assert.deepEqual(queue.completeCalls, [1]);
  });

  test('503 with [fatal_error, not_attempted] reports and completes the first only (subrequest budget ran out)', async () => {
    const queue = new FakeQueue().addMany(1, 3);
    const reported: (number | undefined)[] = [];
    const fake = new FakeFetch({
      status: 503,
      headers: { 'Retry-After': '5' },
      body: results(['fatal_error', 1, { failed_operation: FAILURE_23505 }], ['not_attempted', 2], ['not_attempted', 3]),
    });
    // Final prefix applied, the rest only ran out of the worker's per-request budget: no delayed
    // retry is needed, so uploadData returns and the SDK calls it again at once for 2 and 3.
    await connector(fake, { onFatalError: (r) => void reported.push(r.transactionId) }).uploadData(queue);
    assert.deepEqual(reported, [1]);
    assert.deepEqual(queue.remainingTransactionIds(), [2, 3]);
  });

  test('503 with [success, retryable_error, not_attempted] completes the first only and throws', async () => {
    const queue = new FakeQueue().addMany(1, 3);
    const fake = new FakeFetch({
      status: 503,
      body: results(['success', 1], ['retryable_error', 2, { failed_operation: { index: 0, code: 'timeout', message: 't' } }], ['not_attempted', 3]),
    });
    await rejectsWith(connector(fake).uploadData(queue), { code: 'retryable_error', completedTransactions: 1 });
    assert.deepEqual(queue.remainingTransactionIds(), [2, 3]);
  });

  test('503 with not_attempted first completes nothing and throws', async () => {
    const queue = new FakeQueue().addMany(1, 2);
    const fake = new FakeFetch({ status: 503, headers: { 'Retry-After': '5' }, body: results(['not_attempted', 1], ['not_attempted', 2]) });
    await rejectsWith(connector(fake).uploadData(queue), { code: 'not_attempted', status: 503, retryAfterMs: 5000 });
    assert.deepEqual(queue.remainingTransactionIds(), [1, 2]);
  });

  test('a final result after a non-final one is never completed (no completion out of order)', async () => {
    const queue = new FakeQueue().addMany(1, 3);
    const fake = new FakeFetch({
      status: 503,
      body: results(['retryable_error', 1, { failed_operation: { index: 0, code: '40001', message: 'serialization' } }], ['success', 2], ['success', 3]),
    });
    await rejectsWith(connector(fake).uploadData(queue), { code: 'retryable_error', completedTransactions: 0 });
    assert.deepEqual(queue.remainingTransactionIds(), [1, 2, 3]);
    assert.deepEqual(queue.completeCalls, []);
  });

  test('503 without results (session keys unavailable) completes nothing', async () => {
    const queue = new FakeQueue().addMany(1, 1);
    const fake = new FakeFetch({
      status: 503,
      headers: { 'Retry-After': '2' },
      body: { error: 'Session keys unavailable, try again', code: 'session_keys_unavailable', request_id: 'r' },
    });
    await rejectsWith(connector(fake).uploadData(queue), { code: 'session_keys_unavailable', status: 503, retryAfterMs: 2000 });
    assert.deepEqual(queue.remainingTransactionIds(), [1]);
  });
});

describe('uploadData: what completes nothing', () => {
  const cases: [name: string, answer: Answer, code: string, status: number | null][] = [
    ['a network error', new TypeError('fetch failed'), 'network_error', null],
    ['401 session_expired', { status: 401, body: { error: 'Unauthorized', code: 'session_expired' } }, 'session_expired', 401],
    ['401 without a body', { status: 401, text: '' }, 'http_401', 401],
    [
      '400 invalid_body',
      { status: 400, body: { error: 'transactions[0].crud[0].op: unknown op', code: 'invalid_body', field: 'transactions[0].crud[0].op' } },
      'invalid_body',
      400,
    ],
    ['500 upload_not_configured', { status: 500, body: { error: 'Upload not configured', code: 'upload_not_configured' } }, 'upload_not_configured', 500],
    ['502 from a proxy, HTML body', { status: 502, text: '<html>Bad gateway</html>' }, 'http_502', 502],
    ['200 with a body that is not JSON', { status: 200, text: 'OK' }, 'unexpected_response', 200],
    ['200 with an empty body', { status: 200, text: '' }, 'unexpected_response', 200],
    ['200 without results', { status: 200, body: { applied: 2 } }, 'unexpected_response', 200],
    ['200 with fewer results than transactions sent', { status: 200, body: results(['success', 1]) }, 'unexpected_response', 200],
    ['200 with more results than transactions sent', { status: 200, body: results(['success', 1], ['success', 2], ['success', 3]) }, 'unexpected_response', 200],
    ['200 with the transaction ids swapped', { status: 200, body: results(['success', 2], ['success', 1]) }, 'unexpected_response', 200],
    ['200 with a wrong transaction id', { status: 200, body: results(['success', 1], ['success', 99]) }, 'unexpected_response', 200],
    ['200 with a transaction id as a string', { status: 200, body: results(['success', 1], ['success', '2' as unknown as number]) }, 'unexpected_response', 200],
    ['200 with a result that is not an object', { status: 200, body: { results: ['success', 'success'] } }, 'unexpected_response', 200],
    ['503 with mismatched results', { status: 503, body: results(['success', 1], ['not_attempted', 3]) }, 'unexpected_response', 503],
  ];
  for (const [name, answer, code, status] of cases) {
    test(`${name}: completes nothing and throws ${code}`, async () => {
      const queue = new FakeQueue().addMany(1, 2);
      const fake = new FakeFetch(answer);
      await rejectsWith(connector(fake).uploadData(queue), { code, status, completedTransactions: 0 });
      assert.deepEqual(queue.remainingTransactionIds(), [1, 2]);
      assert.deepEqual(queue.completeCalls, []);
    });
  }

  test('after a 401, refreshSessionToken gives a new token and the same request is sent again with it', async () => {
    const queue = new FakeQueue().addMany(1, 1);
    const fake = new FakeFetch({ status: 401, body: { error: 'Unauthorized', code: 'session_expired' } }, { status: 200, body: results(['success', 1]) });
    let refreshed = 0;
    const refreshing = connector(fake, { refreshSessionToken: async () => (refreshed++, 'fresh-token') });
    await refreshing.uploadData(queue);
    assert.equal(refreshed, 1);
    assert.deepEqual(
      fake.requests.map((r) => r.init.headers['Authorization']),
      [`Bearer ${SESSION}`, 'Bearer fresh-token'],
    );
    assert.deepEqual(fake.requests[1]!.json, fake.requests[0]!.json, 'the same body');
    assert.deepEqual(queue.remainingTransactionIds(), []);
    // Nothing new from the refresh: the 401 is thrown, once, and nothing is completed.
    const again = new FakeQueue().addMany(1, 1);
    const stale = new FakeFetch({ status: 401, body: { error: 'Unauthorized', code: 'session_expired' } });
    await rejectsWith(connector(stale, { refreshSessionToken: () => SESSION }).uploadData(again), { code: 'session_expired', status: 401 });
    assert.equal(stale.requests.length, 1);
    assert.deepEqual(again.remainingTransactionIds(), [1]);
  });

  test('a request with no answer within requestTimeoutMs is aborted, throws timeout and completes nothing', async () => {
    const queue = new FakeQueue().addMany(1, 1);
    const fake = new FakeFetch(
      (request) =>
        new Promise((_, reject) => {
          request.init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
        }),
    );
    await rejectsWith(connector(fake, { requestTimeoutMs: 20 }).uploadData(queue), { code: 'timeout', status: null });
    assert.ok(fake.requests[0]!.init.signal?.aborted);
    assert.deepEqual(queue.remainingTransactionIds(), [1]);
  });
});

describe('uploadData: batching', () => {
  test('413 halves the batch until the worker accepts it, then completes only what was sent', async () => {
    const queue = new FakeQueue().addMany(1, 5);
    const tooLarge: Answer = { status: 413, body: { error: '5 transactions; at most 2 are accepted per request', code: 'payload_too_large' } };
    const fake = new FakeFetch(tooLarge, tooLarge, { status: 200, body: results(['success', 1], ['success', 2]) });
    await connector(fake).uploadData(queue);
    assert.deepEqual(fake.requests.map(sentIds), [[1, 2, 3, 4, 5], [1, 2, 3], [1, 2]]);
    assert.deepEqual(queue.remainingTransactionIds(), [3, 4, 5]);
  });

  test('a 400 naming a place in transaction k sends the k before it, which are not at fault, and completes them', async () => {
    const queue = new FakeQueue().addMany(1, 4);
    const malformed: Answer = {
      status: 400,
      body: { error: 'transactions[2].crud[0].op: unknown op', code: 'invalid_body', field: 'transactions[2].crud[0].op' },
    };
    const fake = new FakeFetch(malformed, { status: 200, body: results(['success', 1], ['success', 2]) });
    const c = connector(fake);
    await c.uploadData(queue);
    assert.deepEqual(fake.requests.map(sentIds), [[1, 2, 3, 4], [1, 2]]);
    assert.deepEqual(queue.remainingTransactionIds(), [3, 4]);
    // the one at fault, first now: its refusal is thrown and it stays queued
    const atFault: Answer = { ...malformed, body: { ...(malformed.body as object), field: 'transactions[0].crud[0].op' } };
    const next = new FakeFetch(atFault);
    await rejectsWith(connector(next).uploadData(queue), { code: 'invalid_body', status: 400 });
    assert.deepEqual(next.requests.map(sentIds), [[3, 4]]);
    assert.deepEqual(queue.remainingTransactionIds(), [3, 4]);
  });

  test('a 400 that names no transaction, or one not sent, holds the batch as before', async () => {
    for (const field of ['client_id', 'transactions[7].crud[0].op', '$']) {
      const queue = new FakeQueue().addMany(1, 3);
      const fake = new FakeFetch({ status: 400, body: { error: 'x', code: 'invalid_body', field } });
      await rejectsWith(connector(fake).uploadData(queue), { code: 'invalid_body', status: 400 });
      assert.equal(fake.requests.length, 1, field);
      assert.deepEqual(queue.remainingTransactionIds(), [1, 2, 3]);
    }
  });

  test('after a 401 and a refresh, the next requests of the same upload use the fresh token', async () => {
    const queue = new FakeQueue().addMany(1, 4);
    const tooLarge: Answer = { status: 413, body: { error: 'too large', code: 'payload_too_large' } };
    const fake = new FakeFetch(
      { status: 401, body: { error: 'Unauthorized', code: 'session_expired' } },
      tooLarge,
      { status: 200, body: results(['success', 1], ['success', 2]) },
    );
    let refreshed = 0;
    await connector(fake, { refreshSessionToken: async () => (refreshed++, 'fresh-token') }).uploadData(queue);
    assert.equal(refreshed, 1);
    assert.deepEqual(
      fake.requests.map((r) => r.init.headers['Authorization']),
      [`Bearer ${SESSION}`, 'Bearer fresh-token', 'Bearer fresh-token'],
    );
    assert.deepEqual(queue.remainingTransactionIds(), [3, 4]);
  });

  test('a number JSON cannot hold is sent as its word, never as the null JSON.stringify writes', async () => {
    const queue = new FakeQueue().add(1, [{ op: 'PUT', id: 'a', data: { ratio: Infinity, low: -Infinity, n: 1 } }]);
    const fake = new FakeFetch({ status: 200, body: results(['success', 1]) });
    await connector(fake).uploadData(queue);
    const body = fake.requests[0]!.json as { transactions: { crud: { data: unknown }[] }[] };
    assert.deepEqual(body.transactions[0]!.crud[0]!.data, { ratio: 'Infinity', low: '-Infinity', n: 1 });
  });

  test('413 for a single transaction completes nothing and throws payload_too_large', async () => {
    const queue = new FakeQueue().addMany(1, 2);
    const tooLarge: Answer = { status: 413, body: { error: 'too many entries', code: 'payload_too_large' } };
    const fake = new FakeFetch(tooLarge, tooLarge);
    await rejectsWith(connector(fake).uploadData(queue), { code: 'payload_too_large', status: 413 });
    assert.deepEqual(fake.requests.map(sentIds), [[1, 2], [1]]);
    assert.deepEqual(queue.remainingTransactionIds(), [1, 2]);
  });

  test('maxTransactionsPerRequest caps how many transactions one request carries (default 20)', async () => {
    const queue = new FakeQueue().addMany(1, 25);
    const ok = (request: { json: unknown }) =>
      new Response(JSON.stringify(results(...sentIds(request as never).map((id) => ['success', id as number] as [string, number]))), { status: 200 });
    const fake = new FakeFetch(ok, ok, ok);
    const c = connector(fake);
    await c.uploadData(queue);
    assert.deepEqual(sentIds(fake.requests[0]), Array.from({ length: 20 }, (_, i) => i + 1));
    await c.uploadData(queue);
    assert.deepEqual(sentIds(fake.requests[1]), [21, 22, 23, 24, 25]);
    assert.deepEqual(queue.remainingTransactionIds(), []);

    const small = new FakeQueue().addMany(1, 3);
    const fake2 = new FakeFetch({ status: 200, body: results(['success', 1], ['success', 2]) });
    await connector(fake2, { maxTransactionsPerRequest: 2 }).uploadData(small);
    assert.deepEqual(sentIds(fake2.requests[0]), [1, 2]);
    assert.deepEqual(small.remainingTransactionIds(), [3]);
  });

  test('maxEntriesPerRequest caps the entries of a request; a larger single transaction is sent alone', async () => {
    const entries = (n: number, prefix: string) =>
      Array.from({ length: n }, (_, i) => ({ op: 'PUT' as const, id: `${prefix}${i}`, data: { i } }));
    const queue = new FakeQueue().add(1, entries(3, 'a')).add(2, entries(2, 'b')).add(3, entries(1, 'c')).add(4, entries(9, 'd')).add(5, entries(1, 'e'));
    const fake = new FakeFetch(
      { status: 200, body: results(['success', 1], ['success', 2]) },
      { status: 200, body: results(['success', 3]) },
      { status: 200, body: results(['success', 4]) },
    );
    const c = connector(fake, { maxEntriesPerRequest: 5 });
    await c.uploadData(queue); // 3 + 2 = 5 entries; the next (1) would make 6
    await c.uploadData(queue); // 1 entry; the next (9) would make 10
    await c.uploadData(queue); // 9 entries: over the cap but alone
    assert.deepEqual(fake.requests.map(sentIds), [[1, 2], [3], [4]]);
    assert.deepEqual(queue.remainingTransactionIds(), [5]);
  });

  test('with only getNextCrudTransaction (no getCrudTransactions) one transaction is sent per request', async () => {
    const queue = new FakeQueue().addMany(1, 3);
    const fake = new FakeFetch({ status: 200, body: results(['success', 1]) });
    await connector(fake).uploadData(withoutIterator(queue));
    assert.deepEqual(sentIds(fake.requests[0]), [1]);
    assert.deepEqual(queue.remainingTransactionIds(), [2, 3]);
  });

  test('the session token is asked for before each upload and sent as Bearer', async () => {
    const tokens = ['first', 'second'];
    const queue = new FakeQueue().addMany(1, 2);
    const fake = new FakeFetch({ status: 200, body: results(['success', 1]) }, { status: 200, body: results(['success', 2]) });
    const c = connector(fake, { getSessionToken: async () => tokens.shift(), maxTransactionsPerRequest: 1 });
    await c.uploadData(queue);
    await c.uploadData(queue);
    assert.deepEqual(
      fake.requests.map((r) => r.init.headers.Authorization),
      ['Bearer first', 'Bearer second'],
    );
  });
});

describe('construction and types', () => {
  test('is a PowerSyncBackendConnector whose uploadData accepts a CommonPowerSyncDatabase', () => {
    const c: PowerSyncBackendConnector = new WorkerConnector({ workerUrl: WORKER, getSessionToken: () => null, fetch: globalThis.fetch });
    const upload: (db: CommonPowerSyncDatabase) => Promise<void> = (db) => c.uploadData(db);
    assert.equal(typeof upload, 'function');
  });

  test('rejects a missing workerUrl, a missing getSessionToken and non-positive limits', () => {
    const getSessionToken = () => null;
    assert.throws(() => new WorkerConnector({ workerUrl: '', getSessionToken }), TypeError);
    assert.throws(() => new WorkerConnector({ workerUrl: WORKER } as WorkerConnectorOptions), TypeError);
    assert.throws(() => new WorkerConnector({ workerUrl: WORKER, getSessionToken, maxTransactionsPerRequest: 0 }), TypeError);
    assert.throws(() => new WorkerConnector({ workerUrl: WORKER, getSessionToken, maxEntriesPerRequest: 1.5 }), TypeError);
    assert.throws(() => new WorkerConnector({ workerUrl: WORKER, getSessionToken, requestTimeoutMs: -1 }), TypeError);
    assert.doesNotThrow(() => new WorkerConnector({ workerUrl: WORKER, getSessionToken, requestTimeoutMs: 0 }));
  });

  test('uses globalThis.fetch, called as a plain function, when no fetch is given', async (t) => {
    let seenThis: unknown = 'unset';
    const mocked = t.mock.method(globalThis, 'fetch', function (this: unknown) {
      seenThis = this;
      return Promise.resolve(new Response(JSON.stringify({ token: 't', endpoint: 'https://ps' }), { status: 200 }));
    });
    const credentials = await new WorkerConnector({ workerUrl: WORKER, getSessionToken: () => 's' }).fetchCredentials();
    assert.equal(mocked.mock.callCount(), 1);
    assert.deepEqual(credentials, { endpoint: 'https://ps', token: 't' });
    assert.ok(seenThis === globalThis || seenThis === undefined);
  });
});
