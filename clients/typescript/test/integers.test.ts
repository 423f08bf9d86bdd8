import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { WorkerConnector, WorkerConnectorError, uploadBodyText } from '../src/index.js';
import { ExactInteger, parseWithExactIntegers } from '../src/integers.js';
import { FakeFetch, FakeQueue, results } from './fakes.js';

const BIG = '9007199254740993'; // 2^53 + 1: JSON.parse reads 9007199254740992

describe('integers beyond 2^53', () => {
  test('parseWithExactIntegers keeps such integer literals as digits and reads everything else as JSON.parse', () => {
    const parsed = parseWithExactIntegers(
      `{"op":"PATCH","data":{"n":${BIG},"m":-${BIG},"safe":9007199254740991,"real":1e300,"f":9007199254740993.5,` +
        `"s":"${BIG}","q":"a \\" ${BIG}","list":[${BIG}]},"old":{"n":12}}`,
    ) as { data: Record<string, unknown>; old: Record<string, unknown> };
    assert.deepEqual(parsed.data['n'], new ExactInteger(BIG));
    assert.deepEqual(parsed.data['m'], new ExactInteger(`-${BIG}`));
    assert.equal(parsed.data['safe'], 9007199254740991);
    assert.equal(parsed.data['real'], 1e300, 'a real keeps its double: that is what SQLite holds');
    assert.equal(parsed.data['f'], 9007199254740993.5);
    assert.equal(parsed.data['s'], BIG, 'digits inside a string stay a string');
    assert.equal(parsed.data['q'], `a " ${BIG}`);
    assert.deepEqual(parsed.data['list'], [new ExactInteger(BIG)]);
    assert.deepEqual(parsed.old, { n: 12 });
  });

  test('uploadBodyText writes an exact integer as a JSON number with its digits', () => {
    const text = uploadBodyText({
      transactions: [{ transaction_id: 1, crud: [{ op: 'PUT', table: 't', id: 'r', data: { n: new ExactInteger(BIG), s: BIG, k: 3 } }] }],
    });
    assert.equal(text, `{"transactions":[{"transaction_id":1,"crud":[{"op":"PUT","table":"t","id":"r","data":{"n":${BIG},"s":"${BIG}","k":3}}]}]}`);
  });

  /** A queue whose getAll answers ps_crud's rows as the SDK writes them: JSON text with exact digits. */
  class RawQueue extends FakeQueue {
    readonly raw = new Map<number, string>();
    queries = 0;
    async getAll<T>(sql: string, ids: unknown[] = []): Promise<T[]> {
      this.queries++;
      assert.match(sql, /^SELECT id, data FROM ps_crud WHERE id IN \(\?(, \?)*\)$/);
      return ids.filter((id) => this.raw.has(Number(id))).map((id) => ({ id, data: this.raw.get(Number(id)) })) as T[];
    }
    /** Queues one entry the way the SDK would read it back: `data` and `old` parsed by JSON.parse. */
    addRaw(transactionId: number, op: 'PUT' | 'PATCH' | 'DELETE', id: string, text: string): this {
      const parsed = JSON.parse(text) as { data?: Record<string, unknown>; old?: Record<string, unknown> };
      this.add(transactionId, [{ op, id, data: parsed.data, previousValues: parsed.old }]);
      this.raw.set(this.remainingEntryCount(), text);
      return this;
    }
  }

  function recorded(fake: FakeFetch): string {
    return String(fake.requests[0]!.init.body);
  }

  test('an upload sends the exact digits ps_crud holds for data and previous values, not the rounded numbers', async () => {
    const queue = new RawQueue()
      .addRaw(1, 'PUT', 'r1', `{"op":"PUT","type":"todos","id":"r1","data":{"priority":${BIG},"description":"x"}}`)
      .addRaw(2, 'DELETE', 'r1', `{"op":"DELETE","type":"todos","id":"r1","old":{"priority":${BIG},"description":"x"}}`);
    const fake = new FakeFetch({ status: 200, body: results(['success', 1], ['success', 2]) });
    await new WorkerConnector({ workerUrl: 'https://w.test', getSessionToken: () => 's', fetch: fake.fetch, reportQueue: false }).uploadData(queue);
    const body = recorded(fake);
    assert.ok(body.includes(`"data":{"priority":${BIG},"description":"x"}`), body);
    assert.ok(body.includes(`"previous_values":{"priority":${BIG},"description":"x"}`), body);
    assert.equal(queue.queries, 1);
    assert.deepEqual(queue.remainingTransactionIds(), []);
  });

  test('an upload without such integers reads nothing again', async () => {
    const queue = new RawQueue().addRaw(1, 'PUT', 'r1', `{"op":"PUT","type":"todos","id":"r1","data":{"priority":9007199254740991}}`);
    const fake = new FakeFetch({ status: 200, body: results(['success', 1]) });
    await new WorkerConnector({ workerUrl: 'https://w.test', getSessionToken: () => 's', fetch: fake.fetch, reportQueue: false }).uploadData(queue);
    assert.equal(queue.queries, 0);
    assert.ok(recorded(fake).includes('"priority":9007199254740991'));
  });

  test('when the exact digits cannot be read, nothing is sent rounded: a retryable error, the transaction stays queued', async () => {
    const queue = new FakeQueue().add(1, [{ op: 'PUT', id: 'r1', data: { priority: Number(BIG) } }]); // no getAll
    const fake = new FakeFetch({ status: 200, body: results(['success', 1]) });
    const error = await new WorkerConnector({ workerUrl: 'https://w.test', getSessionToken: () => 's', fetch: fake.fetch })
      .uploadData(queue)
      .then(() => undefined, (e: unknown) => e);
    assert.ok(error instanceof WorkerConnectorError && error.code === 'inexact_integer', String(error));
    assert.equal(fake.requests.length, 0);
    assert.deepEqual(queue.remainingTransactionIds(), [1]);
  });
});
