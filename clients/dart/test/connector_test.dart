import 'dart:async';
import 'dart:convert';

import 'package:http/http.dart' as http;
import 'package:powersync_core/powersync_core.dart';
import 'package:powersync_supabase_worker/powersync_supabase_worker.dart';
import 'package:test/test.dart';

import 'fakes.dart';

const worker = 'https://worker.example.test';
const session = 'session-token-abc';

const failure23505 = {'index': 1, 'code': '23505', 'message': 'duplicate key', 'details': null, 'http_status': 409};

WorkerConnector connector(
  FakeWorker fake, {
  String url = worker,
  Future<String?> Function()? getSessionToken,
  Future<String?> Function()? refreshSessionToken,
  FutureOr<void> Function(FatalErrorReport)? onFatalError,
  FutureOr<void> Function(UnchangedReport)? onUnchanged,
  int maxTransactionsPerRequest = 20,
  int maxEntriesPerRequest = 1000,
  Duration requestTimeout = const Duration(seconds: 60),
  List<String>? logged,
}) =>
    WorkerConnector(
      workerUrl: url,
      getSessionToken: getSessionToken ?? () async => session,
      refreshSessionToken: refreshSessionToken,
      onFatalError: onFatalError,
      onUnchanged: onUnchanged,
      maxTransactionsPerRequest: maxTransactionsPerRequest,
      maxEntriesPerRequest: maxEntriesPerRequest,
      requestTimeout: requestTimeout,
      log: logged == null ? null : logged.add,
      client: fake.client,
    );

void main() {
  test('a request timeout of zero or less is refused (it would time out every upload)', () {
    for (final timeout in [Duration.zero, const Duration(seconds: -1)]) {
      expect(() => connector(FakeWorker([]), requestTimeout: timeout), throwsArgumentError);
    }
  });

  group('fetchCredentials', () {
    test('GETs <workerUrl>/powersync-token with the session, trailing slashes removed', () async {
      final fake = FakeWorker([
        jsonResponse(200, {'token': 'ps-token', 'powersync_url': 'https://ps.example.test', 'expires_at': '2030-01-01T00:00:00Z'}),
      ]);
      final credentials = await connector(fake, url: '$worker//').fetchCredentials();
      expect(fake.requests.single.method, 'GET');
      expect(fake.requests.single.url.toString(), '$worker/powersync-token');
      expect(fake.requests.single.headers['Authorization'], 'Bearer $session');
      expect(credentials!.token, 'ps-token');
      expect(credentials.endpoint, 'https://ps.example.test');
      expect(credentials.expiresAt, DateTime.utc(2030));
    });

    test('signed out: null, and no request (never "Bearer null")', () async {
      final fake = FakeWorker([]);
      expect(await connector(fake, getSessionToken: () async => null).fetchCredentials(), isNull);
      expect(fake.requests, isEmpty);
    });

    test('a 401 is retried once with a refreshed session when refreshSessionToken is given', () async {
      final fake = FakeWorker([
        jsonResponse(401, {'code': 'session_expired', 'error': 'expired'}),
        jsonResponse(200, {'token': 't', 'endpoint': 'https://ps.example.test'}),
      ]);
      final credentials =
          await connector(fake, refreshSessionToken: () async => 'fresh-token').fetchCredentials();
      expect(credentials!.token, 't');
      expect(fake.requests.map((r) => r.headers['Authorization']), ['Bearer $session', 'Bearer fresh-token']);
    });

    test('an error answer throws with the worker code and status', () async {
      final fake = FakeWorker([jsonResponse(401, {'code': 'session_expired', 'error': 'expired'})]);
      await expectLater(
        connector(fake).fetchCredentials(),
        throwsA(isA<WorkerConnectorException>()
            .having((e) => e.code, 'code', 'session_expired')
            .having((e) => e.status, 'status', 401)),
      );
    });

    test('a request that does not answer in time throws timeout', () async {
      final fake = FakeWorker([
        () => Completer<http.Response>().future, // never answers
      ]);
      await expectLater(
        connector(fake, requestTimeout: const Duration(milliseconds: 50)).fetchCredentials(),
        throwsA(isA<WorkerConnectorException>().having((e) => e.code, 'code', 'timeout')),
      );
    });
  });

  group('uploadFrom', () {
    test('sends several transactions in one request with client_id, previous values and metadata', () async {
      final queue = FakeQueue()
        ..add(1, [
          const EntrySpec(UpdateType.put, 'a', data: {'x': 1}),
          const EntrySpec(UpdateType.patch, 'b', data: {'x': 2}, previousValues: {'x': 1}, metadata: 'm'),
        ])
        ..add(2, [const EntrySpec(UpdateType.delete, 'c', previousValues: {'x': 3})]);
      final fake = FakeWorker([
        jsonResponse(200, results([['success', 1], ['success', 2]])),
      ]);
      await connector(fake).uploadFrom(queue);

      expect(fake.requests.single.url.toString(), '$worker/powersync-upload');
      expect(fake.requests.single.headers['Content-Type'], startsWith('application/json'));
      expect(fake.json(0), {
        'client_id': 'client-abc',
        'transactions': [
          {
            'transaction_id': 1,
            'crud': [
              {'op': 'PUT', 'table': 'todos', 'id': 'a', 'data': {'x': 1}},
              {'op': 'PATCH', 'table': 'todos', 'id': 'b', 'data': {'x': 2}, 'previous_values': {'x': 1}, 'metadata': 'm'},
            ],
          },
          {
            'transaction_id': 2,
            'crud': [
              {'op': 'DELETE', 'table': 'todos', 'id': 'c', 'previous_values': {'x': 3}},
            ],
          },
        ],
      });
      expect(queue.completeCalls, [2], reason: 'only the last transaction of the prefix is completed');
      expect(queue.remainingTransactionIds(), isEmpty);
    });

    test('reads at most maxTransactionsPerRequest and maxEntriesPerRequest', () async {
      final queue = FakeQueue()..addMany(1, 5);
      final fake = FakeWorker([
        jsonResponse(200, results([['success', 1], ['success', 2]])),
        jsonResponse(200, results([['success', 3], ['success', 4], ['success', 5]])),
      ]);
      await connector(fake, maxTransactionsPerRequest: 2).uploadFrom(queue);
      await connector(fake, maxEntriesPerRequest: 3).uploadFrom(queue);
      expect(fake.requests.length, 2);
      expect(queue.remainingTransactionIds(), isEmpty);
    });

    test('a fatal_error is handed to onFatalError before the transaction is discarded', () async {
      final queue = FakeQueue()
        ..add(3, [
          const EntrySpec(UpdateType.put, 'p1', data: {'h': 'y'}),
          const EntrySpec(UpdateType.put, 'p2', data: {'h': 'x'}),
        ])
        ..addMany(4, 1);
      final reports = <FatalErrorReport>[];
      List<int?>? queuedDuringCallback;
      final fake = FakeWorker([
        jsonResponse(200, results([['fatal_error', 3, {'failed_operation': failure23505}], ['success', 4]])),
      ]);
      await connector(fake, onFatalError: (report) {
        reports.add(report);
        queuedDuringCallback = queue.remainingTransactionIds();
      }).uploadFrom(queue);

      expect(reports.single.status, 'fatal_error');
      expect(reports.single.transactionId, 3);
      expect(reports.single.failedOperation!.code, '23505');
      expect(reports.single.failedEntry!.id, 'p2');
      expect(queuedDuringCallback, [3, 4]);
      expect(queue.remainingTransactionIds(), isEmpty);
    });

    test('a fatal_error applied through REST after the atomic call timed out tells onFatalError so', () async {
      final queue = FakeQueue()
        ..add(7, [
          const EntrySpec(UpdateType.put, 'l1', table: 'lists', data: {'name': 'groceries'}),
          const EntrySpec(UpdateType.put, 't1', data: {'list_id': 'l1', 'priority': 9}),
        ]);
      final reports = <FatalErrorReport>[];
      const reason = 'entries before the failing one stayed applied';
      final fake = FakeWorker([
        jsonResponse(200, results([
          [
            'fatal_error',
            7,
            {
              'failed_operation': {'index': 1, 'code': '23514', 'message': 'check'},
              'applied_via': 'rest',
              'applied_via_reason': reason,
            }
          ]
        ])),
      ]);
      await connector(fake, onFatalError: reports.add).uploadFrom(queue);
      expect(reports.single.appliedVia, 'rest');
      expect(reports.single.appliedViaReason, reason);
      expect(reports.single.failedEntry!.id, 't1');
      expect(queue.remainingTransactionIds(), isEmpty);
    });

    test('a 200 whose results are all final is completed whatever Retry-After a proxy adds', () async {
      final queue = FakeQueue()..addMany(1, 2);
      final fake = FakeWorker([
        jsonResponse(200, results([['success', 1], ['success', 2]]), headers: {'retry-after': '99999999999999999999'}),
      ]);
      await connector(fake).uploadFrom(queue);
      expect(queue.remainingTransactionIds(), isEmpty);
    });

    test('a conflict is handed to onFatalError like a fatal error', () async {
      final queue = FakeQueue()
        ..add(5, [const EntrySpec(UpdateType.patch, 't1', data: {'title': 'mine'}, previousValues: {'title': 'seen'})]);
      final reports = <FatalErrorReport>[];
      final conflict = {'index': 0, 'code': 'conflict', 'message': 'row changed', 'details': null};
      final fake = FakeWorker([
        jsonResponse(200, results([['conflict', 5, {'failed_operation': conflict}]])),
      ]);
      await connector(fake, onFatalError: reports.add).uploadFrom(queue);
      expect(reports.single.isConflict, isTrue);
      expect(reports.single.failedEntry!.id, 't1');
      expect(queue.remainingTransactionIds(), isEmpty);
    });

    test('onFatalError throwing keeps that transaction queued, completes the ones before, rethrows', () async {
      final queue = FakeQueue()..addMany(1, 3);
      final fake = FakeWorker([
        jsonResponse(
            200, results([['success', 1], ['fatal_error', 2, {'failed_operation': failure23505}], ['success', 3]])),
      ]);
      final boom = StateError('could not keep the rejected transaction');
      await expectLater(
        connector(fake, onFatalError: (_) => throw boom).uploadFrom(queue),
        throwsA(same(boom)),
      );
      expect(queue.completeCalls, [1]);
      expect(queue.remainingTransactionIds(), [2, 3]);
    });

    test('unchanged entries reach onUnchanged; the default callbacks log without row data', () async {
      final queue = FakeQueue()
        ..add(1, [
          const EntrySpec(UpdateType.patch, 'gone', data: {'secret': 'value'}),
        ]);
      final logged = <String>[];
      final fake = FakeWorker([
        jsonResponse(200, results([['success', 1, {'unchanged': [0, 7]}]])),
      ]);
      await connector(fake, logged: logged).uploadFrom(queue);
      expect(logged.single, contains('entries 0 (PATCH todos)'));
      expect(logged.single, isNot(contains('value')));
      expect(queue.remainingTransactionIds(), isEmpty);
    });

    test('503 with [success, retryable_error] completes the first only and throws with Retry-After', () async {
      final queue = FakeQueue()..addMany(1, 2);
      final fake = FakeWorker([
        jsonResponse(503, results([['success', 1], ['retryable_error', 2, {'retry_after_ms': 5000}]]),
            headers: {'retry-after': '3'}),
      ]);
      await expectLater(
        connector(fake).uploadFrom(queue),
        throwsA(isA<WorkerConnectorException>()
            .having((e) => e.code, 'code', 'retryable_error')
            .having((e) => e.retryAfterMs, 'retryAfterMs', 5000)
            .having((e) => e.completedTransactions, 'completed', 1)),
      );
      expect(queue.remainingTransactionIds(), [2]);
    });

    test('results that do not match what was sent complete nothing', () async {
      for (final body in [
        results([['success', 1]]), // one result for two transactions
        results([['success', 1], ['success', 99]]), // wrong id
        {'error': 'not results'},
      ]) {
        final queue = FakeQueue()..addMany(1, 2);
        final fake = FakeWorker([jsonResponse(200, body)]);
        await expectLater(connector(fake).uploadFrom(queue), throwsA(isA<WorkerConnectorException>()));
        expect(queue.completeCalls, isEmpty, reason: 'body $body');
      }
    });

    test('413 halves the batch until it fits', () async {
      final queue = FakeQueue()..addMany(1, 4);
      final fake = FakeWorker([
        jsonResponse(413, {'code': 'payload_too_large'}),
        jsonResponse(200, results([['success', 1], ['success', 2]])),
      ]);
      await connector(fake).uploadFrom(queue);
      expect(fake.json(1)['transactions'], hasLength(2));
      expect(queue.remainingTransactionIds(), [3, 4]);
    });

    test('a 400 naming a place in transaction k sends the k before it, which are not at fault', () async {
      final queue = FakeQueue()..addMany(1, 4);
      final malformed = jsonResponse(400, {
        'error': 'transactions[2].crud[0].op: unknown op',
        'code': 'invalid_body',
        'field': 'transactions[2].crud[0].op',
      });
      final fake = FakeWorker([malformed, jsonResponse(200, results([['success', 1], ['success', 2]]))]);
      await connector(fake).uploadFrom(queue);
      expect(fake.json(0)['transactions'], hasLength(4));
      expect(fake.json(1)['transactions'], hasLength(2));
      expect(queue.remainingTransactionIds(), [3, 4]);
      // the one at fault, first now: its refusal is thrown and it stays queued
      final atFault = FakeWorker([
        jsonResponse(400, {'error': 'x', 'code': 'invalid_body', 'field': 'transactions[0].crud[0].op'}),
      ]);
      await expectLater(
        connector(atFault).uploadFrom(queue),
        throwsA(isA<WorkerConnectorException>().having((e) => e.code, 'code', 'invalid_body')),
      );
      expect(atFault.requests, hasLength(1));
      expect(queue.remainingTransactionIds(), [3, 4]);
    });

    test('a number JSON cannot hold is sent as its word (jsonEncode alone throws: the queue would stop)', () async {
      final queue = FakeQueue()
        ..add(1, [
          const EntrySpec(UpdateType.put, 'a', data: {'ratio': double.infinity, 'low': double.negativeInfinity, 'n': 1}),
        ]);
      final fake = FakeWorker([jsonResponse(200, results([['success', 1]]))]);
      await connector(fake).uploadFrom(queue);
      final data = (fake.json(0)['transactions'] as List).first['crud'].first['data'];
      expect(data, {'ratio': 'Infinity', 'low': '-Infinity', 'n': 1});
    });

    test('after a 401 and a refresh, the next requests of the same upload use the fresh token', () async {
      final queue = FakeQueue()..addMany(1, 4);
      final fake = FakeWorker([
        jsonResponse(401, {'code': 'session_expired'}),
        jsonResponse(413, {'code': 'payload_too_large'}),
        jsonResponse(200, results([['success', 1], ['success', 2]])),
      ]);
      var refreshed = 0;
      await connector(fake, refreshSessionToken: () async {
        refreshed++;
        return 'fresh-token';
      }).uploadFrom(queue);
      expect(refreshed, 1);
      expect([for (final r in fake.requests) r.headers['Authorization']],
          ['Bearer $session', 'Bearer fresh-token', 'Bearer fresh-token']);
      expect(queue.remainingTransactionIds(), [3, 4]);
    });

    test('an answer is read as UTF-8 whatever its Content-Type says (none, here: latin1 for package:http)', () async {
      final queue = FakeQueue()..addMany(1, 1);
      final failure = {...failure23505, 'index': 0, 'details': 'Key (handle)=(José) already exists.'};
      final bytes = utf8.encode(jsonEncode(results([
        ['fatal_error', 1, {'failed_operation': failure}],
      ])));
      final fake = FakeWorker([http.Response.bytes(bytes, 200)]);
      final reports = <FatalErrorReport>[];
      await connector(fake, onFatalError: reports.add).uploadFrom(queue);
      expect(reports.single.failedOperation?.details, 'Key (handle)=(José) already exists.');
    });

    test('a request that does not answer in time is aborted, not left running', () async {
      final hanging = _HangingClient();
      final c = WorkerConnector(
        workerUrl: worker,
        getSessionToken: () async => session,
        requestTimeout: const Duration(milliseconds: 20),
        client: hanging,
      );
      await expectLater(
        c.uploadFrom(FakeQueue()..addMany(1, 1)),
        throwsA(isA<WorkerConnectorException>().having((e) => e.code, 'code', 'timeout')),
      );
      final trigger = (hanging.sent! as http.Abortable).abortTrigger;
      expect(trigger, isNotNull);
      await trigger!.timeout(const Duration(seconds: 1)); // completed: the request was aborted
    });

    test('a network error or a timeout completes nothing and throws', () async {
      final queue = FakeQueue()..addMany(1, 1);
      final fake = FakeWorker([http.ClientException('connection refused')]);
      await expectLater(
        connector(fake).uploadFrom(queue),
        throwsA(isA<WorkerConnectorException>().having((e) => e.code, 'code', 'network_error')),
      );
      expect(queue.completeCalls, isEmpty);
    });

    test('signed out: throws signed_out without a request, nothing completed', () async {
      final queue = FakeQueue()..addMany(1, 1);
      final fake = FakeWorker([]);
      await expectLater(
        connector(fake, getSessionToken: () async => null).uploadFrom(queue),
        throwsA(isA<WorkerConnectorException>().having((e) => e.code, 'code', 'signed_out')),
      );
      expect(fake.requests, isEmpty);
    });

    test('without a client id the upload is sent without client_id; an empty queue sends nothing', () async {
      final queue = FakeQueue()
        ..addMany(1, 1)
        ..clientIdAnswer = null;
      final fake = FakeWorker([jsonResponse(200, results([['success', 1]]))]);
      await connector(fake).uploadFrom(queue);
      expect(fake.json(0).containsKey('client_id'), isFalse);
      await connector(fake).uploadFrom(queue);
      expect(fake.requests, hasLength(1));
    });

    test('keeps sending the client id once read, when reading it again fails', () async {
      final queue = FakeQueue()..addMany(1, 1);
      final fake = FakeWorker([
        jsonResponse(503, {'error': 'down'}),
        jsonResponse(200, results([['success', 1]])),
      ]);
      await expectLater(connector(fake).uploadFrom(queue), throwsA(isA<WorkerConnectorException>()));
      expect(fake.json(0)['client_id'], 'client-abc');
      queue.clientIdAnswer = null;
      await connector(fake).uploadFrom(queue);
      expect(fake.json(1)['client_id'], 'client-abc');
    });
  });
}

/// A client whose requests never answer; keeps the last request it was given.
class _HangingClient extends http.BaseClient {
  http.BaseRequest? sent;

  @override
  Future<http.StreamedResponse> send(http.BaseRequest request) {
    sent = request;
    return Completer<http.StreamedResponse>().future;
  }
}
