import 'dart:async';
import 'dart:convert';

import 'package:http/http.dart' as http;
import 'package:powersync_core/powersync_core.dart';

import 'protocol.dart';

/// The local upload queue, as the connector uses it. The SDK's database class cannot be mocked,
/// so the connector reads the queue through this interface: [PowerSyncUploadQueue] wraps a
/// `PowerSyncDatabase`, tests give a fake.
abstract class UploadQueue {
  /// The queued transactions, oldest first (`PowerSyncDatabase.getCrudTransactions()`).
  Stream<CrudTransaction> getCrudTransactions();

  /// The database's PowerSync client id (`PowerSyncDatabase.getClientId()`).
  Future<String> getClientId();
}

/// [UploadQueue] of a `PowerSyncDatabase`.
class PowerSyncUploadQueue implements UploadQueue {
  final PowerSyncDatabase database;

  PowerSyncUploadQueue(this.database);

  @override
  Stream<CrudTransaction> getCrudTransactions() => database.getCrudTransactions();

  @override
  Future<String> getClientId() => database.getClientId();
}

/// What the worker answered that must be retried (the SDK retries after its retry delay), or a
/// failure to reach it. [code] is the worker's (`session_expired`, `retryable_error`, ...) or
/// the connector's (`network_error`, `timeout`, `signed_out`, `unexpected_response`, `http_<n>`).
class WorkerConnectorException implements Exception {
  final String message;
  final String code;

  /// The HTTP status, when there was an answer.
  final int? status;
  final String? requestId;

  /// How long the worker asked to wait, when it said.
  final int? retryAfterMs;

  /// Transactions completed by the call that threw.
  final int completedTransactions;

  WorkerConnectorException(
    this.message, {
    required this.code,
    this.status,
    this.requestId,
    this.retryAfterMs,
    this.completedTransactions = 0,
  });

  @override
  String toString() => 'WorkerConnectorException($code): $message';
}

/// A transaction the worker rejected for good, handed to [WorkerConnector.onFatalError] before it
/// is removed from the upload queue.
class FatalErrorReport {
  /// `fatal_error`, or `conflict` (the worker's `UPLOAD_CONFLICT_DETECTION` found the row changed
  /// since the app saw it: docs/conflicts.md).
  final String status;

  /// The SDK's transaction id; null for entries recorded without one.
  final int? transactionId;

  /// Every entry of the transaction, as the SDK queued it. The whole transaction is discarded
  /// from the queue; what of it the server holds depends on how it was applied: see [appliedVia].
  final List<CrudEntry> entries;

  /// The worker's `failed_operation`: which entry failed (`index`) and why.
  final FailedOperation? failedOperation;

  /// `rest` when the worker applied the transaction through REST requests after its atomic call
  /// timed out: the entries before `failedOperation.index` stayed applied (they are on the server
  /// and reach the app by sync), so an app that re-creates the transaction must leave them out.
  /// Null when the atomic function applied nothing of it. A worker without the atomic function
  /// (its `UPLOAD_ATOMIC=false`) applies every transaction that way without saying so (its
  /// docs/upload.md).
  final String? appliedVia;

  /// With [appliedVia]: the worker's words for why, and what that costs.
  final String? appliedViaReason;

  const FatalErrorReport({
    required this.status,
    required this.transactionId,
    required this.entries,
    required this.failedOperation,
    this.appliedVia,
    this.appliedViaReason,
  });

  bool get isConflict => status == 'conflict';

  /// `entries[failedOperation.index]`, when the worker named the entry.
  CrudEntry? get failedEntry {
    final index = failedOperation?.index;
    return index != null && index >= 0 && index < entries.length ? entries[index] : null;
  }
}

/// An applied transaction some of whose entries changed no row (gone already,
/// hidden by row-level security, or a PUT a database trigger skipped), handed to [WorkerConnector.onUnchanged].
class UnchangedReport {
  final int? transactionId;
  final List<CrudEntry> entries;

  /// Indexes in [entries] of the entries that changed no row, in order.
  final List<int> unchangedIndexes;

  const UnchangedReport({required this.transactionId, required this.entries, required this.unchangedIndexes});

  List<CrudEntry> get unchangedEntries => [for (final i in unchangedIndexes) entries[i]];
}

/// PowerSync backend connector for powersync-supabase-worker (the same contract as the
/// TypeScript connector, clients/typescript):
///
/// - [fetchCredentials] exchanges the session token for a PowerSync token at `/powersync-token`;
/// - [uploadData] sends up to [maxTransactionsPerRequest] queued transactions (read with
///   `getCrudTransactions()`, never `getCrudBatch()`, which merges app transactions) to
///   `/powersync-upload` and completes exactly the leading ones whose result is final
///   (`success`, `fatal_error`, `conflict`), in order; anything else throws, and the SDK retries.
class WorkerConnector extends PowerSyncBackendConnector {
  /// Base URL of the worker, without trailing slashes (they are removed).
  final String workerUrl;

  /// The user's current session access token, or null when signed out. Called before every
  /// request: it should return a fresh token (refresh an expired session first).
  final Future<String?> Function() getSessionToken;

  /// Called once after the worker answered 401 to get a refreshed token, with which the request
  /// is sent again at once (e.g. `auth.refreshSession()`). Null: no second attempt (the SDK
  /// retries later). Default null.
  final Future<String?> Function()? refreshSessionToken;

  /// Called once per transaction the worker rejected for good (`fatal_error` or `conflict`),
  /// before it is removed from the upload queue. If it throws, the transaction stays queued and
  /// [uploadData] rethrows (it is sent, and reported, again later). Default: a log line through
  /// [log] (no row data).
  final FutureOr<void> Function(FatalErrorReport report) onFatalError;

  /// Called once per applied transaction with entries that changed no row, before it is removed
  /// from the queue. If it throws, the transaction stays queued and [uploadData] rethrows; the
  /// transaction is sent again, and this is called again for it (a worker with the atomic
  /// function's exactly-once ledger answers `already_applied` with the same `unchanged`, also when
  /// the first answer was lost). Default: a log line through [log] (no row data).
  final FutureOr<void> Function(UnchangedReport report) onUnchanged;

  /// Most transactions per upload request (1: one per request). Default 20.
  final int maxTransactionsPerRequest;

  /// Most CRUD entries per upload request, all transactions together; a single larger
  /// transaction is still sent, alone. Keep it at or below the worker's `UPLOAD_MAX_ENTRIES`.
  /// Default 1000.
  final int maxEntriesPerRequest;

  /// How long a request may take, body included; then it counts as a network error (nothing is
  /// completed, the SDK retries) so that `disconnect()` and sign-out never wait for ever.
  /// Must be positive (an [ArgumentError] otherwise). Default 60 seconds.
  final Duration requestTimeout;

  /// Where the default callbacks write. Default: `print`.
  final void Function(String message) log;

  final http.Client _client;

  WorkerConnector({
    required String workerUrl,
    required this.getSessionToken,
    this.refreshSessionToken,
    FutureOr<void> Function(FatalErrorReport report)? onFatalError,
    FutureOr<void> Function(UnchangedReport report)? onUnchanged,
    this.maxTransactionsPerRequest = 20,
    this.maxEntriesPerRequest = 1000,
    this.requestTimeout = const Duration(seconds: 60),
    void Function(String message)? log,
    http.Client? client,
  })  : workerUrl = _baseUrl(workerUrl),
        log = log ?? print,
        onFatalError = onFatalError ?? _defaultOnFatalError(log ?? print),
        onUnchanged = onUnchanged ?? _defaultOnUnchanged(log ?? print),
        _client = client ?? http.Client() {
    if (maxTransactionsPerRequest < 1) {
      throw ArgumentError.value(maxTransactionsPerRequest, 'maxTransactionsPerRequest', 'must be at least 1');
    }
    if (maxEntriesPerRequest < 1) {
      throw ArgumentError.value(maxEntriesPerRequest, 'maxEntriesPerRequest', 'must be at least 1');
    }
    // Zero is not "no limit" here (it is in the TypeScript connector's requestTimeoutMs): every
    // request would time out and nothing would ever be uploaded.
    if (requestTimeout <= Duration.zero) {
      throw ArgumentError.value(requestTimeout, 'requestTimeout', 'must be positive');
    }
  }

  static String _baseUrl(String url) {
    final trimmed = url.trim().replaceFirst(RegExp(r'/+$'), '');
    if (trimmed.isEmpty) throw ArgumentError.value(url, 'workerUrl', 'is required');
    return trimmed;
  }

  static FutureOr<void> Function(FatalErrorReport) _defaultOnFatalError(void Function(String) log) {
    return (report) {
      final failure = report.failedOperation;
      log('[WorkerConnector] the worker ${report.isConflict ? 'found a conflict in' : 'rejected'} transaction '
          '${report.transactionId ?? '(no id)'} for good; it is discarded from the upload queue: '
          '${failure != null ? '${failure.code} ${failure.message}' : 'no details'}'
          '${failure?.index != null ? ' (entry ${failure!.index})' : ''}'
          '${report.appliedVia == 'rest' && failure?.index != null ? '; the entries before it were applied (through REST: ${report.appliedViaReason ?? 'no reason given'})' : ''}');
    };
  }

  static FutureOr<void> Function(UnchangedReport) _defaultOnUnchanged(void Function(String) log) {
    return (report) {
      final which = [
        for (final i in report.unchangedIndexes) '$i (${report.entries[i].op.toJson()} ${report.entries[i].table})'
      ].join(', ');
      log('[WorkerConnector] transaction ${report.transactionId ?? '(no id)'} was applied, but entries $which '
          'changed no row (gone, hidden by row-level security, or skipped by a trigger)');
    };
  }

  /// Asks the worker for a PowerSync token. Null when signed out; throws
  /// [WorkerConnectorException] on anything but a valid 200 (the SDK retries).
  @override
  Future<PowerSyncCredentials?> fetchCredentials() async {
    final session = await getSessionToken();
    if (session == null || session.isEmpty) return null;
    final (answer, _) = await _send('GET', '/powersync-token', session, null);
    final body = answer.body;
    if (answer.status != 200) {
      final error = errorOf(body);
      throw WorkerConnectorException(
        'powersync-token answered HTTP ${answer.status}${error.code != null ? ' ${error.code}' : ''}'
        '${error.error != null ? ': ${error.error}' : ''}',
        code: error.code ?? 'http_${answer.status}',
        status: answer.status,
        requestId: answer.requestId ?? error.requestId,
        retryAfterMs: parseRetryAfter(answer.retryAfter),
      );
    }
    final fields = body is Map ? body : const {};
    final endpoint = fields['endpoint'] ?? fields['powersync_url'];
    final token = fields['token'];
    if (endpoint is! String || endpoint.isEmpty || token is! String || token.isEmpty) {
      throw WorkerConnectorException('powersync-token answered 200 without a token and an endpoint',
          code: 'unexpected_response', status: 200, requestId: answer.requestId);
    }
    final expiresAt = fields['expires_at'];
    return PowerSyncCredentials(
      endpoint: endpoint,
      token: token,
      expiresAt: expiresAt is String ? DateTime.tryParse(expiresAt) : null,
    );
  }

  @override
  Future<void> uploadData(PowerSyncDatabase database) => uploadFrom(PowerSyncUploadQueue(database));

  /// [uploadData] on any [UploadQueue]: sends the oldest queued transactions and completes those
  /// the worker reports final, in order (only the last of the completable prefix is completed:
  /// completing transaction k removes every entry up to k's last one). On 413 the first half is
  /// sent instead, until it fits or a single transaction is refused; on a 400 that names a place
  /// in transaction k > 0, the k before it (the one at fault is then sent first, and its refusal
  /// thrown). Throws when something must be retried, or rethrows what a callback threw.
  Future<void> uploadFrom(UploadQueue queue) async {
    final transactions = await _readQueue(queue);
    if (transactions.isEmpty) return;
    final signedIn = await getSessionToken();
    if (signedIn == null || signedIn.isEmpty) {
      throw WorkerConnectorException('signed out: no session token to upload with', code: 'signed_out');
    }
    String session = signedIn;
    final clientId = await _clientIdOf(queue);
    var batch = transactions;
    for (;;) {
      final (answer, used) =
          await _send('POST', '/powersync-upload', session, uploadBodyText(planUploadBody(batch, clientId)));
      session = used;
      if (answer.status == 413 && batch.length > 1) {
        batch = batch.sublist(0, (batch.length + 1) ~/ 2);
        continue;
      }
      final before = sendableBefore(answer.status, answer.body, batch.length);
      if (before != null) {
        batch = batch.sublist(0, before);
        continue;
      }
      await _settle(batch, answer);
      return;
    }
  }

  Future<void> _settle(List<CrudTransaction> batch, _Answer answer) async {
    final verdict =
        interpretUploadResponse(answer.status, answer.body, sentTransactionIds(batch), retryAfter: answer.retryAfter);
    final results = verdict.results ?? const <TransactionResult>[];
    var reported = 0;
    Object? handlerError;
    StackTrace? handlerStack;
    for (; reported < verdict.completable; reported++) {
      final result = results[reported];
      final tx = batch[reported];
      try {
        if (result.status == 'fatal_error' || result.status == 'conflict') {
          await onFatalError(FatalErrorReport(
            status: result.status,
            transactionId: tx.transactionId,
            entries: tx.crud,
            failedOperation: result.failedOperation,
            appliedVia: result.appliedVia,
            appliedViaReason: result.appliedViaReason,
          ));
        } else {
          final unchanged = [
            for (final i in result.unchanged)
              if (i < tx.crud.length) i
          ];
          if (unchanged.isNotEmpty) {
            await onUnchanged(UnchangedReport(transactionId: tx.transactionId, entries: tx.crud, unchangedIndexes: unchanged));
          }
        }
      } catch (error, stack) {
        handlerError = error;
        handlerStack = stack;
        break;
      }
    }
    if (reported > 0) await batch[reported - 1].complete();
    if (handlerError != null) Error.throwWithStackTrace(handlerError, handlerStack!);
    if (verdict.next == 'done' || verdict.next == 'continue') return;
    throw WorkerConnectorException(
      '${verdict.reasonMessage ?? 'upload must be retried'}; will retry',
      code: verdict.reasonCode ?? 'unexpected_response',
      status: answer.status,
      requestId: answer.requestId ?? errorOf(answer.body).requestId,
      retryAfterMs: verdict.retryAfterMs,
      completedTransactions: verdict.completable,
    );
  }

  /// The oldest queued transactions: at most [maxTransactionsPerRequest] and
  /// [maxEntriesPerRequest] entries (always at least one transaction).
  Future<List<CrudTransaction>> _readQueue(UploadQueue queue) async {
    final selected = <CrudTransaction>[];
    var entries = 0;
    await for (final tx in queue.getCrudTransactions()) {
      if (selected.isNotEmpty && entries + tx.crud.length > maxEntriesPerRequest) break;
      selected.add(tx);
      entries += tx.crud.length;
      if (selected.length >= maxTransactionsPerRequest || entries >= maxEntriesPerRequest) break;
    }
    return selected;
  }

  /// Each queue's client id once read: it never changes for a database.
  static final Expando<String> _knownClientIds = Expando('client id');

  /// The client id, so the worker's atomic function applies each transaction exactly once. Read
  /// once per database and kept (a [PowerSyncUploadQueue] is made anew for every [uploadData]:
  /// it is kept under the database it wraps): a later failure to read it again must not send an
  /// attempt without it, which the ledger could not tell from a late one with it. Null when the
  /// database has never given one (the upload is then sent without it).
  static Future<String?> _clientIdOf(UploadQueue queue) async {
    final Object key = queue is PowerSyncUploadQueue ? queue.database : queue;
    final known = _knownClientIds[key];
    if (known != null) return known;
    try {
      final id = await queue.getClientId();
      if (id.isEmpty) return null;
      _knownClientIds[key] = id;
      return id;
    } catch (_) {
      return null;
    }
  }

  /// One request (with one retry on 401 when [refreshSessionToken] is set), body read within
  /// [requestTimeout]; with the token the answer was given for, for the next request.
  Future<(_Answer, String)> _send(String method, String path, String session, String? body) async {
    final answer = await _request(method, path, session, body);
    final refresh = refreshSessionToken;
    if (answer.status == 401 && refresh != null) {
      final fresh = await refresh();
      if (fresh != null && fresh.isNotEmpty && fresh != session) {
        return (await _request(method, path, fresh, body), fresh);
      }
    }
    return (answer, session);
  }

  Future<_Answer> _request(String method, String path, String session, String? body) async {
    // aborted when the answer is late, so that the abandoned request does not go on in the
    // background (and reach the worker after the SDK's re-send, or after later writes)
    final abort = Completer<void>();
    final request = http.AbortableRequest(method, Uri.parse('$workerUrl$path'), abortTrigger: abort.future);
    request.headers['Authorization'] = 'Bearer $session';
    request.headers['Accept'] = 'application/json';
    if (body != null) {
      request.headers['Content-Type'] = 'application/json';
      request.body = body;
    }
    try {
      final response = await _client.send(request).then(http.Response.fromStream).timeout(requestTimeout);
      return _Answer(
        status: response.statusCode,
        // UTF-8 whatever the Content-Type says: package:http reads an answer without a charset
        // as latin1 unless it is application/json (a proxy's or gateway's error page)
        body: _parseJson(utf8.decode(response.bodyBytes, allowMalformed: true)),
        retryAfter: response.headers['retry-after'],
        requestId: response.headers['x-request-id'],
      );
    } on TimeoutException {
      abort.complete();
      throw WorkerConnectorException('$method $path: no answer within ${requestTimeout.inMilliseconds} ms',
          code: 'timeout');
    } catch (error) {
      throw WorkerConnectorException('$method $path failed: $error', code: 'network_error');
    }
  }

  static Object? _parseJson(String text) {
    if (text.isEmpty) return null;
    try {
      return jsonDecode(text);
    } on FormatException {
      return null;
    }
  }
}

class _Answer {
  final int status;
  final Object? body;
  final String? retryAfter;
  final String? requestId;

  const _Answer({required this.status, required this.body, this.retryAfter, this.requestId});
}
