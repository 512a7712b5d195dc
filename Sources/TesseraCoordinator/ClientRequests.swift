// Client requests (protocol/SPEC.md §7; workers send `blob.info` and `shard.inputs` too) and FETCH, served by a small pool of threads with their own PostgreSQL
// connections, so `status` of a big job or a long `metrics` read never delays heartbeats, dispatch or the writer.
// Each reply is capped at the frame limits by the transport (205 tooLarge otherwise); every list is paged.

import Foundation
import LibPQ
import Logging
import Synchronization
import TesseraCore
import TesseraCoordinatorCore
import TesseraProtocol
import TesseraStore

/// What the transport publishes for `workers --json` and the HTTP service's `/metrics`.
public struct CoordinatorStatus: Sendable {
    public var counters = CoordinatorStateMachine.Counters()
    public var connectedWorkers = 0
    public var repliesTooLarge = 0
    /// CURVE: handshakes the ZAP handler refused (key not on the allow-list), and messages dropped because their
    /// connection's key was revoked.
    public var handshakesDenied = 0
    public var handshakesFailed = 0
    public var messagesRefused = 0
    public var authenticated = false
    public var storage = StorageStatus()
    /// Blob bytes stored (verified, fsynced, renamed) since the coordinator started.
    public var blobBytesStored = 0
}

/// The data dir as the blob service last found it (BlobWriter).
public struct StorageStatus: Sendable {
    /// Since when blob transfers are deferred for lack of space; nil while writes succeed.
    public var fullSince: Date?
    public var error: String?
    /// Transfers answered `deferred` since the coordinator started (each counted once per deferral).
    public var transfersDeferred = 0
    public var transfersOpen = 0

    public var json: JSONValue {
        var o: JSONObject = [
            "state": .string(fullSince == nil ? "ok" : "full"), "transfers_deferred": .int(transfersDeferred),
            "transfers_open": .int(transfersOpen),
        ]
        if let fullSince {
            o["full_since"] = .string(ISO8601DateFormatter().string(from: fullSince))
            o["full_seconds"] = .int(Int(Date().timeIntervalSince(fullSince)))
        }
        if let error { o["error"] = .string(error) }
        return .object(o)
    }
}

final class SharedStatus: Sendable {
    let value = Mutex(CoordinatorStatus())
}

/// Where a request's reply goes: a ZeroMQ peer (through the transport thread), or a caller inside the process (the
/// HTTP service), handed the reply on the reader thread.
enum ReplyTo: Sendable {
    case peer([UInt8])
    case local(@Sendable (ClientReply) -> Void)
}

final class ReadPool: @unchecked Sendable {
    /// A shell glob (`*` any run, `?` one character) as a SQL LIKE pattern, every other character literal.
    static func likePattern(_ glob: String) -> String {
        var out = ""
        for ch in glob {
            switch ch {
            case "*": out += "%"
            case "?": out += "_"
            case "%", "_", "\\": out += "\\" + String(ch)
            default: out.append(ch)
            }
        }
        return out
    }

    // @unchecked: each thread owns its own store; shared state is the queue, the inbox and the status Mutex.
    private let queue = WorkQueue<(ReplyTo, Message)>()
    private let connect: @Sendable () throws -> PostgresJobStore
    private let blobs: BlobStore
    private let uploads: Uploads
    private let catalogue: AlgorithmCatalogue
    private let inbox: Inbox
    private let status: SharedStatus
    private let logger: Logger
    private let maxReadChunk: Int
    private var threads: [ServiceThread] = []

    init(
        connect: @escaping @Sendable () throws -> PostgresJobStore, blobs: BlobStore, catalogue: AlgorithmCatalogue,
        inbox: Inbox, status: SharedStatus, maxReadChunk: Int, logger: Logger
    ) {
        self.connect = connect
        self.blobs = blobs
        uploads = Uploads(blobs: blobs)
        self.catalogue = catalogue
        self.inbox = inbox
        self.status = status
        self.maxReadChunk = maxReadChunk
        self.logger = logger
    }

    func start(threads count: Int) {
        for i in 0..<count {
            threads.append(ServiceThread(name: "tessera-reader-\(i)") { [self] in
                var store: PostgresJobStore?
                while let (peer, message) = queue.pop() {
                    var retried = false
                    while true {
                        do {
                            if store == nil { store = try connect() }
                            // A connection that died since the last request (the database restarted) is noticed
                            // only by this request: a read is tried once more on a fresh connection.
                            let again = serve(message, from: peer, store: store!, mayRetry: !retried)
                            if let s = store, !s.db.isOpen {
                                s.db.close()
                                store = nil
                            }
                            if again {
                                retried = true
                                continue
                            }
                        } catch {
                            // No connection: say so (503), and try a fresh one for the next request.
                            if case .request(let r) = message {
                                reply(peer, r, status: WireStatus.unavailable, ["error": .string("database unavailable: \(error)")])
                            }
                        }
                        break
                    }
                }
                store?.db.close()
            })
        }
    }

    func submit(_ peer: [UInt8], _ message: Message) { queue.push((.peer(peer), message)) }

    /// A request from inside the process (the HTTP service): `done` gets the reply on a reader thread.
    func submit(_ request: ClientRequest, done: @escaping @Sendable (ClientReply) -> Void) {
        // A pool that is stopping may already have lost its threads: answer at once rather than never.
        if !queue.pushUnlessClosed((.local(done), .request(request))) {
            done(ClientReply(
                requestID: request.requestID, status: WireStatus.unavailable,
                body: JSONValue.object(["error": .string("the coordinator is stopping")]).utf8Bytes))
        }
    }

    func stop() {
        queue.close()
        for t in threads { t.join() }
    }

    /// Methods that write: never retried after a lost connection (the COMMIT may have happened).
    static let writingMethods: Set<String> = ["submit", "cancel"]

    /// Serves one message; true when it should be served again on a fresh connection (nothing was replied).
    private func serve(_ message: Message, from peer: ReplyTo, store: PostgresJobStore, mayRetry: Bool) -> Bool {
        switch message {
        case .request(let r):
            do {
                try request(r, from: peer, store: store)
            } catch where mayRetry && !store.db.isOpen && !Self.writingMethods.contains(r.method) {
                logger.info("database connection lost; retrying the read on a new one", metadata: ["method": "\(r.method)"])
                return true
            } catch {
                logger.error("request failed", metadata: ["method": "\(r.method)", "error": "\(error)"])
                reply(peer, r, status: WireStatus.internalError, ["error": .string("\(error)")])
            }
        case .fetch(let f):
            guard case .peer(let peer) = peer else { break }
            do {
                let (data, total) = try blobs.read(sha256: f.sha256, offset: f.offset, length: min(Int(f.length), maxReadChunk))
                inbox.post(.send(peer, .fetchReply(FetchReply(
                    requestID: f.requestID, sha256: f.sha256, offset: f.offset, totalSize: total, data: data, error: ""))))
            } catch {
                inbox.post(.send(peer, .fetchReply(FetchReply(
                    requestID: f.requestID, sha256: f.sha256, offset: f.offset, totalSize: 0, data: [], error: "\(error)"))))
            }
        default:
            break
        }
        return false
    }

    private func reply(_ to: ReplyTo, _ r: ClientRequest, status: UInt16 = 0, _ body: JSONObject, blob: [UInt8] = []) {
        deliver(to, ClientReply(requestID: r.requestID, status: status, body: JSONValue.object(body).utf8Bytes, blob: blob))
    }

    private func replyRaw(_ to: ReplyTo, _ r: ClientRequest, json: String) {
        deliver(to, ClientReply(requestID: r.requestID, status: 0, body: Array(json.utf8)))
    }

    private func deliver(_ to: ReplyTo, _ reply: ClientReply) {
        switch to {
        case .peer(let peer): inbox.post(.send(peer, .reply(reply)))
        case .local(let done): done(reply)
        }
    }

    private func request(_ r: ClientRequest, from identity: ReplyTo, store: PostgresJobStore) throws {
        let body: JSONObject
        do {
            body = try JSONValue.parse(r.body).objectValue ?? [:]
        } catch {
            return reply(identity, r, status: WireStatus.badRequest, ["error": .string("request body is not JSON: \(error)")])
        }
        func bad(_ m: String) { reply(identity, r, status: WireStatus.badRequest, ["error": .string(m)]) }
        func notFound(_ m: String) { reply(identity, r, status: WireStatus.notFound, ["error": .string(m)]) }
        func jobID() -> Int64? {
            guard let id = body["job"]?.intValue, id > 0 else { return nil }
            return Int64(id)
        }
        /// The request's optional 'shard': `.some(nil)` when absent, `nil` when it is not a shard index (0 ... 2^31-1),
        /// which the caller answers with a bad request instead of trapping on the Int32 conversion.
        func optionalShard() -> Int32?? {
            guard let v = body["shard"] else { return .some(nil) }
            guard let n = v.intValue, let i = Int32(exactly: n), i >= 0 else { return nil }
            return .some(i)
        }
        let badShard = "'shard' must be a shard index (0, 1, ...)"

        switch r.method {
        case "ping":
            reply(identity, r, ["pong": .bool(true), "protocol_version": .int(Int(WireCodec.version))])

        case "submit":
            guard let specJSON = body["spec"] else { return bad("submit needs 'spec'") }
            let spec: JobSpec
            let slices: [ShardSlice]
            let inputs: [JobInput]
            do {
                // Files the job brings must be uploaded already (`blob.upload`); the algorithm checks their contents
                // like the rest of the spec.
                spec = try blobs.loadingFiles(try JobSpec.fromStored(specJSON))
                let algorithm: any Algorithm
                (algorithm, slices) = try catalogue.validate(spec)
                inputs = try algorithm.jobInputs(spec)
            } catch {
                return reply(identity, r, status: WireStatus.invalidSpec, ["error": .string("\(error)")])
            }
            // The jobs it depends on and reads from must exist, be able to succeed and be of the right algorithm.
            let id: Int64
            do {
                id = try store.submitJob(
                    spec: spec, sourceText: body["source"]?.stringValue ?? spec.json.render(pretty: true), slices: slices,
                    inputs: inputs)
            } catch let e as SubmitRefused {
                return bad(e.message)
            }
            inbox.post(.event(.queueChanged))
            logger.info("job submitted", metadata: ["job.id": "\(id)", "job.kind": "\(spec.kind.rawValue)", "shards": "\(slices.count)"])
            reply(identity, r, ["job_id": .number(Double(id)), "shards": .int(slices.count)])

        case "status":
            // While the data dir is full, every status reply says so (`storage`): shards that finished computing wait
            // for their uploads, and a user watching a job must see why it does not move.
            let storage = status.value.withLock { $0.storage }
            let storageField = storage.fullSince == nil ? "" : ",\"storage\":\(storage.json.render())"
            if body["job"] != nil {
                guard let id = jobID() else { return bad("'job' must be a positive job id") }
                guard let json = try store.jobStatusJSON(id, events: body["events"]?.boolValue ?? false) else {
                    return notFound("no job \(id)")
                }
                replyRaw(identity, r, json: "{\"job\":\(json)\(storageField)}")
            } else {
                let limit = body["limit"].map { $0.intValue ?? 0 } ?? 50
                guard (1...10_000).contains(limit) else {
                    return bad("'limit' must be a whole number from 1 to 10000 (got \(body["limit"]!.render()))")
                }
                let state = body["state"]?.stringValue
                if let state, JobState(rawValue: state) == nil {
                    return bad("unknown job state '\(state)'; known: \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                let kind = body["kind"]?.stringValue
                if let kind, JobKind(rawValue: kind) == nil {
                    return bad("unknown kind '\(kind)'; known: \(JobKind.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                let algorithm = body["algorithm"]?.stringValue
                if let algorithm {
                    let known = Set(catalogue.algorithms.filter { kind == nil || $0.kind.rawValue == kind }.map(\.name))
                    guard known.contains(algorithm) else {
                        return bad("unknown algorithm '\(algorithm)'\(kind.map { " of kind \($0)" } ?? ""); known: \(known.sorted().joined(separator: ", "))")
                    }
                }
                if body["since"] != nil && body["since"]?.doubleValue == nil {
                    return bad("'since' must be a time in seconds since 1970 (got \(body["since"]!.render()))")
                }
                let json = try store.jobListJSON(
                    limit: limit, state: state, nameLike: body["name"]?.stringValue.map(Self.likePattern), kind: kind,
                    algorithm: algorithm, since: body["since"]?.doubleValue)
                replyRaw(identity, r, json: "{\"jobs\":\(json)\(storageField)}")
            }

        case "cancel":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let (state, leased) = try store.cancelJob(id) else { return notFound("no job \(id)") }
            inbox.post(.event(.leasesEnded(leased, reason: "job cancelled")))
            reply(identity, r, ["job_id": .number(Double(id)), "state": .string(state.rawValue), "stopped_shards": .int(leased.count)])

        case "retry":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let (shards, state, refused) = try store.retryJob(id) else { return notFound("no job \(id)") }
            if let refused { return reply(identity, r, status: WireStatus.badRequest, ["error": .string(refused)]) }
            inbox.post(.event(.queueChanged))
            reply(identity, r, ["job_id": .number(Double(id)), "state": .string(state.rawValue), "requeued_shards": .int(shards)])

        case "workers":
            let json = try store.workersJSON()
            let (c, connected, tooLarge, auth, storage) = status.value.withLock {
                ($0.counters, $0.connectedWorkers, $0.repliesTooLarge,
                 ($0.authenticated, $0.handshakesDenied, $0.messagesRefused, $0.handshakesFailed), $0.storage)
            }
            let stats: JSONObject = [
                "connected_workers": .int(connected), "messages_in": .int(c.messagesIn),
                "malformed_frames": .int(c.malformedFrames), "stale_dropped": .int(c.staleDropped),
                "metric_points": .int(c.metricPoints), "metric_commits": .int(c.metricCommits),
                "log_lines": .int(c.logLines), "log_batches_rejected": .int(c.logBatchesRejected),
                "dispatched": .int(c.dispatched), "workers_lost": .int(c.workersLost),
                "errors_received": .int(c.errorsReceived), "errors_suppressed": .int(c.errorsSuppressed),
                "replies_too_large": .int(tooLarge), "commits": .int(c.commits),
                "auth": .string(auth.0 ? "curve" : "none"), "handshakes_denied": .int(auth.1), "handshakes_failed": .int(auth.3),
                "messages_refused": .int(auth.2), "sessions_revoked": .int(c.sessionsRevoked),
                "storage": storage.json, "chunks_deferred": .int(c.chunksDeferred),
            ]
            replyRaw(identity, r, json: "{\"workers\":\(json),\"coordinator\":\(JSONValue.object(stats).render())}")

        case "metrics":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let shard = optionalShard() else { return bad(badShard) }
            if body["list"]?.boolValue == true {
                guard let json = try store.metricSeriesJSON(jobID: id, shard: shard) else { return notFound("no job \(id)") }
                return replyRaw(identity, r, json: "{\"series\":\(json)}")
            }
            let limit = min(max(body["limit"]?.intValue ?? 1_000_000, 1), 10_000_000)
            if let order = body["order"] {
                // Commit order, for following a running job (`metrics --follow`).
                guard order.stringValue == "commit" else { return bad("'order' must be \"commit\" (or absent: (shard, name, step) order)") }
                var since: PostgresJobStore.MetricCommitCursor?
                if let a = body["since"] {
                    guard let o = a.objectValue, let q = o["seq"]?.intValue, let s = o["shard"]?.intValue,
                        let n = o["name"]?.stringValue, let k = o["step"]?.intValue, Int32(exactly: s) != nil
                    else { return bad("'since' must be {\"seq\": Q, \"shard\": N, \"name\": \"...\", \"step\": K} (the 'cursor' of the page before)") }
                    since = PostgresJobStore.MetricCommitCursor(seq: Int64(q), shard: Int32(s), name: n, step: Int64(k))
                }
                // The state first: a shard's points are committed before its SHARD_DONE, so a finished job's page is final.
                guard let job = try store.jobProgress(jobID: id) else { return notFound("no job \(id)") }
                if let shard, shard < 0 || Int(shard) >= job.shards {
                    return notFound("job \(id) has no shard \(shard) (it has \(job.shards) shard\(job.shards == 1 ? "" : "s"), 0-\(job.shards - 1))")
                }
                let page = try store.metricsByCommitJSON(jobID: id, shard: shard, name: body["name"]?.stringValue, limit: limit, since: since)
                let cursor = (page.last ?? since).map {
                    ",\"cursor\":" + JSONValue.object([
                        "seq": .number(Double($0.seq)), "shard": .int(Int($0.shard)), "name": .string($0.name),
                        "step": .number(Double($0.step)),
                    ]).render()
                } ?? ""
                let finished = ["succeeded", "failed", "cancelled"].contains(job.state)
                return replyRaw(identity, r, json: "{\"metrics\":\(page.json)\(cursor),\"more\":\(page.count >= limit)"
                    + ",\"state\":\(JSONValue.string(job.state).render()),\"finished\":\(finished)}")
            }
            var after: PostgresJobStore.MetricCursor?
            if let a = body["after"] {
                guard let o = a.objectValue, let s = o["shard"]?.intValue, let n = o["name"]?.stringValue,
                    let k = o["step"]?.intValue, Int32(exactly: s) != nil
                else { return bad("'after' must be {\"shard\": N, \"name\": \"...\", \"step\": K} (the 'next' of the page before)") }
                after = PostgresJobStore.MetricCursor(shard: Int32(s), name: n, step: Int64(k))
            }
            guard let (json, next) = try store.metricsJSON(
                jobID: id, shard: shard, name: body["name"]?.stringValue, limit: limit, after: after)
            else {
                return notFound("no job \(id)")
            }
            // Nothing matched: say what there is, so a mistyped name or shard is not just an empty table.
            let available = json == "[]" && after == nil ? ",\"available\":\(try store.metricNamesJSON(jobID: id))" : ""
            let nextField = next.map {
                ",\"next\":" + JSONValue.object(["shard": .int(Int($0.shard)), "name": .string($0.name), "step": .number(Double($0.step))]).render()
            } ?? ""
            replyRaw(identity, r, json: "{\"metrics\":\(json)\(available)\(nextField)}")

        case "logs":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let shard = optionalShard() else { return bad(badShard) }
            var after: Int64 = 0
            if let v = body["after"] {
                guard let n = v.intValue, n >= 0 else { return bad("'after' must be the 'next' of the page before (a line id >= 0)") }
                after = Int64(n)
            }
            let limit = min(max(body["limit"]?.intValue ?? 10_000, 1), 100_000)
            // The state first: lines are committed before their shard's SHARD_DONE, so a finished job's page is final.
            guard let job = try store.jobProgress(jobID: id) else { return notFound("no job \(id)") }
            if let shard, Int(shard) >= job.shards {
                return notFound("job \(id) has no shard \(shard) (it has \(job.shards) shard\(job.shards == 1 ? "" : "s"), 0-\(job.shards - 1))")
            }
            let page = try store.logsJSON(jobID: id, shard: shard, after: after, limit: limit)
            let finished = ["succeeded", "failed", "cancelled"].contains(job.state)
            replyRaw(identity, r, json: "{\"logs\":\(page.json),\"next\":\(page.last ?? after),\"more\":\(page.count >= limit)"
                + ",\"state\":\(JSONValue.string(job.state).render()),\"finished\":\(finished)}")

        case "queue":
            // Queue depth (the Prometheus export reads it at every scrape).
            replyRaw(identity, r, json: try store.queueDepthJSON())

        case "result":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let res = try store.resultJSON(jobID: id) else { return notFound("no job \(id)") }
            var o: JSONObject = ["job_id": .number(Double(id)), "state": .string(res.state)]
            if let e = res.error { o["error"] = .string(e) }
            if let text = res.result { o["result"] = try JSONValue.parse(text) }
            reply(identity, r, o)

        case "blob.info":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let shard = optionalShard().map({ $0 ?? 0 }) else { return bad(badShard) }
            let step = body["step"]?.intValue.map { Int64($0) }
            let kinds = body["kind"]?.stringValue.map { [$0] } ?? ["checkpoint", "samples"]
            guard try store.resultJSON(jobID: id) != nil else { return notFound("no job \(id)") }
            for kind in kinds {
                if let b = try store.blob(jobID: id, shard: shard, kind: kind, step: step) {
                    return reply(identity, r, [
                        "sha256": .string(b.sha256), "size": .number(Double(b.size)), "step": .number(Double(b.step)),
                        "kind": .string(b.kind),
                    ])
                }
            }
            let have = try store.blobsJSON(jobID: id, shard: shard)
            reply(identity, r, status: WireStatus.notFound, [
                "error": .string(
                    "job \(id) shard \(shard) has no \(kinds.joined(separator: " or "))\(step.map { " at step \($0)" } ?? "")"),
                "available": try JSONValue.parse(have),
            ])

        case "blob.list":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let shard = optionalShard() else { return bad(badShard) }
            guard try store.resultJSON(jobID: id) != nil else { return notFound("no job \(id)") }
            replyRaw(identity, r, json: "{\"blobs\":\(try store.jobBlobsJSON(jobID: id, shard: shard))}")

        case "shard.inputs":
            // A worker about to run a shard with dependencies (its slice names them, SPEC §11.2) reads their outputs:
            // summaries here, result blobs by FETCH of the sha256s.
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let shard = body["shard"]?.intValue, shard >= 0, shard <= Int(Int32.max) else {
                return bad("'shard' must be a shard index")
            }
            guard let inputs = try store.shardInputs(jobID: id, shard: Int32(shard)) else {
                return notFound("job \(id) has no shard \(shard)")
            }
            var list: [JSONValue] = []
            for input in inputs {
                // The claim leases a shard only once all its dependencies succeeded, and nothing leaves `succeeded`.
                guard input.state == "succeeded", let summary = input.summary else {
                    return reply(identity, r, status: WireStatus.conflict, [
                        "error": .string("shard \(input.shardIndex) of job \(id), which shard \(shard) depends on, is \(input.state), not succeeded")
                    ])
                }
                list.append(.object([
                    "shard": .int(Int(input.shardIndex)), "summary": try JSONValue.parse(summary),
                    "result_sha256": .string(input.resultSHA256 ?? ""),
                ]))
            }
            reply(identity, r, ["inputs": .array(list)])

        case "blob.upload":
            guard let sha = body["sha256"]?.stringValue, JobFile.validSHA256Text(sha) else {
                return bad("blob.upload needs 'sha256': the whole blob's sha256, 64 lower-case hex digits")
            }
            guard let size = body["size"]?.intValue, size >= 0, Int64(size) <= JobFile.maxBytes else {
                return bad("blob.upload needs 'size': the whole blob's byte count, 0 to \(JobFile.maxBytes)")
            }
            guard let offset = body["offset"]?.intValue, offset >= 0, offset <= size else {
                return bad("blob.upload needs 'offset': where 'data' starts, 0 to 'size'")
            }
            let text = body["data"]?.stringValue ?? ""
            guard text.utf8.count <= (Uploads.maxRange / 3 + 1) * 4, let decoded = Data(base64Encoded: text) else {
                return bad("blob.upload 'data' must be base64 of at most \(Uploads.maxRange) bytes")
            }
            guard offset + decoded.count <= size else {
                return bad("blob.upload: 'data' runs past 'size' (\(offset) + \(decoded.count) > \(size))")
            }
            switch uploads.receive(sha256: sha, size: UInt64(size), offset: UInt64(offset), data: [UInt8](decoded)) {
            case .progress(let received, let stored):
                if stored { logger.info("blob uploaded", metadata: ["sha256": "\(sha)", "bytes": "\(size)"]) }
                reply(identity, r, ["received": .number(Double(received)), "stored": .bool(stored)])
            case .refused(let why):
                bad("blob.upload: \(why)")
            case .unavailable(let why):
                reply(identity, r, status: WireStatus.unavailable, ["error": .string("blob.upload: \(why)")])
            }

        case "blob.read":
            guard let sha = body["sha256"]?.stringValue else { return bad("blob.read needs 'sha256'") }
            let offset = UInt64(max(body["offset"]?.intValue ?? 0, 0))
            let length = min(max(body["length"]?.intValue ?? maxReadChunk, 1), maxReadChunk)
            do {
                let (data, total) = try blobs.read(sha256: sha, offset: offset, length: length)
                reply(identity, r, ["total_size": .number(Double(total)), "offset": .number(Double(offset))], blob: data)
            } catch {
                notFound("\(error)")
            }

        default:
            reply(identity, r, status: WireStatus.unknownMethod, ["error": .string("unknown method '\(r.method)'")])
        }
    }
}
