// The outputs of the shards a shard depends on (ShardSlice.dependsOn), read before it runs (protocol/SPEC.md §7
// `shard.inputs`, §11.2). The DISPATCH slice names the dependencies (`depends_on`); the coordinator leased the shard
// only once all of them succeeded, and nothing leaves `succeeded`, so their outputs are final. One REQUEST for the
// summaries and result sha256s, then one FETCH transfer per result blob, each verified against its sha256. A shard
// without dependencies asks nothing.

import TesseraCore
import TesseraProtocol

extension ShardChannel {
    /// The inputs of shard `ref`, in `dependsOn` order; empty (and no request) when it has no dependencies.
    ///
    /// Errors: no reply in time, an unavailable database (503), or a blob that cannot be fetched are `FetchFailure`s
    /// (infrastructure: the shard is re-queued at no cost); any other error status, a reply that does not name exactly
    /// the dependencies of the slice, or one that says a dependency has not succeeded is a `ShardError` (charged),
    /// since asking again would not change it.
    func fetchInputs(of ref: ShardRef, dependsOn: [Int]) throws -> [ShardInput] {
        guard !dependsOn.isEmpty else { return [] }
        let what = "the inputs of shard \(ref.shardIndex) of job \(ref.jobID)"
        let r = try request(
            "shard.inputs", body: ["job": .number(Double(ref.jobID)), "shard": .int(Int(ref.shardIndex))], what: what)
        let reply = (try? JSONValue.parse(r.body)) ?? .null
        guard r.status == WireStatus.ok else {
            let message = "cannot read \(what): \(reply["error"]?.stringValue ?? "status \(r.status)")"
            // 503: the coordinator's database is away for now. Anything else will not change by asking again.
            if r.status == WireStatus.unavailable { throw FetchFailure(message) }
            throw ShardError(message)
        }
        guard let list = reply["inputs"]?.arrayValue else { throw ShardError("\(what): the reply has no 'inputs' list") }
        var byIndex: [Int: (summary: JSONValue, sha256: String)] = [:]
        for entry in list {
            guard let index = entry["shard"]?.intValue, let summary = entry["summary"], summary.objectValue != nil,
                let sha = entry["result_sha256"]?.stringValue
            else { throw ShardError("\(what): malformed entry \(entry.render())") }
            guard byIndex.updateValue((summary, sha), forKey: index) == nil else {
                throw ShardError("\(what): shard \(index) is listed twice")
            }
        }
        guard Set(byIndex.keys) == Set(dependsOn), byIndex.count == dependsOn.count else {
            throw ShardError(
                "\(what): the coordinator lists shards \(byIndex.keys.sorted()), the slice depends on \(dependsOn)")
        }
        return try dependsOn.map { index in
            let (summary, sha) = byIndex[index]!
            // fetchBlob verifies the assembled bytes against the sha256.
            let result = sha.isEmpty ? nil : try fetchBlob(sha256: sha)
            return ShardInput(shardIndex: index, summary: summary, result: result)
        }
    }
}
