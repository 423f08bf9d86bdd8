import 'dart:convert';

import 'package:http/http.dart' as http;
import 'package:http/testing.dart';
import 'package:powersync_core/powersync_core.dart';
import 'package:powersync_supabase_worker/powersync_supabase_worker.dart';

/// One entry to queue.
class EntrySpec {
  final UpdateType op;
  final String table;
  final String id;
  final Map<String, dynamic>? data;
  final Map<String, dynamic>? previousValues;
  final String? metadata;

  const EntrySpec(this.op, this.id, {this.table = 'todos', this.data, this.previousValues, this.metadata});
}

/// A queue with the SDK's semantics: consecutive entries with one transaction id are one
/// transaction (entries without one are one each); a transaction's `complete()` removes every
/// entry up to its last one.
class FakeQueue implements UploadQueue {
  final List<CrudEntry> _entries = [];
  var _nextClientId = 1;

  /// What `getClientId()` answers; null makes it throw.
  String? clientIdAnswer = 'client-abc';

  /// The transaction id of each `complete()` call, in order.
  final List<int?> completeCalls = [];

  FakeQueue add(int? transactionId, List<EntrySpec> specs) {
    for (final spec in specs) {
      _entries.add(CrudEntry(_nextClientId++, spec.op, spec.table, spec.id, transactionId, spec.data,
          previousValues: spec.previousValues, metadata: spec.metadata));
    }
    return this;
  }

  /// `count` transactions with ids first, first + 1, ..., one PUT each.
  FakeQueue addMany(int first, int count) {
    for (var i = 0; i < count; i++) {
      add(first + i, [EntrySpec(UpdateType.put, 'row-${first + i}', data: {'n': i})]);
    }
    return this;
  }

  List<int?> remainingTransactionIds() {
    final ids = <int?>[];
    for (final tx in _group()) {
      ids.add(tx.transactionId);
    }
    return ids;
  }

  List<CrudTransaction> _group() {
    final transactions = <CrudTransaction>[];
    var i = 0;
    while (i < _entries.length) {
      final first = _entries[i];
      final crud = <CrudEntry>[first];
      i++;
      while (first.transactionId != null && i < _entries.length && _entries[i].transactionId == first.transactionId) {
        crud.add(_entries[i]);
        i++;
      }
      final last = crud.last.clientId;
      transactions.add(CrudTransaction(
        transactionId: first.transactionId,
        crud: crud,
        complete: ({String? writeCheckpoint}) async {
          completeCalls.add(first.transactionId);
          _entries.removeWhere((e) => e.clientId <= last);
        },
      ));
    }
    return transactions;
  }

  @override
  Stream<CrudTransaction> getCrudTransactions() => Stream.fromIterable(_group());

  @override
  Future<String> getClientId() async {
    final id = clientIdAnswer;
    if (id == null) throw StateError('no client id');
    return id;
  }
}

/// A scripted worker: answers in order, records every request.
class FakeWorker {
  final List<http.Request> requests = [];
  final List<Object> _answers;

  FakeWorker(List<Object> answers) : _answers = List.of(answers);

  /// The JSON body of request [i].
  Map<String, dynamic> json(int i) => jsonDecode(requests[i].body) as Map<String, dynamic>;

  late final MockClient client = MockClient((request) async {
    requests.add(request);
    if (_answers.isEmpty) throw StateError('unexpected request ${request.method} ${request.url}');
    final answer = _answers.removeAt(0);
    if (answer is Exception) throw answer;
    if (answer is Future<http.Response> Function()) return answer();
    return answer as http.Response;
  });
}

http.Response jsonResponse(int status, Object? body, {Map<String, String> headers = const {}}) =>
    http.Response(jsonEncode(body), status, headers: {'content-type': 'application/json', ...headers});

/// A `{"results": [...]}` body: each item `[status, transaction id, extra fields?]`.
Map<String, Object?> results(List<List<Object?>> items) => {
      'results': [
        for (final item in items)
          {
            'status': item[0],
            'transaction_id': item[1],
            if (item.length > 2) ...(item[2] as Map<String, Object?>),
          },
      ],
    };
