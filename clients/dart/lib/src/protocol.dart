// The worker's wire format, as pure functions: what is sent to `/powersync-upload` and what an
// answer means for each transaction sent. No I/O here, so the rules are testable on their own.
// The same rules as the TypeScript connector (clients/typescript/src/protocol.ts).

import 'dart:convert';

import 'package:powersync_core/powersync_core.dart';

/// Which entry of a transaction the worker could not apply, and why (`failed_operation`).
class FailedOperation {
  /// Index of the failing entry in the transaction's `crud`; null when the whole transaction failed.
  final int? index;

  /// SQLSTATE (`23505`), PostgREST code (`PGRST204`) or a worker code (`table_not_allowed`,
  /// `conflict`, `http_503`, ...).
  final String code;
  final String message;
  final String? details;
  final String? hint;

  /// The upstream HTTP status, when there was an answer.
  final int? httpStatus;

  const FailedOperation({
    required this.index,
    required this.code,
    required this.message,
    this.details,
    this.hint,
    this.httpStatus,
  });

  /// The worker's `failed_operation` object; null when [json] is not an object.
  static FailedOperation? fromJson(Object? json) {
    if (json is! Map) return null;
    final index = json['index'];
    final code = json['code'];
    final message = json['message'];
    final details = json['details'];
    final hint = json['hint'];
    final httpStatus = json['http_status'];
    return FailedOperation(
      index: index is int ? index : null,
      code: code is String ? code : 'unknown',
      message: message is String ? message : '',
      details: details is String ? details : null,
      hint: hint is String ? hint : null,
      httpStatus: httpStatus is int ? httpStatus : null,
    );
  }

  @override
  String toString() => 'FailedOperation($code at ${index ?? '-'}: $message)';
}

/// One element of the worker's `results`, after validation.
class TransactionResult {
  /// `success`, `fatal_error`, `conflict`, `retryable_error`, `not_attempted`; any other string is
  /// kept and treated as not final (sent again).
  final String status;

  /// The `transaction_id` that was sent, echoed.
  final Object? transactionId;
  final FailedOperation? failedOperation;
  final int? retryAfterMs;

  /// `success` only: the worker's atomic function had applied it already (a re-send).
  final bool alreadyApplied;

  /// `success` only: indexes of the entries that changed no row.
  final List<int> unchanged;

  /// `rest` when the transaction was sent through REST requests after its atomic call timed out:
  /// neither all-or-nothing nor exactly once; with `fatal_error` or `retryable_error` the entries
  /// before `failedOperation.index` stayed applied. Null otherwise.
  final String? appliedVia;

  /// With [appliedVia]: the worker's words for why, and what that costs.
  final String? appliedViaReason;

  const TransactionResult({
    required this.status,
    required this.transactionId,
    this.failedOperation,
    this.retryAfterMs,
    this.alreadyApplied = false,
    this.unchanged = const [],
    this.appliedVia,
    this.appliedViaReason,
  });

  /// Final outcomes: the transaction may be completed (removed from the upload queue).
  bool get isFinal => status == 'success' || status == 'fatal_error' || status == 'conflict';
}

/// What to do with the transactions of one request, decided from the worker's answer.
class UploadInterpretation {
  /// How many leading transactions (in the order sent) may be completed. 0 when the answer is
  /// not trusted.
  final int completable;

  /// One validated result per transaction sent, or null when the answer carries none that match
  /// what was sent.
  final List<TransactionResult>? results;

  /// `done`: every transaction has a final outcome. `continue`: a final prefix, the rest
  /// `not_attempted` (the worker's subrequest budget ran out): upload the rest at once. `retry`:
  /// something must be retried later.
  final String next;

  /// Why the rest must be retried (`next` = `retry` or `continue`).
  final String? reasonCode;
  final String? reasonMessage;

  /// How long the worker asked the client to wait, from `Retry-After` or `retry_after_ms`.
  final int? retryAfterMs;

  const UploadInterpretation({
    required this.completable,
    required this.results,
    required this.next,
    this.reasonCode,
    this.reasonMessage,
    this.retryAfterMs,
  });
}

/// The wire form of one entry: `{op, table, id, data?, previous_values?, metadata?}`. `data` is
/// `opData`, left out for DELETE and when null; `previous_values` is `previousValues` for PATCH
/// and DELETE when the SDK tracked them (`trackPreviousValues`); `metadata` when the write had some.
Map<String, Object?> planEntry(CrudEntry entry) {
  final op = entry.op.toJson();
  final wire = <String, Object?>{'op': op, 'table': entry.table, 'id': entry.id};
  final data = entry.opData;
  if (op != 'DELETE' && data != null) wire['data'] = data;
  final previous = entry.previousValues;
  if (op != 'PUT' && previous != null) wire['previous_values'] = previous;
  final metadata = entry.metadata;
  if (metadata != null) wire['metadata'] = metadata;
  return wire;
}

/// The body of `POST /powersync-upload`: `{"client_id"?, "transactions":[{"transaction_id",
/// "crud":[...]}]}`; `client_id` only when [clientId] is a non-empty string.
Map<String, Object?> planUploadBody(List<CrudTransaction> transactions, String? clientId) {
  return {
    if (clientId != null && clientId.isNotEmpty) 'client_id': clientId,
    'transactions': [
      for (final tx in transactions)
        {
          'transaction_id': tx.transactionId,
          'crud': [for (final entry in tx.crud) planEntry(entry)],
        },
    ],
  };
}

/// The body's JSON text. A number JSON cannot hold (infinity, NaN: SQLite's `9e999` is read as
/// `double.infinity`) is sent as its word, as a string (`"Infinity"`, `"-Infinity"`, `"NaN"`):
/// PostgreSQL's float and numeric columns read it as the same value, integer columns refuse it
/// (the write is reported), text and JSON columns store the word. `jsonEncode` alone throws, and
/// the upload would be retried for ever.
String uploadBodyText(Map<String, Object?> body) => jsonEncode(body, toEncodable: _encodable);

Object? _encodable(Object? value) =>
    value is double && !value.isFinite ? value.toString() : (value as dynamic).toJson();

/// How many transactions to send again when the worker refused the whole body as malformed (400
/// `invalid_body`) at a place inside transaction `k` > 0 (`field` = `transactions[k]…`): the `k`
/// before it, which are not at fault, so they are not held with it. Null otherwise.
int? sendableBefore(int status, Object? body, int sent) {
  if (status != 400 || body is! Map || body['code'] != 'invalid_body') return null;
  final field = body['field'];
  if (field is! String) return null;
  final match = RegExp(r'^transactions\[(\d+)\]').firstMatch(field);
  final k = match == null ? null : int.tryParse(match.group(1)!);
  return k != null && k > 0 && k < sent ? k : null;
}

/// The `transaction_id` each transaction is sent with, in order (what the results must echo).
List<int?> sentTransactionIds(List<CrudTransaction> transactions) =>
    [for (final tx in transactions) tx.transactionId];

/// `Retry-After` in milliseconds: delta-seconds or an HTTP date; null when absent or invalid.
int? parseRetryAfter(String? value, {DateTime? now}) {
  if (value == null) return null;
  final text = value.trim();
  if (RegExp(r'^\d+$').hasMatch(text)) {
    // More seconds than a millisecond count can hold (int.parse would throw past 2^63, before
    // any result was honoured): no usable wait, as for any other invalid value.
    final seconds = text.length <= 15 ? int.parse(text) : null;
    return seconds == null ? null : seconds * 1000;
  }
  final date = parseHttpDateOrNull(text);
  if (date == null) return null;
  final ms = date.difference(now ?? DateTime.now()).inMilliseconds;
  return ms < 0 ? 0 : ms;
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP servers send; null otherwise.
DateTime? parseHttpDateOrNull(String text) {
  final match = RegExp(r'^[A-Za-z]{3}, (\d{2}) ([A-Za-z]{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$').firstMatch(text);
  if (match == null) return null;
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  final month = months.indexOf(match.group(2)!);
  if (month < 0) return null;
  return DateTime.utc(
    int.parse(match.group(3)!),
    month + 1,
    int.parse(match.group(1)!),
    int.parse(match.group(4)!),
    int.parse(match.group(5)!),
    int.parse(match.group(6)!),
  );
}

/// `code`, `error` and `request_id` of a worker error body (all null when it is not one).
class WorkerError {
  final String? code;
  final String? error;
  final String? requestId;

  const WorkerError({this.code, this.error, this.requestId});
}

/// The [WorkerError] fields of an answer's body.
WorkerError errorOf(Object? body) {
  if (body is! Map) return const WorkerError();
  final code = body['code'];
  final error = body['error'];
  final requestId = body['request_id'];
  return WorkerError(
    code: code is String ? code : null,
    error: error is String ? error : null,
    requestId: requestId is String ? requestId : null,
  );
}

/// The entry indexes of a result's `unchanged` (integers from 0), sorted, without repeats.
List<int> _unchangedIndexes(Object? raw) {
  if (raw is! List) return const [];
  final indexes = <int>{
    for (final i in raw)
      if (i is int && i >= 0) i,
  }.toList()
    ..sort();
  return indexes;
}

/// The results, if they match what was sent exactly: one per transaction, in order, each echoing
/// its `transaction_id`. Null otherwise.
List<TransactionResult>? _validResults(Object? body, List<int?> sentIds) {
  if (body is! Map) return null;
  final raw = body['results'];
  if (raw is! List || raw.length != sentIds.length) return null;
  final results = <TransactionResult>[];
  for (var i = 0; i < raw.length; i++) {
    final item = raw[i];
    if (item is! Map) return null;
    final status = item['status'];
    if (status is! String) return null;
    final echoed = item['transaction_id'];
    if (echoed != sentIds[i]) return null;
    final retryAfter = item['retry_after_ms'];
    results.add(TransactionResult(
      status: status,
      transactionId: echoed,
      failedOperation: FailedOperation.fromJson(item['failed_operation']),
      retryAfterMs: retryAfter is num && retryAfter.isFinite ? retryAfter.round() : null,
      alreadyApplied: item['already_applied'] == true,
      unchanged: _unchangedIndexes(item['unchanged']),
      appliedVia: item['applied_via'] is String ? item['applied_via'] as String : null,
      appliedViaReason: item['applied_via_reason'] is String ? item['applied_via_reason'] as String : null,
    ));
  }
  return results;
}

int? _largest(Iterable<int?> values) {
  int? largest;
  for (final value in values) {
    if (value != null && (largest == null || value > largest)) largest = value;
  }
  return largest;
}

/// Decides, from one `/powersync-upload` answer, which of the transactions sent may be completed.
///
/// - Only HTTP 200 and 503 carry per-transaction results; any other status completes nothing.
/// - The results must match what was sent exactly (count, order, `transaction_id`s), otherwise
///   nothing is completed.
/// - The leading run of final results (`success`, `fatal_error`, `conflict`) may be completed, in
///   order; the first other result stops it.
/// - A final prefix followed only by `not_attempted` means the worker's subrequest budget ran out:
///   `continue` (send the rest at once). Every other incomplete case is `retry`.
UploadInterpretation interpretUploadResponse(
  int status,
  Object? body,
  List<int?> sentIds, {
  String? retryAfter,
}) {
  final headerDelay = parseRetryAfter(retryAfter);
  if (status != 200 && status != 503) {
    final error = errorOf(body);
    return UploadInterpretation(
      completable: 0,
      results: null,
      next: 'retry',
      reasonCode: error.code ?? 'http_$status',
      reasonMessage: 'upload answered HTTP $status${error.error != null ? ': ${error.error}' : ''}',
      retryAfterMs: headerDelay,
    );
  }
  final results = _validResults(body, sentIds);
  if (results == null) {
    final error = errorOf(body);
    final message = body == null
        ? 'upload answered HTTP $status with a body that is not JSON'
        : error.code != null
            ? 'upload answered HTTP $status: ${error.code}'
            : 'upload answered HTTP $status with results that do not match the ${sentIds.length} transaction(s) sent';
    return UploadInterpretation(
      completable: 0,
      results: null,
      next: 'retry',
      reasonCode: error.code ?? 'unexpected_response',
      reasonMessage: message,
      retryAfterMs: headerDelay,
    );
  }
  var completable = 0;
  while (completable < results.length && results[completable].isFinal) {
    completable++;
  }
  if (completable == results.length) {
    return UploadInterpretation(completable: completable, results: results, next: 'done');
  }
  final stop = results[completable];
  final budgetCut = completable > 0 && results.skip(completable).every((r) => r.status == 'not_attempted');
  final failure = stop.failedOperation;
  return UploadInterpretation(
    completable: completable,
    results: results,
    next: budgetCut ? 'continue' : 'retry',
    reasonCode: stop.status,
    reasonMessage: 'transaction ${stop.transactionId ?? 'without id'} is ${stop.status}'
        '${failure != null ? ': ${failure.code} ${failure.message}' : ''}',
    retryAfterMs: _largest([headerDelay, ...results.map((r) => r.retryAfterMs)]),
  );
}
