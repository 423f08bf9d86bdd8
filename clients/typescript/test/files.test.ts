import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { AttachmentState, type AttachmentRecord } from '@powersync/common';

import { WorkerConnectorError, WorkerStorageAdapter, subjectOf, type FileFetchInit, type FileFetchResponse } from '../src/index.js';

const WORKER = 'https://worker.example.test';
const USER = '8d0f6a52-7c1e-4b7e-9a1a-3f2c1d0e9b8a';
const SESSION = `h.${Buffer.from(JSON.stringify({ sub: USER, role: 'authenticated' })).toString('base64url')}.s`;

interface Sent {
  url: string;
  init: FileFetchInit;
}

type Reply = { status: number; json?: unknown; bytes?: Uint8Array; headers?: Record<string, string> } | Error;

/** A scripted fetch: answers in order, records every request. */
function scripted(...replies: Reply[]): { fetch: (url: string, init: FileFetchInit) => Promise<FileFetchResponse>; sent: Sent[] } {
  const sent: Sent[] = [];
  return {
    sent,
    fetch: async (url, init) => {
      sent.push({ url, init });
      const reply = replies.shift();
      if (!reply) throw new Error(`unexpected request ${init.method} ${url}`);
      if (reply instanceof Error) throw reply;
      const text = reply.json === undefined ? '' : JSON.stringify(reply.json);
      const headers = reply.headers ?? {};
      return {
        status: reply.status,
        headers: { get: (name: string) => headers[name] ?? null },
        text: async () => text,
        arrayBuffer: async () => (reply.bytes ?? new Uint8Array()).slice().buffer,
      };
    },
  };
}

function adapter(fetch: (url: string, init: FileFetchInit) => Promise<FileFetchResponse>, session: string | null = SESSION) {
  return new WorkerStorageAdapter({ workerUrl: `${WORKER}/`, getSessionToken: () => session, bucket: 'attachments', fetch });
}

const photo: AttachmentRecord = { id: 'a1', filename: 'a1.jpg', mediaType: 'image/jpeg', state: AttachmentState.QUEUED_UPLOAD };

async function rejectsWith(promise: Promise<unknown>, expected: Partial<WorkerConnectorError>): Promise<void> {
  const error = await promise.then(
    () => assert.fail('expected a rejection'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof WorkerConnectorError, String(error));
  for (const [key, value] of Object.entries(expected)) assert.deepEqual((error as unknown as Record<string, unknown>)[key], value, key);
}

describe('WorkerStorageAdapter', () => {
  test('uploadFile asks the worker for a signed URL in the user folder, then PUTs the bytes there with its headers', async () => {
    const signed = 'https://storage.example/object/upload/sign/attachments/x?token=t';
    const fake = scripted(
      { status: 200, json: { files: [{ url: signed, method: 'PUT', headers: { 'Content-Type': 'image/jpeg', 'x-upsert': 'true' } }] } },
      { status: 200, json: { Key: 'attachments/x' } },
    );
    await adapter(fake.fetch).uploadFile(new Uint8Array([1, 2, 3]).buffer, photo);
    assert.equal(fake.sent[0]!.url, `${WORKER}/powersync-files/upload`);
    assert.equal(fake.sent[0]!.init.headers['Authorization'], `Bearer ${SESSION}`);
    assert.deepEqual(JSON.parse(String(fake.sent[0]!.init.body)), {
      files: [{ bucket: 'attachments', path: `${USER}/a1.jpg`, content_type: 'image/jpeg', size: 3, upsert: true }],
    });
    assert.equal(fake.sent[1]!.url, signed);
    assert.equal(fake.sent[1]!.init.method, 'PUT');
    assert.equal(fake.sent[1]!.init.headers['Authorization'], undefined, 'no credentials go to Storage');
    assert.deepEqual(fake.sent[1]!.init.headers, { 'Content-Type': 'image/jpeg', 'x-upsert': 'true' });
    assert.deepEqual(new Uint8Array(fake.sent[1]!.init.body as ArrayBuffer), new Uint8Array([1, 2, 3]));
    assert.equal(fake.sent[1]!.init.redirect, 'manual', 'a redirected PUT is never followed as a GET');
  });

  for (const [name, reply] of [
    ['a 200 HTML page (a captive portal, a proxy)', { status: 200, headers: { 'content-type': 'text/html' } }],
    ['an empty 204 (a catch-all host)', { status: 204 }],
    ['a 200 JSON that is not Storage\'s {"Key": ...}', { status: 200, json: { ok: true } }],
    ['a 201 whose Key is not a string', { status: 201, json: { Key: 7 } }],
  ] as const) {
    test(`a signed upload answered with ${name} is not the file stored: an error, so the queue retries`, async () => {
      const fake = scripted({ status: 200, json: { files: [{ url: 'https://s/u', method: 'PUT', headers: {} }] } }, reply);
      await rejectsWith(adapter(fake.fetch).uploadFile(new ArrayBuffer(1), photo), {
        code: 'storage_unexpected_response',
        status: reply.status,
      });
    });
  }

  test('a signed upload URL answered with a redirect is no upload: an error, so the queue retries', async () => {
    const fake = scripted(
      { status: 200, json: { files: [{ url: 'https://s/u', method: 'PUT', headers: {} }] } },
      { status: 303, json: {}, headers: { Location: 'https://elsewhere/' } },
    );
    await rejectsWith(adapter(fake.fetch).uploadFile(new ArrayBuffer(1), photo), { code: 'storage_http_303', status: 303 });
  });

  test('downloadFile GETs the signed download URL and answers its bytes', async () => {
    const fake = scripted({ status: 200, json: { files: [{ url: 'https://s/object/sign/a?token=t' }] } }, { status: 200, bytes: new Uint8Array([9, 8]) });
    const data = await adapter(fake.fetch).downloadFile(photo);
    assert.deepEqual(new Uint8Array(data), new Uint8Array([9, 8]));
    assert.deepEqual(JSON.parse(String(fake.sent[0]!.init.body)), { files: [{ bucket: 'attachments', path: `${USER}/a1.jpg` }] });
    assert.equal(fake.sent[1]!.init.method, 'GET');
  });

  test('deleteFile asks the worker to delete, and a file already gone is fine', async () => {
    const fake = scripted({ status: 200, json: { files: [{ bucket: 'attachments', path: 'p', deleted: false }] } });
    await adapter(fake.fetch).deleteFile(photo);
    assert.equal(fake.sent[0]!.url, `${WORKER}/powersync-files/delete`);
  });

  test("a refusal carries the worker's code and status, and a 503 its Retry-After, so the queue retries later", async () => {
    await rejectsWith(
      adapter(scripted({ status: 403, json: { code: 'file_denied', error: 'Storage refused', request_id: 'r1' } }).fetch).uploadFile(new ArrayBuffer(1), photo),
      { code: 'file_denied', status: 403, requestId: 'r1' },
    );
    await rejectsWith(
      adapter(scripted({ status: 503, json: { code: 'storage_unavailable', error: 'x' }, headers: { 'Retry-After': '5' } }).fetch).downloadFile(photo),
      { code: 'storage_unavailable', status: 503, retryAfterMs: 5000 },
    );
    await rejectsWith(adapter(scripted(new Error('offline')).fetch).deleteFile(photo), { code: 'network_error', status: null });
  });

  test('a signed URL Storage refuses is an error naming the status Storage means', async () => {
    // Storage answers 400 and puts the status it means in the body's statusCode
    const fake = scripted({ status: 200, json: { files: [{ url: 'https://s/u' }] } }, { status: 400, json: { statusCode: '403', error: 'expired' } });
    await rejectsWith(adapter(fake.fetch).downloadFile(photo), { code: 'storage_http_403', status: 400 });
    const tooLarge = scripted(
      { status: 200, json: { files: [{ url: 'https://s/u' }] } },
      { status: 400, json: { statusCode: '413', error: 'Payload too large', message: 'The object exceeded the maximum allowed size' } },
    );
    await rejectsWith(adapter(tooLarge.fetch).uploadFile(new ArrayBuffer(1), photo), { code: 'storage_http_413', status: 400 });
    const plain = scripted({ status: 200, json: { files: [{ url: 'https://s/u' }] } }, { status: 400, json: { error: 'bad' } });
    await rejectsWith(adapter(plain.fetch).downloadFile(photo), { code: 'storage_http_400', status: 400 });
  });

  test('a file transfer slower than requestTimeoutMs completes within transferTimeoutMs, and a timeout names its option', async () => {
    const signed: FileFetchResponse = {
      status: 200,
      headers: { get: () => null },
      text: async () => JSON.stringify({ files: [{ url: 'https://s/object/upload/sign/a?token=t' }] }),
      arrayBuffer: async () => new ArrayBuffer(0),
    };
    // the worker answers at once; Storage takes 150 ms to take the bytes
    const slowStorage = () => {
      let calls = 0;
      return async (_url: string, init: FileFetchInit): Promise<FileFetchResponse> => {
        calls += 1;
        if (calls % 2 === 1) return signed;
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(resolve, 150);
          init.signal?.addEventListener('abort', () => {
            clearTimeout(timer);
            reject(new Error('aborted'));
          });
        });
        return { status: 200, headers: { get: () => null }, text: async () => '{"Key":"attachments/a"}', arrayBuffer: async () => new ArrayBuffer(0) };
      };
    };
    const options = { workerUrl: WORKER, getSessionToken: () => SESSION, bucket: 'attachments', requestTimeoutMs: 30 };
    await new WorkerStorageAdapter({ ...options, fetch: slowStorage() }).uploadFile(new ArrayBuffer(1), photo);
    const error = await new WorkerStorageAdapter({ ...options, fetch: slowStorage(), transferTimeoutMs: 40 })
      .uploadFile(new ArrayBuffer(1), photo)
      .then(() => undefined, (e: unknown) => e);
    assert.ok(error instanceof WorkerConnectorError && error.code === 'timeout', String(error));
    assert.match(String((error as Error).message), /transferTimeoutMs/);
    assert.throws(() => new WorkerStorageAdapter({ ...options, transferTimeoutMs: -1 }), TypeError);
  });

  test('signed out: nothing is sent', async () => {
    const fake = scripted();
    await rejectsWith(adapter(fake.fetch, null).uploadFile(new ArrayBuffer(1), photo), { code: 'signed_out' });
    assert.equal(fake.sent.length, 0);
  });

  test('pathOf chooses the object path', async () => {
    const fake = scripted({ status: 200, json: { files: [{ deleted: true }] } });
    const custom = new WorkerStorageAdapter({
      workerUrl: WORKER,
      getSessionToken: async () => SESSION,
      bucket: 'docs',
      fetch: fake.fetch,
      pathOf: (attachment, userId) => `users/${userId}/${attachment.id}`,
    });
    await custom.deleteFile(photo);
    assert.deepEqual(JSON.parse(String(fake.sent[0]!.init.body)), { files: [{ bucket: 'docs', path: `users/${USER}/a1` }] });
  });

  test('an answer whose head arrives but whose body never ends is a timeout, for the worker and for a signed URL', async () => {
    // The body's promise settles only when the request is aborted (as fetch's body does).
    const stalled = (status: number, first?: FileFetchResponse) => {
      let calls = 0;
      return async (_url: string, init: FileFetchInit): Promise<FileFetchResponse> => {
        calls += 1;
        if (first && calls === 1) return first;
        const never = () => new Promise<never>((_, reject) => init.signal?.addEventListener('abort', () => reject(new Error('aborted'))));
        return { status, headers: { get: () => null }, text: never, arrayBuffer: never };
      };
    };
    const within = (fetch: (url: string, init: FileFetchInit) => Promise<FileFetchResponse>) =>
      new WorkerStorageAdapter({ workerUrl: WORKER, getSessionToken: () => SESSION, bucket: 'attachments', fetch, requestTimeoutMs: 30, transferTimeoutMs: 30 });
    await rejectsWith(within(stalled(200)).deleteFile(photo), { code: 'timeout' });
    const signed: FileFetchResponse = {
      status: 200,
      headers: { get: () => null },
      text: async () => JSON.stringify({ files: [{ url: 'https://s/object/sign/a?token=t' }] }),
      arrayBuffer: async () => new ArrayBuffer(0),
    };
    await rejectsWith(within(stalled(200, signed)).downloadFile(photo), { code: 'timeout' });
  });

  test('subjectOf reads the sub of a token and refuses a token without one', () => {
    assert.equal(subjectOf(SESSION), USER);
    assert.throws(() => subjectOf('not-a-jwt'), (e: unknown) => e instanceof WorkerConnectorError && e.code === 'session_without_sub');
  });
});
