// Client requests (protocol/SPEC.md §Client requests): the CLI's methods, each answered from PostgreSQL or the
// blob store on the coordinator's loop thread. Bodies are JSON objects; replies carry a status and a JSON body
// (and, for blob reads, a blob frame).

import Foundation
import Logging
import TesseraCore
import TesseraProtocol
import TesseraStore

extension Coordinator {
    func onRequest(_ r: ClientRequest, from identity: [UInt8]) throws {
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

        switch r.method {
        case "ping":
            reply(identity, r, ["pong": .bool(true), "protocol_version": .int(Int(WireCodec.version))])

        case "submit":
            guard let specJSON = body["spec"] else { return bad("submit needs 'spec'") }
            let spec: JobSpec
            let slices: [ShardSlice]
            do {
                spec = try JobSpec.fromStored(specJSON)
                (_, slices) = try catalogue.validate(spec)
            } catch {
                return reply(identity, r, status: WireStatus.invalidSpec, ["error": .string("\(error)")])
            }
            for dep in spec.dependsOn where try storeForRequests.resultJSON(jobID: dep) == nil {
                return bad("depends_on: job \(dep) does not exist")
            }
            let id = try storeForRequests.submitJob(
                spec: spec, sourceText: body["source"]?.stringValue ?? spec.json.render(pretty: true), slices: slices
            )
            markDispatchNeeded()
            logger.info("job submitted", metadata: ["job.id": "\(id)", "job.kind": "\(spec.kind.rawValue)", "shards": "\(slices.count)"])
            reply(identity, r, ["job_id": .number(Double(id)), "shards": .int(slices.count)])

        case "status":
            if body["job"] != nil {
                guard let id = jobID() else { return bad("'job' must be a positive job id") }
                guard let json = try storeForRequests.jobStatusJSON(id, events: body["events"]?.boolValue ?? false) else {
                    return notFound("no job \(id)")
                }
                replyRaw(identity, r, json: "{\"job\":\(json)}")
            } else {
                let limit = min(max(body["limit"]?.intValue ?? 50, 1), 10_000)
                let json = try storeForRequests.jobListJSON(limit: limit, state: body["state"]?.stringValue)
                replyRaw(identity, r, json: "{\"jobs\":\(json)}")
            }

        case "cancel":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let (state, leased) = try storeForRequests.cancelJob(id) else { return notFound("no job \(id)") }
            cancelForRequests(leased)
            reply(identity, r, ["job_id": .number(Double(id)), "state": .string(state.rawValue), "stopped_shards": .int(leased.count)])

        case "workers":
            let json = try storeForRequests.workersJSON()
            let c = counters
            let stats: JSONObject = [
                "connected_workers": .int(liveWorkers.count), "messages_in": .int(c.messagesIn),
                "malformed_frames": .int(c.malformedFrames), "stale_dropped": .int(c.staleDropped),
                "metric_points": .int(c.metricPoints), "metric_commits": .int(c.metricCommits),
                "dispatched": .int(c.dispatched), "workers_lost": .int(c.workersLost),
                "errors_received": .int(c.errorsReceived), "errors_suppressed": .int(c.errorsSuppressed),
                "replies_too_large": .int(c.repliesTooLarge),
            ]
            replyRaw(identity, r, json: "{\"workers\":\(json),\"coordinator\":\(JSONValue.object(stats).render())}")

        case "metrics":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            let shard = body["shard"]?.intValue.map { Int32($0) }
            let limit = min(max(body["limit"]?.intValue ?? 1_000_000, 1), 10_000_000)
            guard let json = try storeForRequests.metricsJSON(jobID: id, shard: shard, name: body["name"]?.stringValue, limit: limit) else {
                return notFound("no job \(id)")
            }
            replyRaw(identity, r, json: "{\"metrics\":\(json)}")

        case "result":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            guard let res = try storeForRequests.resultJSON(jobID: id) else { return notFound("no job \(id)") }
            var o: JSONObject = ["job_id": .number(Double(id)), "state": .string(res.state)]
            if let e = res.error { o["error"] = .string(e) }
            if let text = res.result { o["result"] = try JSONValue.parse(text) }
            reply(identity, r, o)

        case "blob.info":
            guard let id = jobID() else { return bad("'job' must be a positive job id") }
            let shard = Int32(body["shard"]?.intValue ?? 0)
            let step = body["step"]?.intValue.map { Int64($0) }
            let kinds = body["kind"]?.stringValue.map { [$0] } ?? ["checkpoint", "samples"]
            guard try storeForRequests.resultJSON(jobID: id) != nil else { return notFound("no job \(id)") }
            for kind in kinds {
                if let b = try storeForRequests.blob(jobID: id, shard: shard, kind: kind, step: step) {
                    return reply(identity, r, [
                        "sha256": .string(b.sha256), "size": .number(Double(b.size)), "step": .number(Double(b.step)),
                        "kind": .string(b.kind),
                    ])
                }
            }
            let have = try storeForRequests.blobsJSON(jobID: id, shard: shard)
            reply(identity, r, status: WireStatus.notFound, [
                "error": .string(
                    "job \(id) shard \(shard) has no \(kinds.joined(separator: " or "))\(step.map { " at step \($0)" } ?? "")"),
                "available": try JSONValue.parse(have),
            ])

        case "blob.read":
            guard let sha = body["sha256"]?.stringValue else { return bad("blob.read needs 'sha256'") }
            let offset = UInt64(max(body["offset"]?.intValue ?? 0, 0))
            let length = min(max(body["length"]?.intValue ?? config.maxReadChunk, 1), config.maxReadChunk)
            do {
                let (data, total) = try blobsForRequests.read(sha256: sha, offset: offset, length: length)
                reply(identity, r, ["total_size": .number(Double(total)), "offset": .number(Double(offset))], blob: data)
            } catch {
                notFound("\(error)")
            }

        default:
            reply(identity, r, status: WireStatus.unknownMethod, ["error": .string("unknown method '\(r.method)'")])
        }
    }
}
